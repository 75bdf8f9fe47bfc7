"""MX verification against a real DNS server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest

from enrollstream.adapters.dns.mx import MxLookupUnavailable, MxVerifier, Nameserver, email_domain
from tests.servers.clock import ManualClock
from tests.servers.dns import SOA_TTL, LocalDnsServer


@pytest.fixture
def dns_server(dns_server: LocalDnsServer) -> LocalDnsServer:
    """The shared fixture's server, with this module's zone."""
    dns_server.add("mail.test", "MX", "10 mx1.mail.test.", ttl=600)
    dns_server.add("mail.test", "MX", "20 mx2.mail.test.", ttl=600)
    dns_server.add("mail.test", "A", "192.0.2.10")
    dns_server.add("a-only.test", "A", "192.0.2.1")
    dns_server.add("nullmx.test", "MX", "0 .")
    dns_server.add("short.test", "MX", "10 mx.short.test.", ttl=30)
    dns_server.servfail("broken.test")
    dns_server.drop("silent.test")
    return dns_server


@pytest.fixture
def clock(manual_clock: ManualClock) -> ManualClock:
    return manual_clock


def verifier(server: LocalDnsServer, clock: ManualClock, timeout: float = 2.0) -> MxVerifier:
    return MxVerifier(clock, [Nameserver(server.host, server.port)], timeout=timeout)


async def test_a_domain_with_mx_records_has_mx(dns_server: LocalDnsServer, clock: ManualClock) -> None:
    answer = await verifier(dns_server, clock).verify("Ada Lovelace <ada@Mail.Test>")
    assert answer.domain == "mail.test"
    assert answer.has_mx is True
    assert answer.checked_at == clock.now
    assert answer.detail == "mx: 10 mx1.mail.test., 20 mx2.mail.test."


@pytest.mark.parametrize(
    ("domain", "detail"),
    [
        ("a-only.test", "no_mx"),  # an A record is not an MX (no implicit-MX fallback, seed 001)
        ("nowhere.test", "nxdomain"),
        ("nullmx.test", "null_mx"),
    ],
)
async def test_domains_that_take_no_mail_have_no_mx_and_say_why(
    dns_server: LocalDnsServer, clock: ManualClock, domain: str, detail: str
) -> None:
    answer = await verifier(dns_server, clock).verify(f"someone@{domain}")
    assert answer.has_mx is False
    assert answer.detail.startswith(detail + ":")
    assert dns_server.query_count(domain) == 1


async def test_servfail_is_unavailable_not_invalid(dns_server: LocalDnsServer, clock: ManualClock) -> None:
    with pytest.raises(MxLookupUnavailable, match=r"broken\.test") as caught:
        await verifier(dns_server, clock).verify("x@broken.test")
    assert caught.value.domain == "broken.test"
    assert dns_server.query_count("broken.test") >= 1


async def test_a_server_that_never_answers_times_out_as_unavailable(
    dns_server: LocalDnsServer, clock: ManualClock
) -> None:
    mx = verifier(dns_server, clock, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(MxLookupUnavailable, match="timeout"):
        await mx.verify("x@silent.test")
    assert 0.4 < time.monotonic() - started < 3  # the configured timeout bounds the lookup
    assert dns_server.query_count("silent.test") >= 1
    # An unavailable answer is not cached: the next call asks again.
    with pytest.raises(MxLookupUnavailable):
        await mx.verify("x@silent.test")
    assert mx.queries == 2


async def test_answers_are_cached_for_their_ttl_capped(
    dns_server: LocalDnsServer, clock: ManualClock
) -> None:
    mx = MxVerifier(clock, [Nameserver(dns_server.host, dns_server.port)], max_ttl=timedelta(minutes=5))
    first = await mx.verify("a@mail.test")
    clock.advance(timedelta(minutes=4))
    assert await mx.verify("b@mail.test") == first  # served from the cache, checked_at unchanged
    assert dns_server.query_count("mail.test") == 1
    clock.advance(timedelta(minutes=1))  # the 600 s TTL is capped at 5 minutes
    again = await mx.verify("a@mail.test")
    assert again.checked_at == clock.now
    assert dns_server.query_count("mail.test") == 2


async def test_a_short_ttl_is_respected(dns_server: LocalDnsServer, clock: ManualClock) -> None:
    mx = verifier(dns_server, clock)
    await mx.verify("a@short.test")
    clock.advance(timedelta(seconds=29))
    await mx.verify("a@short.test")
    assert dns_server.query_count("short.test") == 1
    clock.advance(timedelta(seconds=1))
    await mx.verify("a@short.test")
    assert dns_server.query_count("short.test") == 2


async def test_negative_answers_are_cached_shorter(dns_server: LocalDnsServer, clock: ManualClock) -> None:
    mx = MxVerifier(clock, [Nameserver(dns_server.host, dns_server.port)], negative_ttl=timedelta(seconds=20))
    assert SOA_TTL > 20  # so the cap, not the zone's SOA, decides here
    await mx.verify("a@nowhere.test")
    clock.advance(timedelta(seconds=19))
    await mx.verify("a@nowhere.test")
    assert dns_server.query_count("nowhere.test") == 1
    clock.advance(timedelta(seconds=1))
    await mx.verify("a@nowhere.test")
    assert dns_server.query_count("nowhere.test") == 2


async def test_negative_answers_follow_a_shorter_soa_ttl(
    dns_server: LocalDnsServer, clock: ManualClock
) -> None:
    mx = MxVerifier(clock, [Nameserver(dns_server.host, dns_server.port)], negative_ttl=timedelta(hours=1))
    for domain in ("nowhere.test", "a-only.test"):  # NXDOMAIN and NODATA both carry the zone's SOA
        await mx.verify(f"a@{domain}")
    clock.advance(timedelta(seconds=SOA_TTL - 1))
    for domain in ("nowhere.test", "a-only.test"):
        await mx.verify(f"a@{domain}")
        assert dns_server.query_count(domain) == 1
    clock.advance(timedelta(seconds=1))
    for domain in ("nowhere.test", "a-only.test"):
        await mx.verify(f"a@{domain}")
        assert dns_server.query_count(domain) == 2


async def test_concurrent_lookups_of_one_domain_share_one_query(
    dns_server: LocalDnsServer, clock: ManualClock
) -> None:
    mx = verifier(dns_server, clock)
    answers = await asyncio.gather(*(mx.verify(f"user{i}@mail.test") for i in range(20)))
    assert {a.has_mx for a in answers} == {True}
    assert dns_server.query_count("mail.test") == 1


async def test_malformed_domains_have_no_mx_without_asking(
    dns_server: LocalDnsServer, clock: ManualClock
) -> None:
    mx = verifier(dns_server, clock)
    for address in ("no-at-sign", "x@", "x@" + "a" * 70 + ".test", "x@bad..test"):
        answer = await mx.verify(address)
        assert answer.has_mx is False and answer.detail.startswith("invalid_domain"), address
    assert mx.queries == 0


def test_email_domain() -> None:
    assert email_domain("Ada <ada@Example.ORG.>") == "example.org"
    assert email_domain("example.org") == "example.org"
