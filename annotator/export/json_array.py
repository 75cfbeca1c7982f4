"""A JSON array written item by item, so that it never sits in memory whole."""
from __future__ import annotations

import json
from typing import TextIO


class JsonArrayWriter:
    """The items of a JSON array written one at a time, so that the array never sits in memory."""

    def __init__(self, out: TextIO):
        self.out = out
        self.count = 0

    def add(self, item) -> None:
        self.out.write(("," if self.count else "") + "\n" + json.dumps(item))
        self.count += 1
