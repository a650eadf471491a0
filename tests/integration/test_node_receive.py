"""`gliomaseg node` as a real process against DCMTK echoscu / storescu (TCP_NODELAY=1).

One node serves the module (allow-list set, DEBUG logging); each test uses its own study UIDs
and looks only at its own files in the spool.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, generate_uid

from config.settings import Peer
from dicom_node import scu
from dicom_node.jobs import JobStore
from dicom_node.spool import Spool
from tests.conftest import wait_for
from tests.node_support import (
    COMPREHENSIVE_SR,
    CT,
    SECONDARY_CAPTURE,
    SEG,
    NodeProcess,
    dataset_bytes,
    make_instance,
    make_series,
    run_echoscu,
    run_storescu,
    spooled,
    store_statuses,
)

pytestmark = pytest.mark.integration

ALLOWED = '["ECHOSCU", "STORESCU", "GLIOMASEG", "SENDER1", "SENDER2", "SENDER3", "SENDER4", "COUNTER", "FAR@10.9.9.9"]'


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    root = tmp_path_factory.mktemp("node")
    n = NodeProcess(
        root,
        env={
            "GLIOMASEG_DICOM__ALLOWED_CALLING_AETS": ALLOWED,
            "GLIOMASEG_COMPLETION__SERIES_QUIET_S": "2",
            "GLIOMASEG_COMPLETION__STUDY_FORCE_S": "600",
        },
    ).start()
    yield n
    n.stop()


def spool_of(node: NodeProcess) -> Spool:
    return Spool(node.spool)


def placed(path: Path) -> Path:
    """An acknowledged instance's file: durable in the node's journal at Success, and written
    to its place in studies/ by the node's placer thread a few milliseconds later."""
    wait_for(path.is_file, timeout_s=10, interval_s=0.01)
    return path


