"""streams/container_name.py: a compose replica's name from Docker's DNS, for BLOGSTREAM_WORKER_ID.

A DNS server on 127.0.0.1 stands in for Docker's (127.0.0.11): it answers a reverse (PTR) query for
a container's address with `<container name>.<network>`, as moby's resolver does (libnetwork,
Network.ResolveIP: `elem.name + "." + nwName`).
"""
from __future__ import annotations

import socket
import struct
import threading
from contextlib import contextmanager
from typing import Iterator

from hypothesis import given
from hypothesis import strategies as st

from streams import container_name
from streams.container_name import PTR, answer, ptr_name, query


def _name(text: str) -> bytes:
    return b"".join(bytes([len(part)]) + part.encode() for part in text.split(".")) + b"\x00"


def reply(request: bytes, names: dict[str, str], *, ident: int | None = None) -> bytes:
    """Docker's answer to a PTR query: the question again, and the name behind a pointer to it (0xC00C)."""
    (asked_id,) = struct.unpack("!H", request[:2])
    question_end = request.index(b"\x00", 12) + 5
    asked = container_name._read_name(request, 12)[0]
    found = names.get(asked)
    flags = 0x8180 if found else 0x8183  # NXDOMAIN when the address is not a container's
    header = struct.pack("!HHHHHH", asked_id if ident is None else ident, flags, 1, 1 if found else 0, 0, 0)
    out = header + request[12:question_end]
    if found:
        data = _name(found)
        out += b"\xc0\x0c" + struct.pack("!HHIH", PTR, 1, 600, len(data)) + data
    return out


@contextmanager
def dns_server(names: dict[str, str], *, stale_first: bool = False, silent: bool = False) -> Iterator[tuple[int, list]]:
    """A UDP DNS server on 127.0.0.1; yields (port, the names it was asked for)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    asked: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        sock.settimeout(0.05)
        while not stop.is_set():
            try:
                request, peer = sock.recvfrom(512)
            except socket.timeout:
                continue
            asked.append(container_name._read_name(request, 12)[0])
            if silent:
                continue
            if stale_first:  # a late reply to some earlier query comes first
                sock.sendto(reply(request, names, ident=(struct.unpack("!H", request[:2])[0] + 1) % 0x10000), peer)
            sock.sendto(reply(request, names), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], asked
    finally:
        stop.set()
        thread.join()
        sock.close()


def test_a_replica_gets_its_compose_container_name():
    names = {"5.0.18.172.in-addr.arpa": "blogstream-worker-2.blogstream_default"}
    with dns_server(names) as (port, asked):
        name = container_name.container_name(server="127.0.0.1", address="172.18.0.5", port=port)
    assert name == "blogstream-worker-2"
    assert asked == ["5.0.18.172.in-addr.arpa"]


def test_a_reply_to_another_query_is_skipped():
    names = {"6.0.18.172.in-addr.arpa": "blogstream-worker-3.blogstream_default"}
    with dns_server(names, stale_first=True) as (port, _):
        assert ptr_name("172.18.0.6", "127.0.0.1", port=port) == "blogstream-worker-3.blogstream_default"


def test_no_name_means_the_host_name_is_used():
    """NXDOMAIN, a server that never answers, or none listening: "" (the worker then takes its host name)."""
    with dns_server({}) as (port, asked):
        assert container_name.container_name(server="127.0.0.1", address="172.18.0.7", port=port) == ""
    assert asked == ["7.0.18.172.in-addr.arpa"]
    with dns_server({}, silent=True) as (port, asked):
        assert ptr_name("172.18.0.7", "127.0.0.1", port=port, timeout=0.2, tries=2) is None
    assert len(asked) == 2
    free = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    assert ptr_name("172.18.0.7", "127.0.0.1", port=port, timeout=5.0, tries=1) is None  # refused: no wait


def test_a_name_the_settings_would_refuse_is_not_used(monkeypatch):
    monkeypatch.setattr(container_name, "ptr_name", lambda *a, **k: "bad name!.net")
    assert container_name.container_name(server="127.0.0.1", address="172.18.0.5") == ""
    monkeypatch.setattr(container_name, "ptr_name", lambda *a, **k: "proj_worker_1.proj_default")  # Compose v1
    assert container_name.container_name(server="127.0.0.1", address="172.18.0.5") == "proj_worker_1"


def test_the_name_server_is_the_first_ipv4_one_of_resolv_conf(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("# Docker\nsearch example\nnameserver ::1\nnameserver 127.0.0.11\nnameserver 10.0.0.1\n")
    assert container_name.nameserver(conf) == "127.0.0.11"
    assert container_name.nameserver(tmp_path / "missing") is None


def test_the_query_is_a_ptr_query_for_the_reversed_address():
    data = query("10.1.2.3", 0xBEEF)
    assert data[:4] == b"\xbe\xef\x01\x00"
    assert container_name._read_name(data, 12) == ("3.2.1.10.in-addr.arpa", 12 + len(_name("3.2.1.10.in-addr.arpa")))
    assert data.endswith(struct.pack("!HH", PTR, 1))


@given(st.binary(max_size=300), st.integers(0, 0xFFFF))
def test_any_bytes_as_a_reply_give_a_name_or_none(data, ident):
    assert answer(data, ident) is None or isinstance(answer(data, ident), str)


def test_a_pointer_loop_is_no_name():
    looping = struct.pack("!HHHHHH", 1, 0x8180, 0, 1, 0, 0) + b"\xc0\x0c"
    assert answer(looping, 1) == ""  # ours, without a name: not waited on again
    assert answer(looping, 2) is None  # another query's
