"""Shared fixtures: real data location, free ports, polling."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def data_root() -> Path | None:
    value = os.environ.get("GLIOMASEG_TEST_DATA")
    if not value:
        return None
    path = Path(value)
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def datasets() -> Path:
    """The real datasets folder (../shared/datasets); skips when GLIOMASEG_TEST_DATA is unset."""
    root = data_root()
    if root is None:
        pytest.skip("real data not available: set GLIOMASEG_TEST_DATA to ../shared/datasets")
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(
    predicate: Callable[[], object], timeout_s: float = 30.0, interval_s: float = 0.1
) -> object:
    """Poll until predicate() is truthy; fail the test with a clear message on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(
                f"condition not met within {timeout_s} s: {getattr(predicate, '__name__', predicate)}"
            )
        time.sleep(interval_s)
