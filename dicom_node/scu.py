"""The SCU edge: C-ECHO a peer, and C-STORE files to it (the worker sends results with it).

Retries are the caller's business: a :class:`~config.errors.TransientError` means "try again
later" (peer down, association rejected for a transient reason), a
:class:`~config.errors.PermanentError` means the peer will not take these objects.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydantic import BaseModel, ConfigDict, Field
from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config

from config.errors import PermanentError, TransientError
from config.logs import ref
from config.settings import Peer

log = logging.getLogger(__name__)

Verification = "1.2.840.10008.1.1"  # Verification SOP Class

MAX_CONTEXTS = 128


class StoreReport(BaseModel):
    """What one :func:`send` achieved."""

    model_config = ConfigDict(frozen=True)

    peer: str  # "AET@host:port"
    sent: int
    failed: int
    statuses: dict[str, int] = Field(default_factory=dict)  # SOPInstanceUID -> status


def _describe(peer: Peer) -> str:
    return f"{peer.ae_title}@{peer.host}:{peer.port}"


def _nodelay(event: Any) -> None:
    try:
        sock = event.assoc.dul.socket.socket
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except Exception:
        log.debug("could not set TCP_NODELAY", exc_info=True)


_HANDLERS: list[Any] = [(evt.EVT_CONN_OPEN, _nodelay)]


def _ae(calling_ae: str, timeout_s: float) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    return ae


def _rejected(assoc: Any, peer: Peer) -> TransientError:
    if assoc.is_rejected:
        rsp = getattr(assoc.acceptor, "primitive", None)
        result = getattr(rsp, "result", None)
        source = getattr(rsp, "result_source", None)
        diag = getattr(rsp, "diagnostic", None)
        return TransientError(
            f"{_describe(peer)} rejected the association (result {result}, source {source}, "
            f"reason {diag}); check that it knows our AE title and its own AE title"
        )
    if assoc.is_aborted:
        return TransientError(
            f"cannot associate with {_describe(peer)}: connection refused or aborted "
            "(peer down or unreachable)"
        )
    return TransientError(f"cannot associate with {_describe(peer)} (peer down or unreachable)")


def echo(peer: Peer, *, calling_ae: str, timeout_s: float = 10) -> None:
    """C-ECHO ``peer``; raise TransientError unless it answers Success."""
    ae = _ae(calling_ae, timeout_s)
    ae.add_requested_context(Verification)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, evt_handlers=_HANDLERS)
    if not assoc.is_established:
        raise _rejected(assoc, peer)
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = getattr(status, "Status", None)
    if code != 0x0000:
        raise TransientError(
            f"{_describe(peer)} answered C-ECHO with status "
            f"{'none (timeout)' if code is None else hex(code)}"
        )


def _file_syntax(path: Path) -> tuple[str, str, str]:
    meta = pydicom.filereader.read_file_meta_info(path)
    return (
        str(meta.MediaStorageSOPClassUID),
        str(meta.TransferSyntaxUID),
        str(meta.MediaStorageSOPInstanceUID),
    )


def send(
    paths: Sequence[Path | str], peer: Peer, *, calling_ae: str, timeout_s: float = 30
) -> StoreReport:
    """C-STORE every file in ``paths`` to ``peer`` over one association.

    Proposes one context per SOP class and transfer syntax of the files given; files are sent
    byte for byte as stored, without decoding.
    Raises TransientError when no association can be made, PermanentError when the peer
    refuses a SOP class or transfer syntax the files need.
    """
    files = [Path(p) for p in paths]
    if not files:
        return StoreReport(peer=_describe(peer), sent=0, failed=0)
    info: list[tuple[Path, str, str, str]] = []
    for p in files:
        try:
            sop_class, ts, sop_uid = _file_syntax(p)
        except Exception as exc:
            raise PermanentError(f"{p} is not a DICOM file with file meta ({exc})") from exc
        info.append((p, sop_class, ts, sop_uid))
    ae = _ae(calling_ae, timeout_s)
    # One context per (SOP class, transfer syntax) of the files: files are sent as stored
    # (chunked from disk, never decoded), so each needs its own syntax accepted exactly.
    pairs = sorted({(sc, ts) for _, sc, ts, _ in info})
    if len(pairs) > MAX_CONTEXTS:
        raise PermanentError(
            f"the files need {len(pairs)} presentation contexts (max {MAX_CONTEXTS}); send fewer "
            "SOP classes / transfer syntaxes per call"
        )
    for sop_class, ts in pairs:
        ae.add_requested_context(sop_class, [ts])
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, evt_handlers=_HANDLERS)
    if not assoc.is_established:
        refused = sorted(
            {f"{cx.abstract_syntax} in {cx.transfer_syntax[0]}" for cx in assoc.rejected_contexts}
        )
        if refused and not assoc.accepted_contexts:
            # pynetdicom aborts an association in which the peer accepted no context at all
            raise PermanentError(
                f"{_describe(peer)} accepted no presentation context for {', '.join(refused)}"
            )
        raise _rejected(assoc, peer)
    statuses: dict[str, int] = {}
    sent = failed = 0
    try:
        accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
        not_taken = sorted({f"{sc} in {ts}" for sc, ts in pairs if (sc, ts) not in accepted})
        if not_taken:
            raise PermanentError(
                f"{_describe(peer)} accepted no presentation context for {', '.join(not_taken)}"
            )
        for p, _sop_class, _ts, sop_uid in info:
            try:
                status = assoc.send_c_store(p)
            except ValueError as exc:  # no context for this file's transfer syntax
                raise PermanentError(f"{_describe(peer)}: cannot send {p.name}: {exc}") from exc
            code = getattr(status, "Status", None)
            if code is None:
                if not assoc.is_established:
                    raise TransientError(
                        f"{_describe(peer)} dropped the association after {sent} instances"
                    )
                code = 0xFFFF  # no response within timeout_s
            statuses[sop_uid] = int(code)
            if code in (0x0000, 0xB000, 0xB006, 0xB007):
                sent += 1
            else:
                failed += 1
                log.warning(
                    "C-STORE not accepted",
                    extra={"peer": _describe(peer), "status": hex(code), "sop_ref": ref(sop_uid)},
                )
    finally:
        if assoc.is_established:
            assoc.release()
    return StoreReport(peer=_describe(peer), sent=sent, failed=failed, statuses=statuses)
