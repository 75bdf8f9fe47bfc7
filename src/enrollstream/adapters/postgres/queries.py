"""Named SQL statements loaded from `queries.sql` (and other `.sql` files next to it)."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_SECTION = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def _all(file: str = "queries.sql") -> dict[str, str]:
    text = resources.files(__package__).joinpath(file).read_text()
    parts = _SECTION.split(text)
    # parts: [preamble, name1, body1, name2, body2, ...]
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def query(name: str, file: str = "queries.sql") -> str:
    try:
        return _all(file)[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in {file}") from None
