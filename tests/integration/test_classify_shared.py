"""Classification of the real shared DICOM series (roles as datasets/MANIFEST.md lists them)
and of studies built by studygen from the shared TCIA native and BraTS cases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from dicom_node import studygen
from dicom_node.classify import Role, assign_roles, series_infos_from_dir

# folder under datasets/dicom -> role (None: never chosen)
MANIFEST_ROLES: dict[str, Role | None] = {
    "dcm_qa_ge/05_3D_Ax_T1_MP_RAGE_R22": Role.T1,
    "dicom2nifti/ge/anatomical/001": Role.T1,
    "dicom2nifti/philips/anatomical/001": Role.FLAIR,
    "dicom2nifti/siemens/anatomical/001": Role.FLAIR,
    "dicom2nifti/philips_enhanced/anatomical/001": Role.T1,
    "dicom2nifti/hitachi/anatomical/001": None,
    "dcm_qa_nih/20180918GE/mr_0004": None,
    "dcm_qa_nih/20180918Si/mr_0003": None,
    "dicom2nifti/siemens_multiframe/anatomical/001": Role.T1,
    "pydicom-data": Role.T1,
}


@pytest.mark.parametrize(("folder", "expected"), MANIFEST_ROLES.items())
def test_shared_series_role(datasets: Path, folder: str, expected: Role | None) -> None:
    infos = series_infos_from_dir(datasets / "dicom" / folder)
    assert len(infos) == 1, [i.series_uid for i in infos]
    result = assign_roles(infos, [])
    decision = result.series[0]
    assert decision.role is expected, decision.reason
    assert decision.reason
    if expected is None:
        assert decision.reason.startswith("not chosen")
        assert result.missing() == list(Role)


def test_shared_emri_small_four_transfer_syntaxes_are_one_instance(datasets: Path) -> None:
    (info,) = series_infos_from_dir(datasets / "dicom" / "pydicom-data")
    assert info.n_instances == 1  # one SOPInstanceUID in four encodings
    assert "PixelData" not in info.headers


def test_shared_mixed_study_rejects_epi(datasets: Path, tmp_path: Path) -> None:
    """The GE MPRAGE beside the two EPI series (MANIFEST's suggested mix): only T1 is chosen."""
    root = datasets / "dicom"
    for folder in (
        "dcm_qa_ge/05_3D_Ax_T1_MP_RAGE_R22",
        "dcm_qa_nih/20180918GE/mr_0004",
        "dcm_qa_nih/20180918Si/mr_0003",
    ):
        (tmp_path / folder.replace("/", "_")).symlink_to(root / folder)
    result = assign_roles(series_infos_from_dir(tmp_path), [])
    chosen = [d for d in result.series if d.role is not None]
    assert [d.role for d in chosen] == [Role.T1]
    assert chosen[0].description == "3D Ax T1 MP-RAGE_R22"
    assert result.missing() == [Role.T1C, Role.T2, Role.FLAIR]
    assert sum(1 for d in result.series if "echo-planar" in d.reason or "EPI" in d.reason) == 2


@pytest.fixture(scope="module")
def tcia_study(datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> studygen.StudyWritten:
    out = tmp_path_factory.mktemp("tcia")
    return studygen.write_tcia_native_case(datasets / "tcia_native" / "TCGA-FG-6692", out)


def test_tcia_native_study_siemens_names(tcia_study: studygen.StudyWritten) -> None:
    root = tcia_study.series["T1"].paths[0].parent.parent
    result = assign_roles(series_infos_from_dir(root), [])
    assert {r.value: uid for r, uid in result.roles.items()} == {
        role: tcia_study.series[role].series_uid for role in ("T1", "T1c", "T2", "FLAIR")
    }
    by_uid = {d.series_uid: d for d in result.series}
    assert by_uid[tcia_study.series["T1c"].series_uid].description == "MRHR_T1_AX_POST_GAD_SE"
    assert by_uid[tcia_study.series["T1c"].series_uid].series_number == 13


def test_tcia_native_without_contrast_tags_reads_post_gad(datasets: Path, tmp_path: Path) -> None:
    study = studygen.write_tcia_native_case(
        datasets / "tcia_native" / "TCGA-FG-6692", tmp_path, contrast_tags=False
    )
    result = assign_roles(series_infos_from_dir(tmp_path), [])
    t1c = result.decision(study.series["T1c"].series_uid)
    assert t1c.role is Role.T1C
    assert "description 'post'" in t1c.reason


def test_tcia_native_missing_flair_and_cli(
    tcia_study: studygen.StudyWritten, tmp_path: Path
) -> None:
    from gliomaseg.cli import cli

    for role in ("T1", "T1c", "T2"):
        shutil.copytree(tcia_study.series[role].paths[0].parent, tmp_path / role)
    res = CliRunner().invoke(cli, ["classify", str(tmp_path), "--json"], obj={})
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["roles"]["FLAIR"] is None
    assert data["roles"]["T1c"] == tcia_study.series["T1c"].series_uid
    assert assign_roles(series_infos_from_dir(tmp_path), []).missing() == [Role.FLAIR]


@pytest.mark.parametrize("vendor", studygen.VENDORS)
def test_brats_case_in_each_vendor_style(datasets: Path, tmp_path: Path, vendor: str) -> None:
    case = datasets / "brats" / "Brats18_CBICA_AME_1"
    study = studygen.write_brats_case(case, tmp_path, vendor=vendor, slice_mm=10)
    result = assign_roles(series_infos_from_dir(tmp_path), [])
    assert {r.value: uid for r, uid in result.roles.items()} == {
        role: s.series_uid for role, s in study.series.items()
    }
