"""blogstream: blog requests → article (OpenAI) → cover (Replicate) → post (Wix).

Importing this package loads nothing else. `faust -A streams worker` asks it
for `app`; that assembles the whole worker (streams/worker.py). Follow a
request by folder: contract/ (the records), api/ (how it arrives), pipeline/
(generate.py → image.py → publish.py, sink.py records every step), limiter/
(who may call a provider when), and store/ beside this package (Postgres).
"""
from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from streams.worker import app  # the worker: the app with every agent and route

        globals()["app"] = app  # `streams.app` is now the App (as faust -A expects), not the module
        return app
    raise AttributeError(f"module 'streams' has no attribute {name!r}")
