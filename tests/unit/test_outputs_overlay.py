"""Overlay Secondary Capture: slices chosen, colours drawn, banner, order, patient, UIDs."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from tests.unit.outputs_support import make_labels, make_mr_series
from worker.outputs._common import LABEL_RGB, OutputsError
from worker.outputs.overlay import build_overlay, orientation_letters
from worker.outputs.volumes import region_volumes_ml
from worker.outputs.writer import write_datasets

VERSION = "0.3.1"


@pytest.fixture(scope="module")
def case():
    """Datasets and labels shuffled together: labels[k] still belongs to ds[k]."""
    ds = make_mr_series()
    labels = make_labels()
    perm = np.random.default_rng(3).permutation(len(ds))
    return [ds[i] for i in perm], labels[perm]


def test_tumour_slices_plus_margin_in_position_order(case):
    ds, labels = case
    scs = build_overlay(labels, ds, model_version=VERSION, margin=2)
    positions = {d.SOPInstanceUID: float(d.ImagePositionPatient[2]) for d in ds}
    has = {d.SOPInstanceUID: bool(labels[k].any()) for k, d in enumerate(ds)}
    n_tumour = sum(has.values())
    assert len(scs) == n_tumour + 4
    assert [sc.InstanceNumber for sc in scs] == list(range(1, len(scs) + 1))
    src = [sc.SourceImageSequence[0].ReferencedSOPInstanceUID for sc in scs]
    assert [positions[u] for u in src] == sorted(positions[u] for u in src)
    assert not has[src[0]] and not has[src[1]] and has[src[2]]
    assert len({sc.SeriesInstanceUID for sc in scs}) == 1
    assert len({sc.SOPInstanceUID for sc in scs}) == len(scs)


def test_all_slices_mode():
    ds = make_mr_series(8, 32, 32)
    scs = build_overlay(make_labels(8, 32, 32), ds, model_version=VERSION, slices="all")
    assert len(scs) == 8


def test_pictures_show_labels_banner_and_legend(case, tmp_path):
    ds, labels = case
    vols = region_volumes_ml(labels, ds)
    scs = build_overlay(labels, ds, model_version=VERSION, volumes_ml=vols, margin=0)
    paths = write_datasets(scs, tmp_path)
    mid = pydicom.dcmread(paths[len(paths) // 2])
    assert mid.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert (mid.PhotometricInterpretation, mid.SamplesPerPixel, mid.BitsAllocated) == ("RGB", 3, 8)
    assert mid.BurnedInAnnotation == "YES"
    assert mid.ImageComments == "NOT FOR DIAGNOSTIC USE"
    rgb = mid.pixel_array
    assert rgb.shape == (256, 256, 3)  # 64 x 64 enlarged 4 times
    # banner: a dark red band across the top
    band = rgb[2:8, 10:-10].reshape(-1, 3).astype(int)
    assert (band[:, 0] - band[:, 1]).mean() > 60
    # each label colour appears (outlines are drawn in the pure colour)
    k = [d.SOPInstanceUID for d in ds].index(mid.SourceImageSequence[0].ReferencedSOPInstanceUID)
    for value in np.unique(labels[k])[1:]:
        colour = np.asarray(LABEL_RGB[int(value)])
        assert np.any(np.all(rgb == colour, axis=-1)), value
    # outside the labels, pixels stay grey (below the banner and title, above the legend)
    body = rgb[60:120, 5:40].astype(int)
    assert np.abs(body[..., 0] - body[..., 1]).max() <= 1


def test_patient_study_and_reruns(case):
    ds, labels = case
    a = build_overlay(labels, ds, model_version=VERSION)
    b = build_overlay(labels, ds, model_version=VERSION)
    assert [x.SOPInstanceUID for x in a] == [y.SOPInstanceUID for y in b]
    assert a[0].SeriesInstanceUID == b[0].SeriesInstanceUID
    for sc in a:
        assert sc.StudyInstanceUID == ds[0].StudyInstanceUID
        assert sc.PatientName == ds[0].PatientName
        assert sc.PatientID == ds[0].PatientID
        assert sc.AccessionNumber == ds[0].AccessionNumber


def test_empty_prediction_gives_one_labelled_instance():
    ds = make_mr_series(9, 32, 32)
    [sc] = build_overlay(np.zeros((9, 32, 32), np.uint8), ds, model_version=VERSION)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == ds[4].SOPInstanceUID


def test_headers_without_pixels_need_images():
    ds = make_mr_series(6, 16, 16)
    pixels = np.stack([d.pixel_array for d in ds]).astype(np.float32)
    for d in ds:
        del d.PixelData
    labels = make_labels(6, 16, 16)
    with pytest.raises(OutputsError, match="no PixelData"):
        build_overlay(labels, ds, model_version=VERSION)
    assert build_overlay(labels, ds, model_version=VERSION, images=pixels)


def test_orientation_letters():
    assert orientation_letters([1, 0, 0]) == "L"
    assert orientation_letters([0, -1, 0]) == "A"
    assert orientation_letters([0, 0.94, -0.34]) == "PF"


def test_multiframe_source_pixels_and_frame_references():
    from tests.unit.outputs_support import make_enhanced_mr

    series = make_mr_series(12, 32, 32)
    labels = make_labels(12, 32, 32)
    mf = make_enhanced_mr(series, reverse=True)
    frames = [12 - k for k in range(12)]
    multi = build_overlay(labels, [mf] * 12, model_version=VERSION, frame_numbers=frames)
    single = build_overlay(labels, series, model_version=VERSION)
    assert len(multi) == len(single)
    for a, b in zip(multi, single, strict=True):
        np.testing.assert_array_equal(a.pixel_array, b.pixel_array)
        k = [s.SOPInstanceUID for s in series].index(
            b.SourceImageSequence[0].ReferencedSOPInstanceUID
        )
        assert a.SourceImageSequence[0].ReferencedFrameNumber == 12 - k


def test_rle_overlay_decodes_to_the_same_pictures(tmp_path):
    from pydicom.uid import RLELossless

    ds = make_mr_series(8, 32, 32)
    labels = make_labels(8, 32, 32)
    plain = build_overlay(labels, ds, model_version=VERSION)
    rle = build_overlay(labels, ds, model_version=VERSION, transfer_syntax_uid=RLELossless)
    paths = write_datasets(rle, tmp_path)
    for a, path in zip(plain, paths, strict=True):
        back = pydicom.dcmread(path)
        assert back.file_meta.TransferSyntaxUID == RLELossless
        np.testing.assert_array_equal(back.pixel_array, a.pixel_array)
    with pytest.raises(OutputsError, match="transfer syntax"):
        build_overlay(
            labels, ds, model_version=VERSION, transfer_syntax_uid="1.2.840.10008.1.2.4.50"
        )
