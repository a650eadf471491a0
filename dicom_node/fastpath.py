"""The node's receive fast path: three pieces of pynetdicom's per-instance work done cheaply.

Measured in ``bench/node_bench.py`` (one association, the sender waiting for every response):

* **A waking acceptor loop.** pynetdicom 3.0.4's ``Association._run_reactor`` sleeps a fixed 1 ms
  before each look at its DIMSE message queue, so every instance pays that sleep.
  :func:`waking_reactor` is the same loop, step for step, except that it waits on the queue's
  condition for up to the same 1 ms: a message wakes it at once, and the release, abort,
  DUL-alive and idle-timeout checks still run at least every millisecond.
* **The C-STORE-RSP encoded directly.** pynetdicom builds a pydicom Dataset for every response
  and encodes it with the generic writer; a successful C-STORE-RSP is six fixed elements
  (:func:`store_response_command`), byte for byte what pynetdicom would send.
* **The file meta written directly** (:func:`file_meta_bytes`), instead of pynetdicom's
  ``Event.encoded_dataset()`` which builds and encodes a FileMetaDataset with pydicom: same bytes.

The first two touch pynetdicom's private API and are installed per association (:func:`install`,
from the node's EVT_CONN_OPEN handler) only on the pinned version whose code they mirror; on any
other version the association keeps pynetdicom's own code. Failure responses always go through
pynetdicom.

The loop is adapted from pynetdicom 3.0.4 ``pynetdicom/association.py`` (MIT licence,
Copyright (c) 2018 pynetdicom contributors).
"""

from __future__ import annotations

import logging
import struct
from typing import Any

import pynetdicom
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

LOGGER = logging.getLogger("pynetdicom.assoc")

PINNED = "3.0.4"  # the version whose Association._run_reactor this mirrors
POLL_S = 0.001  # the longest a loop waits: pynetdicom's own sleep


def supported() -> bool:
    return str(pynetdicom.__version__) == PINNED


def install(assoc: Any) -> bool:
    """Give one acceptor association the fast path; False (pynetdicom's code kept) if unsupported."""
    if not supported():
        return False
    assoc._run_reactor = lambda: waking_reactor(assoc)
    dimse = assoc.dimse
    stock_send = dimse.send_msg

    def send_msg(primitive: Any, context_id: int) -> None:
        if (
            type(primitive) is C_STORE
            and primitive.MessageIDBeingRespondedTo is not None
            and primitive.Status == 0x0000
            and primitive.ErrorComment is None
            and primitive.OffendingElement is None
            and not assoc.get_handlers(evt.EVT_DIMSE_SENT)
        ):
            command = store_response_command(
                str(primitive.AffectedSOPClassUID),
                str(primitive.AffectedSOPInstanceUID),
                int(primitive.MessageIDBeingRespondedTo),
                0x0000,
            )
            pdata = P_DATA()
            # message control header 0x03: a command, and its last fragment (PS3.8 E.2)
            pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
            dimse.dul.send_pdu(pdata)
            return
        stock_send(primitive, context_id)

    dimse.send_msg = send_msg
    return True


def _even(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def _implicit(group: int, element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", group, element, len(value)) + value


def store_response_command(
    sop_class_uid: str, sop_instance_uid: str, message_id: int, status: int
) -> bytes:
    """A C-STORE-RSP command set, Implicit VR Little Endian (PS3.7 9.3.1.2 and 6.3.1)."""
    body = b"".join(
        (
            _implicit(0x0000, 0x0002, _even(sop_class_uid.encode("ascii"), b"\x00")),
            _implicit(0x0000, 0x0100, struct.pack("<H", 0x8001)),  # C-STORE-RSP
            _implicit(0x0000, 0x0120, struct.pack("<H", message_id)),
            _implicit(0x0000, 0x0800, struct.pack("<H", 0x0101)),  # no data set
            _implicit(0x0000, 0x0900, struct.pack("<H", status)),
            _implicit(0x0000, 0x1000, _even(sop_instance_uid.encode("ascii"), b"\x00")),
        )
    )
    return _implicit(0x0000, 0x0000, struct.pack("<I", len(body))) + body


def _explicit(element: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR"):
        return (
            struct.pack("<HH", 0x0002, element)
            + vr
            + b"\x00\x00"
            + struct.pack("<I", len(value))
            + value
        )
    return struct.pack("<HH", 0x0002, element) + vr + struct.pack("<H", len(value)) + value


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """Preamble, "DICM" and the File Meta Information group (PS3.10 7.1) for a received instance.

    The same elements and bytes as pynetdicom's ``Event.encoded_dataset()``.
    """
    body = b"".join(
        (
            _explicit(0x0001, b"OB", b"\x00\x01"),
            _explicit(0x0002, b"UI", _even(sop_class_uid.encode("ascii"), b"\x00")),
            _explicit(0x0003, b"UI", _even(sop_instance_uid.encode("ascii"), b"\x00")),
            _explicit(0x0010, b"UI", _even(transfer_syntax_uid.encode("ascii"), b"\x00")),
            _explicit(0x0012, b"UI", _even(str(PYNETDICOM_IMPLEMENTATION_UID).encode(), b"\x00")),
            _explicit(0x0013, b"SH", _even(PYNETDICOM_IMPLEMENTATION_VERSION.encode(), b" ")),
        )
    )
    group_length = _explicit(0x0000, b"UL", struct.pack("<I", len(body)))
    return b"\x00" * 128 + b"DICM" + group_length + body


def encoded_instance(event: Any) -> bytes:
    """``event.encoded_dataset()`` (file meta + the data set as received), built without pydicom."""
    request = event.request
    return (
        file_meta_bytes(
            str(request.AffectedSOPClassUID),
            str(request.AffectedSOPInstanceUID),
            str(event.context.transfer_syntax),
        )
        + request.DataSet.getvalue()
    )


def _wait_for_message(msg_queue: Any, timeout_s: float) -> None:
    """Return when ``msg_queue`` holds an item or ``timeout_s`` has passed (nothing is taken)."""
    with msg_queue.not_empty:
        if not msg_queue._qsize():
            msg_queue.not_empty.wait(timeout_s)


def waking_reactor(self: Any) -> None:
    """pynetdicom 3.0.4 ``Association._run_reactor`` with the fixed sleep replaced by a wait."""
    self._is_paused = False
    while not self._kill:
        _wait_for_message(self.dimse.msg_queue, POLL_S)

        # pynetdicom lets the reactor be paused while the acceptor itself sends DIMSE messages.
        self._is_paused = True
        self._reactor_checkpoint.wait()
        self._is_paused = False

        context_id, msg = self.dimse.get_msg(block=False)
        if msg:
            self._serve_request(msg, context_id)

        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            LOGGER.info("Association Released")
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return

        if self.acse.is_aborted():
            log_msg = "Association Aborted"
            if self.acse.is_aborted("a-p-abort"):
                log_msg += " (A-P-ABORT)"
            LOGGER.info(log_msg)
            self.dul.receive_pdu(wait=False)
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return

        if not self.dul.is_alive():
            self.kill()
            return

        if self.dul.idle_timer_expired():
            LOGGER.error("Network timeout reached")
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()
            self.kill()
            return
