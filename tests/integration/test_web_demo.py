"""`gliomaseg demo` once, the whole loop: built-in PACS stand-in, service, synthetic study, results."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import free_port
from tests.peers import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_runs_the_whole_loop(tmp_path):
    from config.settings import DEFAULT_BUNDLE

    if not (DEFAULT_BUNDLE / "metadata.json").is_file() and not os.environ.get(
        "GLIOMASEG_MODEL__BUNDLE"
    ):
        pytest.skip("the model bundle (model/bundles/default) is not built yet")
    # the demo ignores the caller's configuration, except a model bundle under test
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GLIOMASEG_") or k.startswith("GLIOMASEG_MODEL__")
    }
    env["OMP_NUM_THREADS"] = "2"
    proc = subprocess.run(
        [sys.executable, "-m", "gliomaseg", "demo", "--workdir", str(tmp_path / "demo"),
         "--pacs", "builtin", "--web-port", str(free_port()), "--exit-when-done", "--timeout", "900"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, (
        out[-4000:] + (tmp_path / "demo/logs/serve.log").read_text()[-4000:]
    )
    assert "SYNTHETIC tumour" in out and "its volumes mean nothing" in out
    assert re.search(r"received in the study: .*SEG 1", out), out
    assert re.search(r"whole_tumor\s+\d+\.\d\s+\d+\.\d", out), (
        "model and phantom volumes are printed"
    )
    assert "/jobs/" in out
    labels = list((tmp_path / "demo").glob("*-labels.nii.gz"))
    assert len(labels) == 1 and "label map NIfTI" in out
    seg_files = list((tmp_path / "demo" / "pacs" / "SEG").glob("*.dcm"))
    assert len(seg_files) == 1
    log = (tmp_path / "demo" / "logs" / "serve.log").read_text()
    assert "DEMO^SYNTHETIC" not in log and "DEMO0001" not in log, "no patient name or ID in any log"
