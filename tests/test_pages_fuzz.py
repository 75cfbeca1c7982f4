"""The pages' counterpart of tests/test_api_schema.py's Schemathesis run: Hypothesis sends every page of the URL conf
generated query strings and form bodies, as an admin, a radiologist and an outsider, and no answer is a server error.

The pages have no schema, so the parameter names are those the templates send (form fields and query strings) and a
few arbitrary ones; the ids in the paths are those of a real project, image, mask version, fine-tuning run and model
version. Each request runs in a savepoint that is rolled back, so every example starts from the same data.

The click refinement takes a JSON list inside a form field, which Schemathesis only sees as a string: it gets its own
Hypothesis test below, with generated click lists (any coordinate, any key, too many) and masks."""
import itertools
import json
import re
import zlib
from http.cookies import SimpleCookie

import numpy as np
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, get_resolver
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from annotator.masks.services import mask_create
from annotator.models import Mask, ModelVersion, Project, TrainingRun
from annotator.png import png_encode
from review.services import image_reject
from tests.conftest import ROOT, png_bytes
from tests.factories import annotated_image, box_mask

EXAMPLES = 40  # per page and role; each sends the page a GET and a POST
NOT_PAGES = ("api/", "admin/")  # the API has its own fuzz test; the Django admin is not ours
TEMPLATE_PARAMETER = re.compile(r'name="(\w+)"|(?:[?&]|&amp;)(\w+)=')
HOSTILE = ["\x00", "a\x00b", "\n", "\u202e", "-1", "1.5", "nan", "inf", "1e999", "9" * 19, "9" * 5000]


def page_routes() -> list[str]:
    """Every route of the URL conf that is a page, as its pattern (e.g. `review/images/<int:pk>/`)."""
    def walk(patterns, prefix=""):
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLPattern):
                yield route
            else:
                yield from walk(pattern.url_patterns, route)

    return sorted({route for route in walk(get_resolver().url_patterns) if not route.startswith(NOT_PAGES)})


def template_parameters() -> list[str]:
    """The names the pages' own forms and links send."""
    return sorted({name for path in (ROOT / "templates").rglob("*.html")
                   for match in TEMPLATE_PARAMETER.finditer(path.read_text()) for name in match.groups() if name})


def route_path(route: str, ids: dict[str, int]) -> str:
    """The route with real ids in it: `pk` is the image's under review/images/, else the project's."""
    def fill(match):
        name = match[1]
        if name == "pk":
            return str(ids["image" if route.startswith("review/images/") else "project"])
        return str(ids[name])  # a KeyError: a page's route has a new kind of id, to add to `ids` in the test

    return "/" + re.sub(r"<int:(\w+)>", fill, route)


def parameters(names: list[str], real: list[str]):
    """Some of the pages' own parameter names and an arbitrary one, each with a real value (twice as likely), any
    text, a number of any length, or a value known to hurt (NUL, a bidi override, 5000 digits)."""
    long_numbers = st.builds(lambda digit, count: digit * count, st.sampled_from("123456789"), st.integers(1, 6000))
    values = st.one_of(st.sampled_from(real), st.sampled_from(real), st.text(max_size=20), st.integers().map(str),
                       long_numbers, st.sampled_from(HOSTILE))
    keys = st.one_of(st.sampled_from(names), st.text(min_size=1, max_size=8))
    return st.dictionaries(keys, values, max_size=4)


def shortened(params: dict) -> dict:
    return {key: value if len(value) <= 40 else f"{value[:20]}... ({len(value)} characters)"
            for key, value in params.items()}


