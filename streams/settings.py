"""All blogstream settings in one typed place, read from the environment and checked at start.

Every default runs the demo on the local stack (`make stack-up`): Kafka on 19092,
Postgres on 55432, provider simulators on 18080. Set the provider variables
(OPENAI_API_KEY, REPLICATE_API_TOKEN, WIX_BASE_URL ...) to talk to the real services.

Each field is read from BLOGSTREAM_<NAME> (provider fields also from their usual
names, which win) and has bounds; a value outside them stops the worker and the CLI
with one line naming the variable and what it accepts (`SettingsError`):

    blogstream: error: BLOGSTREAM_BUDGET_PACING='ture' is not valid: expected true or false
"""
from __future__ import annotations

import os
import sys
from typing import Any, Literal, get_args, get_origin

import annotated_types
import click
from pydantic import AliasChoices, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

# The local stack's ports (stack/stack.sh reads the same variables).
KAFKA_PORT = os.environ.get("KAFKA_PORT", "19092")
PG_PORT = os.environ.get("PG_PORT", "55432")
SIMULATORS = f"http://127.0.0.1:{os.environ.get('SIM_PORT', '18080')}"

PREFIX = "BLOGSTREAM_"
# Provider fields keep their usual variable names; these win over BLOGSTREAM_<NAME>.
ALIASES = {
    "openai_base_url": "OPENAI_BASE_URL",
    "openai_api_key": "OPENAI_API_KEY",
    "replicate_base_url": "REPLICATE_BASE_URL",
    "replicate_api_token": "REPLICATE_API_TOKEN",
    "wix_base_url": "WIX_BASE_URL",
}
# sysexits.h EX_CONFIG: a supervisor can tell "will not start, fix the configuration" from a crash.
EXIT_CONFIG = 78

_URL = r"^https?://[^\s/]+\S*$"
_NAME = r"^[A-Za-z0-9._-]+$"  # what Kafka allows in a topic name


def _provider(name: str, default: str, **kwargs: Any) -> Any:
    return Field(default, validation_alias=AliasChoices(ALIASES[name], f"{PREFIX}{name.upper()}"), **kwargs)


def _accepts(text: str) -> dict[str, Any]:
    return {"json_schema_extra": {"accepts": text}}


