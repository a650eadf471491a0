"""The node's fast path produces exactly the bytes pynetdicom's own code produces."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta, encode, encode_file_meta

from dicom_node import fastpath

UIDS = [
    ("1.2.840.10008.5.1.4.1.1.4", "1.2.3.4.5.6.7.8.9"),  # odd length: padded
    ("1.2.840.10008.5.1.4.1.1.4.1", "1.2.826.0.1.3680043.8.498.12345678901234567890"),
]


@pytest.mark.parametrize(("sop_class", "sop_uid"), UIDS)
@pytest.mark.parametrize("status", [0x0000, 0xA700])
def test_store_response_matches_pynetdicom(sop_class, sop_uid, status):
    rsp = C_STORE()
    rsp.MessageID = rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = sop_uid
    rsp.Status = status
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    expected = encode(msg.command_set, True, True)
    assert fastpath.store_response_command(sop_class, sop_uid, 7, status) == expected


@pytest.mark.parametrize(("sop_class", "sop_uid"), UIDS)
@pytest.mark.parametrize(
    "ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, "1.2.840.10008.1.2.4.90"]
)
def test_file_meta_matches_pynetdicom(sop_class, sop_uid, ts):
    meta = create_file_meta(sop_class_uid=sop_class, sop_instance_uid=sop_uid, transfer_syntax=ts)
    expected = b"\x00" * 128 + b"DICM" + encode_file_meta(meta)
    got = fastpath.file_meta_bytes(sop_class, sop_uid, ts)
    assert got == expected
    read = pydicom.filereader.read_preamble(io.BytesIO(got), False)
    assert read is not None
    parsed = pydicom.filereader._read_file_meta_info(io.BytesIO(got[132:]))
    assert parsed.MediaStorageSOPInstanceUID == sop_uid and parsed.TransferSyntaxUID == ts


def test_encoded_instance_is_a_readable_file():
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, "1.2.3.4"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", "1.2.3.1"
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=True, little_endian=True)  # the data set as the peer sent it

    class Request:
        AffectedSOPClassUID = MRImageStorage
        AffectedSOPInstanceUID = "1.2.3.4"
        DataSet = io.BytesIO(buf.getvalue())

    class Context:
        transfer_syntax = ImplicitVRLittleEndian

    class Event:
        request = Request()
        context = Context()

    data = fastpath.encoded_instance(Event())
    back = pydicom.dcmread(io.BytesIO(data))
    assert back.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert back.SOPInstanceUID == "1.2.3.4" and back.SeriesInstanceUID == "1.2.3.1"


def test_installed_only_on_the_pinned_pynetdicom(monkeypatch):
    import pynetdicom

    monkeypatch.setattr(pynetdicom, "__version__", "9.9.9")
    sentinel = object()

    class Assoc:
        _run_reactor = sentinel

    assert fastpath.install(Assoc()) is False
    assert Assoc._run_reactor is sentinel
