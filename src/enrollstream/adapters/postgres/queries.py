"""Named SQL statements loaded from `queries.sql`."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_SECTION = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def _all() -> dict[str, str]:
    text = resources.files(__package__).joinpath("queries.sql").read_text()
    parts = _SECTION.split(text)
    # parts: [preamble, name1, body1, name2, body2, ...]
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def query(name: str) -> str:
    try:
        return _all()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in queries.sql") from None
