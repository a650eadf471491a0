"""Upload helpers: role names of NIfTI files, safe unzipping, DICOM sorting (pure / local files)."""

from __future__ import annotations

import zipfile

import pytest

from config.errors import PermanentError
from web.uploads import roles_from_names, spool_dicom, unpack


def test_brats_2018_names():
    names = [f"Brats18_2013_2_1_{s}.nii.gz" for s in ("t1", "t1ce", "t2", "flair", "seg")]
    assert roles_from_names(names) == {
        "T1": "Brats18_2013_2_1_t1.nii.gz",
        "T1c": "Brats18_2013_2_1_t1ce.nii.gz",
        "T2": "Brats18_2013_2_1_t2.nii.gz",
        "FLAIR": "Brats18_2013_2_1_flair.nii.gz",
    }


def test_brats_2023_names():
    names = [f"BraTS-GLI-00000-000-{s}.nii.gz" for s in ("t1n", "t1c", "t2w", "t2f")]
    assert set(roles_from_names(names)) == {"T1", "T1c", "T2", "FLAIR"}


def test_missing_and_unknown_names_are_listed():
    with pytest.raises(PermanentError) as exc:
        roles_from_names(["a_t1.nii.gz", "a_t2.nii", "a_dwi.nii.gz"])
    msg = str(exc.value)
    assert "a_dwi.nii.gz" in msg and "no T1c volume" in msg and "no FLAIR volume" in msg


def test_doubled_role_is_refused():
    with pytest.raises(PermanentError, match="T2 given twice"):
        roles_from_names(["a_t1.nii", "a_t1ce.nii", "a_t2.nii", "b_t2.nii", "a_flair.nii"])


def test_unpack_keeps_zip_members_inside_the_destination(tmp_path):
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("../../escaped.dcm", b"x")
        zf.writestr("case/a_t1.nii.gz", b"y")
        zf.writestr("__MACOSX/case/._a_t1.nii.gz", b"z")
        zf.writestr("case/", b"")
    dest = tmp_path / "dest"
    files = unpack([("evil.zip", z)], dest)
    assert sorted(p.name for p in files) == ["a_t1.nii.gz", "escaped.dcm"]
    assert all(dest in p.parents for p in files)
    assert not (tmp_path.parent / "escaped.dcm").exists()


def test_unpack_refuses_a_broken_zip(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(PermanentError, match="bad.zip is not a valid zip file"):
        unpack([("bad.zip", bad)], tmp_path / "d")


def _mr(path, study, series, sop):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName = "CANARY^PHI"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_spool_dicom_stores_one_study_and_counts_other_files(tmp_path):
    from dicom_node.spool import Spool

    spool = Spool(tmp_path / "spool")
    files = [_mr(tmp_path / f"{i}.dcm", "1.2.3", "1.2.3.1", f"1.2.3.1.{i}") for i in range(3)]
    (tmp_path / "notes.txt").write_text("hello")
    got = spool_dicom([*files, tmp_path / "notes.txt"], spool)
    assert (got.study_uid, got.n_instances, got.n_skipped, got.kind) == ("1.2.3", 3, 1, "dicom")
    assert len(spool.series_files("1.2.3", "1.2.3.1")) == 3


def test_spool_dicom_refuses_two_studies(tmp_path):
    from dicom_node.spool import Spool

    spool = Spool(tmp_path / "spool")
    a = _mr(tmp_path / "a.dcm", "1.2.3", "1.2.3.1", "1.2.3.1.1")
    b = _mr(tmp_path / "b.dcm", "1.2.4", "1.2.4.1", "1.2.4.1.1")
    with pytest.raises(PermanentError, match="one study; it holds 2"):
        spool_dicom([a, b], spool)
    assert not any(spool.studies.iterdir()), "nothing may be spooled from a refused upload"


def test_spool_dicom_without_dicom_says_what_to_send(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(PermanentError, match="no DICOM files"):
        spool_dicom([tmp_path / "x.txt"], None)
