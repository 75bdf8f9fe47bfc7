"""A real DNS server on 127.0.0.1 (UDP and TCP on one free port), built with dnslib.

Authoritative for whatever the test puts in it; every other name is NXDOMAIN. Per name it can also
answer SERVFAIL or never answer at all. It counts the queries it receives.

    with LocalDnsServer() as dns:
        dns.add("example.test", "MX", "10 mx1.example.test.", ttl=300)
        dns.add("a-only.test", "A", "192.0.2.1")
        dns.servfail("broken.test")
        dns.drop("silent.test")
        verifier = MxVerifier(clock, [Nameserver(dns.host, dns.port)])
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections import Counter
from types import TracebackType
from typing import Any

from dnslib import QTYPE, RCODE, RR, DNSError
from dnslib.server import BaseResolver, DNSHandler, DNSLogger

SOA_TTL = 60  # the negative-caching TTL of every zone here (RFC 2308: min of SOA TTL and MINIMUM)


def _norm(name: str) -> str:
    return name.rstrip(".").lower()


class _ZoneResolver(BaseResolver):  # type: ignore[misc]
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: dict[str, list[RR]] = {}
        self.behaviour: dict[str, str] = {}
        self.queries: Counter[tuple[str, str]] = Counter()

    def resolve(self, request: Any, handler: Any) -> Any:
        qname = _norm(str(request.q.qname))
        qtype = QTYPE[request.q.qtype]
        with self.lock:
            self.queries[(qname, qtype)] += 1
            behaviour = self.behaviour.get(qname)
            records = list(self.records.get(qname, []))
        if behaviour == "drop":
            raise DNSError("dropped on purpose: this name never answers")
        reply = request.reply()
        if behaviour == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        if qname not in self.records:
            reply.header.rcode = RCODE.NXDOMAIN
        matching = [rr for rr in records if QTYPE[rr.rtype] == qtype]
        for rr in matching:
            reply.add_answer(rr)
        if not matching:  # NXDOMAIN or NODATA: an SOA for negative caching
            zone = ".".join(qname.split(".")[-2:])
            reply.add_auth(
                *RR.fromZone(f"{zone}. {SOA_TTL} IN SOA ns.{zone}. admin.{zone}. 1 3600 600 86400 {SOA_TTL}")
            )
        return reply


class LocalDnsServer:
    host = "127.0.0.1"

    def __init__(self) -> None:
        self._resolver = _ZoneResolver()
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []
        self.port = 0

    # --- the zone ---------------------------------------------------------------------------------

    def add(self, name: str, rtype: str, rdata: str, ttl: int = 300) -> None:
        """One record in zone-file syntax, e.g. add("x.test", "MX", "10 mx.x.test.")."""
        rrs = RR.fromZone(f"{_norm(name)}. {ttl} IN {rtype} {rdata}")
        with self._resolver.lock:
            self._resolver.records.setdefault(_norm(name), []).extend(rrs)

    def servfail(self, name: str) -> None:
        with self._resolver.lock:
            self._resolver.behaviour[_norm(name)] = "servfail"

    def drop(self, name: str) -> None:
        """Queries for this name are read and never answered."""
        with self._resolver.lock:
            self._resolver.behaviour[_norm(name)] = "drop"

    def query_count(self, name: str, rtype: str = "MX") -> int:
        with self._resolver.lock:
            return self._resolver.queries[(_norm(name), rtype)]

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> LocalDnsServer:
        for _ in range(20):  # UDP on a free port, then TCP on the same one (rarely taken: retry)
            udp = self._server(socketserver.ThreadingUDPServer, 0)
            try:
                tcp = self._server(socketserver.ThreadingTCPServer, udp.server_address[1])
            except OSError:
                udp.server_close()
                continue
            break
        else:
            raise RuntimeError("no free port for UDP and TCP at once")
        self.port = udp.server_address[1]
        for server in (udp, tcp):
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        return self

    def _server(self, cls: type[Any], port: int) -> Any:
        server = cls((self.host, port), DNSHandler, bind_and_activate=False)
        server.allow_reuse_address = False
        server.daemon_threads = True
        if cls is socketserver.ThreadingTCPServer:
            server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        try:
            server.server_bind()
            server.server_activate()
        except OSError:
            server.server_close()
            raise
        server.resolver = self._resolver
        server.logger = DNSLogger(log="-request,-reply,-truncated,-error", prefix=False)
        return server

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> LocalDnsServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
