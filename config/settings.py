"""The typed settings of gliomaseg.

Sources, highest priority first: environment variables ``GLIOMASEG_<SECTION>__<KEY>``,
then the TOML file (``--config`` or ``GLIOMASEG_CONFIG``), then the defaults embedded here.
The object is frozen and validated at start; :func:`load_settings` turns validation
errors into a :class:`~config.errors.ConfigError` that names each setting and its
environment variable.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from config.errors import ConfigError

ENV_PREFIX = "GLIOMASEG_"
ROLES = ("T1", "T1c", "T2", "FLAIR")
DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "model" / "bundles" / "default"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DicomSettings(_Section):
    ae_title: str = "GLIOMASEG"
    port: int = Field(11112, ge=1, le=65535)
    bind: str = "127.0.0.1"
    # Entries are "AET" or "AET@IP". Empty means any caller (a warning is logged at start).
    allowed_calling_aets: list[str] = Field(default_factory=list)
    require_called_aet: bool = True
    max_associations: int = Field(16, ge=1)
    network_timeout_s: float = Field(60.0, gt=0)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None  # when set, callers must present a certificate signed by it

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, v: str) -> str:
        return _check_aet(v)

    @field_validator("allowed_calling_aets")
    @classmethod
    def _allowed(cls, v: list[str]) -> list[str]:
        for entry in v:
            _check_aet(entry.split("@", 1)[0])
        return v

    @model_validator(mode="after")
    def _tls_pair(self) -> DicomSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")
        return self


class SpoolSettings(_Section):
    root: Path = Path("./spool")
    min_free_mb: int = Field(500, ge=0)  # below this, C-STORE answers Out of Resources
    # Flush each instance (to the node's journal; uploads: the file and its folder) before
    # answering Success. Only turn off on storage with a battery-backed write cache: a power
    # cut could then lose acknowledged instances.
    fsync: bool = True


class QueueSettings(_Section):
    broker_url: str = "redis://127.0.0.1:6379/0"
    cpu_queue: str = "gliomaseg.cpu"
    gpu_queue: str = "gliomaseg.gpu"
    task_time_limit_s: int = Field(1800, gt=0)
    visibility_timeout_s: int = Field(3600, gt=0)

    @model_validator(mode="after")
    def _visibility(self) -> QueueSettings:
        if self.visibility_timeout_s <= self.task_time_limit_s:
            raise ValueError(
                f"visibility_timeout_s ({self.visibility_timeout_s}) must exceed task_time_limit_s "
                f"({self.task_time_limit_s}), or a long task is delivered twice"
            )
        return self


class CompletionSettings(_Section):
    series_quiet_s: float = Field(60.0, gt=0)
    study_force_s: float = Field(900.0, gt=0)
    poll_s: float = Field(1.0, gt=0)


class JobsSettings(_Section):
    # Empty means SQLite in the spool: sqlite:///<spool.root>/jobs.sqlite3
    database_url: str = ""


class Peer(_Section):
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, v: str) -> str:
        return _check_aet(v)


class ClassifyRule(_Section):
    """An admin rule: when every condition holds, the series gets ``role``.

    ``match`` maps a DICOM keyword to a regular expression (searched, case-insensitive);
    ``ranges`` maps a keyword to ``[min, max]`` (either may be null). ``role = "ignore"``
    excludes the series. Rules are tried in order and override the header heuristics.
    """

    name: str = ""
    role: Literal["T1", "T1c", "T2", "FLAIR", "ignore"]
    match: dict[str, str] = Field(default_factory=dict)
    ranges: dict[str, tuple[float | None, float | None]] = Field(default_factory=dict)

    @field_validator("match")
    @classmethod
    def _regex(cls, v: dict[str, str]) -> dict[str, str]:
        for key, pattern in v.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"match.{key}: invalid regular expression {pattern!r}: {exc}"
                ) from exc
        return v


class ClassifySettings(_Section):
    rules: list[ClassifyRule] = Field(default_factory=list)


class RoutingSettings(_Section):
    """Which received studies are processed. Empty lists and patterns mean 'any'."""

    calling_aets: list[str] = Field(default_factory=list)
    modalities: list[str] = Field(default_factory=lambda: ["MR"])
    body_part_regex: str = ""
    study_description_regex: str = ""


class ModelSettings(_Section):
    bundle: Path = DEFAULT_BUNDLE
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tta: bool = True  # mirror TTA: +0.004 to +0.009 Dice at ~7x the network time (MODEL_CARD.md)
    threads: int = Field(0, ge=0)  # 0: torch's default


class PreprocessSettings(_Section):
    brain_extraction: Literal["auto", "deepbet", "none"] = "auto"
    registration: Literal["auto", "rigid", "none"] = "auto"


class OutputsSettings(_Section):
    destinations: list[str] = Field(default_factory=list)
    reference_roles: list[str] = Field(default_factory=lambda: ["T1c"])
    seg: bool = True
    sr: bool = True
    overlay: bool = True
    send_retries: int = Field(5, ge=0)
    send_backoff_s: float = Field(2.0, ge=0)
    # Studies uploaded through the web (often NIfTI with a made-up patient) are kept, not sent
    # to the PACS, unless this is true; `gliomaseg resend JOB` sends one on purpose.
    send_uploads: bool = False

    @field_validator("destinations")
    @classmethod
    def _upper(cls, v: list[str]) -> list[str]:
        return [name.upper() for name in v]

    @field_validator("reference_roles")
    @classmethod
    def _roles(cls, v: list[str]) -> list[str]:
        for role in v:
            if role not in ROLES:
                raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        return v


class WebSettings(_Section):
    bind: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    token: SecretStr | None = None


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Settings(BaseSettings):
    """Everything gliomaseg reads from its configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        case_sensitive=False,
    )

    dicom: DicomSettings = Field(default_factory=DicomSettings)
    spool: SpoolSettings = Field(default_factory=SpoolSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    completion: CompletionSettings = Field(default_factory=CompletionSettings)
    jobs: JobsSettings = Field(default_factory=JobsSettings)
    peers: dict[str, Peer] = Field(default_factory=dict)
    classify: ClassifySettings = Field(default_factory=ClassifySettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    preprocess: PreprocessSettings = Field(default_factory=PreprocessSettings)
    outputs: OutputsSettings = Field(default_factory=OutputsSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init kwargs; the environment wins over it.
        return (env_settings, init_settings)

    @field_validator("peers")
    @classmethod
    def _peer_names(cls, v: dict[str, Peer]) -> dict[str, Peer]:
        # Environment variable names are case-insensitive, so peer names are too.
        return {name.upper(): peer for name, peer in v.items()}

    @model_validator(mode="after")
    def _destinations_known(self) -> Settings:
        unknown = [d for d in self.outputs.destinations if d not in self.peers]
        if unknown:
            raise ValueError(
                f"outputs.destinations names unknown peers {unknown}; "
                f"configured peers: {sorted(self.peers) or 'none'}"
            )
        return self

    @property
    def database_url(self) -> str:
        """The jobs database URL, defaulting to SQLite inside the spool."""
        if self.jobs.database_url:
            return self.jobs.database_url
        return f"sqlite:///{self.spool.root.resolve() / 'jobs.sqlite3'}"

    def peer(self, name: str) -> Peer:
        try:
            return self.peers[name.upper()]
        except KeyError:
            raise ConfigError(
                f"no peer named {name!r}; configured peers: {sorted(self.peers) or 'none'} "
                f"(add [peers.{name.upper()}] to the TOML file)"
            ) from None

    def masked(self) -> dict[str, Any]:
        """The effective configuration as plain data, with secrets masked."""
        data = self.model_dump(mode="json")
        if self.web.token is not None:
            data["web"]["token"] = "********"
        data["queue"]["broker_url"] = mask_url(self.queue.broker_url)
        data["jobs"]["database_url"] = mask_url(self.database_url)
        return data


def _check_aet(v: str) -> str:
    if not v or len(v) > 16 or not v.isascii() or "\\" in v or v != v.strip():
        raise ValueError(
            f"AE title {v!r} must be 1-16 ASCII characters without backslash or padding"
        )
    return v


def mask_url(url: str) -> str:
    """Hide the password in scheme://user:password@host URLs."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1********@", url)


def env_name(loc: tuple[int | str, ...]) -> str:
    """The environment variable that sets the setting at ``loc``."""
    return ENV_PREFIX + "__".join(str(part).upper() for part in loc if not isinstance(part, int))


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read the TOML file (``path``, else $GLIOMASEG_CONFIG, else none) and the environment.

    Raises ConfigError listing every invalid setting with its environment variable.
    """
    path = path or os.environ.get("GLIOMASEG_CONFIG") or None
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"configuration file {p} does not exist (GLIOMASEG_CONFIG / --config)"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration file {p} is not valid TOML: {exc}") from None
    if isinstance(data.get("peers"), dict):
        # The environment source lower-cases names (env variables are case-insensitive), so the
        # file's peer names are lower-cased too for the two to merge; the validator upper-cases them.
        data["peers"] = {str(k).lower(): v for k, v in data["peers"].items()}
    try:
        return Settings(**data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            dotted = ".".join(str(p) for p in loc) or "(settings)"
            lines.append(f"{dotted} (env {env_name(loc) if loc else '-'}): {err['msg']}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
