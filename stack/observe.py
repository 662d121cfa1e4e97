"""Prometheus for the local stack, without Docker: Debian's `prometheus` binary (`make prometheus`).

    python -m stack.observe start [--port 9090] [--targets HOST:PORT,...] [--scrape-interval 15s]
    python -m stack.observe targets HOST:PORT ...     # what to scrape; Prometheus re-reads it, no restart
    python -m stack.observe status | stop

`make observe` runs `start`. The config is ops/prometheus/prometheus.yml (the file a container
setup mounts as it is) copied to .stack/prometheus/prometheus.yml with its rule files made absolute
and its file_sd targets read from .stack/prometheus/targets/*.json. `start` writes
targets/local.json from --targets, else BLOGSTREAM_METRICS_TARGETS (comma-separated host:port of the
workers' web servers), else 127.0.0.1:6066 (`make worker`); anything else (a demo, a harness run)
may add its own file there with `write_targets(..., name=...)`. Data lives in .stack/prometheus/data.
Prometheus listens on 127.0.0.1 only (PROMETHEUS_PORT, default 9090).

Tests start a private one with `Prometheus.start(directory=tmp, port=free_port(), ...)` and stop it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import httpx
import yaml

from stack.stack import STACK, pid_alive, port_busy, read_pid, spawn, stop_pid

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "ops" / "prometheus" / "prometheus.yml"
LOCAL_DIR = STACK / "prometheus"
DEFAULT_PORT = int(os.environ.get("PROMETHEUS_PORT", "9090"))
TARGETS_ENV = "BLOGSTREAM_METRICS_TARGETS"
DEFAULT_TARGETS = ("127.0.0.1:6066",)
MARKER = "prometheus"  # in the command line of the process a pid file names


class ObserveError(RuntimeError):
    pass


def binary(name: str = "prometheus") -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        raise ObserveError(f"{name} not found: run `make prometheus` (as root: apt-get install -y prometheus)")
    return path


def targets_from_env() -> list[str]:
    raw = os.environ.get(TARGETS_ENV, "")
    return [t.strip() for t in raw.split(",") if t.strip()] or list(DEFAULT_TARGETS)


def write_targets(targets: Iterable[str], *, directory: Path = LOCAL_DIR, name: str = "local",
                  labels: dict[str, str] | None = None) -> Path:
    """Write `<directory>/targets/<name>.json` (file_sd); Prometheus picks a change up without a restart."""
    folder = directory / "targets"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([{"targets": list(targets), "labels": dict(labels or {})}], indent=2) + "\n")
    tmp.replace(path)  # atomic: Prometheus never reads half a file
    return path


def render_config(directory: Path, *, scrape_interval: str | None = None,
                  evaluation_interval: str | None = None, template: Path = TEMPLATE) -> dict[str, Any]:
    """The template with its rule files made absolute and its file_sd files moved under `directory`."""
    doc = yaml.safe_load(template.read_text())
    doc["rule_files"] = [str((template.parent / f).resolve()) for f in doc.get("rule_files") or []]
    for job in doc.get("scrape_configs") or []:
        for sd in job.get("file_sd_configs") or []:
            sd["files"] = [str(directory / f) for f in sd["files"]]
    glob = doc.setdefault("global", {})
    if scrape_interval:
        glob["scrape_interval"] = scrape_interval
    if evaluation_interval or scrape_interval:
        glob["evaluation_interval"] = evaluation_interval or scrape_interval
    return doc


@dataclass
class Prometheus:
    """One Prometheus process serving on 127.0.0.1:`port`, its files in `directory`."""

    directory: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pidfile(self) -> Path:
        return self.directory / "prometheus.pid"

    @property
    def log(self) -> Path:
        return self.directory / "prometheus.log"

    @property
    def config(self) -> Path:
        return self.directory / "prometheus.yml"

    @classmethod
    def local(cls) -> "Prometheus":
        """The one `make observe` started (its port is kept next to its pid)."""
        port = read_pid(LOCAL_DIR / "prometheus.port")
        return cls(LOCAL_DIR.resolve(), port or DEFAULT_PORT)

    @property
    def pid(self) -> int | None:
        pid = read_pid(self.pidfile)
        return pid if pid_alive(pid, MARKER) else None

    @classmethod
    def start(cls, *, directory: Path = LOCAL_DIR, port: int = DEFAULT_PORT, targets: Iterable[str] | None = None,
              scrape_interval: str | None = None, evaluation_interval: str | None = None,
              timeout: float = 60.0) -> "Prometheus":
        """Write the config and targets, start Prometheus unless it runs already (then reload it), wait until ready."""
        prom = cls(directory.resolve(), port)
        prom.directory.mkdir(parents=True, exist_ok=True)
        write_targets(targets_from_env() if targets is None else targets, directory=prom.directory)
        doc = render_config(prom.directory, scrape_interval=scrape_interval, evaluation_interval=evaluation_interval)
        prom.config.write_text(yaml.safe_dump(doc, sort_keys=False))
        if prom.pid:
            running_on = read_pid(prom.directory / "prometheus.port")
            if running_on != port:
                raise ObserveError(f"prometheus runs already on port {running_on}: stop it first")
            httpx.post(f"{prom.url}/-/reload", timeout=10).raise_for_status()
        else:
            if port_busy(port):
                raise ObserveError(f"port {port} is taken by something else: set PROMETHEUS_PORT")
            spawn([
                binary(), f"--config.file={prom.config}", f"--storage.tsdb.path={prom.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=7d",
            ], log=prom.log, pidfile=prom.pidfile, cwd=prom.directory)
            (prom.directory / "prometheus.port").write_text(f"{port}\n")
        prom.wait_ready(timeout)
        return prom

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.pid is None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else "(no log)"
                raise ObserveError(f"prometheus did not become ready on {self.url}:\n{tail}")
            time.sleep(0.2)

    def stop(self) -> None:
        pid = self.pid
        if pid:
            stop_pid("prometheus", pid, MARKER, timeout=30)
        self.pidfile.unlink(missing_ok=True)

    def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/<path>; the `data` of a successful answer, else ObserveError with Prometheus' error."""
        r = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = r.json()
        if body.get("status") != "success":
            raise ObserveError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def query_range(self, expr: str, start: float, end: float, step: str = "1s") -> list[dict[str, Any]]:
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.observe", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start (or reload) the local Prometheus")
    start.add_argument("--port", type=int, default=DEFAULT_PORT)
    start.add_argument("--targets", help=f"comma-separated host:port (default: ${TARGETS_ENV} or 127.0.0.1:6066)")
    start.add_argument("--scrape-interval", help="default: the template's (15s)")
    targets = sub.add_parser("targets", help="set what the local Prometheus scrapes (targets/local.json)")
    targets.add_argument("hostports", nargs="+")
    sub.add_parser("status")
    sub.add_parser("stop")
    args = parser.parse_args(argv)
    local = Prometheus.local()
    try:
        if args.command == "start":
            wanted = args.targets.split(",") if args.targets else None
            prom = Prometheus.start(port=args.port, targets=wanted, scrape_interval=args.scrape_interval)
            print(f"[observe] prometheus on {prom.url} (pid {prom.pid}), scraping "
                  f"{', '.join(wanted or targets_from_env())}; config {prom.config}, data {prom.directory / 'data'}")
        elif args.command == "targets":
            print(f"[observe] wrote {write_targets(args.hostports)}")
        elif args.command == "status":
            if not local.pid:
                print("[observe] prometheus is not running")
                return 1
            up = local.query('up{job="blogstream"}')
            print(f"[observe] prometheus on {local.url} (pid {local.pid})")
            for series in up:
                print(f"  {series['metric'].get('instance')}: up={series['value'][1]}")
            if not up:
                print("  no worker scraped yet (the first scrape comes within a scrape interval of a target change)")
        else:
            local.stop()
            print("[observe] prometheus stopped")
    except ObserveError as exc:
        print(f"[observe] {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
