"""kill -9 the node in the middle of a series: every acknowledged instance survives the restart."""

from __future__ import annotations

import os
import re
import subprocess

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_node.spool import Spool
from tests.conftest import wait_for
from tests.node_support import (
    NodeProcess,
    make_series,
    run_echoscu,
    run_storescu,
    spooled,
    store_statuses,
)

pytestmark = pytest.mark.integration


def acknowledged(output: str) -> list[str]:
    """Files storescu sent and got Success for (it prints 'Sending file' then the response)."""
    done, current = [], None
    for line in output.splitlines():
        m = re.search(r"Sending file: (.+)$", line)
        if m:
            current = m.group(1).strip()
        elif "Received Store Response (Success)" in line and current:
            done.append(current)
            current = None
    return done


def test_restart_during_reception_loses_no_acknowledged_instance(tmp_path):
    study = generate_uid()
    paths = make_series(tmp_path / "series", 500, study_uid=study, rows=128)
    node = NodeProcess(tmp_path / "node").start()
    try:
        env = dict(os.environ, TCP_NODELAY="1")
        sender = subprocess.Popen(
            [
                "storescu",
                "-v",
                "-R",
                "-aec",
                "GLIOMASEG",
                "127.0.0.1",
                str(node.port),
                *map(str, paths),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        wait_for(lambda: len(spooled(node.spool)) >= 40, 60, interval_s=0.01)
        node.kill9()  # mid-series
        out, _ = sender.communicate(timeout=120)
        acked = acknowledged(out)
        # (the last spooled instance may not have been acknowledged before the kill)
        assert 30 <= len(acked) < 500, "the node must die in the middle of the series"

        node.start()
        sp = Spool(node.spool)
        for p in acked:
            d = pydicom.dcmread(p, stop_before_pixels=True)
            assert sp.instance_path(study, d.SeriesInstanceUID, d.SOPInstanceUID).is_file(), p
        assert list((node.spool / "tmp").iterdir()) == []
        assert "index rebuilt from spool" in node.log()

        done = run_storescu(node.port, paths)  # the sender retries the whole series
        assert store_statuses(done.stdout + done.stderr) == ["Success"] * 500
        wait_for(lambda: len(spooled(node.spool)) == 500, 10, interval_s=0.01)
        jobs = [j for j in node.jobs() if j.study_uid == study]
        assert len(jobs) == 1 and jobs[0].state.value == "waiting"
    finally:
        node.stop()


def test_below_the_free_disk_floor_store_answers_out_of_resources(tmp_path):
    node = NodeProcess(
        tmp_path / "node", env={"GLIOMASEG_SPOOL__MIN_FREE_MB": str(10**9)}
    ).start()  # a floor of 1 PB: this disk is always below it
    try:
        paths = make_series(tmp_path / "s", 2, study_uid=generate_uid())
        done = run_storescu(node.port, paths)
        statuses = store_statuses(done.stdout + done.stderr)
        assert statuses and statuses[0] == "Refused: OutOfResources", statuses
        assert spooled(node.spool) == []
        assert list((node.spool / "tmp").iterdir()) == []
        assert "Out of Resources" in node.log()
        assert run_echoscu(node.port).returncode == 0  # and the node still answers
    finally:
        node.stop()
