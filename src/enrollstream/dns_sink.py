"""A tiny authoritative DNS responder on 127.0.0.1 (UDP, a free port) for the demo's MX checks.

It answers from the records it was given and says NXDOMAIN for every other name, with an SOA in the
authority section so negative answers carry their TTL. It runs on the caller's asyncio loop and is
built on dnspython, which the MX verifier already uses, so it adds no dependency. The test suite's
`tests/servers/dns.py` (dnslib, UDP and TCP, SERVFAIL and dropped queries) does much more; the demo
needs only "this domain has MX" and "this one has none". Not a resolver for anything real.

    async with DnsSink() as dns:
        dns.add("example.org", "MX", "10 mx.example.org.")
        dns.add("nomx.example", "A", "192.0.2.7")   # exists, but no MX: mx_invalid
        settings.dns_nameservers = f"{dns.host}:{dns.port}"
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

log = logging.getLogger(__name__)

NEGATIVE_TTL = 60


def _norm(name: str) -> str:
    return name.rstrip(".").lower()


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, sink: DnsSink) -> None:
        self.sink = sink
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
        try:
            reply = self.sink.answer(data)
        except dns.exception.DNSException:
            log.debug("ignored an undecodable query from %s", addr)
            return
        if self.transport is not None:
            self.transport.sendto(reply, addr)


class DnsSink:
    host = "127.0.0.1"

    def __init__(self) -> None:
        self._records: dict[str, list[tuple[int, dns.rdata.Rdata, int]]] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.queries = 0

    def add(self, name: str, rtype: str, rdata: str, ttl: int = 300) -> None:
        """One record in zone-file syntax, e.g. add("example.org", "MX", "10 mx.example.org.")."""
        rdtype = dns.rdatatype.from_text(rtype)
        value = dns.rdata.from_text(dns.rdataclass.IN, rdtype, rdata)
        self._records.setdefault(_norm(name), []).append((rdtype, value, ttl))

    def answer(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        self.queries += 1
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.AA
        if not query.question:
            reply.set_rcode(dns.rcode.FORMERR)
            return reply.to_wire()
        question = query.question[0]
        name = _norm(question.name.to_text())
        records = self._records.get(name)
        matching = [(value, ttl) for rdtype, value, ttl in records or [] if rdtype == question.rdtype]
        if matching:
            rrset = dns.rrset.RRset(question.name, dns.rdataclass.IN, question.rdtype)
            for value, ttl in matching:
                rrset.add(value, ttl)
            reply.answer.append(rrset)
            return reply.to_wire()
        if records is None:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        zone = ".".join(name.split(".")[-2:])
        soa = dns.rrset.from_text(
            f"{zone}.",
            NEGATIVE_TTL,
            "IN",
            "SOA",
            f"ns.{zone}. admin.{zone}. 1 3600 600 86400 {NEGATIVE_TTL}",
        )
        reply.authority.append(soa)
        return reply.to_wire()

    async def start(self) -> DnsSink:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), local_addr=(self.host, 0))
        self._transport = transport
        self.port = int(transport.get_extra_info("sockname")[1])
        return self

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def __aenter__(self) -> DnsSink:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
