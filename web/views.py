"""Plain functions that shape jobs for the pages and the API (pure, no FastAPI)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from config.errors import PermanentError

STEP_LABELS = {
    "convert": "Conversion",
    "preprocess": "Preprocessing",
    "segment": "Segmentation",
    "inference": "Segmentation",
    "outputs": "Outputs (SEG, SR, overlay)",
    "send": "Delivery",
}
REGION_LABELS = {
    "whole_tumor": "Whole tumour",
    "tumor_core": "Tumour core",
    "enhancing": "Enhancing tumour",
    "necrotic": "Necrotic core",
    "edema": "Edema",
}
STATE_HELP = {
    "waiting": "receiving: waiting for the study to be complete",
    "queued": "queued for the worker",
    "running": "being processed",
    "delivered": "results sent",
    "failed": "failed (see the reason)",
    "delivery_failed": "processed, but the results could not be sent: Resend",
}


def job_json(job: Any) -> dict[str, Any]:
    """The JSON of a Job (``Job.to_json()`` when the model has it)."""
    to_json = getattr(job, "to_json", None)
    data = to_json() if callable(to_json) else job.model_dump(mode="json")
    for key in ("state", "source"):
        if key in data:
            data[key] = str(data[key])
    return data


def parse_day(value: str | None, *, name: str, end: bool = False) -> datetime | None:
    """A YYYY-MM-DD filter as a UTC datetime (start of day, or start of the next day if ``end``)."""
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise PermanentError(f"{name} must be a date YYYY-MM-DD; got {value!r}") from None
    if end:
        day = day + timedelta(days=1)
    return datetime.combine(day, time(0), tzinfo=UTC)


def _ts(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def timeline(job: dict[str, Any], events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Received, complete, each step with its duration, deliveries, in time order.

    ``job`` is :func:`job_json`; ``events`` the job's audit events (``ts``, ``event``, ``detail``).
    """
    rows: list[dict[str, Any]] = []
    by_event: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_event.setdefault(str(e.get("event")), []).append(e)

    def first(names: tuple[str, ...]) -> datetime | None:
        times = [t for n in names for e in by_event.get(n, []) if (t := _ts(e.get("ts")))]
        return min(times) if times else None

    created = _ts(job.get("created"))
    received = first(("study_received", "upload")) or created
    complete = first(("job_queued", "job_failed", "upload"))
    rows.append({
        "label": "Received" if job.get("source") != "upload" else "Uploaded",
        "ts": received, "elapsed_s": None, "status": "ok",
        "detail": f"from {job.get('calling_ae', '?')} ({job.get('calling_ip', '?')})",
    })  # fmt: skip
    if complete is not None:
        rows.append({
            "label": "Study complete", "ts": complete,
            "elapsed_s": (complete - received).total_seconds() if received else None,
            "status": "ok", "detail": "series chosen; job created",
        })  # fmt: skip
    elif job.get("state") == "waiting":
        rows.append({"label": "Study complete", "ts": None, "elapsed_s": None,
                     "status": "waiting", "detail": "waiting for the series to go quiet"})  # fmt: skip
    for step in job.get("steps") or []:
        name = str(step.get("step", "?"))
        rows.append({
            "label": STEP_LABELS.get(name, name.replace("_", " ").capitalize()),
            "ts": _ts(step.get("started")) or _ts(step.get("ended")),
            "elapsed_s": step.get("elapsed_s"),
            "status": step.get("status", ""),
            "detail": step.get("detail") or "",
        })  # fmt: skip
    for d in job.get("deliveries") or []:
        rows.append({
            "label": f"Sent to {d.get('peer', '?')}",
            "ts": _ts(d.get("ts")), "elapsed_s": None,
            "status": "ok" if d.get("ok") else "failed",
            "detail": d.get("detail") or "",
        })  # fmt: skip
    epoch = datetime.min.replace(tzinfo=UTC)
    head, rest = rows[:2], sorted(rows[2:], key=lambda r: r["ts"] or epoch)
    for row in head + rest:
        row["duration"] = fmt_duration(row["elapsed_s"])
        row["when"] = row["ts"].strftime("%Y-%m-%d %H:%M:%S") if row["ts"] else ""
    return head + rest


def volume_rows(volumes_ml: dict[str, float]) -> list[dict[str, Any]]:
    order = list(REGION_LABELS)
    keys = sorted(volumes_ml, key=lambda k: order.index(k) if k in order else len(order))
    return [{"key": k, "label": REGION_LABELS.get(k, k), "ml": float(volumes_ml[k])} for k in keys]


def classification_rows(job: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per series: number, description, role chosen (or none) and the reason."""
    chosen = {uid: role for role, uid in (job.get("roles") or {}).items() if uid}
    rows = []
    for s in job.get("classification") or []:
        uid = s.get("series_uid", "")
        rows.append({
            "series_number": s.get("series_number"),
            "description": s.get("description", ""),
            "role": s.get("role") or "",
            "chosen": uid in chosen,
            "reason": s.get("reason", ""),
        })  # fmt: skip
    return rows
