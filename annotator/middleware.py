from django.conf import settings
from django.contrib.auth.middleware import LoginRequiredMiddleware as PageLoginRequiredMiddleware

from annotator import health


class HealthCheckMiddleware:
    """Answers /healthz and /readyz ahead of every other middleware: before the ALLOWED_HOSTS check (a container
    probe calls 127.0.0.1 whatever the public host name is), sessions and the login, so that they need no account
    and stay cheap."""

    views = {"/healthz": health.healthz, "/readyz": health.readyz}

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        view = self.views.get(request.path_info)
        return view(request) if view else self.get_response(request)


class SecurityHeadersMiddleware:
    """Content-Security-Policy and Permissions-Policy from the settings on every response, unless a view set its own.
    One fixed policy for the whole site needs no package (django-csp's nonces and per-view policies go unused here),
    and Django 6 brings a CSP middleware of its own."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        for header, value in (("Content-Security-Policy", settings.CONTENT_SECURITY_POLICY),
                              ("Permissions-Policy", settings.PERMISSIONS_POLICY)):
            if value:
                response.headers.setdefault(header, value)
        return response


class LoginRequiredMiddleware(PageLoginRequiredMiddleware):
    """Every page needs a login; the API answers 401 on its own (DRF) instead of redirecting."""

    def process_view(self, request, view_func, view_args, view_kwargs):
        if request.path_info.startswith("/api/"):
            return None
        return super().process_view(request, view_func, view_args, view_kwargs)
