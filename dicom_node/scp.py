"""The SCP edge: build the pynetdicom Application Entity and its event handlers.

The handlers receive their dependencies (a :class:`Receiver`), write ``event.encoded_dataset()``
to the spool (fsynced) before answering Success, and never raise: every failure becomes a named
DICOM status. Callers are checked at association (allow-list of "AET" or "AET@IP"), and refused
with the standard reason code (1, 1, 3: calling AE title not recognised).
"""

from __future__ import annotations

import io
import logging
import socket
import ssl
import struct
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import _STORAGE_CLASSES

from config.logs import ref
from dicom_node import fastpath
from dicom_node.routing import (
    PROCESSED_SOP_CLASSES,
    SopDisposition,
    ignored_sop_classes,
    sop_disposition,
)
from dicom_node.spool import Spool, SpoolFullError

log = logging.getLogger(__name__)

Verification = "1.2.840.10008.1.1"  # Verification SOP Class

# Transfer syntaxes accepted for the MR classes (decoders for all are installed).
MR_TRANSFER_SYNTAXES: list[str] = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]


@dataclass
class _AssocCounts:
    calling_ae: str
    calling_ip: str
    received: int = 0  # answered Success (stored, a duplicate, or our own kind of object ignored)
    rejected: Counter[str] = field(default_factory=Counter)


class Status:
    """The C-STORE statuses the node answers (PS3.4 B.2.3 and PS3.7 C)."""

    SUCCESS = 0x0000
    REFUSED_SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    PROCESSING_FAILURE = 0x0110


# The reason an instance was refused, as the audit trail and /metrics name it.
REJECT_REASONS = {
    Status.REFUSED_SOP_CLASS_NOT_SUPPORTED: "SOP class not supported",
    Status.OUT_OF_RESOURCES: "out of resources",
    Status.DATASET_DOES_NOT_MATCH_SOP_CLASS: "dataset does not match SOP class",
    Status.CANNOT_UNDERSTAND: "cannot understand",
    Status.PROCESSING_FAILURE: "processing failure",
}


# pynetdicom's DUL loop sleeps this long whenever it finds no PDU (its default: 1 ms, which adds
# latency to every instance). 0 spins a core per open association (up to max_associations of
# them, beside CPU inference); 100 us keeps the latency small without a busy core. Measured in
# bench/node_bench.py; None keeps pynetdicom's value. Private API: pynetdicom is pinned.
RUN_LOOP_DELAY_S: float | None = 0.0001
# The receive fast path (dicom_node/fastpath.py): a waking acceptor loop instead of a fixed 1 ms
# sleep per message, and successful C-STORE-RSPs encoded directly. False keeps pynetdicom's code.
FAST_PATH = True
# Largest PDU we accept (0 = no limit): fewer, larger PDUs from the sender.
MAXIMUM_PDU_SIZE = 0

# A-ASSOCIATE-RJ (result, source, reason): rejected-permanent, service-user, ...
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # calling AE title not recognised


@dataclass(frozen=True)
class Received:
    """One instance durably spooled (handed to the node's index)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    calling_ae: str
    calling_ip: str
    created: bool  # False: a duplicate of an instance already spooled
    headers: Dataset  # the instance without PixelData


class Receiver(Protocol):
    """What the SCP needs from the node process."""

    spool: Spool

    def received(self, item: Received) -> None: ...

    def audit(
        self, event: str, *, job_id: str | None = None, detail: dict | None = None
    ) -> None: ...


def allowed(calling_ae: str, calling_ip: str, allow_list: Sequence[str]) -> bool:
    """Allow-list entries are "AET" (any address) or "AET@IP"; empty allows everyone."""
    if not allow_list:
        return True
    ae = calling_ae.strip()
    for entry in allow_list:
        name, _, ip = entry.partition("@")
        if name.strip() == ae and (not ip or ip.strip() == calling_ip):
            return True
    return False


def tls_context(cert: Any, key: Any, ca: Any = None) -> ssl.SSLContext:
    """Server-side TLS context; with ``ca``, callers must present a certificate it signed."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    if ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(ca))
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def build_ae(
    ae_title: str,
    *,
    require_called_aet: bool = True,
    max_associations: int = 16,
    network_timeout_s: float = 60.0,
    maximum_pdu_size: int | None = None,
) -> AE:
    """The Application Entity: Verification, MR storage (processed), SEG/SR/SC (ignored)."""
    ae = AE(ae_title=ae_title)
    ae.require_called_aet = require_called_aet
    ae.maximum_associations = max_associations
    ae.network_timeout = network_timeout_s
    ae.acse_timeout = network_timeout_s
    ae.dimse_timeout = network_timeout_s
    # 0 = no limit: the peer may send whole instances in few large PDUs, far less per-PDU work.
    ae.maximum_pdu_size = MAXIMUM_PDU_SIZE if maximum_pdu_size is None else maximum_pdu_size
    ae.add_supported_context(Verification)
    for uid in PROCESSED_SOP_CLASSES:
        ae.add_supported_context(uid, MR_TRANSFER_SYNTAXES)
    for uid in ignored_sop_classes(_STORAGE_CLASSES.values()):
        ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
    return ae