class SettingsError(click.ClickException):
    """Settings that are not valid; str() is the one-line message naming each variable.

    A click exception, so that both `faust -A streams worker` (which imports the app
    inside its click command) and `blogstream` print it as one line and exit with
    EXIT_CONFIG, without a traceback.
    """

    exit_code = EXIT_CONFIG

    def show(self, file: Any = None) -> None:
        click.echo(f"blogstream: error: {self.message}", file=file or sys.stderr)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=PREFIX,
        case_sensitive=False,
        env_ignore_empty=True,  # an empty variable means "the default", as before
        populate_by_name=True,  # from_env(openai_api_key=...) by field name
        frozen=True,
        extra="forbid",
        allow_inf_nan=False,
        validate_default=True,
    )

    # --- Kafka ---------------------------------------------------------------
    kafka_broker: str = Field(
        f"kafka://127.0.0.1:{KAFKA_PORT}", pattern=r"^(kafka://)?[^\s:;/]+:\d+(;(kafka://)?[^\s:;/]+:\d+)*$",
        **_accepts("kafka://HOST:PORT (several separated by ;)"),
    )
    topic_partitions: int = Field(12, ge=1, le=10_000)
    topic_prefix: str = Field("", pattern=r"^[A-Za-z0-9._-]*$", **_accepts("letters, digits, . _ - (or nothing)"))
    app_id: str = Field("blogstream", pattern=_NAME, **_accepts("letters, digits, . _ -"))
    web_port: int = Field(6066, ge=1, le=65535)
    # The address the worker's web server binds: 127.0.0.1 keeps it local; containers need 0.0.0.0.
    web_bind: str = Field("127.0.0.1", pattern=r"^[A-Za-z0-9.:_-]+$", **_accepts("an IP address or host name"))
    # Host names (comma-separated) a route without a token answers to, besides IP addresses and localhost:
    # a page whose name an attacker points at 127.0.0.1 (DNS rebinding) must not reach an open control plane.
    web_allowed_hosts: str = Field("", pattern=r"^[A-Za-z0-9.-]*(,[A-Za-z0-9.-]+)*$",
                                   **_accepts("host names separated by commas"))
    heartbeat_seconds: float = Field(30.0, gt=0)
    lag_seconds: float = Field(15.0, gt=0)  # how often consumer lag is exported
    data_dir: str = Field(".faust", min_length=1)  # Faust's local files (git-ignored)
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"  # "uvloop" (if installed) or "asyncio"
    log_format: Literal["text", "json"] = "text"  # json: one JSON object per log line (streams/logs.py)
    # How long a fetch waits at the broker for records (aiokafka's default is 500 ms; see faust_fixes).
    fetch_max_wait_ms: int = Field(20, ge=1, le=60_000)
    # Young garbage collections on a clock (streams/gc_pacing.py): pauses of a few ms, not tens, that
    # set the permit tail when they come (docs/bench-growth.md, session 20); 0: CPython's allocation count alone.
    gc_young_every_seconds: float = Field(0.5, ge=0, le=60)
    # How long a thread that wants the interpreter lock waits for its holder to let go
    # (sys.setswitchinterval; CPython's default is 5 ms). The stage loop shares the lock with the
    # coordinator's thread and Faust's consumer thread, and a permit due while one of them computes
    # waits this long (docs/bench-growth.md, session 21).
    gil_switch_interval_seconds: float = Field(0.001, ge=0.0001, le=0.1)
    # A clean stop (SIGTERM, Ctrl-C) waits at most this long for the provider calls in flight to finish
    # and be recorded, starting no new ones (streams/pipeline/stage.py, Stopping). Keep it below the
    # supervisor's grace before SIGKILL (compose: stop_grace_period 60 s); 0: do not wait (they may be paid twice).
    stop_drain_seconds: float = Field(45.0, ge=0, le=3600)

    # --- Postgres --------------------------------------------------------------
    database_url: str = Field(
        f"postgresql://blogstream:blogstream@127.0.0.1:{PG_PORT}/blogstream", pattern=r"^postgres(ql)?://\S+$",
        **_accepts("postgresql://USER:PASSWORD@HOST:PORT/DATABASE"),
    )

    # --- Providers (defaults point at the simulators) --------------------------
    openai_base_url: str = _provider("openai_base_url", f"{SIMULATORS}/openai/v1", pattern=_URL, **_accepts("an http(s) URL"))
    openai_api_key: str = _provider("openai_api_key", "sk-simulator", min_length=1)
    openai_model: str = Field("gpt-4o-mini", min_length=1)
    openai_max_tokens: int = Field(1200, ge=1)  # tight: OpenAI charges max_tokens against TPM at admission
    openai_timeout: float = Field(120.0, gt=0)
    # Each article's completion is stored at OpenAI (store: true, 30 days) under its request id, so a call
    # whose answer was lost (a timeout, a reset) is found again instead of paid twice. Off for an account
    # with zero data retention, which refuses stored completions.
    openai_store_completions: bool = True
    # After an answer that may be lost, its stored completion is looked for this long before the article is
    # written again: OpenAI lists a stored completion some time after it is written (it does not say how long),
    # and a call our client gave up on may still be being written. 0: one look. At most 10 minutes: the request
    # holds its site's in-flight slot meanwhile. (generate.py)
    openai_lost_answer_wait_seconds: float = Field(30.0, ge=0, le=600)
    replicate_base_url: str = _provider("replicate_base_url", f"{SIMULATORS}/replicate", pattern=_URL, **_accepts("an http(s) URL"))
    replicate_api_token: str = _provider("replicate_api_token", "r8_simulator", min_length=1)
    replicate_model: str = Field("black-forest-labs/flux-schnell", min_length=1)
    replicate_timeout: float = Field(120.0, gt=0)
    wix_base_url: str = _provider("wix_base_url", f"{SIMULATORS}/wix", pattern=_URL, **_accepts("an http(s) URL"))
    wix_timeout: float = Field(60.0, gt=0)
    # Wix calls of one site ready at the same moment go out as one bulk call of up to this many
    # items (Bulk Import File, Bulk Create Draft Posts); 1 sends every call on its own.
    wix_bulk_max_items: int = Field(100, ge=1, le=100)

    # --- The bulk lane through the OpenAI Batch API (docs/operations.md, "The bulk lane") ---
    # true: "bulk" article requests are collected into Batch API files (about half the price,
    # done within 24 h) instead of taking real-time OpenAI permits.
    openai_batch_enabled: bool = False
    openai_batch_max_requests: int = Field(50_000, ge=1, le=50_000)  # lines per file (the API's limit: 50,000)
    openai_batch_max_bytes: int = Field(190_000_000, ge=10_000, le=209_715_200)  # per file (the API's: 200 MB)
    # Prompt tokens of running batches per model (the organisation's enqueued-token limit).
    openai_batch_enqueued_tokens: int = Field(2_000_000, ge=1)
    openai_batch_collect_seconds: float = Field(60.0, gt=0)  # the oldest queued line waits this long for company
    openai_batch_poll_seconds: float = Field(30.0, gt=0)  # how often a running batch is looked at
    # A line that gave no article: "retry" it in the next batch (up to max_attempts batches, then
    # the real-time lane; a request the provider refused goes there at once), or "realtime" at once.
    openai_batch_failed_lines: Literal["retry", "realtime"] = "retry"
    openai_batch_max_attempts: int = Field(3, ge=1)

    # --- Global budgets (per window, across every worker) ---------------------
    budget_window_seconds: float = Field(60.0, gt=0)
    openai_rpm: int = Field(450, ge=1)
    openai_tpm: int = Field(450_000, ge=1)
    replicate_rpm: int = Field(450, ge=1)
    replicate_other_rpm: int = Field(2250, ge=1)  # Replicate's other endpoints (polls, cancels): 3000/600 of the create budget
    wix_site_rpm: int = Field(200, ge=1)
    # A permit must be used within this many seconds of its grant; the limiter
    # counts each permit over window + grace so late arrivals never overlap.
    permit_grace_seconds: float = Field(0.5, ge=0)
    # From our socket write to the provider counting the call, at most (docs/limiter.md, "Counted from
    # the send"): raise it for a provider that queues calls before counting them. A third of the grace
    # at most (the rest covers the answer's trip); unset, it is 0.1 s or a third of the grace if less.
    permit_wire_margin_seconds: float = Field(0.1, ge=0)
    # The coordinator grants up to this long before a budget's room opens, for
    # that moment: the answer's trip over Kafka overlaps the wait for room.
    permit_lookahead_seconds: float = Field(1.0, ge=0)
    # While nobody waits on a request budget and it is less than
    # `permit_lease_below` used, a worker may take several permits at once (a
    # lease), to be used within this many seconds without a round trip to the
    # coordinator each (0: no leases).
    permit_lease_seconds: float = Field(2.0, ge=0)
    permit_lease_below: float = Field(0.85, ge=0, le=1)
    # A site's own budget (Wix) serves that site's calls only, from the worker
    # holding its partition, far below its limit: its leases last longer, so
    # the site's next blog still finds units (0: as `permit_lease_seconds`).
    permit_site_lease_seconds: float = Field(30.0, ge=0)
    # Spread request grants evenly over the window: real providers often
    # enforce sub-minute slices, so a burst at a window's start can get 429s.
    budget_pacing: bool = True

    # --- Work and fairness -----------------------------------------------------
    site_max_in_flight: int = Field(20, ge=1)  # the seed's MAX_PER_INSTANCE, now across all workers
    site_max_queued: int = Field(1000, ge=1)
    queue_size_limit: int = Field(10_000, ge=1)  # the seed's QUEUE_SIZE_LIMIT: requests pending, both lanes
    # The part of the queue bulk requests ("priority": "bulk", a backfill) leave free for interactive ones;
    # per site, bulk requests count against max_queued_bulk, apart (docs/intake.md).
    queue_interactive_share: float = Field(0.1, ge=0, le=1)
    site_max_queued_bulk: int = Field(10_000, ge=1, le=1_000_000)
    stage_concurrency: int = Field(200, ge=1)  # provider calls in flight per stage per worker
    read_ahead: int = Field(10_000, ge=1)  # events buffered per stage per worker (bounded memory)
    read_ahead_bytes: int = Field(64 * 2**20, ge=1)  # and bytes of their records (long articles: up to 1 MB each)
    stream_buffer_events: int = Field(256, ge=10)  # events Faust holds for a stage before its runner reads them
    max_attempts: int = Field(6, ge=1)
    retry_base_seconds: float = Field(1.0, gt=0)
    # A provider failing for a passing reason (5xx, timeout, 429) fails a request only after
    # max_attempts attempts AND this long since its first failure: an outage shorter than this costs
    # time, not requests (six quick attempts span only ~30 s, less than many provider blips).
    # An answer billed but unusable (cut off at max_tokens) is no outage: max_attempts alone bounds it.
    retry_patience_seconds: float = Field(300.0, ge=0)

    # --- Intake (HTTP front door, streams/api/intake.py; docs/intake.md) -----------
    intake_token: str = ""  # non-empty: every /api/blogs call needs "Authorization: Bearer <token>"
    admin_token: str = ""  # site controls, retry, limiter figures (streams/api/access.py); empty: the intake token
    intake_max_batch: int = Field(1000, ge=1)  # requests per POST /api/blogs batch
    intake_max_body_bytes: int = Field(2_000_000, ge=1024)  # larger bodies get 413 before they are read
    intake_pending_refresh_seconds: float = Field(1.0, ge=0)  # the pending figure is re-read at most this often
    intake_retry_after_seconds: int = Field(2, ge=1, le=3600)  # Retry-After on 429/503
    intake_produce_timeout: float = Field(15.0, gt=0)  # broker ack wait before answering 503

    # --- Costs and budgets (docs/operations.md, "Costs and budgets") --------------
    # The price table (TOML, the shape of streams/costs/prices.toml); empty: that committed file.
    prices_file: str = Field("", **_accepts("the path of a TOML price table (or nothing)"))
    # Spend of all sites together per UTC day, in US dollars; reached, no new paid call starts. 0: no cap.
    global_daily_budget_usd: float = Field(0.0, ge=0)

    # --- Kafka consumer (Faust's own defaults suit neither point) ------------------
    # A killed worker's partitions (and the limiter) move after this long, not 60 s.
    kafka_session_timeout_seconds: float = Field(10.0, gt=0)
    kafka_heartbeat_seconds: float = Field(1.0, gt=0)  # below the session timeout
    # Records per poll: a big batch of stage events would keep the limiter's
    # asks and answers waiting behind it (halved permit latency p99 in the benchmark).
    kafka_max_poll_records: int = Field(50, ge=1)
    # This worker's stable name (its reply topic, its Kafka group instance id); empty: `<host name>-<web port>`.
    worker_id: str = Field("", pattern=r"^[A-Za-z0-9._-]*$", **_accepts("letters, digits, . _ - (or nothing)"))
    # Static group membership (KIP-345): a worker back within the session timeout keeps its partitions, no rebalance.
    kafka_static_membership: bool = True

    # --- Sink --------------------------------------------------------------------
    sink_batch_size: int = Field(500, ge=1)
    sink_batch_seconds: float = Field(0.5, gt=0)

    @field_validator("*", mode="before")
    @classmethod
    def _lower(cls, value: Any, info: ValidationInfo) -> Any:
        """Every choice (a Literal field) is read case-insensitively: `JSON` is `json`, `RETRY` is `retry`."""
        if isinstance(value, str) and get_origin(cls.model_fields[info.field_name].annotation) is Literal:
            return value.strip().lower()
        return value

    @model_validator(mode="after")
    def _heartbeat_below_session(self) -> "Settings":
        if self.kafka_heartbeat_seconds >= self.kafka_session_timeout_seconds:
            raise PydanticCustomError(
                "heartbeat_session",
                f"{PREFIX}KAFKA_HEARTBEAT_SECONDS={self.kafka_heartbeat_seconds:g} is not valid: expected less than "
                f"{PREFIX}KAFKA_SESSION_TIMEOUT_SECONDS ({self.kafka_session_timeout_seconds:g}), a third of it or less "
                "is usual",
            )
        return self

    @model_validator(mode="after")
    def _wire_margin_within_grace(self) -> "Settings":
        if "permit_wire_margin_seconds" in self.model_fields_set and \
                self.permit_wire_margin_seconds > self.permit_grace_seconds / 3 + 1e-9:  # 0.3 / 3 < 0.1
            raise PydanticCustomError(
                "wire_margin_grace",
                f"{PREFIX}PERMIT_WIRE_MARGIN_SECONDS={self.permit_wire_margin_seconds:g} is not valid: expected at "
                f"most a third of {PREFIX}PERMIT_GRACE_SECONDS ({self.permit_grace_seconds:g}); raise the grace "
                f"with it, to {3 * self.permit_wire_margin_seconds:g} or more",
            )
        return self

    @model_validator(mode="after")
    def _prices_readable(self) -> "Settings":
        from streams.costs.prices import PricesError, load_prices

        try:
            table = load_prices(self.prices_file)
        except PricesError as exc:
            raise PydanticCustomError("prices", f"{PREFIX}PRICES_FILE: {exc}") from None
        if missing := table.missing(openai_model=self.openai_model, replicate_model=self.replicate_model):
            raise PydanticCustomError(
                "prices", "; ".join(missing) + f": add them to the file {PREFIX}PRICES_FILE names (or to a copy of "
                "streams/costs/prices.toml it names)",
            )
        return self

    @property
    def kafka_bootstrap(self) -> str:
        """Every broker of `kafka_broker` (Faust's `;`-separated URLs) as plain Kafka clients take them,
        `host:port,host:port`: topic creation, the lag export and the CLI reach the cluster through any
        broker that answers, as the worker's Faust does, not only through the first."""
        return ",".join(broker.removeprefix("kafka://") for broker in self.kafka_broker.split(";"))

    @classmethod
    def from_env(cls, **overrides: Any) -> "Settings":
        """Read BLOGSTREAM_<NAME> for each field (provider variables keep their usual names);
        `overrides` (by field name) win. Raises SettingsError naming every bad variable."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise SettingsError("; ".join(_problem(error, overrides) for error in exc.errors())) from None

    def redacted(self) -> dict[str, Any]:
        """Settings safe to print or log: secrets are masked."""
        out = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name in ("openai_api_key", "replicate_api_token") and value:
                value = value[:3] + "…"
            if name in ("intake_token", "admin_token") and value:
                value = "***"
            if name == "database_url" and "@" in value:
                value = "postgresql://***@" + value.split("@", 1)[1]
            out[name] = value
        return out


def variable(name: str) -> str:
    """The environment variable a field is read from (the one that is set, for provider fields)."""
    own = f"{PREFIX}{name.upper()}"
    alias = ALIASES.get(name)
    return alias if alias and (os.environ.get(alias) or not os.environ.get(own)) else own


def accepts(name: str) -> str:
    """What a field accepts, in words: 'true or false', 'a whole number >= 1', 'one of text, json' ..."""
    info = Settings.model_fields[name]
    extra = info.json_schema_extra
    if isinstance(extra, dict) and "accepts" in extra:
        return str(extra["accepts"])
    kind = info.annotation
    if kind is bool:
        return "true or false"
    if get_origin(kind) is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(kind))
    if any(isinstance(m, annotated_types.MinLen) for m in info.metadata):
        return "a non-empty text"
    bounds = {type(m).__name__: getattr(m, type(m).__name__.lower()) for m in info.metadata
              if isinstance(m, (annotated_types.Gt, annotated_types.Ge, annotated_types.Lt, annotated_types.Le))}
    noun = "a whole number" if kind is int else "a number"
    low = ("Ge", bounds["Ge"]) if "Ge" in bounds else ("Gt", bounds["Gt"]) if "Gt" in bounds else None
    high = ("Le", bounds["Le"]) if "Le" in bounds else ("Lt", bounds["Lt"]) if "Lt" in bounds else None
    if low and high and low[0] == "Ge" and high[0] == "Le":
        return f"{noun} from {low[1]:g} to {high[1]:g}"
    parts = []
    if low:
        parts.append(f"{'>=' if low[0] == 'Ge' else '>'} {low[1]:g}")
    if high:
        parts.append(f"{'<=' if high[0] == 'Le' else '<'} {high[1]:g}")
    return f"{noun} {' and '.join(parts)}" if parts else noun


def _problem(error: Any, overrides: dict[str, Any]) -> str:
    if not error["loc"]:  # a rule between fields: its message names them
        return error["msg"]
    name = str(error["loc"][0])
    name = {alias.lower(): field for field, alias in ALIASES.items()}.get(name.lower(), name)
    if name not in Settings.model_fields:
        return f"{name} is not a setting"
    where = f"setting {name}" if name in overrides else variable(name)
    return f"{where}={error['input']!r} is not valid: expected {accepts(name)}"


settings = Settings.from_env()
