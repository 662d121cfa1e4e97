"""blogstream: blog requests → article (OpenAI) → cover (Replicate) → post (Wix).

`faust -A streams worker` imports this package; importing the stage modules
registers their agents. Follow a request by file name:
requests → generate.py → image.py → publish.py → results, with sink.py
recording every step and limiter.py deciding every provider call.
"""
from streams.app import app  # noqa: F401  (faust -A streams finds `app` here)
from streams import limiter, generate, image, publish, sink, web, monitoring, controls  # noqa: F401,E402
from streams import intake  # noqa: F401,E402  (the HTTP front door: POST /api/blogs ...)
