"""The demo's synthetic study: built from files inside nilearn, plausible contrasts, real DICOM."""

from __future__ import annotations

import numpy as np
import pytest

from web.demostudy import LABEL_EDEMA, LABEL_ENHANCING, LABEL_NECROTIC, ROLES, synthetic_case


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    # nilearn would download into $NILEARN_DATA (or ~/nilearn_data) if a file were missing:
    # point it at an empty folder and check it stays empty.
    data_dir = tmp_path_factory.mktemp("nilearn_data")
    mp = pytest.MonkeyPatch()
    mp.setenv("NILEARN_DATA", str(data_dir))
    mp.setenv("NILEARN_SHARED_DATA", str(data_dir))
    try:
        built = synthetic_case()
    finally:
        mp.undo()
    assert not any(data_dir.iterdir()), "building the demo study must not download anything"
    return built


def test_four_sequences_on_one_grid(case):
    assert tuple(case.volumes) == ROLES
    shapes = {v[0].shape for v in case.volumes.values()}
    assert shapes == {case.labels.shape}
    for image, affine in case.volumes.values():
        assert np.array_equal(affine, case.affine)
        assert image.min() >= 0 and image.max() > 500


def test_tumour_has_the_three_brats_regions_in_the_right_hemisphere(case):
    assert set(np.unique(case.labels)) == {0, LABEL_NECROTIC, LABEL_EDEMA, LABEL_ENHANCING}
    ijk = np.argwhere(case.labels > 0).mean(axis=0)
    x_mm = (case.affine[:3, :3] @ ijk + case.affine[:3, 3])[0]
    assert x_mm > 10, "the tumour is drawn in the right hemisphere (RAS +x)"
    t = case.truth_ml
    assert t["whole_tumor"] == pytest.approx(t["necrotic"] + t["enhancing"] + t["edema"])
    assert 30 < t["whole_tumor"] < 250 and t["necrotic"] > 0.5


def _mean(case, role, label):
    return float(case.volumes[role][0][case.labels == label].mean())


def test_contrasts_look_like_the_sequences(case):
    # enhancing rim: bright on T1c, not on T1
    assert _mean(case, "T1c", LABEL_ENHANCING) > 2 * _mean(case, "T1", LABEL_ENHANCING)
    # edema: bright on FLAIR and T2 compared with the necrotic core on FLAIR
    assert _mean(case, "FLAIR", LABEL_EDEMA) > 1.5 * _mean(case, "FLAIR", LABEL_NECROTIC)
    assert _mean(case, "T2", LABEL_NECROTIC) > _mean(case, "T1", LABEL_NECROTIC) * 3


def test_demo_study_is_dicom_that_the_classifier_reads_as_the_four_roles(case, tmp_path):
    from dicom_node import studygen
    from dicom_node.classify import assign_roles, series_infos_from_dir

    written = studygen.write_study(
        case.volumes, tmp_path, patient_name="DEMO^SYNTHETIC", patient_id="DEMO0001"
    )
    assert set(written.series) == set(ROLES)
    result = assign_roles(series_infos_from_dir(tmp_path), [])
    assert not result.missing()
    for role, uid in result.roles.items():
        assert written.series[str(role)].series_uid == uid


@pytest.mark.data
def test_demo_case_option_builds_a_brats_study_with_its_true_volumes(datasets, tmp_path):
    import nibabel as nib

    from web.demo import build_study

    case = datasets / "brats" / "Brats18_2013_2_1"
    written, truth = build_study(tmp_path / "study", case)
    assert set(written.series) == set(ROLES)
    seg = np.asanyarray(nib.load(case / "Brats18_2013_2_1_seg.nii.gz").dataobj)
    assert truth["whole_tumor"] == pytest.approx(float((seg > 0).sum()) / 1000.0)
    assert truth["enhancing"] == pytest.approx(float((seg == 4).sum()) / 1000.0)
