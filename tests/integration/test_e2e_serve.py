"""`gliomaseg serve` on one machine: it starts Redis (none answers at the local broker URL), the
node, the workers and the web app; SIGTERM stops every one of them, Redis included.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_for
from tests.peers import REPO, Service

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed"),
]


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def processes_with(marker: str) -> list[int]:
    """Pids whose environment holds ``marker`` (this test's unique queue name)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_serve_starts_everything_and_stops_cleanly(tmp_path: Path) -> None:
    redis_port = free_port()
    web_port = free_port()
    svc = Service.configure(
        tmp_path,
        extra_env={
            "GLIOMASEG_QUEUE__BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
            "GLIOMASEG_WEB__PORT": str(web_port),
        },
    )
    marker = svc.env["GLIOMASEG_QUEUE__CPU_QUEUE"]
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "gliomaseg", "serve"],
        env=svc.env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: listening(redis_port) and listening(svc.dicom_port), timeout_s=90)
        echo = subprocess.run(
            ["echoscu", "-aec", "GLIOMASEG", "127.0.0.1", str(svc.dicom_port)],
            env=dict(svc.env),
            capture_output=True,
            timeout=30,
        )
        assert echo.returncode == 0, echo.stderr
        if __import__("importlib").util.find_spec("web.cli") is not None:
            wait_for(lambda: listening(web_port), timeout_s=90)
        # both workers (cpu, gpu) and their pool children are up
        wait_for(
            lambda: "worker-gpu" in (tmp_path / "serve.log").read_text(errors="replace"),
            timeout_s=30,
        )
        assert len(processes_with(marker)) >= 4  # serve, node, two workers (+ children, web)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert not listening(redis_port), "serve left its Redis running"
    assert not listening(svc.dicom_port), "serve left the node running"
    wait_for(lambda: processes_with(marker) == [], timeout_s=30)
