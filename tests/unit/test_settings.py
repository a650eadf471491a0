from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from config.errors import ConfigError
from config.settings import load_settings
from gliomaseg.cli import cli

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "gliomaseg.example.toml"


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GLIOMASEG_CONFIG", raising=False)
    s = load_settings()
    assert s.dicom.ae_title == "GLIOMASEG"
    assert s.dicom.port == 11112
    assert s.dicom.bind == "127.0.0.1"
    assert s.queue.broker_url == "redis://127.0.0.1:6379/0"
    assert s.completion.series_quiet_s == 60
    assert s.completion.study_force_s == 900
    assert s.database_url.startswith("sqlite:///") and s.database_url.endswith("jobs.sqlite3")


def test_example_file_is_valid_and_env_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIOMASEG_DICOM__PORT", "2104")
    monkeypatch.setenv("GLIOMASEG_PEERS__PACS__HOST", "10.0.0.9")
    monkeypatch.setenv("GLIOMASEG_DICOM__ALLOWED_CALLING_AETS", '["PACS@10.0.0.9", "MRI1"]')
    s = load_settings(EXAMPLE)
    assert s.dicom.port == 2104
    assert s.peer("pacs").host == "10.0.0.9"
    assert s.peer("PACS").ae_title == "ORTHANC"
    assert s.dicom.allowed_calling_aets == ["PACS@10.0.0.9", "MRI1"]
    assert s.outputs.destinations == ["PACS"]


def test_errors_name_setting_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIOMASEG_DICOM__PORT", "not-a-port")
    monkeypatch.setenv("GLIOMASEG_DICOM__AE_TITLE", "A_TITLE_THAT_IS_MUCH_TOO_LONG")
    with pytest.raises(ConfigError) as info:
        load_settings()
    text = str(info.value)
    assert "dicom.port (env GLIOMASEG_DICOM__PORT)" in text
    assert "GLIOMASEG_DICOM__AE_TITLE" in text


def test_visibility_timeout_must_exceed_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIOMASEG_QUEUE__TASK_TIME_LIMIT_S", "600")
    monkeypatch.setenv("GLIOMASEG_QUEUE__VISIBILITY_TIMEOUT_S", "300")
    with pytest.raises(ConfigError, match="visibility_timeout_s"):
        load_settings()


def test_unknown_destination_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIOMASEG_OUTPUTS__DESTINATIONS", '["NOWHERE"]')
    with pytest.raises(ConfigError, match="NOWHERE"):
        load_settings()


def test_config_check_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIOMASEG_WEB__TOKEN", "s3cret-token")
    monkeypatch.setenv("GLIOMASEG_QUEUE__BROKER_URL", "redis://user:hunter2@127.0.0.1:6379/0")
    result = CliRunner().invoke(cli, ["config", "check"], obj={})
    assert result.exit_code == 0, result.output
    assert "s3cret-token" not in result.output
    assert "hunter2" not in result.output
    assert "********" in result.output


def test_config_check_exits_1_on_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIOMASEG_DICOM__PORT", "99999")
    result = CliRunner().invoke(cli, ["config", "check"], obj={})
    assert result.exit_code == 1
    assert "GLIOMASEG_DICOM__PORT" in result.output