def test_no_page_answers_a_server_error_to_any_query_or_form(team):
    image = annotated_image(team.project, "first.png", flagged=True)
    mask_create(image, box_mask((40, 30), (1, 1, 9, 9)), Mask.Source.HUMAN, author=team.radiologist)
    image_reject(annotated_image(team.project, "second.png"), team.admin)
    annotated_image(Project.objects.get(name="Elsewhere"), "elsewhere.png")
    version = ModelVersion.objects.create(project=team.project, name="v1", folder="/nowhere")
    run = TrainingRun.objects.create(project=team.project, created_by=team.admin)
    ids = {"project": team.project.pk, "image": image.pk, "version": 1, "run_pk": run.pk, "version_pk": version.pk}
    real = [str(value) for value in ids.values()] + ["", "2", *team.project.classes, "approved", "pending",
                                                     "in_review", "rejected", "admin", "2026-01-05", "0.5"]
    names = template_parameters()
    clients = {}
    for role in ("admin", "radiologist", "outsider"):
        clients[role] = Client(raise_request_exception=False)
        clients[role].force_login(getattr(team, role))
    failures = []

    for route, role in itertools.product(page_routes(), clients):
        path, client = route_path(route, ids), clients[role]

        def answer(method, query, form) -> tuple[int, str]:
            """The status of one request and the exception behind it, if any; the request changes nothing, neither
            the data nor the client's session."""
            cookies = SimpleCookie(client.cookies)
            with transaction.atomic():
                if method == "GET":
                    response = client.get(path, query_params=query)
                else:
                    response = client.post(path, form, query_params=query)
                transaction.set_rollback(True)
            client.cookies = cookies
            error = f"{response.exc_info[0].__name__}: {response.exc_info[1]}"[:300] if response.exc_info else ""
            return response.status_code, error

        @seed(zlib.crc32(f"{route} {role}".encode()))  # the same examples every run, like the API's fuzz test
        @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate, Phase.shrink],
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(query=parameters(names, real), form=parameters(names, real))
        def page_answers(query, form):
            for method in ("GET", "POST"):
                status, error = answer(method, query, form)
                assert status < 500, \
                    f"{method} {path} as {role}, query={shortened(query)} form={shortened(form)}: {status} {error}"

        try:
            page_answers()
        except AssertionError as failure:
            failures.append(str(failure).split("\nassert")[0])
    assert not failures, "\n".join(failures)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=8)
COORDINATES = st.one_of(st.floats(-5, 45), st.integers(-5, 45), st.floats(), st.just(10 ** 400), JSON_VALUES)
CLICK = st.one_of(
    st.fixed_dictionaries({"x": COORDINATES, "y": COORDINATES, "positive": st.one_of(st.booleans(), JSON_VALUES)}),
    st.dictionaries(st.sampled_from(["x", "y", "positive", "z"]), JSON_VALUES, max_size=4), JSON_VALUES)
# Well-formed clicks on the 40x30 image (twice as likely, as are drawn masks of its size): the refiner
# itself runs on many examples.
USABLE_CLICK = st.fixed_dictionaries({"x": st.floats(0, 39.9), "y": st.floats(0, 29.9), "positive": st.booleans()})
CLICKS = st.one_of(st.lists(USABLE_CLICK, min_size=1, max_size=12).map(json.dumps),
                   st.lists(USABLE_CLICK, min_size=1, max_size=12).map(json.dumps),
                   st.lists(CLICK, max_size=6).map(json.dumps),
                   st.lists(CLICK, min_size=95, max_size=110).map(json.dumps),
                   JSON_VALUES.map(json.dumps), st.text(max_size=30), st.sampled_from(HOSTILE), st.just("[" * 5000))
DRAWN_MASKS = st.binary(min_size=40 * 30, max_size=40 * 30).map(
    lambda noise: png_encode(np.frombuffer(noise, np.uint8).reshape(30, 40) > 200))
MASKS = st.one_of(st.none(), DRAWN_MASKS, DRAWN_MASKS, st.binary(max_size=64),
                  st.builds(png_bytes, st.integers(1, 60), st.integers(1, 60)))


def test_no_clicks_or_mask_sent_to_the_refinement_answers_a_server_error_or_stores_anything(team):
    image = annotated_image(team.project, "first.png", flagged=True)
    client = Client(raise_request_exception=False)
    client.force_login(team.radiologist)

    @seed(12)
    @settings(max_examples=150, deadline=None, database=None, phases=[Phase.generate, Phase.shrink],
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(clicks=st.one_of(CLICKS, st.none()), mask=MASKS)
    def refine_answers(clicks, mask):
        form = {} if clicks is None else {"clicks": clicks}
        if mask is not None:
            form["mask"] = SimpleUploadedFile("mask.png", mask, content_type="image/png")
        response = client.post(f"/api/images/{image.pk}/refine/", form)
        error = f"{response.exc_info[0].__name__}: {response.exc_info[1]}"[:300] if response.exc_info else ""
        assert response.status_code in (200, 400), f"clicks={str(clicks)[:200]}: {response.status_code} {error}"
        assert image.masks.count() == 1

    refine_answers()
