"""The coordinator's own thread and event loop, apart from the stage work's.

Why: on the worker that holds `blog.limiter`, every step of a grant (the ask
handed to the coordinator, its pass, the changelog write and the broker's ack,
the answer) waited for a turn of Faust's event loop, which also runs thousands
of provider calls. Under load a turn took hundreds of milliseconds, and a grant
about a second while the broker acked in milliseconds (docs/bench-tier.md,
session 14). A loop in a thread of its own waits for the interpreter lock
(handed over every `sys.getswitchinterval()`: 1 ms in a worker, settings.gil_switch_interval_seconds),
not for the stage work.

Written here because nothing fits as is: mode's `ServiceThread` /
`MethodQueue` (what Faust's consumer thread uses) run queued calls on two
workers, in no fixed order, and the coordinator must see its events in the
order they were read. This is asyncio's own `call_soon_threadsafe` and
`run_coroutine_threadsafe`, with one rule: without a started thread (unit
tests, tools) every call runs in place, on the caller's loop.

The coordinator's side is streams/limiter/coordinator.py: what runs where is
listed in its `run_limiter`.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Awaitable, Callable

log = logging.getLogger(__name__)


class OwnLoop:
    """A thread running an event loop, and the ways to hand work to it and back to the main loop."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self.main: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.loop is not None and self.loop.is_running()

    def start(self) -> None:
        """Start the thread; called on the main loop, which becomes the one `on_main` hands work to."""
        if self._thread is not None and self._thread.is_alive():
            return
        self.main = asyncio.get_running_loop()
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        loop = self.loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(started.set)
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        started.wait()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop (its tasks are left where they are: the process is ending) and wait for the thread."""
        loop, thread = self.loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        if thread is not threading.current_thread():
            thread.join(timeout)
        self.loop = self._thread = None

    def _here(self) -> bool:
        """Is the caller already on the own loop (or is there none: everything runs in place)?"""
        if not self.running:
            return True
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    async def run(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Await `fn(*args)` on the own loop; cancelling the caller cancels it there."""
        if self._here():
            return await fn(*args)
        assert self.loop is not None
        future = asyncio.run_coroutine_threadsafe(fn(*args), self.loop)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise

    def hand_over(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call `fn(*args)` on the own loop, soon; calls handed over keep their order."""
        if self._here():
            fn(*args)
            return
        assert self.loop is not None
        self.loop.call_soon_threadsafe(fn, *args)

    def on_main(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call `fn(*args)` on the main loop, soon (in order); in place when that is where we are."""
        main = self.main
        if main is None or not self.running or main.is_closed():
            fn(*args)
            return
        try:
            if asyncio.get_running_loop() is main:
                fn(*args)
                return
        except RuntimeError:
            pass
        main.call_soon_threadsafe(fn, *args)

    async def ask_main(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Await `fn(*args)` run on the main loop (what belongs to Faust: its table, its consumer)."""
        main = self.main
        if main is None or not self.running or asyncio.get_running_loop() is main:
            return await fn(*args)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(fn(*args), main))