class Handlers:
    """pynetdicom event handlers bound to a Receiver and the association policy."""

    def __init__(
        self,
        receiver: Receiver,
        *,
        allow_list: Sequence[str] = (),
        run_loop_delay_s: float | None | str = "default",
    ) -> None:
        self.receiver = receiver
        self.allow_list = list(allow_list)
        self.run_loop_delay_s = (
            RUN_LOOP_DELAY_S if run_loop_delay_s == "default" else run_loop_delay_s
        )
        # Per-association instance counts, written to the audit trail once when the
        # connection closes (the web's /metrics sums them): never one row per instance.
        self._counts: dict[int, _AssocCounts] = {}
        self._counts_lock = threading.Lock()

    def as_list(self) -> list[Any]:
        return [
            (evt.EVT_CONN_OPEN, self.on_conn_open),
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_CONN_CLOSE, self.on_conn_close),
        ]

    # -- association ---------------------------------------------------------------------------
    def on_conn_open(self, event: Any) -> None:
        try:
            sock = event.assoc.dul.socket.socket
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.run_loop_delay_s is not None:
                # Private API (pinned pynetdicom 3.0.4): the DUL loop sleeps 1 ms whenever it
                # finds no PDU; measured in bench/node_bench.py.
                event.assoc.dul._run_loop_delay = self.run_loop_delay_s
            if FAST_PATH and event.assoc.is_acceptor:
                fastpath.install(event.assoc)
        except Exception:  # never let socket tuning break an association
            log.warning("could not tune the accepted socket", exc_info=True)

    def on_requested(self, event: Any) -> None:
        assoc = event.assoc
        calling_ae = _aet(assoc.requestor.primitive.calling_ae_title)
        calling_ip = assoc.requestor.address
        if allowed(calling_ae, calling_ip, self.allow_list):
            return
        log.warning(
            "association rejected: calling AE not in dicom.allowed_calling_aets",
            extra={"calling_ae": calling_ae, "calling_ip": calling_ip, "reason": "1-1-3"},
        )
        self._audit(
            "association_rejected",
            {
                "calling_ae": calling_ae,
                "calling_ip": calling_ip,
                "reason": "calling AE not allowed",
            },
        )
        assoc.acse.send_reject(*REJECT_CALLING_AE)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    def on_accepted(self, event: Any) -> None:
        assoc = event.assoc
        calling_ae = _aet(assoc.requestor.ae_title)
        refused = sorted({cx.abstract_syntax for cx in assoc.rejected_contexts})
        log.info(
            "association accepted",
            extra={
                "calling_ae": calling_ae,
                "calling_ip": assoc.requestor.address,
                "refused_sop_classes": ",".join(_name(u) for u in refused) or "-",
            },
        )
        detail: dict[str, Any] = {"calling_ae": calling_ae, "calling_ip": assoc.requestor.address}
        if refused:
            detail["refused_sop_classes"] = refused
        self._audit("association", detail)

    def on_echo(self, event: Any) -> int:
        return Status.SUCCESS

    def on_conn_close(self, event: Any) -> None:
        with self._counts_lock:
            counts = self._counts.pop(id(event.assoc), None)
        if counts is None:
            return
        who = {"calling_ae": counts.calling_ae, "calling_ip": counts.calling_ip}
        if counts.received:
            self._audit(
                "instances_received",
                {**who, "count": counts.received},
            )
        for reason, n in sorted(counts.rejected.items()):
            self._audit("instances_rejected", {**who, "reason": reason, "count": n})

    def _count(self, event: Any, status: int) -> None:
        assoc = event.assoc
        with self._counts_lock:
            counts = self._counts.get(id(assoc))
            if counts is None:
                counts = self._counts[id(assoc)] = _AssocCounts(
                    calling_ae=_aet(assoc.requestor.ae_title), calling_ip=assoc.requestor.address
                )
            if status == Status.SUCCESS:
                counts.received += 1
            else:
                counts.rejected[REJECT_REASONS.get(status, f"status 0x{status:04X}")] += 1

    # -- storage -------------------------------------------------------------------------------
    def on_store(self, event: Any) -> int:
        try:
            status = self._store(event)
        except Exception as exc:  # nothing crashes the node
            log.error(
                "C-STORE failed unexpectedly",
                extra={"error": type(exc).__name__, "sop_ref": _sop_ref(event)},
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            status = Status.PROCESSING_FAILURE
        try:
            self._count(event, int(status))
        except Exception:  # counting must never change the answer
            log.warning("could not count the instance", exc_info=True)
        return status

    def _store(self, event: Any) -> int:
        request = event.request
        sop_class = str(request.AffectedSOPClassUID or "")
        sop_uid = str(request.AffectedSOPInstanceUID or "")
        disposition = sop_disposition(sop_class)
        if disposition is SopDisposition.ignore:
            log.debug("ignored our own kind of object", extra={"sop_class": _name(sop_class)})
            return Status.SUCCESS
        if disposition is SopDisposition.refuse:
            log.warning("refused SOP class", extra={"sop_class": _name(sop_class)})
            return Status.REFUSED_SOP_CLASS_NOT_SUPPORTED
        try:
            data = fastpath.encoded_instance(event)  # what event.encoded_dataset() returns
        except UnicodeEncodeError:
            log.warning("C-STORE refused: a UID in the request is not ASCII")
            return Status.CANNOT_UNDERSTAND
        spool = self.receiver.spool
        try:
            spool.check_space(len(data))
        except SpoolFullError:
            log.error("C-STORE answered Out of Resources: spool below spool.min_free_mb")
            return Status.OUT_OF_RESOURCES
        # The headers are parsed on another thread while this one flushes the bytes (the flush
        # releases the GIL; the writes before it are too short to share).
        started: list[Any] = []

        def start_parsing() -> None:
            started.append(_parser_pool().submit(_parse, data))

        try:
            pending = spool.begin(data, while_flushing=start_parsing)
        except OSError as exc:
            for f in started:
                f.cancel()
            log.error(
                "C-STORE answered Out of Resources: spool write failed",
                extra={"error": type(exc).__name__, "errno": exc.errno},
            )
            return Status.OUT_OF_RESOURCES
        parsing = started[0] if started else _parser_pool().submit(_parse, data)
        try:
            ds, problem = parsing.result()
        except Exception as exc:
            spool.abort(pending)
            log.warning(
                "C-STORE refused: dataset cannot be parsed",
                extra={"error": type(exc).__name__, "sop_ref": ref(sop_uid), "n_bytes": len(data)},
            )
            return Status.CANNOT_UNDERSTAND
        if problem:
            spool.abort(pending)
            log.warning(
                "C-STORE refused: " + problem, extra={"sop_ref": ref(sop_uid), "n_bytes": len(data)}
            )
            return (
                Status.DATASET_DOES_NOT_MATCH_SOP_CLASS
                if "match" in problem or "missing" in problem
                else Status.CANNOT_UNDERSTAND
            )
        study_uid = _uid(ds, "StudyInstanceUID")
        series_uid = _uid(ds, "SeriesInstanceUID")
        dataset_sop_uid = _uid(ds, "SOPInstanceUID")
        if dataset_sop_uid != sop_uid:
            # Seen in anonymised files whose file meta kept the old UID: the dataset's UID names
            # the instance (and the spool file).
            log.warning(
                "Affected SOP Instance UID differs from the dataset's SOPInstanceUID; "
                "the dataset's is used",
                extra={"sop_ref": ref(sop_uid), "dataset_sop_ref": ref(dataset_sop_uid)},
            )
            sop_uid = dataset_sop_uid
        try:
            stored = spool.commit(pending, study_uid, series_uid, sop_uid)
        except OSError as exc:
            log.error(
                "C-STORE answered Out of Resources: spool write failed",
                extra={"error": type(exc).__name__, "errno": exc.errno},
            )
            return Status.OUT_OF_RESOURCES
        self.receiver.received(
            Received(
                study_uid=study_uid,
                series_uid=series_uid,
                sop_uid=sop_uid,
                sop_class_uid=sop_class,
                calling_ae=_aet(event.assoc.requestor.ae_title),
                calling_ip=event.assoc.requestor.address,
                created=stored.created,
                headers=ds,
            )
        )
        return Status.SUCCESS

    def _audit(self, event: str, detail: dict[str, Any]) -> None:
        try:
            self.receiver.audit(event, detail=detail)
        except Exception:
            log.error("audit write failed", extra={"event": event}, exc_info=True)


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _parser_pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="parse")
        return _POOL


