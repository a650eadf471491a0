"""Completion with a controllable clock: quiet series, ready studies, forced decisions."""

from __future__ import annotations

from dicom_node.completion import (
    SeriesState,
    StudyState,
    Verdict,
    quiet_series,
    study_verdict,
)

ALL = {"T1": "s1", "T1c": "s2", "T2": "s3", "FLAIR": "s4"}


def study(last_by_series: dict[str, float], first_s: float = 0.0) -> StudyState:
    return StudyState(
        "st",
        tuple(SeriesState("st", uid, first_s, last, 10) for uid, last in last_by_series.items()),
    )


def test_quiet_series_uses_the_clock_given():
    s = study({"s1": 100.0, "s2": 150.0}).series
    assert quiet_series(s, now_s=159.9, quiet_s=60) == []
    assert quiet_series(s, now_s=160.0, quiet_s=60) == ["s1"]
    assert quiet_series(s, now_s=210.0, quiet_s=60) == ["s1", "s2"]


def test_ready_when_all_roles_present_and_every_series_quiet():
    st = study({"s1": 10, "s2": 20, "s3": 30, "s4": 40, "dwi": 45})
    kw = {"series_quiet_s": 60, "study_force_s": 900}
    assert study_verdict(st, ALL, now_s=100, **kw).verdict is Verdict.wait  # dwi still loud
    v = study_verdict(st, ALL, now_s=105, **kw)
    assert v.verdict is Verdict.process and "quiet" in v.reason


def test_missing_role_waits_until_forced_then_fails_with_the_reason():
    roles = dict(ALL, FLAIR=None)
    st = study({"s1": 10, "s2": 20, "s3": 30})
    kw = {"series_quiet_s": 60, "study_force_s": 900}
    w = study_verdict(st, roles, now_s=500, **kw)
    assert w.verdict is Verdict.wait and "FLAIR" in w.reason
    f = study_verdict(st, roles, now_s=900, **kw)
    assert f.verdict is Verdict.fail
    assert f.reason.startswith("FLAIR missing")


def test_forced_study_with_every_role_is_processed_even_if_a_series_is_still_arriving():
    st = study({"s1": 10, "s2": 20, "s3": 30, "s4": 899})
    v = study_verdict(st, ALL, now_s=900, series_quiet_s=60, study_force_s=900)
    assert v.verdict is Verdict.process and v.reason.startswith("forced")


def test_two_roles_missing_are_both_named():
    st = study({"s1": 10})
    v = study_verdict(
        st,
        {"T1": "s1", "T1c": None, "T2": None, "FLAIR": None},
        now_s=1000,
        series_quiet_s=60,
        study_force_s=900,
    )
    assert v.reason.startswith("T1c, T2, FLAIR missing")
