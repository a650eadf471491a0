"""prepare -> train -> bundle -> resume, end to end on small synthetic BraTS-named cases (CPU, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gliomaseg.cli import cli
from model.bundle import load_bundle
from model.inference import predict_case


def write_case(root: Path, case_id: str, rng: np.random.Generator) -> None:
    """A 48x48x32 'brain' (ellipsoid) with a bright FLAIR/T1c blob as tumour, 1.5 mm voxels."""
    d = root / case_id
    d.mkdir(parents=True)
    shape = (48, 48, 32)
    g = np.indices(shape).astype(np.float32)
    brain = ((g[0] - 24) / 20) ** 2 + ((g[1] - 24) / 20) ** 2 + ((g[2] - 16) / 13) ** 2 < 1
    c = rng.integers(16, 32, 3)
    r2 = ((g[0] - c[0]) ** 2 + (g[1] - c[1]) ** 2 + (g[2] - c[2] + 0) ** 2) / 9
    seg = np.zeros(shape, np.uint8)
    seg[(r2 < 4) & brain] = 2
    seg[(r2 < 1.5) & brain] = 4
    seg[(r2 < 0.5) & brain] = 1
    affine = np.diag([-1.5, -1.5, 1.5, 1])  # LPS-like storage, as BraTS files are
    for role, bright in (("t1", 0), ("t1ce", 400), ("t2", 200), ("flair", 300)):
        img = (rng.normal(500, 30, shape) + bright * (seg > 0)) * brain
        nib.save(nib.Nifti1Image(img.astype(np.int16), affine), str(d / f"{case_id}_{role}.nii.gz"))
    nib.save(nib.Nifti1Image(seg, affine), str(d / f"{case_id}_seg.nii.gz"))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brats")
    rng = np.random.default_rng(0)
    for i in range(4):
        write_case(root, f"Brats18_SYN_{i}_1", rng)
    return root


def test_prepare_train_resume_and_predict(synthetic: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("GLIOMASEG_LOGGING__LEVEL", "WARNING")
    runner = CliRunner()
    npz = tmp_path / "prepared.npz"
    r = runner.invoke(
        cli, ["prepare", "--data", str(synthetic), "--out", str(npz), "--spacing-mm", "3"]
    )
    assert r.exit_code == 0, r.output
    with np.load(npz) as z:
        meta = json.loads(z["meta"].tobytes())
        assert [c["case"] for c in meta["cases"]] == [f"Brats18_SYN_{i}_1" for i in range(4)]
        assert z["Brats18_SYN_0_1/image"].dtype == np.int8

    bundle, work = tmp_path / "bundle", tmp_path / "work"
    args = ["train", "--data", str(npz), "--out", str(bundle), "--work", str(work), "--patch", "16",
            "--base-filters", "4", "--depth", "3", "--val-every", "2", "--validation", "Brats18_SYN_3_1",
            "--threads", "1"]  # fmt: skip
    r = runner.invoke(cli, [*args, "--steps", "2"])
    assert r.exit_code == 0, r.output
    b = load_bundle(bundle, device="cpu")
    split = b.metadata["training"]["split"]
    assert split["validation"] == ["Brats18_SYN_3_1"]
    assert split["train"] == ["Brats18_SYN_0_1", "Brats18_SYN_1_1", "Brats18_SYN_2_1"]
    assert b.metadata["spacing_mm"] == [3.0, 3.0, 3.0]

    r = runner.invoke(cli, [*args, "--steps", "4"])  # resumes at step 2 from the checkpoint
    assert r.exit_code == 0, r.output
    events = [json.loads(line) for line in (work / "train_log.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("resume") == 1
    assert [e["step"] for e in events if e["event"] == "validation"] == [2, 4]

    # A fresh machine has no checkpoint: --init-from starts from the bundle's weights, and the
    # bundle's own validation score is the bar a new best must beat.
    work2, bundle2 = tmp_path / "work2", tmp_path / "bundle2"
    args2 = [a if a not in (str(work), str(bundle)) else (str(work2) if a == str(work) else str(bundle2))
             for a in args]  # fmt: skip
    r = runner.invoke(
        cli, [*args2, "--steps", "2", "--init-from", str(bundle), "--scan-quality-aug"]
    )
    assert r.exit_code == 0, r.output
    state = torch.load(work2 / "checkpoint.pt", weights_only=False)
    first = load_bundle(bundle, device="cpu").metadata
    assert [e["weights_sha256"] for e in state["earlier_stages"]] == [first["weights_sha256"]]
    assert state["earlier_stages"][0]["step"] == 4
    events = [json.loads(line) for line in (work2 / "train_log.jsonl").read_text().splitlines()]
    init = [e for e in events if e["event"] == "init"]
    prev = load_bundle(bundle, device="cpu").metadata["training"]
    prev_score = float(np.mean(list(prev["validation_at_training_spacing"]["mean"].values())))
    assert len(init) == 1 and init[0]["previous_step"] == 4
    assert init[0]["best"] == pytest.approx(prev_score)
    improved = [e for e in events if e["event"] == "validation" and e["improved"]]
    assert bundle2.exists() == bool(improved)
    if improved:
        second = load_bundle(bundle2, device="cpu").metadata["training"]
        assert second["config"]["scan_quality_aug"] is True
        assert second["earlier_stages"] == state["earlier_stages"]

    b = load_bundle(bundle, device="cpu")
    case = nib.as_closest_canonical(
        nib.load(str(synthetic / "Brats18_SYN_3_1" / "Brats18_SYN_3_1_t1.nii.gz"))
    )
    images = {}
    for role, suffix in (("T1", "t1"), ("T1c", "t1ce"), ("T2", "t2"), ("FLAIR", "flair")):
        p = synthetic / "Brats18_SYN_3_1" / f"Brats18_SYN_3_1_{suffix}.nii.gz"
        images[role] = np.asanyarray(nib.as_closest_canonical(nib.load(str(p))).dataobj).astype(
            np.float32
        )
    labels = predict_case(b, images, (1.5, 1.5, 1.5))
    assert labels.shape == case.shape and labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 4}
    assert not labels[images["T1"] == 0].any()  # nothing outside the brain
