"""Routing: SOP classes processed / ignored / refused, and which studies become jobs."""

from __future__ import annotations

import pytest
from pynetdicom.sop_class import _STORAGE_CLASSES

from config.settings import RoutingSettings
from dicom_node.routing import SopDisposition, StudyFacts, route, sop_disposition
from dicom_node.scp import allowed


@pytest.mark.parametrize(
    ("uid", "expected"),
    [
        ("1.2.840.10008.5.1.4.1.1.4", SopDisposition.process),  # MR
        ("1.2.840.10008.5.1.4.1.1.4.1", SopDisposition.process),  # Enhanced MR
        ("1.2.840.10008.5.1.4.1.1.66.4", SopDisposition.ignore),  # SEG
        ("1.2.840.10008.5.1.4.1.1.7", SopDisposition.ignore),  # Secondary Capture
        ("1.2.840.10008.5.1.4.1.1.88.22", SopDisposition.ignore),  # Enhanced SR
        ("1.2.840.10008.5.1.4.1.1.2", SopDisposition.refuse),  # CT
        ("1.2.840.10008.5.1.4.1.1.128", SopDisposition.refuse),  # PET
    ],
)
def test_sop_disposition(uid, expected):
    assert sop_disposition(uid) is expected


def test_every_sr_class_is_ignored():
    sr = [u for n, u in _STORAGE_CLASSES.items() if "SR" in n]
    assert len(sr) > 15
    assert all(sop_disposition(u) is SopDisposition.ignore for u in sr)


def facts(**kw):
    base = {
        "calling_ae": "PACS",
        "modalities": frozenset({"MR"}),
        "body_parts": frozenset({"BRAIN"}),
        "study_description": "MRT Schaedel",
    }
    return StudyFacts(**(base | kw))


def test_default_routing_takes_mr_from_anyone():
    assert route(facts(), RoutingSettings()).process
    d = route(facts(modalities=frozenset({"CT"})), RoutingSettings())
    assert not d.process and "routing.modalities" in d.reason


def test_routing_by_calling_ae_body_part_and_description():
    rules = RoutingSettings(
        calling_aets=["PACS"], body_part_regex="brain|head", study_description_regex="schaedel"
    )
    assert route(facts(), rules).process
    assert "calling AE 'SCANNER'" in route(facts(calling_ae="SCANNER"), rules).reason
    assert "body_part_regex" in route(facts(body_parts=frozenset({"KNEE"})), rules).reason
    d = route(facts(study_description="Knie"), rules)
    assert not d.process and "Knie" not in d.reason  # free text is not echoed


def test_allow_list_with_and_without_ip():
    assert allowed("ANY", "10.0.0.1", [])
    assert allowed("PACS", "10.0.0.1", ["PACS"])
    assert allowed("PACS", "10.0.0.1", ["PACS@10.0.0.1"])
    assert not allowed("PACS", "10.0.0.2", ["PACS@10.0.0.1"])
    assert not allowed("OTHER", "10.0.0.1", ["PACS", "PACS@10.0.0.1"])
