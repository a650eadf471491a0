"""No PHI in logs or jobs: a "CANARY^PHI" patient goes through a real node at DEBUG level."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pydicom
import pytest

from dicom_node.studygen import write_study
from tests.conftest import wait_for
from tests.node_support import CT, NodeProcess, make_instance, run_storescu

pytestmark = pytest.mark.integration

NAME, PID = "CANARY^PHI", "CANARYID4711"


def test_canary_patient_never_reaches_logs_or_the_jobs_database(tmp_path):
    rng = np.random.default_rng(1)
    vols = {
        r: (rng.integers(0, 900, (20, 20, 4)).astype(np.int16), np.diag([2.0, 2.0, 5.0, 1.0]))
        for r in ("T1", "T1c", "T2", "FLAIR")
    }
    study = write_study(vols, tmp_path / "study", patient_name=NAME, patient_id=PID)
    files = [p for s in study.series.values() for p in s.paths]
    first = pydicom.dcmread(files[0])
    assert str(first.PatientName) == NAME and first.PatientID == PID
    # error paths too: a refused class, a dataset without SeriesInstanceUID
    ct = tmp_path / "ct.dcm"
    make_instance(
        ct,
        study_uid=study.study_uid,
        series_uid="1.2.3",
        sop_class=CT,
        patient_name=NAME,
        patient_id=PID,
    )
    broken = tmp_path / "broken.dcm"
    make_instance(
        broken, study_uid=study.study_uid, series_uid="1.2.3.4", patient_name=NAME, patient_id=PID
    )
    ds = pydicom.dcmread(broken)
    del ds.SeriesInstanceUID
    ds.save_as(broken)

    node = NodeProcess(tmp_path / "node", env={"GLIOMASEG_COMPLETION__SERIES_QUIET_S": "1"}).start()
    try:
        assert run_storescu(node.port, files).returncode == 0
        run_storescu(node.port, [ct])
        run_storescu(node.port, [broken], extra=("-R", "-nh"))
        wait_for(lambda: [j for j in node.jobs() if j.state.value == "queued"], 60)
        (job,) = node.jobs()
        cli = [
            subprocess.run(
                [sys.executable, "-m", "gliomaseg", *args],
                env=node.env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            for args in (["jobs", "--json"], ["job", job.id, "--json"], ["jobs"])
        ]
    finally:
        node.stop()
    log = node.log()
    assert "association accepted" in log and "study complete" in log  # the log is not empty
    texts = {"node log": log, **{f"cli {i}": c.stdout + c.stderr for i, c in enumerate(cli)}}
    for f in node.spool.glob("jobs.sqlite3*"):
        texts[f.name] = f.read_bytes().decode("latin-1")
    for where, text in texts.items():
        for needle in ("CANARY", "PHI^", PID):
            assert needle not in text, f"{needle!r} found in {where}"
