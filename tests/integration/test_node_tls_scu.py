"""TLS on the SCP (from config), and the SCU edge against DCMTK storescp and our own node."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from config.errors import PermanentError, TransientError
from config.settings import DicomSettings, Peer, QueueSettings, Settings, SpoolSettings
from dicom_node import scu
from dicom_node.service import Node
from tests.conftest import free_port, wait_for
from tests.node_support import (
    COMPREHENSIVE_SR,
    CT,
    SEG,
    NodeProcess,
    make_instance,
    run_echoscu,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(d / "node.key"),
            "-out",
            str(d / "node.crt"),
        ],
        check=True,
        capture_output=True,
    )
    return d / "node.crt", d / "node.key"


def test_tls_node_answers_echo_over_tls_only(tmp_path, cert):
    crt, key = cert
    settings = Settings(
        dicom=DicomSettings(port=free_port(), tls_cert=crt, tls_key=key),
        spool=SpoolSettings(root=tmp_path / "spool", min_free_mb=0),
        queue=QueueSettings(broker_url="redis://127.0.0.1:6379/11", cpu_queue="node-tls.cpu"),
    )
    node = Node(settings)
    node.start(loop=False)
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(crt))
        ae = AE(ae_title="TLSSCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate(
            "127.0.0.1", node.port, ae_title="GLIOMASEG", tls_args=(ctx, "localhost")
        )
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        assert run_echoscu(node.port).returncode != 0  # plain TCP is not spoken
    finally:
        node.stop()


@pytest.fixture(scope="module")
def storescp(tmp_path_factory):
    out = tmp_path_factory.mktemp("storescp")
    port = free_port()
    proc = subprocess.Popen(
        ["storescp", "+xa", "-aet", "STORESCP", "-od", str(out), str(port)],
        env=dict(os.environ, TCP_NODELAY="1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    peer = Peer(ae_title="STORESCP", host="127.0.0.1", port=port)

    def up() -> bool:
        try:
            scu.echo(peer, calling_ae="GLIOMASEG", timeout_s=2)
            return True
        except TransientError:
            return False

    wait_for(up, 30)
    yield peer, out
    proc.terminate()
    proc.wait(10)


def test_send_mr_seg_and_sr_to_storescp(storescp, tmp_path):
    peer, out = storescp
    study = generate_uid()
    files = []
    for name, cls in (("mr", None), ("seg", SEG), ("sr", COMPREHENSIVE_SR)):
        p = tmp_path / f"{name}.dcm"
        kw = {"sop_class": cls} if cls else {}
        make_instance(p, study_uid=study, series_uid=generate_uid(), **kw)
        files.append(p)
    report = scu.send(files, peer, calling_ae="GLIOMASEG")
    assert (report.sent, report.failed) == (3, 0)
    assert set(report.statuses.values()) == {0}
    assert report.peer == f"STORESCP@127.0.0.1:{peer.port}"
    assert len(list(out.iterdir())) == 3


def test_echo_and_send_to_a_dead_peer_are_transient(tmp_path):
    dead = Peer(ae_title="NOBODY", host="127.0.0.1", port=free_port())
    with pytest.raises(TransientError, match="peer down or unreachable"):
        scu.echo(dead, calling_ae="GLIOMASEG", timeout_s=3)
    p = tmp_path / "mr.dcm"
    make_instance(p, study_uid=generate_uid(), series_uid=generate_uid())
    with pytest.raises(TransientError):
        scu.send([p], dead, calling_ae="GLIOMASEG", timeout_s=3)


def test_peer_refusing_a_class_is_permanent_and_wrong_ae_is_reported(tmp_path):
    node = NodeProcess(tmp_path / "node").start()
    try:
        ct = tmp_path / "ct.dcm"
        make_instance(ct, study_uid=generate_uid(), series_uid=generate_uid(), sop_class=CT)
        peer = Peer(ae_title="GLIOMASEG", host="127.0.0.1", port=node.port)
        with pytest.raises(PermanentError, match="accepted no presentation context"):
            scu.send([ct], peer, calling_ae="GLIOMASEG")
        wrong = Peer(ae_title="SOMEONE", host="127.0.0.1", port=node.port)
        with pytest.raises(TransientError, match="rejected the association"):
            scu.echo(wrong, calling_ae="GLIOMASEG")
    finally:
        node.stop()
