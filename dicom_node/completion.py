"""When is a series complete, and when is a study ready (pure; the clock is an argument).

* A series is *quiet* when no instance has arrived for ``series_quiet_s``.
* A study is *ready* when the classification finds every required role (T1, T1c, T2, FLAIR) and
  every series received for the study is quiet (so a late series of the same study does not
  arrive after the job started).
* When ``study_force_s`` has passed since the study's first instance, it is decided anyway:
  processed when every role is present, otherwise failed with the reason ("FLAIR missing").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

REQUIRED_ROLES: tuple[str, ...] = ("T1", "T1c", "T2", "FLAIR")


@dataclass(frozen=True)
class SeriesState:
    study_uid: str
    series_uid: str
    first_s: float  # wall-clock time of the first / last instance received
    last_s: float
    n_instances: int


@dataclass(frozen=True)
class StudyState:
    study_uid: str
    series: tuple[SeriesState, ...]

    @property
    def first_s(self) -> float:
        return min(s.first_s for s in self.series)

    @property
    def last_s(self) -> float:
        return max(s.last_s for s in self.series)


def is_quiet(series: SeriesState, now_s: float, quiet_s: float) -> bool:
    return now_s - series.last_s >= quiet_s


def quiet_series(series: Iterable[SeriesState], now_s: float, quiet_s: float) -> list[str]:
    """SeriesInstanceUIDs of the series with no new instance for ``quiet_s`` seconds."""
    return [s.series_uid for s in series if is_quiet(s, now_s, quiet_s)]


class Verdict(StrEnum):
    wait = "wait"
    process = "process"
    fail = "fail"


@dataclass(frozen=True)
class StudyVerdict:
    study_uid: str
    verdict: Verdict
    reason: str


def missing_roles(
    roles: Mapping[str, str | None], required: Sequence[str] = REQUIRED_ROLES
) -> list[str]:
    return [r for r in required if not roles.get(r)]


def study_verdict(
    study: StudyState,
    roles: Mapping[str, str | None],
    *,
    now_s: float,
    series_quiet_s: float,
    study_force_s: float,
    required: Sequence[str] = REQUIRED_ROLES,
) -> StudyVerdict:
    """Decide one study. ``roles`` maps role -> SeriesInstanceUID (or None) from classification."""
    missing = missing_roles(roles, required)
    loud = [s for s in study.series if not is_quiet(s, now_s, series_quiet_s)]
    if not missing and not loud:
        return StudyVerdict(
            study.study_uid,
            Verdict.process,
            f"all required sequences present, every series quiet for {series_quiet_s:g} s",
        )
    age_s = now_s - study.first_s
    if age_s >= study_force_s:
        if not missing:
            return StudyVerdict(
                study.study_uid,
                Verdict.process,
                f"forced after {study_force_s:g} s: all required sequences present "
                f"({len(loud)} series still receiving)",
            )
        return StudyVerdict(
            study.study_uid,
            Verdict.fail,
            f"{', '.join(missing)} missing (study forced complete after {study_force_s:g} s "
            f"with {len(study.series)} series)",
        )
    if missing:
        why = f"waiting for {', '.join(missing)}"
    else:
        why = f"waiting for {len(loud)} series to be quiet for {series_quiet_s:g} s"
    return StudyVerdict(study.study_uid, Verdict.wait, why)
