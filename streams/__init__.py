"""blogstream: blog requests → article (OpenAI) → cover (Replicate) → post (Wix).

`faust -A streams worker` imports this package; importing the stage modules
registers their agents. Follow a request by file name:
requests → generate.py → image.py → publish.py → results, with sink.py
recording every step and limiter.py deciding every provider call.
"""
from streams.settings import settings as _settings


def _use_uvloop() -> None:
    """Make uvloop the event loop of `faust -A streams worker` (docs/intake.md, "Event loop").

    It roughly halves the CPU the intake's HTTP and Kafka I/O cost. This runs when
    faust imports the app, before the worker creates its loop. `faust -L aio` (or
    F_LOOP) still decides when given, and BLOGSTREAM_EVENT_LOOP=asyncio turns it off.
    """
    import asyncio
    import os

    if _settings.event_loop != "uvloop" or os.environ.get("FAUST_LOOP") or os.environ.get("F_LOOP"):
        return
    try:
        asyncio.get_running_loop()
        return  # imported from code that already runs a loop: leave its choice alone
    except RuntimeError:
        pass
    try:
        import uvloop
    except ImportError:
        return
    if not isinstance(asyncio.get_event_loop_policy(), uvloop.EventLoopPolicy):
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


_use_uvloop()

from streams.app import app  # noqa: F401,E402  (faust -A streams finds `app` here)
from streams.limiter import coordinator  # noqa: F401,E402
from streams.pipeline import generate, image, publish, sink  # noqa: F401,E402
from streams import monitoring  # noqa: F401,E402
from streams.api import ops, sites, intake  # noqa: F401,E402
