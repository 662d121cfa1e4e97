"""streams/limiter/own_loop.py: work handed to the coordinator's thread keeps its order, and comes back to the main loop."""
from __future__ import annotations

import asyncio
import threading

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from streams.limiter.own_loop import OwnLoop


@hsettings(max_examples=30, deadline=None)
@given(steps=st.lists(st.sampled_from(["hand", "run", "main"]), min_size=1, max_size=60))
def test_calls_handed_to_the_own_loop_run_there_in_order_and_answers_come_back_on_the_main_loop(steps):
    async def scenario():
        own = OwnLoop("test-limiter")
        own.start()
        main = asyncio.get_running_loop()
        seen: list[tuple[int, str]] = []  # (step, thread it ran on)
        back: list[int] = []
        try:
            for n, kind in enumerate(steps):
                if kind == "hand":
                    own.hand_over(lambda n=n: seen.append((n, threading.current_thread().name)))
                elif kind == "run":
                    async def there(n=n):
                        seen.append((n, threading.current_thread().name))
                        assert asyncio.get_running_loop() is own.loop
                        return n
                    assert await own.run(there) == n
                else:
                    async def round_trip(n=n):
                        async def on_main():
                            assert asyncio.get_running_loop() is main
                            return n
                        result = await own.ask_main(on_main)
                        own.on_main(back.append, result)
                        seen.append((n, threading.current_thread().name))
                    await own.run(round_trip)
            await own.run(asyncio.sleep, 0)  # everything handed over before this has run
            for _ in range(100):
                if len(back) == steps.count("main"):
                    break
                await asyncio.sleep(0.01)
        finally:
            own.stop()
        assert [n for n, _ in seen] == list(range(len(steps)))
        assert {name for _, name in seen} == {"test-limiter"}
        assert back == [n for n, kind in enumerate(steps) if kind == "main"]

    asyncio.run(scenario())


def test_without_a_thread_everything_runs_in_place():
    """Unit tests and tools drive the coordinator on their own loop: nothing is handed anywhere."""
    own = OwnLoop("never-started")
    seen = []

    async def scenario():
        own.hand_over(seen.append, 1)
        own.on_main(seen.append, 2)

        async def three():
            return 3

        seen.append(await own.run(three))
        seen.append(await own.ask_main(three))

    asyncio.run(scenario())
    assert seen == [1, 2, 3, 3]


def test_cancelling_the_caller_cancels_the_work_on_the_own_loop():
    async def scenario():
        own = OwnLoop("test-cancel")
        own.start()
        started, cancelled = threading.Event(), threading.Event()

        async def forever():
            started.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        try:
            task = asyncio.ensure_future(own.run(forever))
            while not started.is_set():
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(200):
                if cancelled.is_set():
                    break
                await asyncio.sleep(0.01)
            assert cancelled.is_set()
        finally:
            own.stop()
        assert not own.running

    asyncio.run(scenario())
