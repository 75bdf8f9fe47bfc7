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
