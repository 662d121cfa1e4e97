"""All blogstream settings in one typed place, read from the environment.

Every default runs the demo on the local stack (`make stack-up`): Kafka on 19092,
Postgres on 55432, provider simulators on 18080. Set the provider variables
(OPENAI_API_KEY, REPLICATE_API_TOKEN, WIX_BASE_URL ...) to talk to the real services.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

# The local stack's ports (stack/stack.sh reads the same variables).
KAFKA_PORT = os.environ.get("KAFKA_PORT", "19092")
PG_PORT = os.environ.get("PG_PORT", "55432")
SIMULATORS = f"http://127.0.0.1:{os.environ.get('SIM_PORT', '18080')}"


def _env(name: str, default: Any, cast: type) -> Any:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if cast is bool:
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    try:
        return cast(raw)
    except ValueError as exc:  # a bad setting should say which one
        raise ValueError(f"setting {name}={raw!r} is not a valid {cast.__name__}") from exc


@dataclass(frozen=True)
class Settings:
    # --- Kafka ---------------------------------------------------------------
    kafka_broker: str = f"kafka://127.0.0.1:{KAFKA_PORT}"
    topic_partitions: int = 12
    topic_prefix: str = ""  # tests and side-by-side deployments use their own topics
    app_id: str = "blogstream"
    web_port: int = 6066
    heartbeat_seconds: float = 30.0
    lag_seconds: float = 15.0  # how often consumer lag is exported
    data_dir: str = ".faust"  # Faust's local files (git-ignored)
    event_loop: str = "uvloop"  # the worker's asyncio loop: "uvloop" (if installed) or "asyncio"

    # --- Postgres --------------------------------------------------------------
    database_url: str = f"postgresql://blogstream:blogstream@127.0.0.1:{PG_PORT}/blogstream"

    # --- Providers (defaults point at the simulators) --------------------------
    openai_base_url: str = f"{SIMULATORS}/openai/v1"
    openai_api_key: str = "sk-simulator"
    openai_model: str = "gpt-4o-mini"
    openai_max_tokens: int = 1200  # tight: OpenAI charges max_tokens against TPM at admission
    openai_timeout: float = 120.0
    replicate_base_url: str = f"{SIMULATORS}/replicate"
    replicate_api_token: str = "r8_simulator"
    replicate_model: str = "black-forest-labs/flux-schnell"
    replicate_timeout: float = 120.0
    wix_base_url: str = f"{SIMULATORS}/wix"
    wix_timeout: float = 60.0

    # --- Global budgets (per window, across every worker) ---------------------
    budget_window_seconds: float = 60.0
    openai_rpm: int = 450
    openai_tpm: int = 450_000
    replicate_rpm: int = 450
    wix_site_rpm: int = 200
    # A permit must be used within this many seconds of its grant; the limiter
    # counts each permit over window + grace so late arrivals never overlap.
    permit_grace_seconds: float = 0.5
    # The coordinator grants up to this long before a budget's room opens, for
    # that moment: the answer's trip over Kafka overlaps the wait for room.
    permit_lookahead_seconds: float = 1.0
    # While a request budget is less than `permit_lease_below` used, a worker may
    # take several permits at once (a lease), to be used within this many
    # seconds without a round trip to the coordinator each (0: no leases).
    permit_lease_seconds: float = 2.0
    permit_lease_below: float = 0.5
    # Spread request grants evenly over the window: real providers often
    # enforce sub-minute slices, so a burst at a window's start can get 429s.
    budget_pacing: bool = True

    # --- Work and fairness -----------------------------------------------------
    site_max_in_flight: int = 20  # the seed's MAX_PER_INSTANCE, now across all workers
    site_max_queued: int = 1000
    queue_size_limit: int = 10_000  # the seed's QUEUE_SIZE_LIMIT
    stage_concurrency: int = 200  # provider calls in flight per stage per worker
    read_ahead: int = 10_000  # events buffered per stage per worker (bounded memory)
    max_attempts: int = 6
    retry_base_seconds: float = 1.0

    # --- Intake (HTTP front door, streams/intake.py; docs/intake.md) ---------------
    intake_token: str = ""  # non-empty: every /api/blogs call needs "Authorization: Bearer <token>"
    intake_max_batch: int = 1000  # requests per POST /api/blogs batch
    intake_max_body_bytes: int = 2_000_000  # larger bodies get 413 before they are read
    intake_pending_refresh_seconds: float = 1.0  # the pending figure is re-read at most this often
    intake_retry_after_seconds: int = 2  # Retry-After on 429/503
    intake_produce_timeout: float = 15.0  # broker ack wait before answering 503

    # --- Kafka consumer (Faust's own defaults suit neither point) ------------------
    # A killed worker's partitions (and the limiter) move after this long, not 60 s.
    kafka_session_timeout_seconds: float = 10.0
    kafka_heartbeat_seconds: float = 1.0
    # Records per poll: a big batch of stage events would keep the limiter's
    # asks and answers waiting behind it (halved permit latency p99 in the benchmark).
    kafka_max_poll_records: int = 50

    # --- Sink --------------------------------------------------------------------
    sink_batch_size: int = 500
    sink_batch_seconds: float = 0.5

    @property
    def kafka_bootstrap(self) -> str:
        """host:port for plain Kafka clients (Faust's URL may list several brokers, `;`-separated)."""
        return self.kafka_broker.replace("kafka://", "").split(";")[0]

    @classmethod
    def from_env(cls, **overrides: Any) -> "Settings":
        """Read BLOGSTREAM_<NAME> for each field; provider variables keep their usual names."""
        aliases = {
            "openai_base_url": "OPENAI_BASE_URL",
            "openai_api_key": "OPENAI_API_KEY",
            "replicate_base_url": "REPLICATE_BASE_URL",
            "replicate_api_token": "REPLICATE_API_TOKEN",
            "wix_base_url": "WIX_BASE_URL",
        }
        values: dict[str, Any] = {}
        for f in fields(cls):
            cast = type(f.default)
            value = _env(f"BLOGSTREAM_{f.name.upper()}", f.default, cast)
            if f.name in aliases:
                value = _env(aliases[f.name], value, cast)
            values[f.name] = value
        values.update(overrides)
        return cls(**values)

    def redacted(self) -> dict[str, Any]:
        """Settings safe to print or log: secrets are masked."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("openai_api_key", "replicate_api_token") and value:
                value = value[:3] + "…"
            if f.name == "intake_token" and value:
                value = "***"
            if f.name == "database_url" and "@" in value:
                value = "postgresql://***@" + value.split("@", 1)[1]
            out[f.name] = value
        return out


settings = Settings.from_env()
