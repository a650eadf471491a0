"""The shipped default bundle on a real BraTS case: evaluate (2023 naming) and segment (2018 naming)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from config.settings import DEFAULT_BUNDLE
from gliomaseg.cli import cli
from tests.integration.test_model_data import make_2023_copy

CASE = "Brats18_TCIA02_370_1"


@pytest.fixture(scope="module")
def bundle() -> Path:
    if not (DEFAULT_BUNDLE / "metadata.json").exists():
        pytest.skip(f"no default bundle at {DEFAULT_BUNDLE} (train one with `gliomaseg train`)")
    return DEFAULT_BUNDLE


@pytest.fixture(scope="module")
def evaluated(datasets: Path, bundle: Path, tmp_path_factory) -> tuple[dict, str]:
    root = tmp_path_factory.mktemp("eval")
    make_2023_copy(datasets / "brats" / CASE, root, "BraTS-GLI-00370-000")
    unlabelled = root / "BraTS-GLI-00999-000"
    unlabelled.mkdir()
    for s in ("t1n", "t1c", "t2w", "t2f"):
        (unlabelled / f"BraTS-GLI-00999-000-{s}.nii.gz").symlink_to(
            root / "BraTS-GLI-00370-000" / f"BraTS-GLI-00370-000-{s}.nii.gz"
        )
    out = root / "report.json"
    r = CliRunner().invoke(
        cli, ["evaluate", "--data", str(root), "--bundle", str(bundle), "--json", str(out)]
    )
    assert r.exit_code == 0, r.output
    return json.loads(out.read_text()), r.output


def test_evaluate_reports_nested_brats_metrics(evaluated):
    report, output = evaluated
    assert "BraTS-GLI-00999-000: no label file, skipped" in output
    assert [c["case"] for c in report["cases"]] == ["BraTS-GLI-00370-000"]
    case = report["cases"][0]
    for key in ("dice", "hd95", "sensitivity", "specificity"):
        assert set(case[key]) == {"WT", "TC", "ET"}
        assert set(report["mean"][key]) == {"WT", "TC", "ET"}
    assert case["volume_ml"]["WT"]["ref"] == pytest.approx(
        107.194, abs=0.01
    )  # this case's reference volume
    assert 0 <= case["dice"]["WT"] <= 1
    assert report["mean"]["dice"] == case["dice"]


def test_segment_writes_labels_on_the_t1c_grid_and_a_png(
    datasets: Path, bundle: Path, tmp_path: Path
):
    case_dir = datasets / "brats" / CASE
    r = CliRunner().invoke(
        cli, ["segment", str(case_dir), "--out", str(tmp_path), "--bundle", str(bundle)]
    )
    assert r.exit_code == 0, r.output
    seg = nib.load(str(tmp_path / f"{CASE}_seg.nii.gz"))
    ref = nib.load(str(case_dir / f"{CASE}_t1ce.nii.gz"))
    assert seg.shape == ref.shape and np.allclose(seg.affine, ref.affine)
    labels = np.asanyarray(seg.dataobj)
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 4}
    truth = np.asanyarray(nib.load(str(case_dir / f"{CASE}_seg.nii.gz")).dataobj) > 0
    if (labels > 0).any():  # same grid and orientation as the file: overlaps the truth where it is
        assert ((labels > 0) & truth).sum() > 0
    png = (tmp_path / f"{CASE}_overlay.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_segment_refuses_partial_file_sets(datasets: Path, tmp_path: Path):
    case_dir = datasets / "brats" / CASE
    r = CliRunner().invoke(
        cli, ["segment", "--t1", str(case_dir / f"{CASE}_t1.nii.gz"), "--out", str(tmp_path)]
    )
    assert r.exit_code != 0
    assert "missing T1c, T2, FLAIR" in r.output


def test_evaluate_with_broken_bundle_fails_clearly(datasets: Path, tmp_path: Path):
    (tmp_path / "b").mkdir()
    r = CliRunner().invoke(cli, ["evaluate", "--data", str(datasets / "brats"), "--bundle", str(tmp_path / "b"),
                                 "--json", str(tmp_path / "r.json")])  # fmt: skip
    assert r.exit_code == 2
    assert "metadata.json is missing" in r.output
