"""Measurement SR (TID 1500): volumes read back, segment references, algorithm, UIDs."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest

from tests.unit.outputs_support import make_labels, make_mr_series
from worker.mapback import NativeLabels
from worker.outputs._common import OutputsError
from worker.outputs.seg import build_seg
from worker.outputs.sr import build_sr, volumes_from_sr
from worker.outputs.volumes import region_volumes_ml
from worker.outputs.writer import write_datasets

VERSION = "0.3.1"


def text_values(item, code: str) -> list[str]:
    """TEXT values of content items named ``code`` below ``item`` (a dataset or a sequence)."""
    out = []
    children = item.get("ContentSequence", []) if isinstance(item, pydicom.Dataset) else item
    for child in children:
        if child.ConceptNameCodeSequence[0].CodeValue == code and "TextValue" in child:
            out.append(child.TextValue)
        out.extend(text_values(child, code))
    return out


@pytest.fixture(scope="module")
def case():
    ds = make_mr_series()
    labels = make_labels()
    seg = build_seg(NativeLabels(labels, ds), model_version=VERSION)
    volumes = region_volumes_ml(labels, ds)
    return ds, seg, volumes, build_sr(volumes, seg, ds, model_version=VERSION)


def test_sr_volumes_read_back_from_file(case, tmp_path):
    _, _, volumes, sr = case
    assert volumes["whole_tumor"] > 0
    [path] = write_datasets([sr], tmp_path)
    back = volumes_from_sr(pydicom.dcmread(path))
    assert back == pytest.approx(volumes)


def test_sr_references_seg_segments_and_names_algorithm(case):
    ds, seg, _, sr = case
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    parsed = hd.sr.Comprehensive3DSR.from_dataset(sr, copy=True)
    groups = parsed.content.get_volumetric_roi_measurement_groups()
    refs = {}
    for g in groups:
        ref = g.referenced_segment[0].ReferencedSOPSequence[0]
        refs[str(g.tracking_identifier)] = (
            ref.ReferencedSOPInstanceUID,
            ref.ReferencedSegmentNumber,
        )
        [m] = g.get_measurements()
        assert m.unit.value == "ml" and m.unit.scheme_designator == "UCUM"
        assert m.name.value == "118565006"
        assert text_values(m, "111001") == ["gliomaseg"]  # Algorithm Name
        assert text_values(m, "111003") == [VERSION]  # Algorithm Version
    assert refs == {
        "Necrotic / non-enhancing core": (seg.SOPInstanceUID, 1),
        "Edema": (seg.SOPInstanceUID, 2),
        "Enhancing tumour": (seg.SOPInstanceUID, 3),
    }
    assert sr.StudyInstanceUID == ds[0].StudyInstanceUID
    assert sr.PatientName == ds[0].PatientName and sr.PatientID == ds[0].PatientID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert {e.SeriesInstanceUID for e in evidence} == {seg.SeriesInstanceUID}
    assert VERSION in sr.SoftwareVersions
    # each of the 5 groups and each of its measurements names the algorithm
    assert text_values(sr, "111001") == ["gliomaseg"] * 10


def test_sr_rerun_identical_uids(case):
    ds, seg, volumes, sr = case
    again = build_sr(volumes, seg, ds, model_version=VERSION)
    assert (again.SeriesInstanceUID, again.SOPInstanceUID) == (
        sr.SeriesInstanceUID,
        sr.SOPInstanceUID,
    )
    assert sr.SeriesInstanceUID != seg.SeriesInstanceUID


def test_sr_of_empty_prediction_says_zero():
    ds = make_mr_series(6, 16, 16)
    labels = np.zeros((6, 16, 16), np.uint8)
    seg = build_seg(NativeLabels(labels, ds), model_version=VERSION)
    sr = build_sr(region_volumes_ml(labels, ds), seg, ds, model_version=VERSION)
    assert volumes_from_sr(sr) == {
        k: 0.0 for k in ("necrotic", "edema", "enhancing", "tumor_core", "whole_tumor")
    }


def test_sr_needs_every_region(case):
    ds, seg, volumes, _ = case
    partial = {k: v for k, v in volumes.items() if k != "whole_tumor"}
    with pytest.raises(OutputsError, match="whole_tumor"):
        build_sr(partial, seg, ds, model_version=VERSION)
