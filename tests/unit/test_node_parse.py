"""The SCP's dataset checks, on encoded bytes in every byte layout (no network)."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from dicom_node.scp import _parse
from tests.node_support import CT, make_instance


def encoded(tmp_path, ts=ExplicitVRLittleEndian, **kw) -> bytes:
    p = tmp_path / "x.dcm"
    make_instance(p, study_uid=generate_uid(), series_uid=generate_uid(), rows=32, **kw)
    ds = pydicom.dcmread(p)
    if ts == RLELossless:
        ds.compress(RLELossless)
    elif ts != ExplicitVRLittleEndian:  # big endian is covered by test_node_receive (dcmconv)
        ds.file_meta.TransferSyntaxUID = ts
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize(
    "ts",
    [
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        RLELossless,
    ],
)
def test_complete_dataset_passes_and_headers_have_no_pixels(tmp_path, ts):
    ds, problem = _parse(encoded(tmp_path, ts))
    assert problem is None
    assert "PixelData" not in ds and ds.Rows == 32


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless])
def test_cut_dataset_is_refused(tmp_path, ts):
    _, problem = _parse(encoded(tmp_path, ts)[:-100])
    assert problem is not None and "truncated" in problem


def test_missing_uid_and_wrong_class(tmp_path):
    p = tmp_path / "x.dcm"
    make_instance(p, study_uid=generate_uid(), series_uid=generate_uid())
    ds = pydicom.dcmread(p)
    del ds.StudyInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf)
    assert _parse(buf.getvalue())[1] == "StudyInstanceUID missing or empty"
    _, problem = _parse(encoded(tmp_path, sop_class=CT))
    assert "does not match an MR storage class" in problem


def test_short_but_consistent_pixel_data_is_refused(tmp_path):
    p = tmp_path / "x.dcm"
    make_instance(p, study_uid=generate_uid(), series_uid=generate_uid(), rows=32)
    ds = pydicom.dcmread(p)
    ds.PixelData = ds.PixelData[:1000]
    buf = io.BytesIO()
    ds.save_as(buf)
    _, problem = _parse(buf.getvalue())
    assert problem == "PixelData truncated: 1000 bytes for an image of 2048 bytes"


def test_fast_header_parse_equals_dcmread_on_real_series(datasets):
    """Every vendor's real files (GE, Siemens, Philips, Hitachi; implicit VR; multi-frame):
    the node's header parse holds exactly the elements and values pydicom's dcmread reads."""
    from dicom_node.scp import _file_meta

    by_folder: dict = {}
    for f in sorted((datasets / "dicom").rglob("*")):
        if f.is_file() and f.parent not in by_folder and f.suffix not in (".gz", ".txt", ".json"):
            with open(f, "rb") as fh:
                if fh.read(132)[128:] == b"DICM":
                    by_folder[f.parent] = f  # one file per folder
    assert len(by_folder) >= 10
    n_fast = 0
    for f in by_folder.values():
        data = f.read_bytes()
        ref = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        try:
            ds, _ = _parse(data)
        except Exception as exc:  # pydicom's own test files include deliberately broken ones
            pytest.fail(f"{f}: {exc!r}")
        n_fast += _file_meta(data) is not None
        assert [e.tag for e in ds] == [e.tag for e in ref], f
        for elem in ref:
            if elem.VR != "SQ":
                assert ds[elem.tag].value == elem.value, (f, elem.tag)
        assert ds.file_meta.TransferSyntaxUID == ref.file_meta.TransferSyntaxUID
    assert n_fast >= len(by_folder) // 2  # most real files take the fast path
