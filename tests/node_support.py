"""Helpers for the node tests: small generated MR instances, DCMTK senders, raw-byte checks."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MR = "1.2.840.10008.5.1.4.1.1.4"
CT = "1.2.840.10008.5.1.4.1.1.2"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def make_instance(
    path: Path,
    *,
    study_uid: str,
    series_uid: str,
    sop_uid: str | None = None,
    sop_class: str = MR,
    rows: int = 16,
    patient_name: str = "ANON^PATIENT",
    patient_id: str = "ANON0001",
    modality: str = "MR",
    instance_number: int = 1,
    series_description: str = "",
) -> str:
    """Write one small single-frame image instance; returns its SOPInstanceUID."""
    sop_uid = sop_uid or generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.AccessionNumber = "ACC" + patient_id[-4:]
    ds.StudyDate = "20260101"
    ds.Modality = modality
    ds.SeriesDescription = series_description
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.Rows = rows
    ds.Columns = rows
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = (np.arange(rows * rows, dtype=np.int16) + instance_number).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return sop_uid


def make_series(
    folder: Path, n: int, *, study_uid: str, series_uid: str | None = None, **kw: object
) -> list[Path]:
    series_uid = series_uid or generate_uid()
    paths = []
    for i in range(n):
        p = folder / f"{i:04d}.dcm"
        make_instance(p, study_uid=study_uid, series_uid=series_uid, instance_number=i + 1, **kw)
        paths.append(p)
    return paths


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset after the file meta (what travels over the network)."""
    data = path.read_bytes()
    with open(path, "rb") as f:
        pydicom.filereader.read_preamble(f, False)
        pydicom.filereader._read_file_meta_info(f)
        return data[f.tell() :]


def run_storescu(
    port: int,
    paths: list[Path],
    *,
    called: str = "GLIOMASEG",
    calling: str = "STORESCU",
    extra: tuple[str, ...] = ("-R",),
    timeout_s: float = 300,
) -> subprocess.CompletedProcess[str]:
    """DCMTK storescu with TCP_NODELAY=1 and -v (one 'Store Response' line per file)."""
    exe = shutil.which("storescu")
    assert exe, "DCMTK storescu is installed by `make test` (Debian package dcmtk)"
    env = dict(os.environ, TCP_NODELAY="1")
    cmd = [exe, "-v", *extra, "-aet", calling, "-aec", called, "127.0.0.1", str(port)]
    return subprocess.run(
        [*cmd, *map(str, paths)], env=env, capture_output=True, text=True, timeout=timeout_s
    )


def store_statuses(output: str) -> list[str]:
    """The status words DCMTK printed per file, in order ('Success', 'Refused: ...', ...)."""
    return re.findall(r"Received Store Response \(([^)]*)\)", output)


def run_echoscu(
    port: int, *, called: str = "GLIOMASEG", calling: str = "ECHOSCU"
) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("echoscu")
    assert exe, "DCMTK echoscu is installed by `make test` (Debian package dcmtk)"
    env = dict(os.environ, TCP_NODELAY="1")
    return subprocess.run(
        [exe, "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def spooled(spool_root: Path) -> list[Path]:
    return sorted((spool_root / "studies").rglob("*.dcm"))


class NodeProcess:
    """`gliomaseg node` as a real subprocess on a free port, its log captured to a file."""

    def __init__(self, root: Path, *, env: dict[str, str] | None = None) -> None:
        import sys
        import uuid

        from tests.conftest import free_port

        self.root = root
        self.spool = root / "spool"
        self.port = free_port()
        self.log_path = root / "node.log"
        self.queue = f"node-test-{uuid.uuid4().hex[:8]}.cpu"
        base = {k: v for k, v in os.environ.items() if not k.startswith("GLIOMASEG_")}
        self.env = base | {
            "TCP_NODELAY": "1",
            "GLIOMASEG_DICOM__PORT": str(self.port),
            "GLIOMASEG_DICOM__AE_TITLE": "GLIOMASEG",
            "GLIOMASEG_SPOOL__ROOT": str(self.spool),
            "GLIOMASEG_SPOOL__MIN_FREE_MB": "0",
            "GLIOMASEG_QUEUE__BROKER_URL": "redis://127.0.0.1:6379/11",
            "GLIOMASEG_QUEUE__CPU_QUEUE": self.queue,
            "GLIOMASEG_COMPLETION__POLL_S": "0.2",
            "GLIOMASEG_LOGGING__LEVEL": "DEBUG",
        }
        self.env.update(env or {})
        self.python = sys.executable
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.spool.resolve() / 'jobs.sqlite3'}"

    def start(self, timeout_s: float = 60) -> NodeProcess:
        import socket
        import time

        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the process
        repo = Path(__file__).resolve().parent.parent
        self.proc = subprocess.Popen(
            [self.python, "-m", "gliomaseg", "node"],
            env=self.env,
            cwd=repo,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited {self.proc.returncode}: {self.log()[-3000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"node not listening after {timeout_s} s: {self.log()[-3000:]}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None

    def jobs(self):
        from dicom_node.jobs import JobStore

        store = JobStore(self.database_url)
        try:
            return store.list()
        finally:
            store.close()
