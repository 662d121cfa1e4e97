"""Random identifiers for the hot path, made without giving up the interpreter lock.

`uuid.uuid4()` reads the kernel's random source (`os.urandom`), which lets go of the
interpreter lock for the system call; in a worker whose limiter runs in a thread of its
own (streams/limiter/own_loop.py) each such call can hand the lock over and leave the
event loop waiting for it back. A permit's ids (ask, correlation) and an effect's owner
only have to be unique, not secret: they come from `random`, which Python seeds from the
kernel at start and again in every forked child.
"""
from __future__ import annotations

import random

__all__ = ["random_hex"]

_getrandbits = random.getrandbits


def random_hex(bits: int = 128) -> str:
    """`bits` random bits as lowercase hex (32 characters for 128), like `uuid4().hex` but not a UUID."""
    return format(_getrandbits(bits), f"0{(bits + 3) // 4}x")