def output(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


def test_echo_with_echoscu_and_our_own_command(node):
    assert run_echoscu(node.port).returncode == 0
    done = subprocess.run(
        [sys.executable, "-m", "gliomaseg", "echo", "127.0.0.1", str(node.port), "GLIOMASEG"],
        env=node.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "Success" in done.stdout


def test_unknown_caller_is_rejected_with_the_dicom_reason(node):
    done = run_echoscu(node.port, calling="INTRUDER")
    assert done.returncode != 0
    assert "Calling AE Title Not Recognized" in output(done)
    far = run_echoscu(node.port, calling="FAR")  # allowed only from 10.9.9.9
    assert "Calling AE Title Not Recognized" in output(far)
    store = JobStore(node.database_url)
    rejected = store.audit_events(event="association_rejected")
    assert {"calling_ae": "INTRUDER", "calling_ip": "127.0.0.1"}.items() <= rejected[-2][
        "detail"
    ].items()
    assert rejected[-1]["detail"]["calling_ae"] == "FAR"


def test_wrong_called_ae_is_rejected(node):
    done = run_echoscu(node.port, called="NOTUS")
    assert done.returncode != 0
    assert "Called AE Title Not Recognized" in output(done)


def test_refused_sop_class_stores_nothing(node, tmp_path):
    path = tmp_path / "ct.dcm"
    make_instance(path, study_uid=generate_uid(), series_uid=generate_uid(), sop_class=CT)
    before = spooled(node.spool)
    done = run_storescu(node.port, [path])
    assert done.returncode != 0
    assert "No presentation context" in output(done) or "No Acceptable" in output(done)
    assert spooled(node.spool) == before
    assert "refused" in node.log()


def test_seg_sr_and_secondary_capture_are_accepted_and_ignored(node, tmp_path):
    study = generate_uid()
    paths = []
    for name, cls in (("seg", SEG), ("sr", COMPREHENSIVE_SR), ("sc", SECONDARY_CAPTURE)):
        p = tmp_path / f"{name}.dcm"
        make_instance(p, study_uid=study, series_uid=generate_uid(), sop_class=cls)
        paths.append(p)
    done = run_storescu(node.port, paths)
    assert done.returncode == 0, output(done)
    assert store_statuses(output(done)) == ["Success"] * 3
    assert not spool_of(node).study_dir(study).exists()
    assert all(j.study_uid != study for j in node.jobs())


def test_mr_series_is_spooled_byte_exact(node, tmp_path):
    study = generate_uid()
    paths = make_series(tmp_path, 5, study_uid=study, rows=64)
    done = run_storescu(node.port, paths)
    assert store_statuses(output(done)) == ["Success"] * 5
    sp = spool_of(node)
    for p in paths:
        ds = pydicom.dcmread(p)
        got = placed(sp.instance_path(study, ds.SeriesInstanceUID, ds.SOPInstanceUID))
        assert dataset_bytes(got) == dataset_bytes(p)


def test_duplicates_are_stored_once(node, tmp_path):
    study = generate_uid()
    paths = make_series(tmp_path, 3, study_uid=study)
    for _ in range(2):
        done = run_storescu(node.port, paths)
        assert store_statuses(output(done)) == ["Success"] * 3
    wait_for(lambda: len(list(spool_of(node).study_dir(study).rglob("*.dcm"))) == 3, timeout_s=10)


def test_corrupt_and_truncated_instances_are_refused_and_not_kept(node, tmp_path):
    study = generate_uid()
    no_series = tmp_path / "noseries.dcm"
    make_instance(no_series, study_uid=study, series_uid="")
    ds = pydicom.dcmread(no_series)
    del ds.SeriesInstanceUID
    ds.save_as(no_series)
    good = tmp_path / "good.dcm"
    make_instance(good, study_uid=study, series_uid=generate_uid(), rows=64)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good.read_bytes()[:-3000])
    done = run_storescu(node.port, [no_series], extra=("-R", "-nh"))
    assert store_statuses(output(done)) and store_statuses(output(done))[0] != "Success"
    # storescu refuses to read a truncated file, so pynetdicom sends it: re-encoded (a short but
    # consistent PixelData) and raw (PixelData shorter than its declared length)
    for chunked in (False, True):
        status = send_raw(node.port, truncated, chunked=chunked)
        assert status not in (0x0000, None), chunked
    # an encapsulated (JPEG-LS) file cut before its sequence delimiter
    jls = tmp_path / "good.jls.dcm"
    subprocess.run(["dcmcjpls", str(good), str(jls)], check=True)
    cut = tmp_path / "cut.jls.dcm"
    cut.write_bytes(jls.read_bytes()[:-500])
    status = send_raw(node.port, cut, chunked=True, ts="1.2.840.10008.1.2.4.80")
    assert status not in (0x0000, None)
    log = node.log()
    assert "SeriesInstanceUID missing" in log and "PixelData truncated" in log
    assert "encapsulated PixelData truncated" in log
    assert not spool_of(node).study_dir(study).exists()
    assert list((node.spool / "tmp").iterdir()) == []
    # ... and the node still works
    done = run_storescu(node.port, [good])
    assert store_statuses(output(done)) == ["Success"]


def send_raw(
    port: int, path: Path, *, chunked: bool, ts: str = "1.2.840.10008.1.2.1"
) -> int | None:
    """C-STORE a file with pynetdicom: chunked sends its bytes as they are, else re-encoded."""
    from pynetdicom import AE
    from pynetdicom import _config as pynetdicom_config

    saved = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = chunked
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4", ts)
    assoc = ae.associate("127.0.0.1", port, ae_title="GLIOMASEG")
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(path)
        return getattr(rsp, "Status", None)
    finally:
        assoc.release()
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = saved


def test_uid_with_path_characters_cannot_escape_the_spool(node, tmp_path):
    evil = "../../../../../../tmp/evil"
    path = tmp_path / "evil.dcm"
    make_instance(path, study_uid=evil, series_uid="../" + evil, sop_uid=generate_uid())
    done = run_storescu(node.port, [path], extra=("-R", "-nh"))
    assert store_statuses(output(done)) == ["Success"]
    target = spool_of(node).study_dir(evil)
    assert target.is_dir() and target.resolve().is_relative_to(node.spool.resolve())
    assert not Path("/tmp/evil").exists()


def test_concurrent_associations_lose_nothing(node, tmp_path):
    study = generate_uid()
    batches = [make_series(tmp_path / f"s{i}", 25, study_uid=study, rows=64) for i in range(1, 5)]
    results: dict[int, subprocess.CompletedProcess[str]] = {}

    def send(i: int) -> None:
        results[i] = run_storescu(node.port, batches[i - 1], calling=f"SENDER{i}")

    threads = [threading.Thread(target=send, args=(i,)) for i in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for i, done in results.items():
        assert store_statuses(output(done)) == ["Success"] * 25, (i, output(done)[-2000:])
    wait_for(lambda: len(list(spool_of(node).study_dir(study).rglob("*.dcm"))) == 100, timeout_s=10)
    assert len([j for j in node.jobs() if j.study_uid == study]) == 1


def converted(src: Path, out: Path, tool: list[str]) -> Path:
    done = subprocess.run([*tool, str(src), str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out


def test_every_common_transfer_syntax(node, tmp_path):
    study = generate_uid()
    base = tmp_path / "base.dcm"
    make_instance(base, study_uid=study, series_uid=generate_uid(), rows=64)
    ds = pydicom.dcmread(base)
    ds.BitsStored, ds.HighBit = 12, 11  # 12-bit data for JPEG extended
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    base12 = tmp_path / "base12.dcm"
    ds.save_as(base12)
    base8 = tmp_path / "base8.dcm"
    ds8 = pydicom.dcmread(base)
    ds8.BitsAllocated = ds8.BitsStored = 8
    ds8.HighBit, ds8.PixelRepresentation = 7, 0
    ds8.PixelData = bytes(range(64)) * 64
    ds8.SOPInstanceUID = ds8.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds8.save_as(base8)

    variants: dict[str, tuple[Path, list[str]]] = {}

    def add(name: str, src: Path, tool: list[str], propose: list[str]) -> None:
        out = tmp_path / f"{name}.dcm"
        d = pydicom.dcmread(src)
        d.SOPInstanceUID = d.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        d.save_as(tmp_path / f"{name}.src.dcm")
        if tool:
            converted(tmp_path / f"{name}.src.dcm", out, tool)
        else:
            d.compress(JPEG2000Lossless)
            d.save_as(out)
        variants[name] = (out, propose)

    add("implicit", base, ["dcmconv", "+ti"], ["-xi"])
    add("explicit", base, ["dcmconv", "+te"], ["-xe"])
    add("bigendian", base, ["dcmconv", "+tb"], ["-xb"])
    add("deflate", base, ["dcmconv", "+td"], ["-xd"])
    add("jpeg_sv1", base, ["dcmcjpeg", "+e1"], ["-xs"])
    add("jpeg_lossless", base, ["dcmcjpeg", "+el"], [])  # storescu cannot propose it: our SCU
    add("jpeg_baseline", base8, ["dcmcjpeg", "+eb"], ["-xy"])
    add("jpeg_extended", base12, ["dcmcjpeg", "+ee"], ["-xx"])
    add("jpegls", base, ["dcmcjpls"], ["-xt"])
    add("rle", base, ["dcmcrle"], ["-xr"])
    add("j2k_lossless", base, [], ["-xv"])
    sp = spool_of(node)
    for name, (path, propose) in variants.items():
        if propose:
            done = run_storescu(node.port, [path], extra=("-R", *propose))
            assert store_statuses(output(done)) == ["Success"], (name, output(done)[-1500:])
        else:
            peer = Peer(ae_title="GLIOMASEG", host="127.0.0.1", port=node.port)
            report = scu.send([path], peer, calling_ae="STORESCU")
            assert (report.sent, report.failed) == (1, 0), name
        d = pydicom.dcmread(path)
        got = placed(sp.instance_path(study, d.SeriesInstanceUID, d.SOPInstanceUID))
        stored = pydicom.dcmread(got)
        assert stored.file_meta.TransferSyntaxUID == d.file_meta.TransferSyntaxUID, name
        sent = dataset_bytes(path)
        if name == "deflate" and len(sent) % 2:
            sent += b"\x00"  # DCMTK pads an odd-length deflated stream on the wire
        assert dataset_bytes(got) == sent, name
        stored.pixel_array  # noqa: B018 - the stored copy decodes with the installed plugins


@pytest.mark.data
def test_shared_vendor_series_are_spooled_byte_exact(node, datasets):
    dicom = datasets / "dicom"
    folders = [
        dicom / "dcm_qa_ge" / "05_3D_Ax_T1_MP_RAGE_R22",
        *(
            dicom / "dicom2nifti" / v / "anatomical" / "001"
            for v in (
                "ge",
                "siemens",
                "philips",
                "hitachi",
                "philips_enhanced",
                "siemens_multiframe",
            )
        ),
    ]
    sp = spool_of(node)
    peer = Peer(ae_title="GLIOMASEG", host="127.0.0.1", port=node.port)
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.endswith(".gz"))
        # Our SCU sends the files byte for byte: the spool must hold exactly those bytes.
        report = scu.send(files, peer, calling_ae="STORESCU")
        assert (report.sent, report.failed) == (len(files), 0), folder
        for p in files:
            d = pydicom.dcmread(p, stop_before_pixels=True)
            got = placed(
                sp.instance_path(d.StudyInstanceUID, d.SeriesInstanceUID, d.SOPInstanceUID)
            )
            assert dataset_bytes(got) == dataset_bytes(p), p
        # DCMTK re-encodes what it sends; the same instances again are duplicates: Success.
        done = run_storescu(node.port, files, extra=("-R", "-nh"))
        assert store_statuses(output(done)) == ["Success"] * len(files), (
            folder,
            output(done)[-1500:],
        )
    # emri_small: one SOP instance in four transfer syntaxes; send each into an empty slot.
    for p in sorted((dicom / "pydicom-data").glob("emri_small*.dcm")):
        d = pydicom.dcmread(p, stop_before_pixels=True)
        got = sp.instance_path(d.StudyInstanceUID, d.SeriesInstanceUID, d.SOPInstanceUID)
        got.unlink(missing_ok=True)
        report = scu.send([p], peer, calling_ae="STORESCU")
        assert report.sent == 1, p.name
        assert dataset_bytes(placed(got)) == dataset_bytes(p), p.name
        stored = pydicom.dcmread(got)
        assert stored.file_meta.TransferSyntaxUID == d.file_meta.TransferSyntaxUID
        assert stored.pixel_array.shape == (10, 64, 64)


def test_instances_received_and_refused_are_counted_per_association(node, tmp_path):
    """One audit row per association and outcome (what /metrics sums), never one per instance."""
    study = generate_uid()
    good = make_series(tmp_path / "good", 4, study_uid=study)
    bad = tmp_path / "bad.dcm"
    make_instance(bad, study_uid=study, series_uid=generate_uid())
    ds = pydicom.dcmread(bad)
    del ds.SeriesInstanceUID
    ds.save_as(bad)
    done = run_storescu(node.port, [*good, bad], calling="COUNTER", extra=("-R", "-nh"))
    assert store_statuses(output(done))[:4] == ["Success"] * 4
    store = JobStore(node.database_url)

    def counted():
        rows = [
            e for e in store.audit_events(limit=5000) if e["detail"].get("calling_ae") == "COUNTER"
        ]
        return (
            rows
            if {e["event"] for e in rows} >= {"instances_received", "instances_rejected"}
            else None
        )

    rows = wait_for(counted, timeout_s=30)
    received = [e["detail"] for e in rows if e["event"] == "instances_received"]
    rejected = [e["detail"] for e in rows if e["event"] == "instances_rejected"]
    assert [r["count"] for r in received] == [4]
    assert [(r["reason"], r["count"]) for r in rejected] == [
        ("dataset does not match SOP class", 1)
    ]