def locate(data: bytes) -> tuple[str, str, str] | None:
    """(study, series, SOP instance) UIDs of an instance the node accepts, None for one it refuses.

    The spool's journal recovery uses it: the same checks as on receipt.
    """
    ds, problem = _parse(data)
    if problem:
        return None
    return _uid(ds, "StudyInstanceUID"), _uid(ds, "SeriesInstanceUID"), _uid(ds, "SOPInstanceUID")


def _parse(data: bytes) -> tuple[Dataset, str | None]:
    """The headers (no pixel data) and a reason to refuse the dataset, or None.

    Headers are parsed up to the pixel data; the pixel data element is checked in place (its
    declared length against the bytes received and the image it must hold), without copying it.
    Reasons never quote patient data. The file meta is read by :func:`_file_meta` and the data set
    by pydicom's ``read_dataset`` (a third of ``dcmread``'s time on a small header).
    """
    meta = _file_meta(data)
    ds: Dataset
    if meta is None or meta[0] == DeflatedExplicitVRLittleEndian:
        fp = io.BytesIO(data)
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
    else:
        ts, start = meta
        fp = io.BytesIO(data)
        fp.seek(start)
        ds = read_dataset(
            fp,
            ts == ImplicitVRLittleEndian,
            ts != ExplicitVRBigEndian,
            stop_when=_at_pixel_data,
        )
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = UID(ts)
        ds.set_original_encoding(ts == ImplicitVRLittleEndian, ts != ExplicitVRBigEndian)
    problem = _check_headers(ds)
    if problem:
        return ds, problem
    ts = ds.file_meta.TransferSyntaxUID
    if ts == DeflatedExplicitVRLittleEndian:  # positions refer to the inflated stream
        full = pydicom.dcmread(io.BytesIO(data))
        return ds, _check_values(full)
    return ds, _pixel_problem(data, fp.tell(), ds)


