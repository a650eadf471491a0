"""JSON-lines logging on stderr, configured only by entry points.

Log records carry structured fields through ``extra=`` (job_id, step, elapsed_s,
series_ref, ...). Never pass patient name, ID, birth date or accession number:
use :func:`ref` to refer to a UID without revealing it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def ref(uid: str | None) -> str:
    """A short, stable, non-reversible reference to a UID for log lines."""
    if not uid:
        return "-"
    return hashlib.sha256(uid.encode()).hexdigest()[:12]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = (
                    value if isinstance(value, (int, float, bool, type(None))) else str(value)
                )
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str = "INFO") -> None:
    """Send JSON lines to stderr; quiet the libraries that log identifiers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pynetdicom logs whole identifiers and dataset summaries at INFO/DEBUG.
    try:
        from pynetdicom import _config as pynetdicom_config

        pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
        pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
        # Its "standard" handlers describe every PDU and DIMSE message at DEBUG/INFO, work done
        # per instance for lines its logger (kept at WARNING below) would drop anyway.
        pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    except ImportError:  # pragma: no cover - pynetdicom is a dependency
        pass
    for noisy in ("pynetdicom", "pydicom", "highdicom", "dicom2nifti", "celery", "kombu"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
