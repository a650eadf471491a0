"""Delivery of a job's outputs to its destinations (C-STORE through ``dicom_node.scu.send``).

``deliver_once`` tries each destination once and says, per peer, whether it worked and whether a
failure is worth retrying (a peer that is down or busy) or not (a peer that rejects the SOP class).
The retry policy (exponential backoff, ``outputs.send_retries``) lives in
:meth:`worker.pipeline.Pipeline.deliver`; the Celery task schedules the next attempt, so no worker
sleeps while a PACS is down.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from config.errors import PermanentError, TransientError
from config.settings import Peer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliveryResult:
    peer: str
    ok: bool
    permanent: bool
    detail: str
    ts: str
    sent: int = 0
    failed: int = 0

    def summary(self) -> str:
        return f"{self.peer}: {'ok' if self.ok else 'failed'} ({self.detail})"

    def to_json(self) -> dict[str, Any]:
        """The job's ``deliveries`` entry: {"peer", "ts", "ok", "detail"} (+ counts)."""
        return {
            "peer": self.peer,
            "ts": self.ts,
            "ok": self.ok,
            "detail": self.detail,
            "sent": self.sent,
            "failed": self.failed,
        }


SendFn = Callable[..., Any]  # dicom_node.scu.send(paths, peer, *, calling_ae) -> StoreReport


def deliver_once(
    paths: Sequence[Path], peers: Mapping[str, Peer], send: SendFn, *, calling_ae: str
) -> list[DeliveryResult]:
    """Send ``paths`` to every peer once; never raises for a peer's failure."""
    results: list[DeliveryResult] = []
    for name, peer in peers.items():
        ts = datetime.now(UTC).isoformat()
        where = f"{peer.ae_title}@{peer.host}:{peer.port}"
        try:
            report = send(list(paths), peer, calling_ae=calling_ae)
        except PermanentError as exc:
            results.append(DeliveryResult(name, False, True, f"{where}: {exc}", ts))
            continue
        except TransientError as exc:
            results.append(DeliveryResult(name, False, False, f"{where}: {exc}", ts))
            continue
        except OSError as exc:  # a socket error the SCU did not translate: the peer may come back
            results.append(DeliveryResult(name, False, False, f"{where}: {exc}", ts))
            continue
        sent = int(getattr(report, "sent", len(paths)))
        failed = int(getattr(report, "failed", 0))
        if failed:
            statuses = getattr(report, "statuses", {}) or {}
            bad = sorted({_hex(s) for s in statuses.values() if not _is_success(s)})
            detail = f"{where}: {failed} of {sent + failed} instances refused (statuses {bad})"
            results.append(DeliveryResult(name, False, False, detail, ts, sent, failed))
        else:
            detail = f"{where}: {sent} instances stored"
            results.append(DeliveryResult(name, True, False, detail, ts, sent, 0))
        log.info(
            "delivery %s",
            "ok" if not failed else "partial",
            extra={"peer": name, "sent": sent, "failed": failed},
        )
    return results


def _is_success(status: Any) -> bool:
    try:
        return int(status) in (0x0000, 0xB000, 0xB007, 0xB006)  # success and warnings
    except (TypeError, ValueError):
        return str(status).lower() in ("success", "ok", "0x0000")


def _hex(status: Any) -> str:
    try:
        return f"0x{int(status):04X}"
    except (TypeError, ValueError):
        return str(status)
