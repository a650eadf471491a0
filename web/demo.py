"""``gliomaseg demo``: the whole loop on one machine, in one command.

1. starts a receiving PACS stand-in: Orthanc when installed, else a small pynetdicom storage SCP;
2. starts the service (``gliomaseg serve``: node, workers, web; Redis too when none answers) in
   ``--workdir``, with its own spool, ports, token and queue names, and the PACS as destination;
3. builds a study (default: the MNI152 brain shipped inside nilearn with a SYNTHETIC tumour;
   ``--case DIR``: a real BraTS-style case) with ``dicom_node.studygen`` and sends it by C-STORE;
4. waits until the job is delivered and the PACS holds the results, then prints where to look.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

PACS_AE = "DEMOPACS"
SCANNER_AE = "DEMO-SCANNER"
NODE_AE = "GLIOMASEG"
TERMINAL = ("delivered", "failed", "delivery_failed")
DISCLAIMER = (
    "The default demo study is the MNI152 template brain with a SYNTHETIC tumour drawn by "
    "gliomaseg: it is not a patient, and its volumes mean nothing."
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


# -- PACS stand-ins ----------------------------------------------------------------------------------
@dataclass
class BuiltinPacs:
    """A pynetdicom storage SCP that keeps what it receives in ``folder`` (one file per instance)."""

    folder: Path
    port: int
    ae_title: str = PACS_AE
    received: Counter[tuple[str, str]] = field(default_factory=Counter)  # (study, modality) -> n
    _server: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    kind = "built-in pynetdicom storage SCP"

    def start(self) -> None:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        self.folder.mkdir(parents=True, exist_ok=True)
        ae = AE(self.ae_title)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(str(cx.abstract_syntax), ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers: list[Any] = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_OPEN, _nodelay)]
        self._server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        study, modality = str(ds.StudyInstanceUID), str(ds.get("Modality", ""))
        target = self.folder / modality / f"{ds.SOPInstanceUID}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target, enforce_file_format=True)
        with self._lock:
            self.received[(study, modality)] += 1
        return 0x0000

    def results(self, study_uid: str) -> dict[str, int]:
        with self._lock:
            return {m: n for (s, m), n in self.received.items() if s == study_uid}

    def where(self) -> str:
        return f"{self.folder} (one folder per modality: SEG, SR, OT/MR overlay)"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()


def _nodelay(event: Any) -> None:
    sock = event.assoc.dul.socket.socket
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass
class OrthancPacs:
    """Orthanc on free ports with its storage in ``folder`` (listens on all interfaces)."""

    folder: Path
    port: int
    http_port: int
    binary: str
    log_path: Path
    ae_title: str = PACS_AE
    _proc: subprocess.Popen[bytes] | None = None

    kind = "Orthanc"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "gliomaseg-demo",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "DicomAet": self.ae_title,
            "DicomPort": self.port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "Plugins": [],
        }
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        env = dict(os.environ, TCP_NODELAY="1")
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self._proc = subprocess.Popen(
            [self.binary, str(path)], stdout=log, stderr=log, env=env, start_new_session=True
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                self._get("/system")
                return
            except (urllib.error.URLError, OSError):
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise click.ClickException(
                        f"Orthanc did not start (see {self.log_path}); `--pacs builtin` avoids it"
                    ) from None
                time.sleep(0.2)

    def _get(self, path: str, body: dict | None = None) -> Any:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        data = json.dumps(body).encode() if body is not None else None
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as resp:
            return json.loads(resp.read())

    def results(self, study_uid: str) -> dict[str, int]:
        found = self._get(
            "/tools/find",
            {"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
        )
        out: Counter[str] = Counter()
        for series in found:
            out[series.get("MainDicomTags", {}).get("Modality", "")] += len(
                series.get("Instances", [])
            )
        return dict(out)

    def where(self) -> str:
        return f"Orthanc explorer http://127.0.0.1:{self.http_port}/app/explorer.html"

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()


# -- the web API -------------------------------------------------------------------------------------
@dataclass
class Api:
    base: str
    token: str

    def get(self, path: str) -> Any:
        req = urllib.request.Request(
            self.base + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def get_bytes(self, path: str) -> bytes:
        req = urllib.request.Request(
            self.base + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            return bytes(resp.read())

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.base + "/healthz", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def job_for(self, study_uid: str) -> dict[str, Any] | None:
        for job in self.get("/api/jobs?limit=50")["jobs"]:
            if job["study_uid"] == study_uid:
                return job
        return None


# -- the study -----------------------------------------------------------------------------------------
def build_study(out_dir: Path, case: Path | None) -> tuple[Any, dict[str, float] | None]:
    """Write the demo study as DICOM; returns (StudyWritten, the true volumes in ml or None)."""
    from dicom_node import studygen

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    if case is not None:
        written = studygen.write_brats_case(
            case, out_dir, patient_name="DEMO^BRATS", patient_id="DEMO0002"
        )
        return written, _case_truth(case)
    from web.demostudy import synthetic_case

    phantom = synthetic_case()
    written = studygen.write_study(
        phantom.volumes, out_dir, patient_name="DEMO^SYNTHETIC", patient_id="DEMO0001"
    )
    return written, phantom.truth_ml


def _case_truth(case: Path) -> dict[str, float] | None:
    segs = sorted(case.glob("*seg*.nii*"))
    if not segs:
        return None
    import nibabel as nib
    import numpy as np

    img: Any = nib.load(segs[0])
    lab = np.asanyarray(img.dataobj)
    ml = float(abs(np.linalg.det(img.affine[:3, :3]))) / 1000.0
    n = {v: int((lab == v).sum()) for v in (1, 2, 4)}
    return {
        "necrotic": n[1] * ml, "edema": n[2] * ml, "enhancing": n[4] * ml,
        "tumor_core": (n[1] + n[4]) * ml, "whole_tumor": (n[1] + n[2] + n[4]) * ml,
    }  # fmt: skip


def _tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


@click.command("demo")
@click.option("--case", "case_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="A BraTS-style case folder (*_t1, *_t1ce, *_t2, *_flair .nii.gz) instead of the synthetic study.")  # fmt: skip
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-run"),
              show_default=True, help="Spool, PACS storage and logs of the demo.")  # fmt: skip
@click.option("--pacs", type=click.Choice(["auto", "orthanc", "builtin"]), default="auto",
              show_default=True, help="Receiving PACS: Orthanc when installed (auto), or the built-in SCP.")  # fmt: skip
@click.option(
    "--web-port", type=int, default=None, help="Dashboard port (default 8080, else a free one)."
)
@click.option("--timeout", "timeout_s", type=float, default=1800, show_default=True,
              help="Seconds to wait for the results.")  # fmt: skip
@click.option(
    "--exit-when-done", is_flag=True, help="Stop everything once the results arrived (tests, CI)."
)
def demo(
    case_dir: Path | None,
    workdir: Path,
    pacs: str,
    web_port: int | None,
    timeout_s: float,
    exit_when_done: bool,
) -> None:
    """Run the whole loop on this machine: PACS stand-in + service + a study, then where to look."""
    workdir = workdir.resolve()
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    say = lambda msg: click.echo(f"[demo] {msg}")  # noqa: E731
    if case_dir is None:
        say(DISCLAIMER)

    node_port = free_port()
    web_port = web_port or (8080 if port_free(8080) else free_port())
    token = secrets.token_urlsafe(18)
    tag = secrets.token_hex(3)
    broker_port = 6379 if redis_answers(6379) else free_port()

    orthanc = shutil.which("Orthanc")
    if pacs == "orthanc" and not orthanc:
        raise click.ClickException("Orthanc is not installed (Debian: apt-get install orthanc)")
    if pacs != "builtin" and orthanc:
        stand_in: Any = OrthancPacs(workdir / "orthanc", free_port(), free_port(), orthanc,
                                    workdir / "logs" / "orthanc.log")  # fmt: skip
    else:
        stand_in = BuiltinPacs(workdir / "pacs", free_port())
    say(f"starting the receiving PACS: {stand_in.kind}, AE {PACS_AE} on port {stand_in.port}")
    stand_in.start()

    env = {k: v for k, v in os.environ.items() if not k.startswith("GLIOMASEG_")}
    for keep in ("GLIOMASEG_MODEL__BUNDLE", "GLIOMASEG_MODEL__DEVICE", "GLIOMASEG_MODEL__THREADS"):
        if keep in os.environ:
            env[keep] = os.environ[keep]
    env.update({
        "GLIOMASEG_SPOOL__ROOT": str(workdir / "spool"),
        "GLIOMASEG_SPOOL__MIN_FREE_MB": "100",
        "GLIOMASEG_DICOM__AE_TITLE": NODE_AE,
        "GLIOMASEG_DICOM__PORT": str(node_port),
        "GLIOMASEG_WEB__PORT": str(web_port),
        "GLIOMASEG_WEB__TOKEN": token,
        "GLIOMASEG_QUEUE__BROKER_URL": f"redis://127.0.0.1:{broker_port}/0",
        # own queue names, so that no other worker on a shared Redis takes the demo's job
        "GLIOMASEG_QUEUE__CPU_QUEUE": f"gliomaseg.demo-{tag}.cpu",
        "GLIOMASEG_QUEUE__GPU_QUEUE": f"gliomaseg.demo-{tag}.gpu",
        "GLIOMASEG_COMPLETION__SERIES_QUIET_S": "3",
        "GLIOMASEG_COMPLETION__POLL_S": "0.5",
        f"GLIOMASEG_PEERS__{PACS_AE}__AE_TITLE": PACS_AE,
        f"GLIOMASEG_PEERS__{PACS_AE}__HOST": "127.0.0.1",
        f"GLIOMASEG_PEERS__{PACS_AE}__PORT": str(stand_in.port),
        "GLIOMASEG_OUTPUTS__DESTINATIONS": json.dumps([PACS_AE]),
        "TCP_NODELAY": "1",
    })  # fmt: skip
    serve_log = workdir / "logs" / "serve.log"
    say(f"starting the service (gliomaseg serve); its log: {serve_log}")
    log_fh = open(serve_log, "ab")  # noqa: SIM115 - the child writes to it until the end
    serve = subprocess.Popen(
        [sys.executable, "-m", "gliomaseg", "serve"],
        env=env, stdout=log_fh, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip

    def stop(*_: Any) -> None:
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
        stand_in.stop()

    api = Api(f"http://127.0.0.1:{web_port}", token)
    try:
        _run(say, api, serve, serve_log, node_port, stand_in, case_dir, workdir, timeout_s)
        if not exit_when_done:
            say("everything keeps running: look around, then press Ctrl-C to stop")
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            while serve.poll() is None:
                time.sleep(0.5)
            raise click.ClickException(f"the service stopped; see {serve_log}")
    except KeyboardInterrupt:
        say("stopping")
    finally:
        stop()
        log_fh.close()


def _run(say, api, serve, serve_log, node_port, stand_in, case_dir, workdir, timeout_s) -> None:  # type: ignore[no-untyped-def]
    from config.settings import Peer
    from dicom_node import scu

    node = Peer(ae_title=NODE_AE, host="127.0.0.1", port=node_port)

    def alive() -> None:
        if serve.poll() is not None:
            raise click.ClickException(
                f"the service exited with {serve.returncode}; last lines of {serve_log}:\n{_tail(serve_log)}"
            )

    say(
        "building the study" + (f" from {case_dir}" if case_dir else " (MNI152 + synthetic tumour)")
    )
    written, truth = build_study(workdir / "study", case_dir)
    files = [p for s in written.series.values() for p in s.paths]
    say(f"study: {len(written.series)} series, {len(files)} instances in {workdir / 'study'}")

    deadline = time.monotonic() + 120
    while True:
        alive()
        try:
            scu.echo(node, calling_ae=SCANNER_AE, timeout_s=2)
            if api.healthy():
                break
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise click.ClickException(f"the service did not answer within 120 s; see {serve_log}")
        time.sleep(0.5)
    say(f"service up: DICOM {NODE_AE}@127.0.0.1:{node_port}, dashboard {api.base}/")

    t0 = time.monotonic()
    report = scu.send(files, node, calling_ae=SCANNER_AE, timeout_s=60)
    say(
        f"sent {report.sent} instances to the node ({report.failed} failed) in {time.monotonic() - t0:.1f} s"
    )

    last_state = None
    job: dict[str, Any] | None = None
    deadline = time.monotonic() + timeout_s
    while True:
        alive()
        try:
            job = api.job_for(written.study_uid)
        except (urllib.error.URLError, OSError):
            job = None
        if job and job["state"] != last_state:
            last_state = job["state"]
            say(
                f"job {job['id']}: {last_state}"
                + (f" ({job['reason']})" if job.get("reason") else "")
            )
        if job and job["state"] in TERMINAL:
            break
        if time.monotonic() > deadline:
            raise click.ClickException(
                f"no result within {timeout_s:.0f} s (job state: {last_state}); see {serve_log}"
            )
        time.sleep(1.0)
    assert job is not None
    if job["state"] != "delivered":
        raise click.ClickException(
            f"job {job['id']} ended {job['state']}: {job.get('reason')}; page {api.base}/jobs/{job['id']}"
        )
    at_pacs: dict[str, int] = {}
    wait_pacs = time.monotonic() + 30
    while time.monotonic() < wait_pacs:
        at_pacs = stand_in.results(written.study_uid)
        if any(m in at_pacs for m in ("SEG", "SR")):
            break
        time.sleep(0.5)
    full = api.get(f"/api/jobs/{job['id']}")["job"]
    labels_path = workdir / f"{job['id']}-labels.nii.gz"
    try:
        labels_path.write_bytes(api.get_bytes(f"/api/jobs/{job['id']}/labels.nii.gz"))
    except (urllib.error.URLError, OSError) as exc:
        say(f"could not fetch the label map: {exc}")
    outputs_dir = workdir / "spool" / "outputs" / job["id"]
    click.echo("")
    click.echo("=" * 72)
    click.echo(f"Done in {time.monotonic() - t0:.0f} s after sending. Where to look:")
    click.echo(f"  dashboard  {api.base}/jobs/{job['id']}   (sign in with token {api.token})")
    click.echo(f"  PACS       {stand_in.where()}")
    click.echo(
        "             received in the study: "
        + (", ".join(f"{m} {n}" for m, n in sorted(at_pacs.items())) or "nothing yet")
    )
    click.echo(f"  files      {outputs_dir}  (DICOM SEG, SR, overlay)")
    if labels_path.is_file():
        click.echo(
            f"             {labels_path}  (label map NIfTI: 1 necrotic, 2 edema, 4 enhancing)"
        )
    click.echo(f"  logs       {serve_log}")
    click.echo("  volumes (ml)   model" + ("   truth" if truth else ""))
    for key in ("whole_tumor", "tumor_core", "enhancing", "necrotic", "edema"):
        if key in (full.get("volumes_ml") or {}):
            line = f"    {key:<12} {full['volumes_ml'][key]:7.1f}"
            if truth and key in truth:
                line += f" {truth[key]:7.1f}"
            click.echo(line)
    if case_dir is None:
        click.echo("  " + DISCLAIMER)
    click.echo("=" * 72)
