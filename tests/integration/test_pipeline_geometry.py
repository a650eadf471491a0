"""Geometry through the whole pipeline, independent of the model's quality.

A BraTS case is made into a DICOM study (studygen), spooled, converted and preprocessed by the real
parts; the segment step is given the case's ground truth on the prepared grid instead of a
prediction (a known label volume pushed through, the model being the only stand-in); map-back,
SEG, SR and overlay are the real ones. The SEG read back with highdicom must equal the ground truth
voxel for voxel on the T1c series and on the FLAIR series (both reference roles here), and the
recorded volumes must equal the voxel counts (1 mm^3).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from config.settings import Settings
from dicom_node.jobs import JobState, JobStore
from dicom_node.spool import Spool
from dicom_node.studygen import write_brats_case
from worker.pipeline import Pipeline, default_deps, options_from
from worker.tasks import StateAdapter

pytestmark = [pytest.mark.integration, pytest.mark.data, pytest.mark.slow]

CASE = "Brats18_CBICA_AME_1"


class GroundTruth:
    """Returns the case's labels in the model's voxel order (RAS closest canonical)."""

    name = "ground-truth"
    version = "gt-1"

    def __init__(self, labels_ras: np.ndarray) -> None:
        self.labels_ras = labels_ras

    def __call__(self, images, spacing_mm, *, brain_mask):
        shape = next(iter(images.values())).shape
        assert shape == self.labels_ras.shape, (shape, self.labels_ras.shape)
        return self.labels_ras


def test_ground_truth_survives_the_pipeline_voxel_for_voxel(datasets: Path, tmp_path: Path) -> None:
    case_dir = datasets / "brats" / CASE
    study = write_brats_case(case_dir, tmp_path / "study")
    spool = Spool(tmp_path / "spool")
    roles = {}
    for role, series in study.series.items():
        roles[role] = series.series_uid
        for path, sop in zip(series.paths, series.sop_uids, strict=True):
            spool.store(study.study_uid, series.series_uid, sop, path.read_bytes())
    store = StateAdapter(JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}"))
    job = store.create(
        study.study_uid,
        calling_ae="MODALITY",
        calling_ip="127.0.0.1",
        roles=roles,
        state=JobState.queued,
    )

    gt_img = nib.load(case_dir / f"{CASE}_seg.nii.gz")
    gt = np.asanyarray(gt_img.dataobj).astype(np.uint8)
    gt_ras = np.asanyarray(nib.as_closest_canonical(gt_img).dataobj).astype(np.uint8)
    settings = Settings()
    deps = dataclasses.replace(default_deps(settings), segmenter=lambda: GroundTruth(gt_ras))
    options = dataclasses.replace(options_from(settings), reference_roles=("T1c", "FLAIR"))
    pipeline = Pipeline(store, spool, deps, options)  # no destinations: nothing is sent
    assert pipeline.run(job.id) == "delivered"

    done = store.get(job.id)
    expected = np.transpose(gt, (2, 1, 0))  # pixel [r, c] of instance k = voxel [c, r, k]
    for role in ("T1c", "FLAIR"):  # the SEG drawn on each reference series
        [seg_path] = [Path(f) for f in done.outputs["files"] if f"/{role}/seg/" in f]
        seg = hd.seg.segread(seg_path)
        assert seg.SeriesInstanceUID == done.outputs["series"][role]["seg"]
        masks = seg.get_pixels_by_source_instance(
            study.series[role].sop_uids,
            combine_segments=False,
            skip_overlap_checks=True,
            assert_missing_frames_are_empty=True,
        )
        for number, label in ((1, 1), (2, 2), (3, 4)):  # segment number -> BraTS label
            np.testing.assert_array_equal(
                masks[..., number - 1] > 0, expected == label, err_msg=f"{role} label {label}"
            )
    assert done.outputs["series"]["T1c"]["seg"] != done.outputs["series"]["FLAIR"]["seg"]
    counts_ml = {label: float((gt == label).sum()) / 1000.0 for label in (1, 2, 4)}
    assert done.volumes_ml["necrotic"] == pytest.approx(counts_ml[1])
    assert done.volumes_ml["edema"] == pytest.approx(counts_ml[2])
    assert done.volumes_ml["enhancing"] == pytest.approx(counts_ml[4])
    assert done.volumes_ml["whole_tumor"] == pytest.approx(sum(counts_ml.values()))
    sc = [
        pydicom.dcmread(f, stop_before_pixels=True)
        for f in done.outputs["files"]
        if "/overlay/" in f
    ]
    assert sc and {ds.StudyInstanceUID for ds in sc} == {study.study_uid}
