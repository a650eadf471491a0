"""Shared, expensive integration fixtures: one Orthanc and one full service per session.

``orthanc``: a real Orthanc PACS on free ports (tests.peers.Orthanc), for any test.
``e2e_service``: gliomaseg node + CPU worker + GPU-queue worker (solo pool, as `gliomaseg serve`
runs them) on real Redis, sending results to ``orthanc``. Many assertions share one pipeline run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import Orthanc, Service


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    pacs = Orthanc.start(tmp_path_factory.mktemp("orthanc"))
    yield pacs
    pacs.stop()


@pytest.fixture(scope="session")
def e2e_service(tmp_path_factory: pytest.TempPathFactory, orthanc: Orthanc) -> Iterator[Service]:
    svc = Service.configure(Path(tmp_path_factory.mktemp("e2e-service")), pacs=orthanc)
    svc.start_node()
    svc.start_worker("worker-cpu", "--queues", "cpu", "--concurrency", "1")
    svc.start_worker("worker-gpu", "--queues", "gpu", "--pool", "solo")
    yield svc
    svc.stop_all()
