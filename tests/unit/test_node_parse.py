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
