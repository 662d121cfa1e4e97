"""python -m simulators [--port N]  (binds 127.0.0.1 unless SIM_HOST says otherwise, e.g. in Docker)."""

from __future__ import annotations

import argparse
import json
import logging
import os

from aiohttp import web

from .app import OWN_PROCESS_KEY, create_app
from .config import config_from_env, merge_config


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m simulators", description="OpenAI / Replicate / Wix simulators")
    ap.add_argument("--port", type=int, default=int(os.environ.get("SIM_PORT", "18080")))
    ap.add_argument("--config", help="JSON file merged over defaults + env (same shape as POST /_sim/config)")
    ap.add_argument("--log-level", default=os.environ.get("SIM_LOG_LEVEL", "INFO"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    cfg = config_from_env()
    if args.config:
        with open(args.config) as fh:
            cfg = merge_config(cfg, json.load(fh))
    app = create_app(cfg)
    app[OWN_PROCESS_KEY] = True
    web.run_app(app, host=os.environ.get("SIM_HOST", "127.0.0.1"), port=args.port, access_log=None,
                print=lambda *_: print(f"simulators listening on http://127.0.0.1:{args.port} "
                                       f"(openai: /openai/v1, replicate: /replicate, wix: /wix, control: /_sim)",
                                       flush=True))


if __name__ == "__main__":
    main()
