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
query goes to the DNS server itself, with dnspython. Prints nothing (and says why on stderr) when
there is no such answer: the worker then takes its host name, as outside a container.
"""
from __future__ import annotations

import re
import socket
import sys

import dns.exception
import dns.resolver
import dns.reversename

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")  # a compose container name (BLOGSTREAM_WORKER_ID accepts it)


def container_name(resolver: dns.resolver.Resolver | None = None, address: str | None = None,
                   *, lifetime: float = 6.0) -> str:
    """This container's name (`blogstream-worker-2`), or "" when DNS does not say it.

    `resolver`: the servers of /etc/resolv.conf unless given; `lifetime`: seconds for the whole
    lookup, its retries included.
    """
    try:
        resolver = resolver or dns.resolver.Resolver()  # reads /etc/resolv.conf, never /etc/hosts
        address = address or socket.gethostbyname(socket.gethostname())
        answer = resolver.resolve(dns.reversename.from_address(address), "PTR", lifetime=lifetime)
    except (dns.exception.DNSException, OSError, ValueError):  # no answer, no server, no address
        return ""
    name = str(answer[0].target).split(".", 1)[0]  # type: ignore[attr-defined]
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
