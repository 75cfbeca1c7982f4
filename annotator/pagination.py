"""Pages of a listing whose total is known without counting its rows (from the tallies, or a count that stops at a
cap): the rows of a page come from an index walk that stops after them. Page numbers for the pages people click
through; for the API's image list, keyset pages (a cursor), which cost the same however deep a script reads."""
from functools import cached_property, partial

from django.core.paginator import Paginator
from rest_framework.pagination import CursorPagination, PageNumberPagination
from rest_framework.response import Response

COUNT_CAP = 10_000  # a filtered listing counts at most this many rows, and says whether there are more


class CountedPaginator(Paginator):
    def __init__(self, object_list, per_page, count: int):
        super().__init__(object_list, per_page)
        self.known_count = count

    @cached_property
    def count(self):
        return self.known_count


class CountedPagination(PageNumberPagination):
    """DRF's page numbers, with the total from the view's `list_count()`."""

    def paginate_queryset(self, queryset, request, view=None):
        self.django_paginator_class = partial(CountedPaginator, count=view.list_count())
        return super().paginate_queryset(queryset, request, view)


class CountedCursorPagination(CursorPagination):
    """Keyset pages in id order (`next` carries the last id seen), with `count` from the view's `list_count()`."""

    ordering = "id"

    def paginate_queryset(self, queryset, request, view=None):
        self.count = view.list_count()
        return super().paginate_queryset(queryset, request, view)

    def get_paginated_response(self, data):
        return Response({"count": self.count, "next": self.get_next_link(), "previous": self.get_previous_link(),
                         "results": data})

    def get_paginated_response_schema(self, schema):
        paginated = super().get_paginated_response_schema(schema)
        paginated["properties"] = {"count": {"type": "integer", "example": 123}, **paginated["properties"]}
        paginated["required"] = ["count", *paginated.get("required", [])]
        return paginated


def count_capped(rows) -> tuple[int, bool]:
    """The number of rows of a queryset, at most COUNT_CAP, and whether it has more."""
    count = rows[:COUNT_CAP + 1].count()
    return min(count, COUNT_CAP), count > COUNT_CAP
