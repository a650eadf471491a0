"""Viewer volumes rebuilt from DICOM: a studygen series + the OUTPUTS engineer's BINARY SEG."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest

from web.fromdicom import find_seg, write_viewer_files
from web.viewer import load_viewer_volume
from worker.mapback import NativeLabels


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    from dicom_node import studygen
    from worker.outputs.seg import build_seg

    root = tmp_path_factory.mktemp("fromdicom")
    rng = np.random.default_rng(3)
    volume = (rng.random((32, 28, 10)) * 600 + 100).astype(np.float32)
    ras_affine = np.array(
        [[-0.9, 0, 0, 20.0], [0, -0.9, 0, 30.0], [0, 0, 4.0, -10.0], [0, 0, 0, 1]]
    )
    written = studygen.write_study({"T1c": (volume, ras_affine)}, root / "study", oblique_deg=12.0)
    files = written.series["T1c"].paths
    datasets = [pydicom.dcmread(p) for p in files]
    iop = np.asarray(datasets[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    datasets.sort(key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))))
    labels = np.zeros((len(datasets), datasets[0].Rows, datasets[0].Columns), np.uint8)
    labels[4, 5:9, 6:12] = 2
    labels[5, 7, 8] = 4
    labels[6, 3, 3] = 1
    seg = build_seg(NativeLabels(labels, datasets), model_version="test")
    out = root / "outputs"
    out.mkdir()
    seg.save_as(out / "seg.dcm")
    (out / "not-dicom.txt").write_text("x")
    return files, datasets, labels, out


def test_find_seg_picks_the_seg(case):
    files, _, _, out = case
    assert find_seg([out / "not-dicom.txt", files[0], out / "seg.dcm"]) == out / "seg.dcm"
    assert find_seg(files[:2]) is None


def test_labels_land_on_the_reference_pixels_and_world_positions(case, tmp_path):
    files, datasets, labels, out = case
    write_viewer_files(files, out / "seg.dcm", tmp_path)
    lab = nib.load(tmp_path / "labels.nii.gz")
    ref = nib.load(tmp_path / "reference.nii.gz")
    assert np.allclose(lab.affine, ref.affine)
    data = np.asanyarray(lab.dataobj)
    assert data.shape == (labels.shape[2], labels.shape[1], labels.shape[0])
    assert np.array_equal(data.transpose(2, 1, 0), labels), (
        "labels[k, row, col] must be voxel (col, row, k)"
    )
    # the voxel's world position (RAS) is the DICOM pixel's position (LPS) with x, y negated
    d = datasets[5]
    iop = np.asarray(d.ImageOrientationPatient, float)
    row_mm, col_mm = (float(x) for x in d.PixelSpacing)
    lps = np.asarray(d.ImagePositionPatient, float) + 8 * col_mm * iop[:3] + 7 * row_mm * iop[3:]
    ras = lab.affine @ np.array([8, 7, 5, 1.0])
    assert np.allclose(ras[:3], lps * [-1, -1, 1], atol=1e-3)
    # pixel values follow the stored pixels (with rescale)
    ref_data = np.asanyarray(ref.dataobj)
    expected = d.pixel_array[7, 8] * float(d.get("RescaleSlope", 1)) + float(
        d.get("RescaleIntercept", 0)
    )
    assert ref_data[8, 7, 5] == pytest.approx(expected)
    vol = load_viewer_volume(tmp_path)
    assert {r["key"] for r in vol.describe()["regions"] if r["present"]} == {
        "necrotic",
        "edema",
        "enhancing",
    }


def test_the_app_falls_back_to_the_dicom_outputs(case, tmp_path):
    import shutil

    from fastapi.testclient import TestClient

    from config.settings import Settings
    from dicom_node.jobs import JobState, JobStore
    from dicom_node.spool import Spool
    from web.app import create_app

    files, datasets, labels, out = case
    settings = Settings(spool={"root": str(tmp_path / "spool")}, web={"token": "t"})
    spool = Spool(settings.spool.root)
    d0 = datasets[0]
    for p in files:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        spool.store(
            str(ds.StudyInstanceUID),
            str(ds.SeriesInstanceUID),
            str(ds.SOPInstanceUID),
            p.read_bytes(),
        )
    store = JobStore(settings.database_url)
    job = store.create(str(d0.StudyInstanceUID), calling_ae="MR", calling_ip="1.2.3.4",
                       roles={"T1c": str(d0.SeriesInstanceUID)})  # fmt: skip
    store.set_state(job.id, JobState.delivered)
    shutil.copy(out / "seg.dcm", spool.outputs_dir(job.id) / "seg.dcm")
    client = TestClient(create_app(settings, store=store))
    auth = {"Authorization": "Bearer t"}
    assert client.get(f"/api/jobs/{job.id}", headers=auth).json()["has_viewer"]
    meta = client.get(f"/api/jobs/{job.id}/viewer", headers=auth).json()
    assert meta["planes"]["axial"]["slices"] == labels.shape[0]
    r = client.get(f"/api/jobs/{job.id}/labels.nii.gz", headers=auth)
    assert r.status_code == 200
    assert (tmp_path / "spool" / "web" / job.id / "labels.nii.gz").is_file()


def test_enhanced_multiframe_reference_is_rebuilt_frame_by_frame(tmp_path):
    """One Enhanced MR instance, frames stored in descending position: every SEG frame lands on
    the slice of the frame it references, on the same grid as the single-frame series it holds."""
    from tests.unit.outputs_support import make_enhanced_mr, make_labels, make_mr_series
    from worker.outputs.seg import build_seg

    series = make_mr_series(12, 32, 28, oblique_deg=10.0)  # ascending along the slice normal
    mf = make_enhanced_mr(series, reverse=True)  # frame 1 = last slice
    frames = [12 - k for k in range(12)]  # slice k lies on frame 12 - k
    labels = make_labels(12, 32, 28)
    assert {1, 2, 4} <= set(np.unique(labels))
    seg = build_seg(NativeLabels(labels, [mf] * 12, frame_numbers=frames), model_version="test")
    src_dir, out = tmp_path / "src", tmp_path / "out"
    src_dir.mkdir()
    mf.save_as(src_dir / "mf.dcm", enforce_file_format=True)
    seg.save_as(tmp_path / "seg.dcm")

    write_viewer_files([src_dir / "mf.dcm"], tmp_path / "seg.dcm", out)
    lab = nib.load(out / "labels.nii.gz")
    ref = nib.load(out / "reference.nii.gz")
    data = np.asanyarray(lab.dataobj).transpose(2, 1, 0)
    assert np.array_equal(data, labels), "SEG frame f must land on the slice of source frame f"

    # the same slices as single-frame instances give the same grid and pixels
    single = tmp_path / "single"
    single.mkdir()
    paths = []
    for i, ds in enumerate(series):
        paths.append(single / f"{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    from web.fromdicom import series_volume

    image, affine, uids, frames_back = series_volume(paths)
    assert frames_back is None and len(set(uids)) == 12
    assert np.allclose(ref.affine, affine, atol=1e-4)
    assert np.allclose(np.asanyarray(ref.dataobj), image)
    vol = load_viewer_volume(out)
    assert {r["key"] for r in vol.describe()["regions"] if r["present"]} == {
        "necrotic",
        "edema",
        "enhancing",
    }
