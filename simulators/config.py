"""Simulator configuration: defaults, env-var overrides, JSON merge + validation."""

from __future__ import annotations

import copy
import json
import os
from typing import Any, Mapping

# Latency specs accepted everywhere a "latency*" key appears:
#   [min, max]                 uniform in [min, max] seconds
#   1.5                        fixed
#   {"min": a, "max": b}       uniform
#   {"mean": m, "jitter": j}   uniform in [m-j, m+j] (clamped at 0)
#   {"mean": m, "stddev": s}   normal, clamped at 0
#   {"median": m, "sigma": s}  lognormal: half the calls take under m, a long tail above (LLM answer times)
# Every sampled latency (and slow_seconds) is multiplied by the global latency_scale.

DEFAULTS: dict[str, Any] = {
    "window_seconds": 60.0,
    "latency_scale": 1.0,
    "seed": 1234,
    "max_events": 1_000_000,
    "openai": {
        "rpm": 450,
        "tpm": 450_000,
        "latency": [1.0, 2.0],
        "error_rate": 0.0,
        "error_statuses": [500, 503],
        "slow_rate": 0.0,
        "slow_seconds": 30.0,
        "timeout_rate": 0.0,
        "timeout_seconds": 30.0,
        "cut_rate": 0.0,  # calls done whose answer is cut off mid-body, the connection closed (app.py)
        "external_rpm": 0.0,
        "external_tpm_per_request": 0,
        "default_max_tokens": 4096,
        "require_auth": True,
        # TPM: True settles each call's admission charge down to what it used (unused reservation returns
        # to the window); False leaves the whole admission estimate counted for the window.
        "refund_unused_tokens": True,
        "estimate_error": 0.0,   # relative error of the admission estimate, in [0, 1), seeded per request
        "stored_lag_seconds": 0.0,  # a completion made with store: true shows in the list this long after
        # What OpenAI bills, US dollars per million tokens (openai.com/api/pricing); the Batch API's
        # lines at batch_input / batch_output. A model not listed here is served but not billed.
        "prices": {
            "gpt-4o-mini": {"input": 0.15, "output": 0.60, "batch_input": 0.075, "batch_output": 0.30},
            "gpt-4o": {"input": 2.50, "output": 10.00, "batch_input": 1.25, "batch_output": 5.00},
            "gpt-4.1": {"input": 2.00, "output": 8.00, "batch_input": 1.00, "batch_output": 4.00},
            "gpt-4.1-mini": {"input": 0.40, "output": 1.60, "batch_input": 0.20, "batch_output": 0.80},
            "gpt-4.1-nano": {"input": 0.10, "output": 0.40, "batch_input": 0.05, "batch_output": 0.20},
        },
        "batch": {               # Files + Batch API (simulators/openai_batches.py)
            "validation_seconds": 2.0,          # x latency_scale
            "seconds_per_request": 0.5,         # x latency_scale; the lines of a batch run one after the other
            "finalizing_seconds": 1.0,          # x latency_scale; also how long cancelling takes
            "completion_window_seconds": 86_400.0,   # "24h", not scaled: lower it in tests to see expiry
            "enqueued_token_limit": 2_000_000,  # prompt tokens enqueued per model (gpt-4o-mini, tier 1)
            "line_error_rate": 0.0,             # share of lines answered 500 in the error file
            "api_error_rate": 0.0,              # share of Files / Batch API calls answered 500 (server_error)
            "output_file_ttl_seconds": 2_592_000.0,  # 30 days, not scaled: then an output or error file is gone (404)
            "max_requests": 50_000,
            "max_input_file_bytes": 209_715_200,   # 200 MB
            "max_upload_bytes": 536_870_912,       # Files API: 512 MB a file
        },
    },
    "replicate": {
        "create_rpm": 600,
        "other_rpm": 3000,
        "latency": [1.0, 2.0],
        "output_ttl_seconds": 3600.0,
        "error_rate": 0.0,
        "error_statuses": [500, 503],
        "other_error_rate": 0.0,  # a 5xx for this share of polls, lists and cancels (creates: error_rate)
        "slow_rate": 0.0,
        "slow_seconds": 30.0,
        "timeout_rate": 0.0,
        "timeout_seconds": 30.0,
        "cut_rate": 0.0,  # calls done whose answer is cut off mid-body, the connection closed (app.py)
        "fail_rate": 0.0,
        "external_rpm": 0.0,
        "max_wait_seconds": 60,
        "require_auth": True,
        # What Replicate bills (replicate.com/pricing): the official FLUX models per output image;
        # any other model per second of hardware time at `per_second_default` (an Nvidia L40S).
        "prices": {
            "black-forest-labs/flux-schnell": {"per_image": 0.003},
            "black-forest-labs/flux-dev": {"per_image": 0.025},
            "black-forest-labs/flux-1.1-pro": {"per_image": 0.04},
        },
        "per_second_default": 0.000975,
    },
    "wix": {
        "site_rpm": 200,
        "latency_import": [0.1, 0.3],
        # How long Wix takes to download and process an imported file after answering the import: the
        # answer (and Get File) says PENDING until then, READY after, or FAILED when the source could not
        # be downloaded (an expired Replicate output). 0: the import answers READY or FAILED at once.
        "latency_file_ready": [0.5, 2.0],
        "latency_create": [0.3, 0.8],
        "latency_publish": [0.0, 0.02],
        "latency_other": [0.0, 0.02],
        "error_rate": 0.0,
        "error_statuses": [500, 503],
        "slow_rate": 0.0,
        "slow_seconds": 30.0,
        "timeout_rate": 0.0,
        "timeout_seconds": 30.0,
        "cut_rate": 0.0,  # calls done whose answer is cut off mid-body, the connection closed (app.py)
        "external_rpm": 0.0,
        "external_sites": [],
        "site_url_template": "https://{site}.wixsite.example",
        "bulk_max_items": 100,         # draft posts per bulk create call, files per bulk import
        "bulk_item_error_rate": 0.0,   # bulk items failing with INTERNAL_ERROR inside a 200 answer
        "lost_answer_rate": 0.0,       # calls done on Wix whose answer is lost (a 504 to the caller)
        "query_lag_seconds": 0.0,      # Query / List Posts leave out posts published less than this long ago
        "max_post_bytes": 409_600,     # 400 KB a post
        "max_posts_per_blog": 100_000,
    },
}

