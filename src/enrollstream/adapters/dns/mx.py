"""MX verification for campaigns with `verify_email_mx` (seed 001): does the contact's email domain
accept mail? The answer is recorded in the Enroll command and then in the events, so replay never
asks DNS again.

Outcomes:
- MX records with a real exchange       -> MxAnswer(has_mx=True)
- NXDOMAIN                              -> MxAnswer(has_mx=False, detail="nxdomain: ...")
- the name exists but has no MX records -> MxAnswer(has_mx=False, detail="no_mx: ...")  (no A fallback)
- only a null MX `0 .` (RFC 7505)       -> MxAnswer(has_mx=False, detail="null_mx: ...")
- a timeout, SERVFAIL, REFUSED, or any other failure to get an answer -> **raises
  MxLookupUnavailable**. "We could not ask" is not "the domain has no MX": the runtime records an
  unanswered MxAnswer (`answered=False`) and the contact is enrolled with `mx_check` `unverified`,
  never skipped as `mx_invalid` and never held back (docs/delivery.md "MX verification").

Answers are cached in memory per domain for their TTL (capped at `max_ttl`); negative answers for
the SOA's negative TTL capped at the shorter `negative_ttl`. Failures are never cached. Concurrent
lookups of one domain share a single query. Expiry follows the injected clock, the same one that
stamps `checked_at`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
from dns.rdtypes.ANY.MX import MX

from enrollstream.domain.campaign import MxAnswer


class MxLookupUnavailable(Exception):
    """DNS gave no usable answer (timeout, SERVFAIL, ...): not evidence of no MX; enroll unverified."""

    def __init__(self, domain: str, reason: str) -> None:
        super().__init__(f"MX lookup for {domain} unavailable: {reason}")
        self.domain = domain
        self.reason = reason


@dataclass(frozen=True)
class Nameserver:
    host: str
    port: int = 53


@dataclass(frozen=True)
class _Cached:
    answer: MxAnswer
    expires_at: datetime


def email_domain(address_or_domain: str) -> str:
    """`Ada <ada@Example.ORG.>` or `example.org` -> `example.org`."""
    text = address_or_domain.strip().rstrip(">")
    return text.rpartition("@")[2].strip().rstrip(".").lower()


def _negative_ttl(response: dns.message.Message | None) -> int | None:
    """RFC 2308: the SOA record's TTL, bounded by its MINIMUM field."""
    if response is None:
        return None
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA:
            return int(min([rrset.ttl, *(rdata.minimum for rdata in rrset)]))
    return None


