"""The domain reads no clock: time only arrives with commands."""

from __future__ import annotations

import pathlib
import re

DOMAIN = pathlib.Path(__file__).resolve().parents[2] / "src" / "enrollstream" / "domain"
FORBIDDEN = re.compile(r"datetime\.now|utcnow|date\.today|time\.time|random\.|uuid4|os\.environ")


def test_the_domain_never_reads_the_clock_or_randomness() -> None:
    sources = sorted(DOMAIN.rglob("*.py"))
    assert sources, DOMAIN
    offenders = [
        f"{path.name}:{n}: {line.strip()}"
        for path in sources
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if FORBIDDEN.search(line)
    ]
    assert offenders == []


# What the domain may import: the standard library's pure parts, pydantic, and itself.
ALLOWED_IMPORTS = {
    "__future__",
    "collections",
    "dataclasses",
    "datetime",
    "enum",
    "hashlib",
    "typing",
    "zoneinfo",
    "pydantic",
}


def test_the_domain_imports_only_pure_modules() -> None:
    import ast

    found: set[str] = set()
    for path in sorted(DOMAIN.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    assert found - ALLOWED_IMPORTS == set()
