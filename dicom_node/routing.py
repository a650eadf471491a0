"""Which received objects and studies are processed (pure).

Two rules live here:

* SOP classes. MR Image Storage and Enhanced MR Image Storage are received and processed.
  Segmentation, every Structured Report class and Secondary Capture are accepted with Success and
  ignored: a PACS that routes whole studies sends our own outputs back, and they must never be
  processed again (nor refused, or the PACS retries). Every other SOP class is refused.
* Studies. ``settings.routing`` says which studies become jobs, by calling AE title, modality,
  body part and study description (empty means any).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
PROCESSED_SOP_CLASSES: tuple[str, ...] = (MR_IMAGE_STORAGE, ENHANCED_MR_IMAGE_STORAGE)

SEGMENTATION_SOP_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation Storage
)
SECONDARY_CAPTURE_SOP_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.7",
    "1.2.840.10008.5.1.4.1.1.7.1",
    "1.2.840.10008.5.1.4.1.1.7.2",
    "1.2.840.10008.5.1.4.1.1.7.3",
    "1.2.840.10008.5.1.4.1.1.7.4",
)
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


class SopDisposition(StrEnum):
    process = "process"  # spool, count towards completion
    ignore = "ignore"  # our own kind of output: Success, nothing stored
    refuse = "refuse"  # not a class this service takes


def sop_disposition(sop_class_uid: str) -> SopDisposition:
    """What the node does with an instance of this SOP class."""
    uid = sop_class_uid.strip().rstrip("\x00")
    if uid in PROCESSED_SOP_CLASSES:
        return SopDisposition.process
    if (
        uid in SEGMENTATION_SOP_CLASSES
        or uid in SECONDARY_CAPTURE_SOP_CLASSES
        or uid.startswith(SR_PREFIX)
    ):
        return SopDisposition.ignore
    return SopDisposition.refuse


def ignored_sop_classes(storage_classes: Collection[str]) -> list[str]:
    """The subset of known storage SOP classes accepted-and-ignored (for the SCP contexts)."""
    return [u for u in storage_classes if sop_disposition(u) is SopDisposition.ignore]


@dataclass(frozen=True)
class StudyFacts:
    """What routing looks at, gathered from the headers of a study's series."""

    calling_ae: str
    modalities: frozenset[str]
    body_parts: frozenset[str]
    study_description: str


class RoutingRules(Protocol):
    @property
    def calling_aets(self) -> list[str]: ...
    @property
    def modalities(self) -> list[str]: ...
    @property
    def body_part_regex(self) -> str: ...
    @property
    def study_description_regex(self) -> str: ...


@dataclass(frozen=True)
class RouteDecision:
    process: bool
    reason: str


def route(facts: StudyFacts, rules: RoutingRules) -> RouteDecision:
    """Decide whether a study becomes a job; the reason names the rule and the value."""
    if rules.calling_aets and facts.calling_ae not in rules.calling_aets:
        return RouteDecision(
            False,
            f"calling AE {facts.calling_ae!r} not in routing.calling_aets {rules.calling_aets}",
        )
    wanted = {m.upper() for m in rules.modalities}
    if wanted and not ({m.upper() for m in facts.modalities} & wanted):
        return RouteDecision(
            False,
            f"modalities {sorted(facts.modalities)} not in routing.modalities {sorted(wanted)}",
        )
    if rules.body_part_regex and not any(
        re.search(rules.body_part_regex, bp, re.IGNORECASE) for bp in facts.body_parts
    ):
        return RouteDecision(
            False,
            f"body parts {sorted(facts.body_parts)} do not match routing.body_part_regex "
            f"{rules.body_part_regex!r}",
        )
    if rules.study_description_regex and not re.search(
        rules.study_description_regex, facts.study_description, re.IGNORECASE
    ):
        # The description may carry PHI-like free text: do not echo it.
        return RouteDecision(
            False,
            f"study description does not match routing.study_description_regex "
            f"{rules.study_description_regex!r}",
        )
    return RouteDecision(True, "routed")
