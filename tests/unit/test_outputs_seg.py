"""DICOM-SEG: highdicom read-back equals the labels, codes, references, patient, re-run UIDs."""

from __future__ import annotations

import logging
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from tests.unit.outputs_support import CANARY_ID, CANARY_NAME, make_labels, make_mr_series
from worker.mapback import NativeLabels
from worker.outputs._common import OutputsError
from worker.outputs.seg import build_seg, labels_from_segments
from worker.outputs.writer import file_name, write_datasets

VERSION = "0.3.1"


def read_back(path: Path, datasets: list[pydicom.Dataset]) -> np.ndarray:
    seg = hd.seg.segread(path)
    masks = seg.get_pixels_by_source_instance(
        [str(ds.SOPInstanceUID) for ds in datasets],
        combine_segments=False,
        skip_overlap_checks=True,
    )
    return labels_from_segments(masks)


CASES = {
    "axial": dict(),
    "oblique": dict(oblique_deg=20.0),
    "5mm-shuffled": dict(n_slices=12, slice_mm=5.0, pixel_mm=1.5, shuffle=True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_seg_reads_back_voxel_for_voxel(case, tmp_path):
    ds = make_mr_series(**CASES[case])
    labels = make_labels(len(ds))
    seg = build_seg(NativeLabels(labels, ds), model_version=VERSION)
    [path] = write_datasets([seg], tmp_path)
    np.testing.assert_array_equal(read_back(path, ds), labels)


def test_seg_without_one_region_and_empty_prediction_read_back(tmp_path):
    ds = make_mr_series(10, 32, 32)
    labels = make_labels(10, 32, 32)
    labels[labels == 1] = 4  # no necrotic core at all
    empty = np.zeros_like(labels)
    for lab in (labels, empty):
        seg = build_seg(NativeLabels(lab, ds), model_version=VERSION)
        assert seg.SegmentationType == "BINARY"
        assert len(seg.SegmentSequence) == 3
        [path] = write_datasets([seg], tmp_path / str(int(lab.any())))
        np.testing.assert_array_equal(read_back(path, ds), lab)


@pytest.fixture(scope="module")
def built():
    ds = make_mr_series()
    return ds, build_seg(
        NativeLabels(make_labels(), ds), model_name="gliomaseg", model_version=VERSION
    )


def test_seg_codes_algorithm_and_labels(built):
    _, seg = built
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.SegmentationType == "BINARY"
    got = {}
    for item in seg.SegmentSequence:
        prop = item.SegmentedPropertyTypeCodeSequence[0]
        got[item.SegmentNumber] = (prop.CodingSchemeDesignator, prop.CodeValue)
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        assert item.AnatomicRegionSequence[0].CodeValue == "12738006"
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        algo = item.SegmentationAlgorithmIdentificationSequence[0]
        assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("gliomaseg", VERSION)
    assert got == {1: ("SCT", "6574001"), 2: ("SCT", "79654002"), 3: ("NCIt", "C113842")}
    assert seg.ContentLabel == "GLIOMASEG"
    assert VERSION in seg.ContentDescription
    assert VERSION in seg.SoftwareVersions


def test_seg_is_in_the_source_study_with_the_patient_and_references(built):
    ds, seg = built
    src = ds[0]
    for keyword in (
        "StudyInstanceUID",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "StudyDate",
        "StudyID",
        "FrameOfReferenceUID",
    ):
        assert seg[keyword].value == src[keyword].value, keyword
    assert seg.SeriesInstanceUID != src.SeriesInstanceUID
    [ref_series] = seg.ReferencedSeriesSequence
    assert ref_series.SeriesInstanceUID == src.SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in ref_series.ReferencedInstanceSequence} == {
        d.SOPInstanceUID for d in ds
    }
    # empty frames are omitted: far fewer frames than 24 slices x 3 segments
    assert 0 < seg.NumberOfFrames < 24 * 3


def test_rerun_gives_identical_uids_and_file_names(built, tmp_path):
    ds, seg = built
    again = build_seg(NativeLabels(make_labels(), ds), model_version=VERSION)
    assert (again.SeriesInstanceUID, again.SOPInstanceUID) == (
        seg.SeriesInstanceUID,
        seg.SOPInstanceUID,
    )
    assert file_name(again) == file_name(seg)
    first = write_datasets([seg], tmp_path)
    assert write_datasets([again], tmp_path) == first
    assert [p.name for p in tmp_path.iterdir()] == [first[0].name]
    other = build_seg(NativeLabels(make_labels(), ds), model_version="9.9.9")
    assert other.SeriesInstanceUID != seg.SeriesInstanceUID


def test_inputs_from_two_series_are_rejected():
    ds = make_mr_series(6, 8, 8)
    ds[3].SeriesInstanceUID = "1.2.3.4"
    with pytest.raises(OutputsError, match="one series of one study"):
        build_seg(NativeLabels(np.zeros((6, 8, 8), np.uint8), ds), model_version=VERSION)


def test_no_patient_identifiers_in_logs(caplog):
    """Every builder, with a tumour and without: the canary patient reaches no log record."""
    from worker.outputs.overlay import build_overlay
    from worker.outputs.sr import build_sr
    from worker.outputs.volumes import region_volumes_ml

    ds = make_mr_series(6, 16, 16)
    with caplog.at_level(logging.DEBUG):
        for labels in (np.zeros((6, 16, 16), np.uint8), make_labels(6, 16, 16)):
            seg = build_seg(NativeLabels(labels, ds), model_version=VERSION)
            build_sr(region_volumes_ml(labels, ds), seg, ds, model_version=VERSION)
            build_overlay(labels, ds, model_version=VERSION)
    text = "\n".join(f"{r.name} {r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert caplog.records, "expected highdicom to log at least its empty-frame notice"
    for phi in (CANARY_NAME, CANARY_ID, "CANARY", "ACC-CANARY-7", "19600101"):
        assert phi not in text


def test_multiframe_source_reads_back_by_frame(tmp_path):
    """Enhanced MR (one instance, frames stored in descending position): slice k is frame 12 - k."""
    from tests.unit.outputs_support import make_enhanced_mr

    series = make_mr_series(12, 32, 32)
    mf = make_enhanced_mr(series, reverse=True)
    labels = make_labels(12, 32, 32)
    frames = [12 - k for k in range(12)]

    seg = build_seg(NativeLabels(labels, [mf] * 12, frame_numbers=frames), model_version=VERSION)
    [path] = write_datasets([seg], tmp_path)
    back = hd.seg.segread(path).get_pixels_by_source_frame(
        str(mf.SOPInstanceUID),
        source_frame_numbers=frames,
        combine_segments=False,
        skip_overlap_checks=True,
        assert_missing_frames_are_empty=True,  # empty frames are omitted
    )
    np.testing.assert_array_equal(labels_from_segments(back), labels)
    with pytest.raises(OutputsError, match="needs frame_numbers"):
        build_seg(NativeLabels(labels, [mf] * 12), model_version=VERSION)
