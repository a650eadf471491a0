"""Receive rate of ``gliomaseg node`` beside DCMTK ``storescp``, in the same run.

500 generated MR instances (256 x 256 int16, about 132 KB each) are sent over ONE association by
DCMTK ``storescu`` (TCP_NODELAY=1 on both ends) to each receiver in turn; each receiver gets
``--repeat`` runs and the best is reported (the machine is shared). Variants of the node:

* ``node``: as shipped (each instance flushed to the spool's journal before Success, its file
  written by the placer thread; DUL loop delay 100 us; no PDU size limit; the receive fast path
  of dicom_node/fastpath.py);
* ``node_stock_pynetdicom``: the same without the fast path (pynetdicom's 1 ms acceptor sleep,
  its C-STORE-RSP encoder and ``Event.encoded_dataset()``): what the fast path buys;
* ``node_nofsync``: ``spool.fsync = false`` (storescp does not fsync either): the software cost;
* ``node_nofsync_loop_0``: and a DUL loop that never sleeps (a busy core per association);
* ``node_nofsync_loop_1ms``: and pynetdicom's default 1 ms DUL loop delay;
* ``node_nofsync_pdu_16k``: and pynetdicom's default maximum PDU (16 KB), so the sender cuts
  every instance into about 8 PDUs.

Orthanc (the issue's target, about 380/s on an idle machine of this kind) is measured in the same
run when installed. Also reported: the node's peak resident memory (VmHWM) and, with ``--profile``, where the time
goes inside the node (a sampling profile of its threads during one run, in-process).

Run: ``.venv/bin/python -m bench.node_bench [--n 500] [--repeat 3] [--profile]``; writes
``bench/results/node_bench.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
ORTHANC_REFERENCE = 383.0  # instances/s, TOOLCHAIN.md, same kind of machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(
    port: int, proc: subprocess.Popen[bytes] | None = None, timeout_s: float = 60
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"receiver exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout_s} s")


def make_instances(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    study, series = generate_uid(), generate_uid()
    pixels = rng.integers(0, 1200, (256, 256), dtype=np.int16)
    paths = []
    for i in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID, ds.Modality = "BENCH^NODE", "BENCH0001", "MR"
        ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = "t1_se_tra", 3, i + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(i)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [0.9, 0.9], 1.0
        ds.Rows = ds.Columns = 256
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation, ds.SamplesPerPixel = 1, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = pixels.tobytes()
        p = folder / f"IM{i + 1:04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def storescu(port: int, called: str, files: list[Path]) -> float:
    """Seconds storescu needs to send ``files`` over one association (all must succeed)."""
    env = dict(os.environ, TCP_NODELAY="1")
    t0 = time.perf_counter()
    done = subprocess.run(
        ["storescu", "-R", "-aec", called, "127.0.0.1", str(port), *map(str, files)],
        env=env,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"storescu failed: {done.stderr[-1500:]}")
    return elapsed


def vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_storescp(work: Path, files: list[Path], repeat: int) -> dict[str, Any]:
    port = free_port()
    env = dict(os.environ, TCP_NODELAY="1")
    times = []
    for r in range(repeat):
        out = work / f"storescp{r}"
        out.mkdir()
        proc = subprocess.Popen(
            ["storescp", "-aet", "STORESCP", "-od", str(out), str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(port, proc)
            times.append(storescu(port, "STORESCP", files))
            assert len(list(out.iterdir())) == len(files)
        finally:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(out)
    return {"seconds": times, "per_s": len(files) / min(times)}


def run_orthanc(work: Path, files: list[Path], repeat: int) -> dict[str, Any] | None:
    """Orthanc (the target to beat) under the same conditions; None when not installed."""
    exe = shutil.which("Orthanc") or (
        "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None
    )
    if exe is None:
        return None
    times = []
    for r in range(repeat):
        root = work / f"orthanc{r}"
        root.mkdir()
        port, http = free_port(), free_port()
        config = {
            "Name": "bench",
            "DicomAet": "ORTHANC",
            "DicomPort": port,
            "HttpPort": http,
            "StorageDirectory": str(root / "db"),
            "IndexDirectory": str(root / "db"),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "Plugins": [],
        }
        (root / "orthanc.json").write_text(json.dumps(config))
        proc = subprocess.Popen(
            [exe, str(root / "orthanc.json")],
            env=dict(os.environ, TCP_NODELAY="1"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(port, proc)
            times.append(storescu(port, "ORTHANC", files))
        finally:
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(root)
    return {"seconds": times, "per_s": len(files) / min(times)}


LAUNCHER = """
import sys
import dicom_node.scp as scp
scp.RUN_LOOP_DELAY_S = {delay!r}
scp.MAXIMUM_PDU_SIZE = {pdu!r}
scp.FAST_PATH = {fast!r}
from gliomaseg.cli import cli
cli(["node"], obj={{}})
"""


def run_node(
    work: Path,
    files: list[Path],
    repeat: int,
    *,
    delay: float | None,
    pdu: int,
    tag: str,
    fsync: bool = True,
    fast: bool = True,
) -> dict[str, Any]:
    times, peaks = [], []
    for r in range(repeat):
        port = free_port()
        spool = work / f"{tag}{r}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GLIOMASEG_")}
        env.update(
            {
                "TCP_NODELAY": "1",
                "GLIOMASEG_DICOM__PORT": str(port),
                "GLIOMASEG_SPOOL__ROOT": str(spool),
                "GLIOMASEG_SPOOL__MIN_FREE_MB": "100",
                "GLIOMASEG_QUEUE__BROKER_URL": "redis://127.0.0.1:6379/12",
                "GLIOMASEG_QUEUE__CPU_QUEUE": "node-bench.cpu",
                "GLIOMASEG_LOGGING__LEVEL": "WARNING",
                "GLIOMASEG_SPOOL__FSYNC": "true" if fsync else "false",
            }
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER.format(delay=delay, pdu=pdu, fast=fast)],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(port, proc)
            times.append(storescu(port, "GLIOMASEG", files))
            peaks.append(vm_hwm_mb(proc.pid))
            n = len(list((spool / "studies").rglob("*.dcm")))
            assert n == len(files), f"{n} of {len(files)} instances spooled"
        finally:
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(spool)
    return {
        "seconds": times,
        "per_s": len(files) / min(times),
        "peak_rss_mb": max(p for p in peaks if p is not None) if any(peaks) else None,
    }


def profile_node(
    work: Path, files: list[Path], interval_s: float = 0.001, *, fsync: bool = True
) -> dict[str, Any]:
    """Sample every thread of an in-process node while storescu sends; inclusive counts."""
    from config.settings import DicomSettings, QueueSettings, Settings, SpoolSettings
    from dicom_node.service import Node

    settings = Settings(
        dicom=DicomSettings(port=free_port()),
        spool=SpoolSettings(root=work / f"profile{int(fsync)}", min_free_mb=100, fsync=fsync),
        queue=QueueSettings(broker_url="redis://127.0.0.1:6379/12", cpu_queue="node-bench.cpu"),
    )
    node = Node(settings)
    node.start(loop=False)
    inclusive: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    samples = 0
    stop = threading.Event()
    me = threading.get_ident()

    def label(frame: Any) -> str:
        path = frame.f_code.co_filename
        short = path.split("site-packages/")[-1].split("/work/main/")[-1]
        return f"{short}:{frame.f_code.co_name}"

    def sample() -> None:
        nonlocal samples
        while not stop.is_set():
            for tid, frame in sys._current_frames().items():
                if tid == me or tid == threading.get_ident():
                    continue
                names = []
                f = frame
                while f is not None:
                    names.append(label(f))
                    f = f.f_back
                if not any("pynetdicom" in n or "dicom_node" in n for n in names):
                    continue
                samples += 1
                leaf[names[0]] += 1
                for n in set(names):
                    inclusive[n] += 1
            time.sleep(interval_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        elapsed = storescu(node.port, "GLIOMASEG", files)
    finally:
        stop.set()
        sampler.join()
        node.stop()
    interesting = [
        "dicom_node/scp.py:on_store",
        "dicom_node/scp.py:_parse",
        "dicom_node/spool.py:store",
        "dicom_node/spool.py:_fsync_dir",
        "pydicom/filereader.py:dcmread",
        "pynetdicom/events.py:encoded_dataset",
        "dicom_node/service.py:received",
        "pynetdicom/dul.py:run_reactor",
        "pynetdicom/dul.py:_read_pdu_data",
        "pynetdicom/association.py:_run_reactor",
        "pynetdicom/dimse.py:receive_primitive",
        "pynetdicom/dimse_messages.py:decode_msg",
    ]
    return {
        "seconds_under_profiler": elapsed,
        "samples": samples,
        "inclusive_share": {k: round(inclusive[k] / max(samples, 1), 3) for k in interesting},
        "top_leaf": [(k, round(v / max(samples, 1), 3)) for k, v in leaf.most_common(12)],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="also sample the node's threads")
    parser.add_argument("--quick", action="store_true", help="only storescp and the shipped node")
    args = parser.parse_args(argv)
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: install DCMTK (make system-deps)")
    with tempfile.TemporaryDirectory(prefix="node-bench-") as tmp:
        work = Path(tmp)
        files = make_instances(work / "instances", args.n)
        size_kb = sum(p.stat().st_size for p in files) / len(files) / 1024
        shipped = 0.0001
        receivers: dict[str, Any] = {
            "storescp": lambda r: run_storescp(work, files, 1),
            "orthanc": lambda r: run_orthanc(work, files, 1),
            "node": lambda r: run_node(work, files, 1, delay=shipped, pdu=0, tag=f"node{r}"),
            "node_nofsync": lambda r: run_node(
                work, files, 1, delay=shipped, pdu=0, tag=f"nofs{r}", fsync=False
            ),
        }
        if not args.quick:
            receivers["node_nofsync_loop_0"] = lambda r: run_node(
                work, files, 1, delay=0.0, pdu=0, tag=f"loop0{r}", fsync=False
            )
            receivers["node_nofsync_loop_1ms"] = lambda r: run_node(
                work, files, 1, delay=None, pdu=0, tag=f"loop{r}", fsync=False
            )
            receivers["node_nofsync_pdu_16k"] = lambda r: run_node(
                work, files, 1, delay=shipped, pdu=16382, tag=f"pdu{r}", fsync=False
            )
            receivers["node_stock_pynetdicom"] = lambda r: run_node(
                work, files, 1, delay=shipped, pdu=0, tag=f"stock{r}", fast=False
            )
        # Rounds interleave the receivers, so that a slow spell of this shared machine hits
        # them all alike; each receiver's best and median round are reported.
        runs: dict[str, list[dict[str, Any]]] = {}
        for r in range(args.repeat):
            for name, run in receivers.items():
                got = run(r)
                if got is not None:
                    runs.setdefault(name, []).append(got)
        results: dict[str, Any] = {}
        for name, rs in runs.items():
            seconds = [t for x in rs for t in x["seconds"]]
            peaks = [x.get("peak_rss_mb") for x in rs if x.get("peak_rss_mb")]
            results[name] = {
                "seconds": seconds,
                "per_s": len(files) / min(seconds),
                "median_per_s": len(files) / statistics.median(seconds),
                **({"peak_rss_mb": max(peaks)} if peaks else {}),
            }
        if args.profile:
            results["profile"] = profile_node(work, files, fsync=True)
            results["profile_nofsync"] = profile_node(work, files, fsync=False)
    report = {
        "bench": "node_receive",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "instances": args.n,
        "instance_kb": round(size_kb, 1),
        "repeat": args.repeat,
        "results": results,
        "node_vs_storescp": round(results["node"]["per_s"] / results["storescp"]["per_s"], 3),
        "node_vs_orthanc_reference": round(results["node"]["per_s"] / ORTHANC_REFERENCE, 3),
        "node_vs_orthanc_same_run": (
            round(results["node"]["per_s"] / results["orthanc"]["per_s"], 3)
            if "orthanc" in results
            else None
        ),
        "node_vs_orthanc_same_run_median": (
            round(results["node"]["median_per_s"] / results["orthanc"]["median_per_s"], 3)
            if "orthanc" in results
            else None
        ),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "node_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nnode receive bench: {args.n} MR instances of {size_kb:.0f} KB, one association")
    print(f"{'receiver':22} {'inst/s':>8} {'median':>8} {'best s':>8} {'peak MB':>8}")
    for name, r in results.items():
        if name.startswith("profile"):
            continue
        peak = r.get("peak_rss_mb")
        print(
            f"{name:22} {r['per_s']:8.0f} {r['median_per_s']:8.0f} {min(r['seconds']):8.2f} "
            f"{(f'{peak:.0f}' if peak else '-'):>8}"
        )
    print(
        f"node / Orthanc, same run: best {report['node_vs_orthanc_same_run']}, median "
        f"{report['node_vs_orthanc_same_run_median']}; "
        f"node / storescp = {report['node_vs_storescp']:.2f}; "
        f"node / Orthanc reference ({ORTHANC_REFERENCE:.0f}/s) = "
        f"{report['node_vs_orthanc_reference']:.2f}"
    )
    for key in ("profile", "profile_nofsync"):
        if key in results:
            prof = results[key]
            print(
                f"{key}: share of samples in the node's threads (inclusive), "
                f"{len(files) / prof['seconds_under_profiler']:.0f} inst/s under the profiler"
            )
            for k, v in prof["inclusive_share"].items():
                print(f"  {v:6.1%}  {k}")
            print("  top leaf functions:")
            for k, v in prof["top_leaf"]:
                print(f"  {v:6.1%}  {k}")
    return report


if __name__ == "__main__":
    main()
