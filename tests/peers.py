"""Real peers for tests: an Orthanc PACS on free ports, and gliomaseg's own processes.

Reuse them from any test::

    from tests.peers import Orthanc
    pacs = Orthanc.start(tmp_path / "orthanc")       # DICOM + REST on free ports, TCP_NODELAY=1
    pacs.series_in_study(study_uid)                    # [{"SeriesInstanceUID": ..., "Modality": ...}]
    pacs.stop(); pacs.restart()                        # storage is kept across restarts

Nothing here sleeps for a fixed time: every wait polls with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port

ORTHANC_BIN = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
REPO = Path(__file__).resolve().parent.parent


def _poll(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s} s")
        time.sleep(interval_s)


@dataclass
class Orthanc:
    """An Orthanc process with a JSON config in ``root``; storage survives stop/restart."""

    root: Path
    aet: str
    dicom_port: int
    http_port: int
    modalities: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(
        cls,
        root: Path,
        *,
        aet: str = "ORTHANC",
        modalities: Mapping[str, tuple[str, str, int]] | None = None,
    ) -> Orthanc:
        """Start Orthanc on free ports; ``modalities`` name -> (AET, host, port) it may send to."""
        if not Path(ORTHANC_BIN).exists():
            import pytest

            pytest.skip("Orthanc is not installed (Debian package orthanc; `make system-deps`)")
        root.mkdir(parents=True, exist_ok=True)
        pacs = cls(root, aet, free_port(), free_port(), dict(modalities or {}))
        pacs._launch()
        return pacs

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _config(self) -> dict[str, Any]:
        storage = self.root / "storage"
        return {
            "Name": "gliomaseg-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "UnknownSopClassAccepted": False,
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            "Plugins": [],
            "StableAge": 1,
            "SaveJobs": False,
            "ConcurrentJobs": 1,
        }

    def _launch(self) -> None:
        config = self.root / "orthanc.json"
        config.write_text(json.dumps(self._config(), indent=2))
        log = open(self.root / "orthanc.log", "ab")  # noqa: SIM115 - handed to the process
        env = dict(os.environ, TCP_NODELAY="1")
        self.proc = subprocess.Popen(
            [ORTHANC_BIN, str(config)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        log.close()
        try:
            _poll(self._alive, 30, f"Orthanc REST on {self.url}")
        except TimeoutError:
            self.stop()
            tail = (self.root / "orthanc.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"Orthanc did not start; log tail:\n{tail}") from None

    def _alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {self.proc.returncode}")
        try:
            return httpx.get(f"{self.url}/system", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self._launch()

    # -- REST -------------------------------------------------------------------------------------
    def get(self, path: str) -> Any:
        r = httpx.get(f"{self.url}{path}", timeout=30)
        r.raise_for_status()
        return r.json()

    def get_bytes(self, path: str) -> bytes:
        r = httpx.get(f"{self.url}{path}", timeout=60)
        r.raise_for_status()
        return r.content

    def series_in_study(self, study_uid: str) -> list[dict[str, Any]]:
        """Each series of the study: MainDicomTags + "ID" + "Instances" (Orthanc ids)."""
        r = httpx.post(
            f"{self.url}/tools/find",
            json={"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
            timeout=30,
        )
        r.raise_for_status()
        out = []
        for s in r.json():
            row = dict(s["MainDicomTags"])
            row["ID"] = s["ID"]
            row["Instances"] = list(s["Instances"])
            out.append(row)
        return out

    def series_by_modality(self, study_uid: str) -> dict[str, list[dict[str, Any]]]:
        by: dict[str, list[dict[str, Any]]] = {}
        for s in self.series_in_study(study_uid):
            by.setdefault(s.get("Modality", "?"), []).append(s)
        return by

    def instance_file(self, orthanc_id: str) -> bytes:
        return self.get_bytes(f"/instances/{orthanc_id}/file")

    def instance_count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])


def storescu(
    host: str, port: int, called_aet: str, paths: list[Path], *, calling_aet: str = "STORESCU"
) -> None:
    """DCMTK storescu (with -R: only the SOP classes of the files), TCP_NODELAY=1; raises on failure."""
    exe = shutil.which("storescu")
    if exe is None:
        import pytest

        pytest.skip("DCMTK storescu is not installed (Debian package dcmtk)")
    env = dict(os.environ, TCP_NODELAY="1")
    cmd = [exe, "-R", "-aet", calling_aet, "-aec", called_aet, host, str(port), *map(str, paths)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"storescu failed ({done.returncode}): {done.stderr[-2000:]}")


@dataclass
class Service:
    """gliomaseg's own processes (node, workers) on free ports, with their own queues and spool."""

    root: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @classmethod
    def configure(
        cls,
        root: Path,
        *,
        pacs: Orthanc | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> Service:
        """Environment for an isolated service: spool in ``root``, unique queue names, free port."""
        (root / "spool").mkdir(parents=True, exist_ok=True)
        tag = uuid.uuid4().hex[:8]
        # Isolated from the caller's gliomaseg settings, except the model's (a bundle under test).
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("GLIOMASEG_") or k.startswith("GLIOMASEG_MODEL__")
        }
        env.update(
            {
                "TCP_NODELAY": "1",
                "GLIOMASEG_SPOOL__ROOT": str(root / "spool"),
                "GLIOMASEG_SPOOL__MIN_FREE_MB": "0",
                "GLIOMASEG_DICOM__PORT": str(free_port()),
                "GLIOMASEG_DICOM__AE_TITLE": "GLIOMASEG",
                "GLIOMASEG_QUEUE__BROKER_URL": "redis://127.0.0.1:6379/0",
                "GLIOMASEG_QUEUE__CPU_QUEUE": f"test-{tag}.cpu",
                "GLIOMASEG_QUEUE__GPU_QUEUE": f"test-{tag}.gpu",
                "GLIOMASEG_COMPLETION__SERIES_QUIET_S": "1",
                "GLIOMASEG_COMPLETION__POLL_S": "0.2",
                "GLIOMASEG_COMPLETION__STUDY_FORCE_S": "120",
                "GLIOMASEG_LOGGING__LEVEL": "INFO",
                "GLIOMASEG_OUTPUTS__SEND_RETRIES": "2",
                "GLIOMASEG_OUTPUTS__SEND_BACKOFF_S": "0.5",
                "GLIOMASEG_PREPROCESS__BRAIN_EXTRACTION": "auto",
                "OMP_NUM_THREADS": "2",
            }
        )
        if pacs is not None:
            env.update(
                {
                    "GLIOMASEG_PEERS__PACS__AE_TITLE": pacs.aet,
                    "GLIOMASEG_PEERS__PACS__HOST": "127.0.0.1",
                    "GLIOMASEG_PEERS__PACS__PORT": str(pacs.dicom_port),
                    "GLIOMASEG_OUTPUTS__DESTINATIONS": '["PACS"]',
                }
            )
        env.update(extra_env or {})
        return cls(root, env)

    @property
    def dicom_port(self) -> int:
        return int(self.env["GLIOMASEG_DICOM__PORT"])

    @property
    def database_url(self) -> str:
        return f"sqlite:///{Path(self.env['GLIOMASEG_SPOOL__ROOT']).resolve() / 'jobs.sqlite3'}"

    def settings(self) -> Any:
        """The Settings these processes read (same environment)."""
        from config.settings import load_settings

        saved = dict(os.environ)
        try:
            os.environ.clear()
            os.environ.update(self.env)
            return load_settings()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def gliomaseg(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a `gliomaseg` subcommand to completion with this service's environment."""
        return subprocess.run(
            [sys.executable, "-m", "gliomaseg", *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """Start a long-running `gliomaseg` subcommand (node, worker, ...), logging to root/<name>.log."""
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - handed to the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "gliomaseg", *args],
            env=self.env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def start_node(self) -> None:
        self.spawn("node", "node")
        _poll(self._node_listens, 60, "gliomaseg node listening")

    def _node_listens(self) -> bool:
        import socket

        proc = self.procs["node"]
        if proc.poll() is not None:
            raise RuntimeError(f"node exited with {proc.returncode}: {self.log_tail('node')}")
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", self.dicom_port)) == 0

    def start_worker(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        return self.spawn(name, "worker", *args)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the whole process group of ``name`` (a worker and its pool children)."""
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=60)

    def stop(self, name: str, timeout_s: float = 15) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)
        self.purge_queues()

    def purge_queues(self) -> None:
        import redis

        client = redis.Redis.from_url(self.env["GLIOMASEG_QUEUE__BROKER_URL"])
        for key in ("GLIOMASEG_QUEUE__CPU_QUEUE", "GLIOMASEG_QUEUE__GPU_QUEUE"):
            client.delete(self.env[key])

    def log_tail(self, name: str, n_chars: int = 3000) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-n_chars:] if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.root.glob("*.log"))
        )
