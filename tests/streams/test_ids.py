"""streams/ids.py: hot-path ids are random hex, unique, and differ between a forked worker and its parent."""
from __future__ import annotations

import os
import re

from hypothesis import given, strategies as st

from streams.ids import random_hex


@given(st.integers(min_value=1, max_value=256))
def test_as_many_hex_digits_as_the_bits_need(bits: int) -> None:
    value = random_hex(bits)
    assert re.fullmatch(r"[0-9a-f]+", value)
    assert len(value) == (bits + 3) // 4
    assert int(value, 16) < 2 ** bits


def test_the_default_is_as_long_as_a_uuid_hex_and_ids_do_not_repeat() -> None:
    ids = [random_hex() for _ in range(20_000)]
    assert {len(i) for i in ids} == {32}
    assert len(set(ids)) == len(ids)


def test_a_forked_child_draws_other_ids_than_its_parent() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids go back through the pipe
        try:
            os.write(write, " ".join(random_hex() for _ in range(5)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {random_hex() for _ in range(5)}
    assert len(child) == 5 and not child & parent