def _at_pixel_data(tag: Any, vr: str | None, length: int) -> bool:
    return tag in (0x7FE00010, 0x7FE00009, 0x7FE00008)  # Pixel Data, Double/Float Pixel Data


_META_GROUP_LENGTH = b"\x02\x00\x00\x00UL\x04\x00"


def _file_meta(data: bytes) -> tuple[str, int] | None:
    """(Transfer Syntax UID, offset of the data set) from a file meta with a group length."""
    if data[128:132] != b"DICM" or data[132:140] != _META_GROUP_LENGTH:
        return None
    (length,) = struct.unpack_from("<L", data, 140)
    start = 144 + length
    pos, ts = 144, None
    while pos + 8 <= start:
        group, element = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            return None
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            (n,) = struct.unpack_from("<L", data, pos + 8)
            value_at = pos + 12
        else:
            (n,) = struct.unpack_from("<H", data, pos + 6)
            value_at = pos + 8
        if element == 0x0010:
            ts = data[value_at : value_at + n].rstrip(b"\x00 ").decode("ascii", "replace")
        pos = value_at + n
    if ts is None or pos != start:
        return None
    return ts, start


_UID_TAGS = {
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
    "SOPInstanceUID": 0x00080018,
    "SOPClassUID": 0x00080016,
}


