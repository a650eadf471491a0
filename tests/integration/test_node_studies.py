"""Whole studies built from the shared BraTS and TCIA cases, through a real node to `queued`.

Each study (four series, vendor-style headers from dicom_node.studygen) is sent with storescu;
the node must classify it, create one job with the four roles, and hand it to Redis.
"""

from __future__ import annotations

import pytest

from dicom_node.studygen import write_brats_case, write_tcia_native_case
from tests.conftest import wait_for
from tests.node_support import NodeProcess, run_storescu, store_statuses

pytestmark = [pytest.mark.integration, pytest.mark.data]


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    n = NodeProcess(
        tmp_path_factory.mktemp("node-studies"),
        env={"GLIOMASEG_COMPLETION__SERIES_QUIET_S": "1"},
    ).start()
    yield n
    n.stop()


def send_and_wait(node: NodeProcess, study) -> None:
    files = [p for s in study.series.values() for p in s.paths]
    done = run_storescu(node.port, files)
    assert store_statuses(done.stdout + done.stderr) == ["Success"] * len(files)

    def queued():
        return [
            j
            for j in node.jobs()
            if j.study_uid == study.study_uid
            and (j.state.value == "failed" or j.enqueued is not None)
        ]

    (job,) = wait_for(queued, 60)
    assert job.state.value == "queued", job.reason
    expected = {role: study.series[role].series_uid for role in ("T1", "T1c", "T2", "FLAIR")}
    assert job.roles == expected
    assert job.enqueued is not None


@pytest.mark.parametrize(
    ("vendor", "kw"),
    [("siemens", {"slice_mm": 5.0}), ("ge", {"slice_mm": 5.0, "oblique_deg": 12.0})],
)
def test_brats_case_study(node, datasets, tmp_path, vendor, kw):
    case = datasets / "brats" / "Brats18_CBICA_AME_1"
    study = write_brats_case(case, tmp_path / "study", vendor=vendor, **kw)
    send_and_wait(node, study)


def test_tcia_native_case_study(node, datasets, tmp_path):
    (case,) = (datasets / "tcia_native").iterdir()
    study = write_tcia_native_case(case, tmp_path / "study")
    send_and_wait(node, study)