PROVIDERS = ("openai", "replicate", "wix")

# Short env names from the brief -> config path.  Every other scalar key is also
# reachable generically as SIM_<PROVIDER>_<KEY> (e.g. SIM_WIX_LATENCY_CREATE=0.3,0.8).
ENV_ALIASES = {
    "SIM_WINDOW_SECONDS": ("window_seconds",),
    "SIM_LATENCY_SCALE": ("latency_scale",),
    "SIM_SEED": ("seed",),
}


class ConfigError(ValueError):
    pass


def _parse_env_value(raw: str, default: Any) -> Any:
    raw = raw.strip()
    try:
        val = json.loads(raw)
    except ValueError:
        if isinstance(default, list):
            parts = [p.strip() for p in raw.split(",") if p.strip()]
            out: list[Any] = []
            for p in parts:
                try:
                    out.append(json.loads(p))
                except ValueError:
                    out.append(p)
            return out
        if isinstance(default, bool):
            return raw.lower() in ("1", "true", "yes", "on")
        return raw
    return val


def config_from_env(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    env = os.environ if env is None else env
    cfg = copy.deepcopy(DEFAULTS)
    patch: dict[str, Any] = {}
    if env.get("SIM_CONFIG_JSON"):
        patch = json.loads(env["SIM_CONFIG_JSON"])
        cfg = merge_config(cfg, patch)
    for name, path in ENV_ALIASES.items():
        if name in env:
            cfg = merge_config(cfg, {path[0]: _parse_env_value(env[name], DEFAULTS[path[0]])})
    for prov in PROVIDERS:
        for key, default in DEFAULTS[prov].items():
            name = f"SIM_{prov.upper()}_{key.upper()}"
            if name in env:
                cfg = merge_config(cfg, {prov: {key: _parse_env_value(env[name], default)}})
    return cfg


def _check_latency(path: str, spec: Any) -> Any:
    if isinstance(spec, bool):
        raise ConfigError(f"{path}: bad latency spec {spec!r}")
    if isinstance(spec, (int, float)):
        if spec < 0:
            raise ConfigError(f"{path}: negative latency")
        return float(spec)
    if isinstance(spec, (list, tuple)) and len(spec) == 2 and all(isinstance(x, (int, float)) for x in spec):
        lo, hi = float(spec[0]), float(spec[1])
        if lo < 0 or hi < lo:
            raise ConfigError(f"{path}: need 0 <= min <= max, got {spec!r}")
        return [lo, hi]
    if isinstance(spec, dict) and set(spec) == {"median", "sigma"}:
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec.values()) \
                or spec["median"] <= 0 or spec["sigma"] < 0:
            raise ConfigError(f"{path}: lognormal latency needs median > 0 and sigma >= 0, got {spec!r}")
        return {"median": float(spec["median"]), "sigma": float(spec["sigma"])}
    if isinstance(spec, dict) and (set(spec) <= {"min", "max"} or set(spec) <= {"mean", "jitter", "stddev"}):
        for v in spec.values():
            if not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(f"{path}: bad latency spec {spec!r}")
        return dict(spec)
    raise ConfigError(f"{path}: bad latency spec {spec!r} (use [min,max], a number, "
                      "{{min,max}}, {{mean,jitter}}, {{mean,stddev}} or {{median,sigma}})")


