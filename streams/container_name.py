"""The name Docker gave this container, for BLOGSTREAM_WORKER_ID: `python -m streams.container_name`.

A worker's name must stay the same across its restarts and differ from every other live worker's
(streams/app.py, `worker_identity`): it names the worker's reply topic and is its Kafka group
instance id. `docker compose up --scale worker=3` makes containers named `<project>-worker-1`,
`-2`, `-3`, but does not tell a container its name (docker/compose#1503); its host name is its id,
a new one whenever compose makes the container again (`up --build`, a changed setting). Named
after the host, every such deploy left its workers' reply topics behind and their static
memberships to time out.

Docker's DNS server (the `nameserver` of /etc/resolv.conf on a compose network) answers a reverse
(PTR) query for a container's address with `<container name>.<network>`. The C library's lookup
(`socket.gethostbyaddr`) reads /etc/hosts first, where Docker maps the address to the id, so the
query is sent to the DNS server itself here. Prints nothing (and says why on stderr) when there
is no such answer: the worker then takes its host name, as outside a container.
"""
from __future__ import annotations

import re
import secrets
import socket
import struct
import sys
from pathlib import Path

PTR, IN = 12, 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")  # a compose container name (BLOGSTREAM_WORKER_ID accepts it)


def reverse_name(address: str) -> str:
    """172.18.0.5 -> 5.0.18.172.in-addr.arpa"""
    return ".".join(str(byte) for byte in reversed(socket.inet_aton(address))) + ".in-addr.arpa"


def query(address: str, ident: int) -> bytes:
    """A DNS query (recursion desired) for the PTR record of an IPv4 address."""
    labels = b"".join(bytes([len(part)]) + part.encode() for part in reverse_name(address).split("."))
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + labels + b"\x00" + struct.pack("!HH", PTR, IN)


def _read_name(message: bytes, at: int) -> tuple[str, int]:
    """The (possibly compressed) domain name at `at`, and where the data after it starts."""
    labels: list[str] = []
    end, jumps = None, 0
    while True:
        length = message[at]
        if length & 0xC0 == 0xC0:  # a pointer to a name earlier in the message
            jumps += 1
            if jumps > 16:
                raise ValueError("a loop of name pointers")
            end = at + 2 if end is None else end
            at = ((length & 0x3F) << 8) | message[at + 1]
            continue
        if length == 0:
            return ".".join(labels), (at + 1 if end is None else end)
        labels.append(message[at + 1:at + 1 + length].decode("ascii", "replace"))
        at += 1 + length


def answer(message: bytes, ident: int) -> str | None:
    """The first PTR name of a reply to query `ident`; "" when the reply has none (NXDOMAIN, an error, garbage);
    None when the message is not a reply to that query (a late one to an earlier try)."""
    try:
        got, flags, questions, answers = struct.unpack("!HHHH", message[:8])
    except struct.error:
        return None
    if got != ident or not flags & 0x8000:
        return None
    if flags & 0x000F:  # an error code: NXDOMAIN (not a container's address), SERVFAIL ...
        return ""
    try:
        at = 12
        for _ in range(questions):
            at = _read_name(message, at)[1] + 4
        for _ in range(answers):
            at = _read_name(message, at)[1]
            kind, _class, _ttl, size = struct.unpack("!HHIH", message[at:at + 10])
            at += 10
            if kind == PTR:
                return _read_name(message, at)[0]
            at += size
    except (IndexError, struct.error, ValueError):
        return ""
    return ""


def ptr_name(address: str, server: str, *, port: int = 53, timeout: float = 2.0, tries: int = 3) -> str | None:
    """What the DNS server at `server` says `address` is called, or None."""
    for _ in range(tries):
        ident = secrets.randbelow(0x10000)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect((server, port))
                sock.send(query(address, ident))
                while True:  # a late reply to an earlier try is skipped
                    name = answer(sock.recv(4096), ident)
                    if name is not None:
                        return name or None
            except socket.timeout:
                continue
            except OSError:  # nothing listens there (refused), no route
                return None
    return None


def nameserver(resolv_conf: Path = Path("/etc/resolv.conf")) -> str | None:
    """The first IPv4 nameserver of resolv.conf (Docker's own, 127.0.0.11, on a compose network)."""
    try:
        lines = resolv_conf.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver" and re.fullmatch(r"\d+(\.\d+){3}", parts[1]):
            return parts[1]
    return None


def container_name(server: str | None = None, address: str | None = None, **kwargs: float) -> str:
    """This container's name (`blogstream-worker-2`), or "" when DNS does not say it."""
    server = server or nameserver()
    if server is None:
        return ""
    try:
        address = address or socket.gethostbyname(socket.gethostname())
    except OSError:
        return ""
    full = ptr_name(address, server, **kwargs)  # type: ignore[arg-type]
    name = (full or "").split(".", 1)[0]
    return name if _NAME.match(name) else ""


def main() -> int:
    name = container_name()
    if name:
        print(name)
    else:
        print(f"blogstream: warning: Docker's DNS did not name this container; the worker is named after its host "
              f"{socket.gethostname()!r}, which changes when the container is made again", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
