"""streams/container_name.py: a compose replica's name from Docker's DNS, for BLOGSTREAM_WORKER_ID.

A DNS server on 127.0.0.1 stands in for Docker's (127.0.0.11): it answers a reverse (PTR) query for
a container's address with `<container name>.<network>`, as moby's resolver does (libnetwork,
Network.ResolveIP: `elem.name + "." + nwName`).
"""
from __future__ import annotations

import socket
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import dns.message
import dns.rcode
import dns.resolver
import dns.rrset

from streams.container_name import container_name

Answer = Callable[[dns.message.Message], bytes | None]


def docker(names: dict[str, str]) -> Answer:
    """Docker's answer: the PTR name of a container's address, NXDOMAIN for any other address."""
    def answer(query: dns.message.Message) -> bytes:
        response = dns.message.make_response(query)
        asked = query.question[0].name.to_text()
        if asked in names:
            response.answer.append(dns.rrset.from_text(asked, 600, "IN", "PTR", names[asked]))
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()
    return answer


@contextmanager
def dns_server(answer: Answer) -> Iterator[tuple[dns.resolver.Resolver, list[str]]]:
    """A UDP DNS server on 127.0.0.1; yields a resolver asking it, and the names it was asked for."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    asked: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(512)
            except socket.timeout:
                continue
            query = dns.message.from_wire(data)
            asked.append(query.question[0].name.to_text())
            reply = answer(query)
            if reply is not None:
                sock.sendto(reply, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = ["127.0.0.1"], sock.getsockname()[1]
    try:
        yield resolver, asked
    finally:
        stop.set()
        thread.join()
        sock.close()


def test_a_replica_gets_its_compose_container_name():
    with dns_server(docker({"5.0.18.172.in-addr.arpa.": "blogstream-worker-2.blogstream_default."})) as (resolver, asked):
        assert container_name(resolver, "172.18.0.5") == "blogstream-worker-2"
    assert asked == ["5.0.18.172.in-addr.arpa."]


def test_a_compose_v1_name_is_taken_too():
    with dns_server(docker({"5.0.18.172.in-addr.arpa.": "proj_worker_1.proj_default."})) as (resolver, _):
        assert container_name(resolver, "172.18.0.5") == "proj_worker_1"


def test_no_name_means_the_host_name_is_used():
    """NXDOMAIN, a server that never answers or answers garbage: "" (the worker then takes its host name)."""
    with dns_server(docker({})) as (resolver, asked):
        assert container_name(resolver, "172.18.0.7") == ""
    assert asked == ["7.0.18.172.in-addr.arpa."]
    with dns_server(lambda query: None) as (resolver, asked):
        assert container_name(resolver, "172.18.0.7", lifetime=0.3) == ""
    assert asked
    with dns_server(lambda query: b"\x00" * 5) as (resolver, _):
        assert container_name(resolver, "172.18.0.7", lifetime=0.3) == ""


def test_a_name_the_settings_would_refuse_is_not_used():
    with dns_server(docker({"5.0.18.172.in-addr.arpa.": "bad\\ name!.net."})) as (resolver, _):
        assert container_name(resolver, "172.18.0.5") == ""


def test_no_resolver_configuration_or_address_is_no_name(monkeypatch):
    assert container_name(dns.resolver.Resolver(configure=False), "not an address") == ""

    def no_configuration() -> dns.resolver.Resolver:
        raise dns.resolver.NoResolverConfiguration("no nameservers")
    monkeypatch.setattr(dns.resolver, "Resolver", no_configuration)
    assert container_name(address="172.18.0.5") == ""
