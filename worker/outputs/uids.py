"""Deterministic UIDs for everything gliomaseg writes.

The same source series, model version, kind and index give the same UID on every run and every
machine, so a job that runs twice re-sends the very same SeriesInstanceUID / SOPInstanceUID and the
PACS replaces (or ignores) the instances instead of adding a second series.
"""

from __future__ import annotations

from pydicom.uid import generate_uid

#: Kinds of output objects; part of the UID entropy.
KIND_SEG = "seg"
KIND_SR = "sr"
KIND_OVERLAY = "overlay"
KIND_DEVICE = "device"


def derived_uid(*parts: str | int) -> str:
    """A UID derived from ``parts`` (``generate_uid(entropy_srcs=[...])``, pydicom's root).

    Typical parts: source SeriesInstanceUID, model version, kind ("seg", "sr", "overlay") and,
    for instances, "series" or an index.
    """
    if not parts:
        raise ValueError("derived_uid needs at least one part")
    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def series_uid(source_series_uid: str, model_version: str, kind: str) -> str:
    """SeriesInstanceUID of the output series of ``kind`` for this source series and model."""
    return derived_uid(source_series_uid, model_version, kind, "series")


def instance_uid(source_series_uid: str, model_version: str, kind: str, index: int) -> str:
    """SOPInstanceUID of instance ``index`` (0-based) of the output series of ``kind``."""
    return derived_uid(source_series_uid, model_version, kind, index)