class MxVerifier:
    def __init__(
        self,
        clock: Callable[[], datetime],
        nameservers: Sequence[Nameserver] | None = None,
        *,
        timeout: float = 5.0,
        max_ttl: timedelta = timedelta(hours=1),
        negative_ttl: timedelta = timedelta(minutes=5),
        max_entries: int = 10_000,
    ) -> None:
        """`nameservers=None` uses the system's resolv.conf; tests pass a local server's host and port.

        `timeout` bounds one whole lookup (every retry and server included).
        """
        self._clock = clock
        self._max_ttl = max_ttl
        self._negative_ttl = negative_ttl
        self._max_entries = max_entries
        self._resolver = dns.asyncresolver.Resolver(configure=nameservers is None)
        if nameservers is not None:
            self._resolver.nameservers = [
                dns.nameserver.Do53Nameserver(ns.host, ns.port) for ns in nameservers
            ]
        self._resolver.timeout = timeout
        self._resolver.lifetime = timeout
        self._resolver.cache = None  # ours below, bounded and on the injected clock
        self._cache: dict[str, _Cached] = {}
        self._inflight: dict[str, asyncio.Task[MxAnswer]] = {}
        self.queries = 0  # lookups that went to DNS (not answered from the cache)

    async def verify(self, address_or_domain: str) -> MxAnswer:
        """The domain's MxAnswer; raises MxLookupUnavailable when DNS could not answer."""
        domain = email_domain(address_or_domain)
        cached = self._cache.get(domain)
        if cached is not None:
            if cached.expires_at > self._clock():
                return cached.answer
            del self._cache[domain]
        task = self._inflight.get(domain)
        if task is None:
            task = asyncio.create_task(self._lookup(domain))
            self._inflight[domain] = task
            task.add_done_callback(lambda done: self._finished(domain, done))
        # Shielded: one caller's cancellation does not cancel the lookup the others wait for.
        return await asyncio.shield(task)

    def _finished(self, domain: str, task: asyncio.Task[MxAnswer]) -> None:
        if self._inflight.get(domain) is task:
            del self._inflight[domain]
        if not task.cancelled():
            task.exception()  # retrieved here, so a lookup nobody awaits any more logs nothing

    def _store(self, answer: MxAnswer, ttl: timedelta) -> MxAnswer:
        if ttl > timedelta(0):
            while len(self._cache) >= self._max_entries:
                del self._cache[next(iter(self._cache))]  # oldest insertion first
            self._cache[answer.domain] = _Cached(answer, answer.checked_at + ttl)
        return answer

    def _negative(self, domain: str, detail: str, response: dns.message.Message | None) -> MxAnswer:
        answer = MxAnswer(domain=domain, has_mx=False, checked_at=self._clock(), detail=detail)
        soa_ttl = _negative_ttl(response)
        ttl = self._negative_ttl if soa_ttl is None else min(timedelta(seconds=soa_ttl), self._negative_ttl)
        return self._store(answer, ttl)

    async def _lookup(self, domain: str) -> MxAnswer:
        try:
            name = dns.name.from_text(domain)
        except dns.exception.DNSException as exc:
            return MxAnswer(
                domain=domain, has_mx=False, checked_at=self._clock(), detail=f"invalid_domain: {exc}"
            )
        if not domain or len([label for label in name.labels if label]) < 2:
            return MxAnswer(domain=domain, has_mx=False, checked_at=self._clock(), detail="invalid_domain")
        self.queries += 1
        try:
            answer = await self._resolver.resolve(
                name, dns.rdatatype.MX, raise_on_no_answer=False, search=False
            )
        except dns.resolver.NXDOMAIN as exc:
            responses: dict[dns.name.Name, dns.message.Message] = exc.kwargs.get("responses") or {}
            response = next(iter(responses.values()), None)
            return self._negative(domain, "nxdomain: the domain does not exist", response)
        except dns.resolver.LifetimeTimeout as exc:
            raise MxLookupUnavailable(domain, f"timeout: {exc}") from exc
        except dns.resolver.NoNameservers as exc:  # SERVFAIL / REFUSED from every server
            raise MxLookupUnavailable(domain, f"no nameserver answered: {exc}") from exc
        except dns.exception.DNSException as exc:  # YXDOMAIN, malformed responses, ...
            raise MxLookupUnavailable(domain, f"{type(exc).__name__}: {exc}") from exc
        except OSError as exc:  # network unreachable and the like
            raise MxLookupUnavailable(domain, f"network: {exc}") from exc

        if answer.rrset is None:
            return self._negative(domain, "no_mx: the domain has no MX records", answer.response)
        records = sorted((r for r in answer.rrset if isinstance(r, MX)), key=lambda r: r.preference)
        exchanges = [r for r in records if r.exchange != dns.name.root]
        if not exchanges:
            return self._negative(domain, "null_mx: the domain accepts no mail (RFC 7505)", answer.response)
        detail = ", ".join(f"{r.preference} {r.exchange}" for r in exchanges[:5])
        positive = MxAnswer(domain=domain, has_mx=True, checked_at=self._clock(), detail=f"mx: {detail}")
        return self._store(positive, min(timedelta(seconds=answer.rrset.ttl), self._max_ttl))
