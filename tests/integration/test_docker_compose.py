"""docker/docker-compose.yml validates with Debian's docker-compose (no Docker engine needed)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker" / "docker-compose.yml"


def compose(*args: str, file: Path = COMPOSE) -> subprocess.CompletedProcess[str]:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (Debian: apt-get install docker-compose)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GLIOMASEG_", "DOCKER_"))}
    return subprocess.run(
        ["docker-compose", "-f", str(file), *args],
        capture_output=True, text=True, timeout=60, env=env, cwd=file.parent,
    )  # fmt: skip


def block(config_out: str, service: str) -> str:
    """The lines of one service in `docker-compose config` output."""
    start = config_out.index(f"\n  {service}:\n")
    end = re.search(r"\n  [a-z][\w-]*:\n|\n[a-z]", config_out[start + 1 :])
    return config_out[start : start + 1 + end.start()] if end else config_out[start:]


def test_compose_file_validates_with_every_profile():
    proc = compose("--profile", "gpu", "--profile", "testpacs", "--profile", "postgres", "config")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    # the GPU worker reserves an NVIDIA device
    gpu = block(out, "worker-gpu")
    assert re.search(
        r"devices:\s*\n\s*- capabilities:\s*\n\s*- gpu\s*\n\s*count: 1\s*\n\s*driver: nvidia", gpu
    )
    assert "GLIOMASEG_MODEL__DEVICE: cuda" in gpu
    # web and node listen on all container interfaces, the web published on loopback by default
    assert "GLIOMASEG_WEB__BIND: 0.0.0.0" in out and "GLIOMASEG_DICOM__BIND: 0.0.0.0" in out
    assert "- 127.0.0.1:8080:8080/tcp" in block(out, "web"), "web published on loopback by default"


def test_services_profiles_and_shared_volumes():
    services = compose("--profile", "gpu", "--profile", "testpacs", "--profile", "postgres",
                       "config", "--services").stdout.split()  # fmt: skip
    assert set(services) == {
        "redis",
        "node",
        "worker-cpu",
        "worker-gpu",
        "web",
        "orthanc",
        "postgres",
    }
    assert set(compose("config", "--profiles").stdout.split()) == {"gpu", "testpacs", "postgres"}
    out = compose("config").stdout
    for svc, profile in (("worker-gpu", "gpu"), ("orthanc", "testpacs"), ("postgres", "postgres")):
        assert re.search(rf"profiles:\s*\n\s*- {profile}\n", block(out, svc)), f"{svc} is opt-in"
    for svc in ("node", "worker-cpu", "worker-gpu", "web"):
        b = block(out, svc)
        assert "profiles:" not in b or svc == "worker-gpu"
        assert "gliomaseg:/var/lib/gliomaseg:rw" in b, f"{svc} must mount the shared spool volume"
        assert "GLIOMASEG_QUEUE__BROKER_URL: redis://redis:6379/0" in b


def test_configuration_comes_from_the_environment():
    env_out = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config"],
        capture_output=True, text=True, timeout=60, cwd=COMPOSE.parent,
        env={"PATH": os.environ["PATH"], "PACS_HOST": "10.9.8.7", "WEB_PORT": "9443",
             "GLIOMASEG_WEB__TOKEN": "from-env"},
    ).stdout  # fmt: skip
    assert "GLIOMASEG_PEERS__PACS__HOST: 10.9.8.7" in env_out
    assert "- 127.0.0.1:9443:8080/tcp" in env_out
    assert "GLIOMASEG_WEB__TOKEN: from-env" in env_out


def test_a_broken_compose_file_is_refused(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        COMPOSE.read_text().replace(
            '    command: ["node"]', '    command: ["node"]\n    no_such_key: 1', 1
        )
    )
    proc = compose("config", file=broken)
    assert proc.returncode != 0 and "no_such_key" in proc.stderr
