"""studygen: geometry round-trips through readers we did not write, headers per role and vendor."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom2nifti.convert_dicom import dicom_series_to_nifti

from dicom_node import studygen

# An oblique, LAS-like affine like the TCIA native case (orthogonal, 0.9 x 0.9 x 5.5 mm)
_ROT = np.array(
    [
        [0.99660, 0.0, 0.08242],
        [-0.01672, 0.97950, 0.20073],
        [-0.08072, -0.20144, 0.97617],
    ]
)
_ROT = np.linalg.qr(_ROT)[0] * np.sign(np.diag(np.linalg.qr(_ROT)[1]))
OBLIQUE = np.eye(4)
OBLIQUE[:3, :3] = np.diag([-1, 1, 1]) @ _ROT @ np.diag([0.9, 0.9, 5.5])
OBLIQUE[:3, 3] = [90.7, -71.4, -98.4]
LPS_1MM = np.diag([-1.0, -1.0, 1.0, 1.0])
LPS_1MM[:3, 3] = [0.0, 239.0, 0.0]


def _volume(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-200, 3000, size=shape).astype(np.int16)


def _read_dicom2nifti(series_dir: Path, out: Path) -> nib.Nifti1Image:
    dicom_series_to_nifti(str(series_dir), str(out), reorient_nifti=False)
    return nib.load(out)


def test_roundtrip_dicom2nifti_oblique_las(tmp_path: Path) -> None:
    vol = _volume((20, 16, 7))
    study = studygen.write_study({"T2": (vol, OBLIQUE)}, tmp_path / "dcm", vendor="siemens")
    s = study.series["T2"]
    assert len(s.paths) == 7 and s.shape == (20, 16, 7)
    img = _read_dicom2nifti(s.paths[0].parent, tmp_path / "t2.nii.gz")
    assert np.abs(img.affine - OBLIQUE).max() < 1e-3
    assert np.array_equal(np.asanyarray(img.dataobj), vol)
    # instance k holds voxel slice k; pixel [r, c] = vol[c, r, k]
    ds = pydicom.dcmread(s.paths[3])
    assert ds.InstanceNumber == 4
    assert np.array_equal(ds.pixel_array, vol[:, :, 3].T)
    assert (ds.Rows, ds.Columns) == (16, 20)


def test_roundtrip_simpleitk_lps(tmp_path: Path) -> None:
    vol = _volume((24, 20, 9), seed=1)
    study = studygen.write_study({"FLAIR": (vol, LPS_1MM)}, tmp_path, vendor="ge")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(study.series["FLAIR"].paths[0].parent)))
    image = reader.Execute()
    assert np.array_equal(sitk.GetArrayFromImage(image).transpose(2, 1, 0), vol)
    assert np.allclose(image.GetSpacing(), (1, 1, 1))
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ LPS_1MM
    assert np.allclose(image.GetOrigin(), lps[:3, 3], atol=1e-3)
    assert np.allclose(np.array(image.GetDirection()).reshape(3, 3), lps[:3, :3], atol=1e-6)


def test_oblique_and_thick_variants_roundtrip(tmp_path: Path) -> None:
    vol = _volume((30, 30, 31), seed=2)
    study = studygen.write_study(
        {"T1": (vol, LPS_1MM)}, tmp_path / "dcm", slice_mm=5, oblique_deg=20
    )
    s = study.series["T1"]
    grid, affine = studygen.series_grid(vol, LPS_1MM, slice_mm=5, oblique_deg=20)
    assert np.allclose(affine, s.affine_ras)
    assert s.shape == grid.shape == (30, 30, 7)
    # rotated about the first voxel axis by 20 degrees; 5 mm apart
    normal = affine[:3, 2] / np.linalg.norm(affine[:3, 2])
    assert np.degrees(np.arccos(normal @ [0, 0, 1])) == pytest.approx(20, abs=1e-6)
    assert np.linalg.norm(affine[:3, 2]) == pytest.approx(5)
    img = _read_dicom2nifti(s.paths[0].parent, tmp_path / "t1.nii.gz")
    assert np.abs(img.affine - affine).max() < 1e-3
    assert np.array_equal(np.asanyarray(img.dataobj), np.rint(grid).astype(np.int16))
    ds = pydicom.dcmread(s.paths[0])
    assert float(ds.SliceThickness) == pytest.approx(5)
    assert float(ds.SpacingBetweenSlices) == pytest.approx(5)


def test_series_grid_labels_nearest_and_centred() -> None:
    labels = np.zeros((10, 10, 21), np.uint8)
    labels[2:5, 2:5, 8:13] = 4
    labels[6:8, 6:8, :] = 2
    out, affine = studygen.series_grid(labels, LPS_1MM, slice_mm=5, order=0)
    assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 2, 4}
    assert out.shape == (10, 10, 5)
    # slabs centred on the original extent: centres at k = 0, 5, 10, 15, 20
    assert np.allclose(affine[:3, 3], LPS_1MM[:3, 3])
    assert out[3, 3, 2] == 4 and out[3, 3, 0] == 0
    same, same_affine = studygen.series_grid(labels, LPS_1MM)
    assert same is labels and np.array_equal(same_affine, LPS_1MM)
    constant, _ = studygen.series_grid(np.full((8, 8, 8), 7.0), LPS_1MM, oblique_deg=10)
    assert np.allclose(constant[3:5, 3:5, 3:5], 7.0)


def test_float_volume_uses_rescale(tmp_path: Path) -> None:
    vol = np.random.default_rng(3).normal(0.5, 0.2, size=(8, 8, 4))
    study = studygen.write_study({"T2": (vol, LPS_1MM)}, tmp_path)
    for k, path in enumerate(study.series["T2"].paths):
        ds = pydicom.dcmread(path)
        assert ds.PixelRepresentation == 1 and ds.BitsAllocated == 16
        slope = float(ds.RescaleSlope)
        values = ds.pixel_array * slope + float(ds.RescaleIntercept)
        assert np.abs(values - vol[:, :, k].T).max() <= slope / 2 + 1e-9


@pytest.fixture(scope="module")
def full_study(tmp_path_factory: pytest.TempPathFactory) -> studygen.StudyWritten:
    out = tmp_path_factory.mktemp("full")
    volumes = {k: (_volume((8, 8, 3), i), LPS_1MM) for i, k in enumerate(studygen.KINDS)}
    return studygen.write_study(
        volumes,
        out,
        vendor="siemens",
        patient_name="CANARY^PHI",
        patient_id="PID123",
        overrides={"T2": {"ProtocolName": None, "EchoTrainLength": "15"}},
    )


def _first(study: studygen.StudyWritten, key: str) -> pydicom.Dataset:
    return pydicom.dcmread(study.series[key].paths[0])


def test_headers_per_role(full_study: studygen.StudyWritten) -> None:
    t1, t1c, t2, fl = (_first(full_study, k) for k in ("T1", "T1c", "T2", "FLAIR"))
    assert t1.SeriesDescription == "t1_se_tra" and t1c.SeriesDescription == "t1_se_tra_KM"
    assert t1.ScanningSequence == "SE" and float(t1.RepetitionTime) < 1000
    assert "InversionTime" not in t1 and "ContrastBolusAgent" not in t1
    assert t1c.ContrastBolusAgent == "GADAVIST" and t1c.ContrastBolusRoute == "IV"
    assert int(t1c.SeriesNumber) > int(t1.SeriesNumber) and t1c.SeriesTime > t1.SeriesTime
    assert t2.SequenceName == "*tse2d1_11" and 80 <= float(t2.EchoTime) <= 120
    assert t2.EchoTrainLength == 15 and "ProtocolName" not in t2  # overrides
    assert list(fl.ScanningSequence) == ["SE", "IR"] and fl.SequenceName == "*tir2d1_21"
    assert 2000 <= float(fl.InversionTime) <= 2800 and 7000 <= float(fl.RepetitionTime) <= 11000
    for ds in (t1, t1c, t2, fl):
        assert ds.Modality == "MR" and ds.BodyPartExamined == "BRAIN"
        assert ds.Manufacturer == "SIEMENS"
        assert ds.SOPClassUID == pydicom.uid.MRImageStorage
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.StudyInstanceUID == full_study.study_uid
        assert ds.FrameOfReferenceUID == full_study.frame_of_reference_uid
        assert str(ds.PatientName) == "CANARY^PHI" and ds.PatientID == "PID123"
    derived = _first(full_study, "T1c_MPR")
    assert derived.ImageType[0] == "DERIVED"
    uids = [s.series_uid for s in full_study.series.values()]
    assert len(set(uids)) == len(uids)
    sops = [u for s in full_study.series.values() for u in s.sop_uids]
    assert len(set(sops)) == len(sops)


@pytest.mark.parametrize(
    ("vendor", "manufacturer", "t1c_description", "flair_description"),
    [
        ("ge", "GE MEDICAL SYSTEMS", "Ax T1 +C", "AX FLAIR"),
        ("philips", "Philips Medical Systems", "T1W_SE+C", "FLAIR_LongTR"),
        ("hitachi", "Hitachi Medical Corporation", "T1WI_SE_AX_Gd", "FLAIR_AX"),
    ],
)
def test_vendor_styles(
    tmp_path: Path, vendor: str, manufacturer: str, t1c_description: str, flair_description: str
) -> None:
    volumes = {k: (_volume((4, 4, 2)), LPS_1MM) for k in ("T1", "T1c", "FLAIR")}
    study = studygen.write_study(volumes, tmp_path, vendor=vendor)
    assert _first(study, "T1c").SeriesDescription == t1c_description
    assert _first(study, "FLAIR").SeriesDescription == flair_description
    assert _first(study, "T1").Manufacturer == manufacturer
    if vendor == "philips":
        assert study.series["T1"].series_number % 100 == 1


def test_mprage_technique(tmp_path: Path) -> None:
    study = studygen.write_study(
        {"T1c": (_volume((4, 4, 2)), LPS_1MM)}, tmp_path, vendor="siemens", t1_technique="mprage"
    )
    ds = _first(study, "T1c")
    assert list(ds.ScanningSequence) == ["GR", "IR"] and float(ds.InversionTime) == 900
    assert ds.MRAcquisitionType == "3D" and ds.SequenceName == "*tfl3d1_16"


def test_deterministic_uids_for_a_given_study_uid(tmp_path: Path) -> None:
    vol = {"T1": (_volume((4, 4, 2)), LPS_1MM)}
    a = studygen.write_study(vol, tmp_path / "a", study_uid="1.2.3.4")
    b = studygen.write_study(vol, tmp_path / "b", study_uid="1.2.3.4")
    assert a.series["T1"].series_uid == b.series["T1"].series_uid
    assert a.series["T1"].sop_uids == b.series["T1"].sop_uids


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_dciodvfy_reports_no_error(full_study: studygen.StudyWritten) -> None:
    for key in ("T1c", "FLAIR", "DWI"):
        res = subprocess.run(
            ["dciodvfy", str(full_study.series[key].paths[0])],
            capture_output=True,
            text=True,
            timeout=60,
        )
        errors = [line for line in (res.stdout + res.stderr).splitlines() if "Error" in line]
        assert errors == [], errors


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(vendor="canon"), "vendor must be one of"),
        (dict(t1_technique="spgr"), "t1_technique"),
        (dict(kinds={"T1": "MRA"}), "kind must be one of"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        studygen.write_study({"T1": (_volume((4, 4, 2)), LPS_1MM)}, tmp_path, **kwargs)


def test_bad_volumes(tmp_path: Path) -> None:
    sheared = LPS_1MM.copy()
    sheared[0, 1] = 0.5
    with pytest.raises(ValueError, match="orthogonal"):
        studygen.write_study({"T1": (_volume((4, 4, 2)), sheared)}, tmp_path)
    with pytest.raises(ValueError, match="3-D"):
        studygen.write_study({"T1": (np.zeros((4, 4)), LPS_1MM)}, tmp_path)
    with pytest.raises(ValueError, match="NaN"):
        studygen.write_study({"T1": (np.full((4, 4, 2), np.nan), LPS_1MM)}, tmp_path)


def test_parse_tcia_names() -> None:
    parsed = studygen.parse_tcia_name(
        "MRHR_T2_AX_OtherEXampleTCIA_TCGA-FG-6692_Si_TCGA-FG-6692_MRHR_T2_AX_SE_2_tse2d1_11_t2.nii.gz"
    )
    assert parsed == {
        "role": "T2",
        "description": "MRHR_T2_AX_SE",
        "series_number": 2,
        "sequence_name": "*tse2d1_11",
    }
    with pytest.raises(ValueError, match="does not end in"):
        studygen.parse_tcia_name("brain.nii.gz")


# --------------------------------------------------------------------------- real data


def test_tcia_native_roundtrip(datasets: Path, tmp_path: Path) -> None:
    case = datasets / "tcia_native" / "TCGA-FG-6692"
    study = studygen.write_tcia_native_case(case, tmp_path / "dcm")
    assert {k: s.series_number for k, s in study.series.items()} == {
        "FLAIR": 5,
        "T1c": 13,
        "T2": 2,
        "T1": 10,
    }
    tags = {"T1": "t1", "T1c": "t1c", "T2": "t2", "FLAIR": "fla"}
    for role, s in study.series.items():
        (source,) = case.glob(f"*_{tags[role]}.nii.gz")
        src = nib.load(source)
        img = _read_dicom2nifti(s.paths[0].parent, tmp_path / f"{role}.nii.gz")
        assert np.abs(img.affine - src.affine).max() < 1e-3
        assert np.array_equal(np.asanyarray(img.dataobj), np.asanyarray(src.dataobj))
        ds = pydicom.dcmread(s.paths[0])
        assert float(ds.SliceThickness) == pytest.approx(5.5, abs=0.01)
    assert pydicom.dcmread(study.series["FLAIR"].paths[0]).SequenceName == "*tir2d1_21"


def test_brats_case_thick_slices_and_labels(datasets: Path, tmp_path: Path) -> None:
    case = datasets / "brats" / "Brats18_TCIA01_425_1"
    study = studygen.write_brats_case(case, tmp_path, vendor="philips", slice_mm=5, roles=("T1c",))
    s = study.series["T1c"]
    assert s.shape == (240, 240, 31) and len(s.paths) == 31
    seg = nib.load(case / f"{case.name}_seg.nii.gz")
    labels, affine = studygen.series_grid(
        np.asanyarray(seg.dataobj), seg.affine, slice_mm=5, order=0
    )
    assert labels.shape == s.shape and np.allclose(affine, s.affine_ras)
    assert set(np.unique(labels)) <= {0, 1, 2, 4}


def test_fast_writer_matches_pydicom_save_as(
    full_study: studygen.StudyWritten, tmp_path: Path
) -> None:
    """Files are concatenated from pre-encoded pieces: they must equal pydicom's own encoding."""
    for key in ("T1", "FLAIR"):
        path = full_study.series[key].paths[-1]
        ds = pydicom.dcmread(path)
        ds.save_as(tmp_path / "again.dcm", enforce_file_format=True)
        assert path.read_bytes() == (tmp_path / "again.dcm").read_bytes()
        assert [e.tag for e in ds] == sorted(e.tag for e in ds)
