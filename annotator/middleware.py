from django.contrib.auth.middleware import LoginRequiredMiddleware as PageLoginRequiredMiddleware


class LoginRequiredMiddleware(PageLoginRequiredMiddleware):
    """Every page needs a login; the API answers 401 on its own (DRF) instead of redirecting."""

    def process_view(self, request, view_func, view_args, view_kwargs):
        if request.path_info.startswith("/api/"):
            return None
        return super().process_view(request, view_func, view_args, view_kwargs)