def _uid(ds: Dataset, keyword: str) -> str:
    """A UID element's value read from the raw element (no pydicom value conversion)."""
    elem = ds.get_item(_UID_TAGS[keyword])
    if elem is None:
        return ""
    value = elem.value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("ascii", "replace").strip("\x00 ")
    return str(value or "").strip("\x00 ")


def _check_headers(ds: Dataset) -> str | None:
    for kw in _UID_TAGS:
        if not _uid(ds, kw):
            return f"{kw} missing or empty"
    sop_class = _uid(ds, "SOPClassUID")
    if sop_disposition(sop_class) is not SopDisposition.process:
        return f"SOPClassUID {sop_class} in the dataset does not match an MR storage class"
    return None


def _image_bits(ds: Dataset) -> int | None:
    try:
        return (
            int(ds.Rows)
            * int(ds.Columns)
            * int(ds.get("SamplesPerPixel", 1) or 1)
            * int(ds.get("NumberOfFrames", 1) or 1)
            * int(ds.BitsAllocated)
        )
    except (AttributeError, TypeError, ValueError):
        return None


_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"SQ", b"UT", b"UC", b"UR"}
_SEQ_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def _pixel_problem(data: bytes, pos: int, ds: Dataset) -> str | None:
    """Check the pixel data element that starts at ``pos`` (where header parsing stopped)."""
    if pos + 8 > len(data):
        return "PixelData missing or truncated"
    ts = ds.file_meta.TransferSyntaxUID
    order = ">" if ts == ExplicitVRBigEndian else "<"
    if ts == ImplicitVRLittleEndian:
        (length,), header = struct.unpack_from("<L", data, pos + 4), 8
    elif data[pos + 4 : pos + 6] in _LONG_VRS:
        if pos + 12 > len(data):
            return "PixelData element header truncated"
        (length,), header = struct.unpack_from(order + "L", data, pos + 8), 12
    else:
        (length,), header = struct.unpack_from(order + "H", data, pos + 6), 8
    if length == 0xFFFFFFFF:  # encapsulated: the fragments must end with a sequence delimiter
        if data.rfind(_SEQ_DELIMITER, pos + header) < 0:
            return "encapsulated PixelData truncated (no sequence delimiter)"
        return None
    have = len(data) - pos - header
    if have < length:
        return f"PixelData truncated: {have} of {length} bytes received"
    n_bits = _image_bits(ds)
    if n_bits is None:
        return "image pixel module incomplete (Rows, Columns or BitsAllocated)"
    if length * 8 < n_bits:
        return f"PixelData truncated: {length} bytes for an image of {(n_bits + 7) // 8} bytes"
    return None


def _check_values(ds: Dataset) -> str | None:
    """Full check of a completely parsed dataset (used for deflated datasets)."""
    for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset yields elements, not tags
        raw = ds.get_item(tag)
        length = getattr(raw, "length", None)
        value = getattr(raw, "value", None)
        if (
            isinstance(value, bytes | bytearray)
            and length is not None
            and length != 0xFFFFFFFF
            and len(value) < length
        ):
            return f"element {tag} truncated: {len(value)} of {length} bytes"
    pixel = ds.get_item("PixelData")
    if pixel is None:
        return "PixelData missing"
    n_bits = _image_bits(ds)
    if n_bits is None:
        return "image pixel module incomplete (Rows, Columns or BitsAllocated)"
    have = len(pixel.value or b"")
    if have * 8 < n_bits:
        return f"PixelData truncated: {have} bytes for an image of {(n_bits + 7) // 8} bytes"
    return None


def _aet(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value or "").strip()


def _name(uid: str) -> str:
    for name, value in _STORAGE_CLASSES.items():
        if value == uid:
            return name
    return uid


def _sop_ref(event: Any) -> str:
    try:
        return ref(str(event.request.AffectedSOPInstanceUID))
    except Exception:
        return "-"
