"""Record the effective configuration in the audit trail at start, and what changed since last time.

The masked configuration (``Settings.masked()``: no token, no passwords) is flattened to dotted keys;
an audit event ``config`` is written when its hash differs from the last recorded one, with the
changed keys as ``[old, new]``. The web records it when it starts (``gliomaseg serve`` starts the web).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

EVENT = "config"


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are leaves."""
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): data}


def diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[Any]]:
    return {
        k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
    }


def record_config(store: Any, masked: dict[str, Any], *, process: str) -> dict[str, Any] | None:
    """Audit the configuration if it changed since the last ``config`` event; returns the detail."""
    flat = flatten(masked)
    digest = hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]
    last = store.audit_events(event=EVENT, limit=1)
    previous = last[-1]["detail"] if last else None
    if previous and previous.get("hash") == digest:
        return None
    detail = {
        "hash": digest,
        "process": process,
        "previous_hash": previous.get("hash") if previous else None,
        "changed": diff(previous.get("settings", {}), flat) if previous else {},
        "settings": flat,
    }
    store.audit(EVENT, detail=detail)
    return detail