def _coerce(path: str, key: str, default: Any, value: Any) -> Any:
    if key.startswith("latency"):
        return _check_latency(path, value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected boolean, got {value!r}")
        return value
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected number, got {value!r}")
        if value < 0:
            raise ConfigError(f"{path}: must be >= 0")
        if key.endswith("_rate") and value > 1:
            raise ConfigError(f"{path}: a rate is a fraction in [0, 1]")
        if key == "window_seconds" and value <= 0:
            raise ConfigError(f"{path}: must be > 0")
        if isinstance(default, int) and not isinstance(default, bool) and float(value).is_integer():
            return int(value)
        return float(value)
    if isinstance(default, list):
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected list, got {value!r}")
        return list(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected string, got {value!r}")
        return value
    return value


def merge_config(base: dict[str, Any], patch: Mapping[str, Any], _defaults: Mapping[str, Any] = DEFAULTS,
                 _path: str = "") -> dict[str, Any]:
    """Return a deep copy of ``base`` with ``patch`` merged in. Unknown keys raise ConfigError."""
    if not isinstance(patch, Mapping):
        raise ConfigError(f"{_path or 'config'}: expected an object")
    out = copy.deepcopy(base)
    for key, value in patch.items():
        path = f"{_path}.{key}" if _path else key
        if key not in _defaults:
            raise ConfigError(f"unknown config key {path!r}")
        default = _defaults[key]
        if isinstance(default, dict):
            out[key] = merge_config(out[key], value, default, path)
        else:
            out[key] = _coerce(path, key, default, value)
    if not 0 <= out.get("openai", {}).get("estimate_error", 0) < 1:
        raise ConfigError("openai.estimate_error must be in [0, 1)")
    for prov in PROVIDERS:
        statuses = out.get(prov, {}).get("error_statuses")
        if statuses is not None and (not statuses or not all(isinstance(s, int) and 500 <= s <= 599 for s in statuses)):
            raise ConfigError(f"{prov}.error_statuses must be a non-empty list of 5xx codes")
    return out
