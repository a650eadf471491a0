"""Every object worker.outputs writes passes dciodvfy (no "Error" line) and reads back.

Synthetic MR series (pydicom, no data needed) and, with GLIOMASEG_TEST_DATA, a BraTS case made
into DICOM by dicom_node.studygen at full size (240 x 240 x 155), oblique and 5 mm.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from tests.unit.outputs_support import make_labels, make_mr_series
from worker.mapback import NativeLabels
from worker.outputs.overlay import build_overlay
from worker.outputs.seg import build_seg, labels_from_segments
from worker.outputs.sr import build_sr, volumes_from_sr
from worker.outputs.volumes import region_volumes_ml
from worker.outputs.writer import write_datasets

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed"
    ),
]

VERSION = "0.3.1"
BRATS_CASE = "Brats18_CBICA_ABM_1"  # 3398 / 30215 / 6159 voxels of labels 1 / 2 / 4 at 1 mm


def dciodvfy_errors(path: Path) -> list[str]:
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


@dataclass(frozen=True)
class Written:
    labels: np.ndarray
    datasets: list[pydicom.Dataset]
    volumes: dict[str, float]
    seg: Path
    sr: Path
    overlay: list[Path]


def write_all(labels: np.ndarray, datasets: list[pydicom.Dataset], out: Path) -> Written:
    seg = build_seg(NativeLabels(labels, datasets), model_version=VERSION)
    volumes = region_volumes_ml(labels, datasets)
    sr = build_sr(volumes, seg, datasets, model_version=VERSION)
    sc = build_overlay(labels, datasets, model_version=VERSION, volumes_ml=volumes)
    [seg_path] = write_datasets([seg], out / "seg")
    [sr_path] = write_datasets([sr], out / "sr")
    return Written(labels, datasets, volumes, seg_path, sr_path, write_datasets(sc, out / "sc"))


def check(w: Written) -> None:
    for path in [w.seg, w.sr, *w.overlay]:
        assert dciodvfy_errors(path) == [], path.parent.name
    seg = hd.seg.segread(w.seg)
    masks = seg.get_pixels_by_source_instance(
        [str(ds.SOPInstanceUID) for ds in w.datasets],
        combine_segments=False,
        skip_overlap_checks=True,
    )
    np.testing.assert_array_equal(labels_from_segments(masks), w.labels)
    assert volumes_from_sr(pydicom.dcmread(w.sr)) == pytest.approx(w.volumes)
    assert w.overlay


SYNTHETIC = {
    "axial": (dict(), True),
    "oblique": (dict(oblique_deg=20.0), True),
    "5mm": (dict(n_slices=12, slice_mm=5.0, pixel_mm=1.5), True),
    "empty": (dict(n_slices=8), False),
}


@pytest.mark.parametrize("case", sorted(SYNTHETIC))
def test_synthetic_series_outputs_validate(case, tmp_path):
    kw, tumour = SYNTHETIC[case]
    ds = make_mr_series(**kw)
    labels = make_labels(len(ds)) if tumour else np.zeros((len(ds), 64, 64), np.uint8)
    check(write_all(labels, ds, tmp_path))


# --- real data: a BraTS case written as a DICOM series by studygen ------------------------------


def brats_series(datasets: Path, out: Path, **grid) -> tuple[np.ndarray, list[pydicom.Dataset]]:
    import nibabel as nib

    from dicom_node.studygen import series_grid, write_study

    case = datasets / "brats" / BRATS_CASE
    img = nib.load(case / f"{BRATS_CASE}_t1ce.nii.gz")
    seg = nib.load(case / f"{BRATS_CASE}_seg.nii.gz")
    written = write_study(
        {"T1c": (np.asanyarray(img.dataobj), img.affine)},
        out,
        patient_name="CANARY^PHI",
        patient_id="CANARY-ID-0042",
        **grid,
    )
    grid_labels, _ = series_grid(np.asanyarray(seg.dataobj), seg.affine, order=0, **grid)
    # studygen: instance k holds array[:, :, k]; pixel [row r, column c] = array[c, r, k]
    labels = np.ascontiguousarray(np.asarray(grid_labels, np.uint8).transpose(2, 1, 0))
    series = written.series["T1c"]
    return labels, [pydicom.dcmread(p) for p in series.paths]


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize(
    "grid",
    [dict(), dict(oblique_deg=15.0, slice_mm=3.0), dict(slice_mm=5.0)],
    ids=["1mm-240x240x155", "oblique-15deg-3mm", "5mm"],
)
def test_brats_series_outputs_validate(datasets, grid, tmp_path):
    labels, ds = brats_series(datasets, tmp_path / "study", **grid)
    assert labels.any()
    w = write_all(labels, ds, tmp_path / "out")
    check(w)
    if not grid:  # 1 mm isotropic: volumes are the voxel counts of the ground truth / 1000
        assert w.volumes == pytest.approx(
            {
                "necrotic": 3.398,
                "edema": 30.215,
                "enhancing": 6.159,
                "tumor_core": 9.557,
                "whole_tumor": 39.772,
            }
        )
    for path in [w.seg, w.sr, w.overlay[0]]:
        out = pydicom.dcmread(path, stop_before_pixels=True)
        assert out.PatientName == "CANARY^PHI" and out.PatientID == "CANARY-ID-0042"
        assert out.StudyInstanceUID == ds[0].StudyInstanceUID


def test_multiframe_source_outputs_validate(tmp_path):
    """Enhanced MR source: SEG frames point at source frames; SR and overlay validate too."""
    from tests.unit.outputs_support import make_enhanced_mr

    series = make_mr_series(12, 32, 32)
    mf = make_enhanced_mr(series, reverse=True)
    labels = make_labels(12, 32, 32)
    frames = [12 - k for k in range(12)]

    datasets = [mf] * 12
    seg = build_seg(NativeLabels(labels, datasets, frame_numbers=frames), model_version=VERSION)
    volumes = region_volumes_ml(labels, datasets, frames)
    sr = build_sr(volumes, seg, datasets, model_version=VERSION)
    sc = build_overlay(labels, datasets, model_version=VERSION, frame_numbers=frames)
    for path in write_datasets([seg, sr, *sc], tmp_path):
        assert dciodvfy_errors(path) == [], path
    assert volumes == region_volumes_ml(labels, series)


# --- Orthanc as the PACS: it accepts every object, files them in the source study, and a re-run
# (same UIDs) adds no series -------------------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    import json
    import os
    import urllib.request

    from tests.conftest import free_port, wait_for

    if shutil.which("Orthanc") is None:
        pytest.skip("Orthanc not installed")
    root = tmp_path_factory.mktemp("orthanc")
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "gliomaseg-outputs-test",
        "StorageDirectory": str(root / "db"),
        "IndexDirectory": str(root / "db"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "Plugins": [],
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    log = (root / "orthanc.log").open("w")
    proc = subprocess.Popen(
        ["Orthanc", str(root / "orthanc.json")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    base = f"http://127.0.0.1:{http_port}"

    def get(path: str):
        with urllib.request.urlopen(base + path, timeout=10) as resp:
            return json.loads(resp.read())

    def up() -> bool:
        try:
            return bool(get("/system"))
        except OSError:
            return False

    try:
        wait_for(up, timeout_s=30)
        yield {"port": dicom_port, "get": get}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def storescu(port: int, paths: list[Path], *options: str) -> None:
    import os

    proc = subprocess.run(
        ["storescu", "-R", *options, "-aec", "ORTHANC", "127.0.0.1", str(port), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_orthanc_files_outputs_in_the_source_study_and_reruns_add_nothing(orthanc, tmp_path):
    ds = make_mr_series(16, 48, 48)
    labels = make_labels(16, 48, 48)
    source_paths = write_datasets(ds, tmp_path / "source")
    first = write_all(labels, ds, tmp_path / "run1")
    second = write_all(labels, ds, tmp_path / "run2")  # the same job run again
    storescu(orthanc["port"], source_paths)
    storescu(orthanc["port"], [first.seg, first.sr, *first.overlay])

    expected = {"MR": 16, "SEG": 1, "SR": 1, "OT": len(first.overlay)}
    assert instances_by_modality(orthanc, ds[0].StudyInstanceUID) == expected
    assert len(orthanc["get"]("/patients")) == 1  # outputs carry the source's patient
    storescu(orthanc["port"], [second.seg, second.sr, *second.overlay])
    assert instances_by_modality(orthanc, ds[0].StudyInstanceUID) == expected
    [study] = [
        s
        for s in orthanc["get"]("/studies?expand")
        if s["MainDicomTags"]["StudyInstanceUID"] == ds[0].StudyInstanceUID
    ]
    assert len(study["Series"]) == 4


def instances_by_modality(orthanc, study_uid: str) -> dict[str, int]:
    """Orthanc's view of one study: modality -> number of instances."""
    [study] = [
        s["ID"]
        for s in orthanc["get"]("/studies?expand")
        if s["MainDicomTags"]["StudyInstanceUID"] == study_uid
    ]
    out: dict[str, int] = {}
    for s in orthanc["get"](f"/studies/{study}/series"):
        modality = s["MainDicomTags"]["Modality"]
        out[modality] = out.get(modality, 0) + len(s["Instances"])
    return out


def test_orthanc_accepts_rle_overlay(orthanc, tmp_path):
    from pydicom.uid import RLELossless

    ds = make_mr_series(8, 32, 32)
    sc = build_overlay(
        make_labels(8, 32, 32), ds, model_version=VERSION, transfer_syntax_uid=RLELossless
    )
    paths = write_datasets(sc, tmp_path)
    for path in paths:
        assert (
            pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
            == RLELossless
        )
        assert dciodvfy_errors(path) == []
    storescu(orthanc["port"], paths, "-xr")  # propose RLE Lossless (storescu cannot convert)
    assert instances_by_modality(orthanc, ds[0].StudyInstanceUID) == {"OT": len(sc)}
