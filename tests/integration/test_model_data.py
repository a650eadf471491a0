"""BraTS readers on the shared cases, in both namings (2023-named copies are made in tmp_path)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from model.data import CaseError, case_files, find_cases, load_case, map_labels

CASE = "Brats18_TCIA02_370_1"


def make_2023_copy(src: Path, dst_root: Path, case_id: str = "BraTS-GLI-00370-000") -> Path:
    """A BraTS 2023-named case: symlinked images, seg rewritten with ET as 3."""
    dst = dst_root / case_id
    dst.mkdir(parents=True)
    name = src.name
    for old, new in (("t1", "t1n"), ("t1ce", "t1c"), ("t2", "t2w"), ("flair", "t2f")):
        (dst / f"{case_id}-{new}.nii.gz").symlink_to(src / f"{name}_{old}.nii.gz")
    seg = nib.load(str(src / f"{name}_seg.nii.gz"))
    data = np.asanyarray(seg.dataobj).astype(np.uint8)
    data[data == 4] = 3
    nib.save(nib.Nifti1Image(data, seg.affine, seg.header), str(dst / f"{case_id}-seg.nii.gz"))
    return dst


@pytest.fixture(scope="module")
def brats(datasets: Path) -> Path:
    return datasets / "brats"


def test_both_namings_read_the_same_arrays(brats: Path, tmp_path: Path):
    a = load_case(case_files(brats / CASE))
    b_dir = make_2023_copy(brats / CASE, tmp_path)
    files = case_files(b_dir)
    assert files.naming == "2023"
    b = load_case(files)
    assert a.spacing_mm == b.spacing_mm == (1.0, 1.0, 1.0)
    for role in ("T1", "T1c", "T2", "FLAIR"):
        assert np.array_equal(a.images[role], b.images[role])
    assert np.array_equal(a.labels, b.labels)
    assert set(np.unique(b.labels).tolist()) == {0, 1, 2, 4}


def test_canonical_orientation_is_ras(brats: Path):
    case = load_case(case_files(brats / CASE))
    assert nib.aff2axcodes(case.affine) == ("R", "A", "S")
    assert case.images["T1"].shape == case.labels.shape == (240, 240, 155)


def test_find_cases_skips_folders_without_images(brats: Path, tmp_path: Path):
    (tmp_path / "empty_case").mkdir()
    make_2023_copy(brats / CASE, tmp_path)
    found = find_cases(tmp_path)
    assert [f.case_id for f in found] == ["BraTS-GLI-00370-000"]


def test_incomplete_case_names_the_missing_file(brats: Path, tmp_path: Path):
    dst = tmp_path / "Brats18_X_1"
    dst.mkdir()
    for s in ("t1", "t1ce", "t2"):
        (dst / f"Brats18_X_1_{s}.nii.gz").symlink_to(brats / CASE / f"{CASE}_{s}.nii.gz")
    with pytest.raises(CaseError, match="Brats18_X_1_flair.nii.gz"):
        case_files(dst)


def test_unexpected_label_values_are_refused():
    with pytest.raises(CaseError, match=r"labels must be in \[0, 1, 2, 3\].*found \[0, 4\]"):
        map_labels(np.array([0, 4]), "2023", "c")
    assert map_labels(np.array([0, 3, 1]), "2023").tolist() == [0, 4, 1]
