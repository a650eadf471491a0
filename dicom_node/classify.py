r"""Which series of an MR study is T1, T1c (post-contrast T1), T2 and FLAIR — from headers only.

Pure: headers in, decisions out (every series gets a human-readable reason). No I/O except
:func:`series_infos_from_dir`, which reads headers from a folder.

Rule table (applied per series, in this order)
-----------------------------------------------
1. **Not an MR image** (never chosen, not even by an admin rule): Modality other than MR, or a
   SOP class other than MR / Enhanced MR / Legacy Converted Enhanced MR image storage (our own
   SEG, SR, Secondary Capture outputs, presentation states, ...), or a description/manufacturer
   naming gliomaseg.
2. **Admin rules** (``[[classify.rules]]`` in the configuration, :class:`config.settings.ClassifyRule`):
   tried in order; the first whose every condition holds decides (``match``: keyword -> regex,
   case-insensitive search on the header value, multi-values joined with ``\``; ``ranges``:
   keyword -> [min, max], either bound may be null; a missing keyword fails the condition).
   ``role`` assigns the role (overriding every heuristic below), ``"ignore"`` excludes the series.
3. **Never chosen** (heuristic exclusions), from ImageType / FrameType, the series description
   and protocol name, and the physics: localizer/scout/survey; derived or secondary images
   (ImageType DERIVED or SECONDARY), MPR/reformat, MIP/MinIP, subtraction; diffusion (DWI, DTI,
   ADC, TRACE, FA, b-value > 0); perfusion and dynamic series (DSC, DCE, PWI, ASL, CBV/CBF/MTT,
   NumberOfTemporalPositions > 1); SWI/SWAN/phase
   images; fMRI/BOLD and any echo-planar acquisition (ScanningSequence EP, MOSAIC); angiography
   (TOF, MRA, phase contrast); spectroscopy; balanced SSFP (CISS/FIESTA/TrueFISP).
4. **MR physics** (times in ms; IR = ScanningSequence IR, an inversion time > 50, or
   InversionRecovery YES; enhanced objects are read inside the shared / first per-frame
   functional groups, e.g. MRTimingAndRelatedParametersSequence, MREchoSequence,
   MRModifierSequence, MRImageFrameTypeSequence):

   ====================================  ==========================================
   IR, TI < 300                          STIR (fat suppression): no role
   IR, TI >= 1400, or TI >= 1000 and     FLAIR
   TE >= 60 (gradient echo needs
   TE >= 50)
   IR, 300 <= TI < 1400, TE < 30         T1 (MPRAGE, IR-FSPGR/BRAVO, T1-FLAIR)
   IR, no TI: TR >= 5000 and TE >= 60    FLAIR;  TR <= 3000 and TE < 30: T1
   gradient echo, TE >= 12               T2*-weighted GRE: no role
   gradient echo, TE < 12, TR < 1000     T1 (spoiled GRE: FLASH, SPGR, T1-FFE, VIBE)
   spin echo / TSE, TR < 1200, TE < 30   T1
   spin echo / TSE, TR >= 1800, TE >= 60 T2
   spin echo / TSE, TR >= 1800, TE < 40  proton density: no role
   Enhanced AcquisitionContrast          T1 / T2 / FLUID_ATTENUATED -> FLAIR /
                                         PROTON_DENSITY, T2_STAR, STIR ... -> no role
   Siemens SequenceName *tfl (3D)        T1 (turbo-FLASH / MPRAGE) when TR/TI are not given
   ====================================  ==========================================

   Without conclusive physics the **description** decides (SeriesDescription + ProtocolName;
   Siemens, GE, Philips, Hitachi, Canon styles): ``T2*``/``GRE`` and ``PD`` give no role;
   ``T1`` together with ``FLAIR`` (T1-FLAIR) is T1; ``FLAIR``/``dark-fluid`` is FLAIR;
   ``T1``/``T1W``/``MPRAGE``/``BRAVO``/``SPGR``/``TFE``/``VIBE`` is T1; ``T2``/``T2W`` is T2.
   When physics is conclusive and the description disagrees, physics wins (the reason says so),
   except a series named FLAIR whose headers record no inversion but TR >= 4500 ms and a
   long TE: it stays FLAIR (an unrecorded inversion pulse is likelier than a misnamed T2).
5. **Post-contrast** (T1 vs T1c), first that applies: acquired before ContrastBolusStartTime ->
   pre; ContrastBolusAgentAdministered NO -> pre; a pre-contrast word in the description
   (``pre``, ``non contrast``, ``w/o``, ``without``, ``nativ``, ``plain``, ``sin``/``sans``/
   ``ohne``/``vor``/``zonder``) -> pre; a contrast tag (ContrastBolusAgent other than none/no,
   ContrastBolusVolume or TotalDose > 0, ContrastBolusIngredient, ContrastBolusStartTime,
   ContrastBolusAgentSequence, ContrastBolusUsageSequence with ContrastBolusAgentAdministered
   YES) -> post, unless the study's first series already carries it (entered at registration
   and copied into every series: not informative); a post-contrast word (``+C``, ``C+``,
   ``post``, ``Gd``, ``Gad``, ``gado*``, ``contrast``, ``KM``, ``CE``, ``MDC``, ``enhanced``,
   ``T1c``, ``w/ c``, agent names such as Gadavist, Dotarem, MultiHance) -> post; else unknown.
6. **Tie-breaks** when several series fit one role, in order: assigned by an admin rule; at
   least 10 slices (fewer cannot cover a brain); for T1,
   the same protocol as the chosen T1c (a matched pre/post pair); stronger evidence (conclusive physics over description or scanner label alone); axial; thinner slices;
   more slices; the later series (SeriesDate/SeriesTime, then SeriesNumber). When no series has
   contrast evidence, **the later of two identical T1 protocols** (same sequence type, sequence
   name, TR/TE/TI within 5 %, orientation and slice thickness) is taken as the post-contrast one
   and the earlier as the pre-contrast one.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from config.settings import ClassifyRule

log = logging.getLogger(__name__)

__all__ = [
    "Classification",
    "Role",
    "SeriesDecision",
    "SeriesInfo",
    "assign_roles",
    "series_infos_from_dir",
]


class Role(StrEnum):
    T1 = "T1"
    T1C = "T1c"
    T2 = "T2"
    FLAIR = "FLAIR"


@dataclass(frozen=True)
class SeriesInfo:
    """One series: a representative instance's headers (no PixelData) and its instance count."""

    series_uid: str
    headers: pydicom.Dataset
    n_instances: int


@dataclass(frozen=True)
class SeriesDecision:
    series_uid: str
    series_number: int | None
    description: str
    role: Role | None
    reason: str


@dataclass(frozen=True)
class Classification:
    roles: dict[Role, str | None]
    series: list[SeriesDecision]

    def missing(self) -> list[Role]:
        """Roles no series was chosen for, in the order T1, T1c, T2, FLAIR."""
        return [role for role in Role if self.roles.get(role) is None]

    def to_json(self) -> dict[str, Any]:
        """``{"roles": {"T1": uid | None, ...}, "series": [{...}, ...]}`` (gliomaseg classify --json)."""
        return {
            "roles": {role.value: self.roles.get(role) for role in Role},
            "series": [
                {
                    "series_uid": d.series_uid,
                    "series_number": d.series_number,
                    "description": d.description,
                    "role": d.role.value if d.role is not None else None,
                    "reason": d.reason,
                }
                for d in self.series
            ],
        }

    def decision(self, series_uid: str) -> SeriesDecision:
        for d in self.series:
            if d.series_uid == series_uid:
                return d
        raise KeyError(series_uid)


# --------------------------------------------------------------------------- header access

_MR_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image Storage
}
_SKIP_SEQUENCES = re.compile(r"^(Referenced|Source|Derivation|Request|Procedure|Performed)")
_ALIASES: dict[str, tuple[str, ...]] = {
    "EchoTime": ("EchoTime", "EffectiveEchoTime"),
    "InversionTime": ("InversionTime", "InversionTimes"),
    "ImageType": ("ImageType", "FrameType"),
}


def _empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str | bytes) and not str(value).strip():
        return True
    return isinstance(value, MultiValue | list | tuple) and len(value) == 0


def _value(item: pydicom.Dataset, key: Any) -> Any:
    """An element's value, or None when absent, empty or not decodable (bad VR content)."""
    try:
        if key not in item:
            return None
        value = item[key].value
    except Exception:  # a malformed value must not stop the classification
        return None
    return None if _empty(value) else value


def _elements(item: pydicom.Dataset) -> Iterable[pydicom.DataElement]:
    for tag in list(item.keys()):
        try:
            yield item[tag]
        except Exception:
            continue


def _deep(item: pydicom.Dataset, keyword: str, depth: int) -> Any:
    value = _value(item, keyword)
    if value is not None:
        return value
    if depth <= 0:
        return None
    for elem in _elements(item):
        if elem.VR != "SQ" or not elem.value:
            continue
        if elem.keyword and _SKIP_SEQUENCES.match(elem.keyword):
            continue
        found = _deep(elem.value[0], keyword, depth - 1)
        if found is not None:
            return found
    return None


def lookup(ds: pydicom.Dataset, keyword: str) -> Any:
    """A header value: top level, then the shared and first per-frame functional groups
    (enhanced multi-frame), then other nested (including private) sequences. None when absent."""
    names = _ALIASES.get(keyword, (keyword,))
    for name in names:
        value = _value(ds, name)
        if value is not None:
            return value
    for name in names:
        for group in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
            seq = _value(ds, group)
            if seq:
                found = _deep(seq[0], name, 3)
                if found is not None:
                    return found
    for name in names:
        found = _deep(ds, name, 3)
        if found is not None:
            return found
    return None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def _tokens(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, MultiValue | list | tuple):
        return [str(v).strip().upper() for v in value]
    return [t.strip().upper() for t in str(value).split("\\")]


def _float(value: Any) -> float | None:
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


_SIEMENS_SEQ = re.compile(r"^\*?[a-z]{1,8}\d?[123]d\d", re.IGNORECASE)


def _sequence_name(ds: pydicom.Dataset) -> str:
    official = ""
    for keyword in ("SequenceName", "PulseSequenceName"):
        value = lookup(ds, keyword)
        if value and str(value).strip().lower() not in ("", "none"):
            official = str(value).strip()
            break
    if _SIEMENS_SEQ.match(official):
        return official
    # Siemens XA enhanced objects keep the sequence name in a private tag of the frame groups
    # (and anonymisers may overwrite SequenceName).
    return _private_sequence_name(ds, 4) or official


def _private_sequence_name(item: pydicom.Dataset, depth: int) -> str | None:
    for elem in _elements(item):
        if elem.VR == "SQ":
            if depth > 0 and elem.value:
                found = _private_sequence_name(elem.value[0], depth - 1)
                if found:
                    return found
        elif (
            elem.tag.is_private
            and elem.VR in ("LO", "SH")
            and isinstance(elem.value, str)
            and elem.value.startswith("*")
            and _SIEMENS_SEQ.match(elem.value)
        ):
            return elem.value
    return None


# --------------------------------------------------------------------------- features


@dataclass(frozen=True)
class Features:
    series_uid: str
    series_number: int | None
    description: str  # SeriesDescription (or ProtocolName), as shown to users
    text: str  # lower-case description + protocol name, for keyword rules
    modality: str
    sop_class: str
    manufacturer: str
    image_type: list[str]
    scanning: set[str]
    variant: set[str]
    sequence_name: str
    acquisition_type: str
    tr_ms: float | None
    te_ms: float | None
    ti_ms: float | None
    acquisition_contrast: str
    echo_pulse: str
    inversion_flag: bool
    epi_flag: bool
    b_value: float | None
    contrast_tag: str | None
    contrast_no: bool
    before_bolus: bool | None  # acquired before ContrastBolusStartTime (None: unknown)
    temporal_positions: int
    orientation: str  # AX, COR, SAG or "" when unknown
    slice_mm: float | None
    n_slices: int
    when: tuple[str, int]
    headers: pydicom.Dataset = field(repr=False, compare=False)


def _orientation(ds: pydicom.Dataset, text: str) -> str:
    iop = lookup(ds, "ImageOrientationPatient")
    try:
        v = [float(x) for x in iop] if iop is not None else []
    except (TypeError, ValueError):
        v = []
    if len(v) == 6:
        r, c = v[:3], v[3:]
        n = [r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0]]
        axis = max(range(3), key=lambda i: abs(n[i]))
        if abs(n[axis]) > 0:
            return ("SAG", "COR", "AX")[axis]
    if re.search(r"(?<![a-z])(ax|axial|tra|trans|transverse)(?![a-z])", text):
        return "AX"
    if re.search(r"(?<![a-z])(sag|sagittal)(?![a-z])", text):
        return "SAG"
    if re.search(r"(?<![a-z])(cor|coronal)(?![a-z])", text):
        return "COR"
    return ""


_NO_AGENT = {"", "NONE", "NO", "N/A", "NA", "NIL", "-", "0", "UNKNOWN"}


def _contrast(ds: pydicom.Dataset) -> tuple[str | None, bool]:
    """(evidence of contrast given, explicit 'not administered')."""
    agent = lookup(ds, "ContrastBolusAgent")
    if agent is not None and str(agent).strip().upper() not in _NO_AGENT:
        return f"ContrastBolusAgent '{str(agent).strip()}'", False
    for keyword in ("ContrastBolusVolume", "ContrastBolusTotalDose"):
        value = _float(lookup(ds, keyword))
        if value is not None and value > 0:
            return f"{keyword} {value:g}", False
    ingredient = lookup(ds, "ContrastBolusIngredient")
    if ingredient is not None and str(ingredient).strip().upper() not in _NO_AGENT:
        return f"ContrastBolusIngredient '{str(ingredient).strip()}'", False
    administered = lookup(ds, "ContrastBolusAgentAdministered")
    if administered is not None:
        if str(administered).upper() == "YES":
            return "ContrastBolusAgentAdministered YES", False
        if str(administered).upper() == "NO":
            return None, True
    start = lookup(ds, "ContrastBolusStartTime")
    if start is not None and str(start).strip():
        return f"ContrastBolusStartTime {str(start).strip()}", False
    agents = lookup(ds, "ContrastBolusAgentSequence")
    if agents:
        meaning = agents[0].get("CodeMeaning", "") or agents[0].get("CodeValue", "")
        return f"ContrastBolusAgentSequence '{meaning}'", False
    return None, False


def _when(ds: pydicom.Dataset, number: int | None) -> tuple[str, int]:
    for date_kw, time_kw in (
        ("SeriesDate", "SeriesTime"),
        ("AcquisitionDate", "AcquisitionTime"),
        ("ContentDate", "ContentTime"),
    ):
        date, time = _value(ds, date_kw), _value(ds, time_kw)
        if date and time:
            t = str(time).replace(":", "")
            whole, _, frac = t.partition(".")
            return (f"{date}{whole.ljust(6, '0')}.{frac.ljust(6, '0')}", number or 0)
    dt = lookup(ds, "AcquisitionDateTime")
    if dt:
        return (str(dt), number or 0)
    return ("", number or 0)


def _seconds(value: Any) -> float | None:
    text = str(value or "").replace(":", "").strip()
    m = re.match(r"^(\d{2})(\d{2})?(\d{2})?(\.\d+)?$", text)
    if not m:
        return None
    h, mi, sec, frac = m.groups()
    return int(h) * 3600 + int(mi or 0) * 60 + int(sec or 0) + float(frac or 0)


def _before_bolus(ds: pydicom.Dataset) -> bool | None:
    start = _seconds(lookup(ds, "ContrastBolusStartTime"))
    if start is None:
        return None
    for keyword in ("AcquisitionTime", "SeriesTime"):
        acquired = _seconds(_value(ds, keyword))
        if acquired is not None:
            return acquired < start
    return None


def features(info: SeriesInfo) -> Features:
    ds = info.headers
    description = str(_value(ds, "SeriesDescription") or "").strip()
    protocol = str(_value(ds, "ProtocolName") or "").strip()
    text = f"{description} | {protocol}".lower()
    # Philips prefixes: sT1W (SENSE), eT2W ...: read them as T1W / T2W
    text = re.sub(r"(?<![a-z0-9])[se](?=t[12](?![0-9]))", "", text)
    number = _value(ds, "SeriesNumber")
    try:
        series_number = int(number) if number not in (None, "") else None
    except (TypeError, ValueError):
        series_number = None
    frames = _float(_value(ds, "NumberOfFrames")) or 1
    agent, contrast_no = _contrast(ds)
    b_value = _float(lookup(ds, "DiffusionBValue"))
    return Features(
        series_uid=info.series_uid,
        series_number=series_number,
        description=description or protocol,
        text=text,
        modality=str(_value(ds, "Modality") or "").upper(),
        sop_class=str(_value(ds, "SOPClassUID") or ""),
        manufacturer=str(_value(ds, "Manufacturer") or ""),
        image_type=_tokens(lookup(ds, "ImageType")),
        scanning=set(_tokens(lookup(ds, "ScanningSequence"))),
        variant=set(_tokens(lookup(ds, "SequenceVariant"))),
        sequence_name=_sequence_name(ds),
        acquisition_type=str(lookup(ds, "MRAcquisitionType") or "").upper(),
        tr_ms=_float(lookup(ds, "RepetitionTime")),
        te_ms=_float(lookup(ds, "EchoTime")),
        ti_ms=_float(lookup(ds, "InversionTime")),
        acquisition_contrast=str(lookup(ds, "AcquisitionContrast") or "").upper(),
        echo_pulse=str(lookup(ds, "EchoPulseSequence") or "").upper(),
        inversion_flag=str(lookup(ds, "InversionRecovery") or "").upper() == "YES",
        epi_flag=str(lookup(ds, "EchoPlanarPulseSequence") or "").upper() == "YES",
        b_value=b_value,
        contrast_tag=agent,
        contrast_no=contrast_no,
        before_bolus=_before_bolus(ds),
        temporal_positions=int(_float(_value(ds, "NumberOfTemporalPositions")) or 1),
        orientation=_orientation(ds, text),
        slice_mm=_float(lookup(ds, "SliceThickness")),
        n_slices=max(1, info.n_instances) * int(frames),
        when=_when(ds, series_number),
        headers=ds,
    )


# --------------------------------------------------------------------------- keyword rules


def _kw(*words: str) -> re.Pattern[str]:
    """Words bounded by non-letters (digits and punctuation are boundaries)."""
    return re.compile(r"(?<![a-z])(?:" + "|".join(words) + r")(?![a-z])")


_EXCLUDE_TEXT: list[tuple[str, re.Pattern[str]]] = [
    ("our own output", re.compile(r"gliomaseg")),
    (
        "localizer/scout",
        _kw(
            "localizer",
            "localiser",
            "loc",
            "locali[sz]er?s?",
            "scout",
            "survey",
            "surview",
            r"3[- _]?pl(?:ane)?",
            r"tri[- _]?pilot",
            "pilot",
            "scanogram",
            r"aa[-_ ]?head\w*",
            r"auto[-_ ]?align\w*",
            "calibration",
            "cal",
            r"ref[-_ ]?scan",
            "sense[-_ ]?ref",
            "coil[-_ ]?survey",
        ),
    ),
    (
        "diffusion",
        re.compile(
            r"(?<![a-z])(?:dwi|dti|diff|diffusion|adc|e?adc|trace|tracew|tensor|colfa|"
            r"exp|dki|ivim|resolve)(?![a-z])|(?<![a-z])fa(?![a-z0-9])|(?<![a-z])b\s*=?\s*\d{2,4}(?![0-9])|"
            r"(?<![a-z0-9])\d{3,4}\s*b(?![a-z])|apparent diffusion"
        ),
    ),
    (
        "perfusion",
        _kw(
            "perf",
            "perfusion",
            "dsc",
            "dce",
            "pwi",
            "r?cbv",
            "r?cbf",
            "mtt",
            "ttp",
            "tmax",
            "asl",
            "pcasl",
            "pasl",
            "twist",
            "ktrans",
            "dyn",
            "dynamic",
            "disco",
            "4d",
        ),
    ),
    (
        "SWI/phase",
        _kw("swi", "swan", "pha", "phase", "venobold", "suscept\\w*", "swi_\\w+"),
    ),
    ("MIP/MinIP", _kw("mip", "minip", "mnip", "min ip")),
    ("fMRI/EPI", _kw("bold", "fmri", "rs[-_ ]?fmri", "resting", "epi", "ep2d")),
    (
        "angiography",
        _kw("tof", "mra", "mrv", "angio\\w*", "venogram", "pc[-_ ]?mra", "ce[-_ ]?mra"),
    ),
    ("spectroscopy", _kw("svs", "csi", "spectro\\w*", "mrs")),
    ("subtraction", _kw("sub", "subs", "subtract\\w*")),
    ("balanced SSFP", _kw("ciss", "fiesta", "trufi", "truefisp", "bffe", "b[-_ ]?ffe")),
]
_REFORMAT_TEXT = _kw("mpr", "mprs", "reformat\\w*", "mpr\\d*")

_EXCLUDE_IMAGE_TYPE: list[tuple[str, set[str]]] = [
    ("localizer", {"LOCALIZER", "SCOUT"}),
    ("diffusion", {"DIFFUSION", "ADC", "TRACEW", "TRACE", "FA", "EADC", "EXP", "DWI", "ISODWI"}),
    ("perfusion", {"PERFUSION", "RCBV", "CBV", "CBF", "MTT", "TTP", "ASL"}),
    ("SWI/phase", {"SWI", "PHASE", "P", "PHASE MAP", "SWAN", "MNIP", "MIN IP"}),
    ("MIP", {"MIP", "PROJECTION IMAGE", "MAXIMUM", "MINIMUM"}),
    ("MPR/reformat", {"MPR", "REFORMATTED", "CSA MPR", "CSAMPR", "MPR THICK", "CPR"}),
    ("subtraction", {"SUBTRACTION", "SUB", "SUBTRACT"}),
    ("fMRI/EPI mosaic", {"MOSAIC", "FMRI"}),
    ("angiography", {"ANGIO", "M_PCA", "PCA", "TOF"}),
]
_EXCLUDE_CONTRAST = {
    "DIFFUSION": "diffusion",
    "PERFUSION": "perfusion",
    "FLOW_ENCODED": "angiography",
    "TOF": "angiography",
    "TAGGING": "tagging",
}

_DESC_NONE: list[tuple[str, re.Pattern[str]]] = [
    (
        "T2*-weighted gradient echo",
        re.compile(
            r"t2\s*\*|(?<![a-z])(?:t2[-_ ]?star|hemo\w*|"
            r"t2[-_ ]*(?:w[-_ ]*)?(?:gre|ffe|fl2d|flash|me2d|medic|merge|swi))(?![a-z])"
        ),
    ),
    ("proton density", re.compile(r"(?<![a-z])(?:pd|pdw|pdwi|proton[-_ ]?density)(?![a-z])")),
    ("STIR", _kw("stir")),
]
_T1_TEXT = re.compile(
    r"(?:(?<![a-z0-9])|(?<=3d))t1(?![0-9])|"
    r"(?<![a-z])(?:mprage|mp[-_ ]?rage|bravo|fspgr|spgr|t1tfe|tfe|vibe|flash|fl3d|"
    r"mpr\s*age|t1ffe)(?![a-z])"
)
_T2_TEXT = re.compile(r"(?:(?<![a-z0-9])|(?<=3d))t2(?![0-9*])")
_FLAIR_TEXT = re.compile(
    r"(?<![a-z])(?:flair|dark[-_ ]?fluid|darkfluid|fluid[-_ ]?att\w*|fla|da[-_ ]?fl)"
    r"(?![a-z])|flair"
)

_PRE_TEXT = re.compile(
    r"(?<![a-z])(?:pre|precontrast|pregad|pregd|pre[-_ ]?gad|pre[-_ ]?gd|pre[-_ ]?contrast|"
    r"nativ|native|non[-_ ]?contrast|noncontrast|non[-_ ]?enhanced|unenhanced|plain|sin|sans|"
    r"ohne|senza|zonder|vor|w/o|wo|woc|without|no[-_ ]?contrast|no[-_ ]?gad|no[-_ ]?gd)(?![a-z])|"
    r"(?<![a-z0-9])-\s?c(?![a-z+])"
)
_POST_TEXT = re.compile(
    r"\+\s*(?:c|gd|gad|gado|contrast|km|ce|mdc)(?![a-z])|(?<![a-z])c\s*\+|"
    r"(?<![a-z])(?:post|postcon\w*|postgad|postgd|post[-_ ]?gad|post[-_ ]?gd|gad|gado\w*|gd|"
    r"gadolinium|contrast[eo]?|km|kontrast\w*|ce|mdc|enhanced|w/\s*c|wc|with[-_ ]?contrast|"
    r"with[-_ ]?gad|con[-_ ]?contraste|dotarem|gadavist|gadovist|magnevist|multihance|prohance|"
    r"omniscan|clariscan|elucirem|vueway|gadoterate|gadobutrol)(?![a-z])|"
    r"t1\s*c(?:e)?(?![a-z])|t1\s*gd"
)


def _search(pattern: re.Pattern[str], text: str) -> str | None:
    m = pattern.search(text)
    return m.group(0).strip() if m else None


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class _Verdict:
    role: str | None  # "T1" (any T1, pre/post decided later), "T2", "FLAIR" or None
    reason: str
    conclusive: bool


def _fmt(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


def _exclusion(f: Features) -> str | None:
    """Why this series is never chosen (heuristic exclusions), or None."""
    types = f.image_type
    shown = "\\".join(types)
    for label, names in _EXCLUDE_IMAGE_TYPE:
        if any(t in names for t in types[2:]) or (
            label == "localizer" and any(t in names for t in types)
        ):
            return f"{label} (ImageType {shown})"
    if types and (types[0] == "DERIVED" or (len(types) > 1 and types[1] == "SECONDARY")):
        return f"derived (ImageType {shown})"
    if f.acquisition_contrast in _EXCLUDE_CONTRAST:
        return f"{_EXCLUDE_CONTRAST[f.acquisition_contrast]} (AcquisitionContrast {f.acquisition_contrast})"
    for label, pattern in _EXCLUDE_TEXT:
        word = _search(pattern, f.text)
        if word:
            return f"{label} (description '{f.description}': '{word}')"
    word = _search(_REFORMAT_TEXT, f.text)
    # Siemens names some 3D MPRAGE acquisitions "t1_mpr_...": an ORIGINAL 3D acquisition is kept.
    if word and not (types and types[0] == "ORIGINAL" and f.acquisition_type == "3D"):
        return f"MPR/reformat (description '{f.description}': '{word}')"
    seq = f.sequence_name.lower().lstrip("*")
    if "EP" in f.scanning or f.epi_flag or re.match(r"ep(?:fid|se|_|2d|3d|i)", seq):
        scanning = "\\".join(sorted(f.scanning)) or "?"
        return (
            f"echo-planar acquisition (ScanningSequence {scanning}, sequence "
            f"'{f.sequence_name}'): diffusion, perfusion or fMRI"
        )
    if f.temporal_positions > 1:
        return f"dynamic series ({f.temporal_positions} temporal positions): perfusion/DCE"
    if f.b_value is not None and f.b_value > 0:
        return f"diffusion (b-value {f.b_value:g})"
    if re.match(r"(swi|tfi|ci3d|ci2d|tof|fl3d\d*r?_t)", seq):
        return f"sequence '{f.sequence_name}' (SWI, balanced SSFP or TOF)"
    return None


def _family(f: Features) -> tuple[bool, bool, bool]:
    """(inversion recovery, gradient echo, spin echo) from the tags and sequence names."""
    seq = f.sequence_name.lower().lstrip("*")
    types = set(f.image_type)
    ir = (
        "IR" in f.scanning
        or f.inversion_flag
        or (f.ti_ms is not None and f.ti_ms > 50)
        or bool(re.match(r"(tir|spcir|ir)", seq))
        or "M_IR" in types
    )
    gr = (
        "GR" in f.scanning
        or f.echo_pulse == "GRADIENT"
        or bool(re.match(r"(tfl|fl|me|fgre|spgr|fspgr|ffe|t1ffe|t1tfe|tfe|vibe)", seq))
        or "M_FFE" in types
    )
    se = (
        "SE" in f.scanning
        or f.echo_pulse == "SPIN"
        or bool(re.match(r"(se|tse|spc|tir|fse|h2d|haste)", seq))
        or "M_SE" in types
    )
    return ir, gr, se


def _physics(f: Features) -> _Verdict:
    tr, te, ti = f.tr_ms, f.te_ms, f.ti_ms
    ir, gr, se = _family(f)
    seq = f.sequence_name.lower().lstrip("*")
    if ir:
        if ti is not None and ti > 50:
            base = f"IR with TI {ti:g} ms, TR {_fmt(tr)} ms, TE {_fmt(te)} ms"
            if ti < 300:
                return _Verdict(None, f"STIR/fat-suppressed inversion recovery ({base})", True)
            flair_te_ok = te is None or te >= 50 or not (gr and not se)
            if (ti >= 1400 and flair_te_ok) or (ti >= 1000 and te is not None and te >= 60):
                return _Verdict("FLAIR", f"FLAIR: {base}", True)
            if ti < 1400 and (te is None or te < 30):
                return _Verdict("T1", f"T1: IR-prepared T1 ({base})", True)
            return _Verdict(None, f"IR not conclusive ({base})", False)
        if tr is not None and te is not None:
            base = f"IR, TI not given, TR {tr:g} ms, TE {te:g} ms"
            if tr >= 5000 and te >= 60:
                return _Verdict("FLAIR", f"FLAIR: {base}", True)
            if tr <= 3000 and te < 30:
                return _Verdict("T1", f"T1: {base}", True)
    if seq.startswith("tfl") and tr is None and ti is None and (te is None or te < 10):
        return _Verdict(
            "T1",
            f"T1: Siemens turbo-FLASH '{f.sequence_name}' (MPRAGE), TE {_fmt(te)} ms",
            False,
        )
    if gr and not se and te is not None:
        base = f"gradient echo, TR {_fmt(tr)} ms, TE {te:g} ms"
        if te >= 12:
            return _Verdict(None, f"T2*-weighted gradient echo ({base})", True)
        if tr is None or tr < 1000:
            conclusive = tr is not None
            return _Verdict("T1", f"T1: spoiled gradient echo ({base})", conclusive)
    if (se or not gr) and tr is not None and te is not None:
        kind = "spin echo" if se else "TR/TE"
        base = f"{kind}, TR {tr:g} ms, TE {te:g} ms"
        if tr < 1200 and te < 30:
            return _Verdict("T1", f"T1: {base}", True)
        if tr >= 1800 and te >= 60:
            return _Verdict("T2", f"T2: {base}", True)
        if tr >= 1800 and te < 40:
            return _Verdict(None, f"proton density ({base})", True)
    contrast = f.acquisition_contrast
    if contrast in ("T1", "T2"):
        return _Verdict(contrast, f"{contrast}: AcquisitionContrast {contrast}", False)
    if contrast == "FLUID_ATTENUATED":
        return _Verdict("FLAIR", "FLAIR: AcquisitionContrast FLUID_ATTENUATED", False)
    if contrast in ("PROTON_DENSITY", "T2_STAR", "STIR", "MIXED"):
        return _Verdict(None, f"AcquisitionContrast {contrast}", True)
    if seq.startswith("tfl") and (te is None or te < 10):
        return _Verdict(
            "T1",
            f"T1: Siemens turbo-FLASH '{f.sequence_name}' (MPRAGE), TE {_fmt(te)} ms",
            False,
        )
    for flavour in f.image_type[2:3]:
        if flavour in ("T1", "T2", "FLAIR"):
            return _Verdict(flavour, f"{flavour}: ImageType value 3 '{flavour}'", False)
        if flavour in ("PROTON_DENSITY", "PD"):
            return _Verdict(None, f"proton density (ImageType value 3 '{flavour}')", True)
    parts = []
    if f.scanning:
        parts.append("ScanningSequence " + "\\".join(sorted(f.scanning)))
    parts.append(f"TR {_fmt(tr)} ms, TE {_fmt(te)} ms, TI {_fmt(ti)} ms")
    return _Verdict(None, "physics not conclusive (" + ", ".join(parts) + ")", False)


def _from_description(f: Features) -> _Verdict:
    text = f.text
    if not text.strip(" |"):
        return _Verdict(None, "no description", False)
    t1 = _search(_T1_TEXT, text)
    flair = _search(_FLAIR_TEXT, text)
    if t1 and flair:
        return _Verdict("T1", f"T1: description '{f.description}' (T1-weighted FLAIR)", False)
    for label, pattern in _DESC_NONE:
        word = _search(pattern, text)
        if word:
            return _Verdict(None, f"{label} (description '{f.description}')", False)
    if flair:
        return _Verdict("FLAIR", f"FLAIR: description '{f.description}'", False)
    if t1:
        return _Verdict("T1", f"T1: description '{f.description}'", False)
    if _search(_T2_TEXT, text):
        return _Verdict("T2", f"T2: description '{f.description}'", False)
    if word := _search(_kw("gre", "t2\\*?[-_ ]?gre", "fl2d", "medic", "merge"), text):
        return _Verdict(None, f"gradient echo without T1 (description '{f.description}')", False)
    return _Verdict(None, f"description '{f.description}' names no role", False)


def _rule_matches(rule: ClassifyRule, ds: pydicom.Dataset) -> str | None:
    """A short description of the matching conditions, or None."""
    parts = []
    for keyword, pattern in rule.match.items():
        value = lookup(ds, keyword)
        if value is None:
            return None
        text = _text(value)
        if not re.search(pattern, text, re.IGNORECASE):
            return None
        parts.append(f"{keyword} '{text}' ~ /{pattern}/")
    for keyword, (lo, hi) in rule.ranges.items():
        number = _float(lookup(ds, keyword))
        if number is None:
            return None
        if (lo is not None and number < lo) or (hi is not None and number > hi):
            return None
        parts.append(f"{keyword} {number:g} in [{_fmt(lo)}, {_fmt(hi)}]")
    return ", ".join(parts) or "matches every series"


@dataclass
class _Candidate:
    f: Features
    role: Role
    reason: str
    by_rule: bool
    evidence: int  # 2: conclusive physics, 1: description / scanner label
    contrast: str  # "post", "pre", "unknown" (T1 family only)


def _same_protocol(a: Features, b: Features) -> bool:
    def close(x: float | None, y: float | None) -> bool:
        if x is None or y is None:
            return x is None and y is None
        return abs(x - y) <= 0.05 * max(abs(x), abs(y), 1e-6)

    if a.tr_ms is None and a.te_ms is None and b.tr_ms is None and b.te_ms is None:
        strip = re.compile(_PRE_TEXT.pattern + "|" + _POST_TEXT.pattern)
        na = re.sub(r"[^a-z0-9]+", " ", strip.sub(" ", a.text)).split()
        nb = re.sub(r"[^a-z0-9]+", " ", strip.sub(" ", b.text)).split()
        return bool(na) and na == nb and a.orientation == b.orientation
    return (
        a.scanning == b.scanning
        and a.variant == b.variant
        and a.sequence_name.lower() == b.sequence_name.lower()
        and close(a.tr_ms, b.tr_ms)
        and close(a.te_ms, b.te_ms)
        and close(a.ti_ms, b.ti_ms)
        and a.orientation == b.orientation
        and close(a.slice_mm, b.slice_mm)
    )


_MIN_SLICES = 10  # fewer slices cannot cover a brain: ranked after every fuller series


def _rank(c: _Candidate, partner: Features | None = None) -> tuple[Any, ...]:
    """Preference order; ``partner`` is the chosen T1c when ranking T1 candidates."""
    slice_mm = c.f.slice_mm if c.f.slice_mm is not None else math.inf
    pairs = partner is not None and _same_protocol(c.f, partner)
    return (
        c.by_rule,
        c.f.n_slices >= _MIN_SLICES,
        pairs,
        c.evidence,
        c.f.orientation == "AX",
        -slice_mm,
        c.f.n_slices,
        c.f.when,
    )


def _why_preferred(win: _Candidate, lose: _Candidate, partner: Features | None) -> str:
    a, b = _rank(win, partner), _rank(lose, partner)
    labels = [
        "assigned by an admin rule",
        f"covers a volume ({win.f.n_slices} slices; fewer than {_MIN_SLICES} is a partial "
        "acquisition)",
        "same protocol as the chosen T1c",
        "stronger evidence (conclusive physics)",
        f"axial over {lose.f.orientation or 'unknown orientation'}",
        f"thinner slices ({_fmt(win.f.slice_mm)} mm vs {_fmt(lose.f.slice_mm)} mm)",
        f"more slices ({win.f.n_slices} vs {lose.f.n_slices})",
        "later series",
    ]
    for label, x, y in zip(labels, a, b, strict=True):
        if x != y:
            return label
    return "same rank; first in series order"


def _label(f: Features) -> str:
    return f"series {f.series_number if f.series_number is not None else '?'}"


def assign_roles(series: Sequence[SeriesInfo], rules: Sequence[ClassifyRule]) -> Classification:
    """Decide T1, T1c, T2 and FLAIR for the series of one study (see the module docstring)."""
    feats = []
    unreadable: list[SeriesDecision] = []
    for s in series:
        try:
            feats.append(features(s))
        except Exception as exc:  # a header we cannot interpret loses nothing else
            unreadable.append(
                SeriesDecision(
                    s.series_uid,
                    None,
                    "",
                    None,
                    f"not chosen: header not readable ({type(exc).__name__}: {exc})",
                )
            )
    feats = sorted(
        feats,
        key=lambda f: (f.series_number is None, f.series_number or 0, f.when, f.series_uid),
    )
    reasons: dict[str, str] = {}
    candidates: list[_Candidate] = []
    carried = _carried_over_tag(feats)
    for f in feats:
        if f.modality not in ("MR", "") or (f.sop_class and f.sop_class not in _MR_SOP_CLASSES):
            name = pydicom.uid.UID(f.sop_class).name if f.sop_class else "?"
            reasons[f.series_uid] = (
                f"not chosen: not an MR image (Modality {f.modality or '?'}, SOP class {name})"
            )
            continue
        if "gliomaseg" in f.manufacturer.lower() or "gliomaseg" in f.text:
            reasons[f.series_uid] = "not chosen: our own output"
            continue
        ruled = False
        for i, rule in enumerate(rules):
            why = _rule_matches(rule, f.headers)
            if why is None:
                continue
            name = rule.name or f"#{i + 1}"
            if rule.role == "ignore":
                reasons[f.series_uid] = f"not chosen: admin rule '{name}' ignores it ({why})"
            else:
                role = Role(rule.role)
                candidates.append(
                    _Candidate(
                        f,
                        role,
                        f"{role.value}: admin rule '{name}' ({why})",
                        True,
                        3,
                        "post" if role is Role.T1C else "pre",
                    )
                )
            ruled = True
            break
        if ruled:
            continue
        excluded = _exclusion(f)
        if excluded:
            reasons[f.series_uid] = f"not chosen: {excluded}"
            continue
        phys = _physics(f)
        desc = _from_description(f)
        if (
            phys.conclusive
            and phys.role == "T2"
            and desc.role == "FLAIR"
            and f.tr_ms is not None
            and f.tr_ms >= 4500
        ):
            # No inversion recorded is weaker than a FLAIR name: long TR and TE fit a FLAIR
            # whose IR the headers do not state.
            verdict, evidence = (
                _Verdict(
                    "FLAIR",
                    f"{desc.reason} (headers record no inversion, but {phys.reason[4:]} "
                    "fits a FLAIR)",
                    False,
                ),
                1,
            )
        elif phys.conclusive:
            verdict, evidence = phys, 2
            if desc.role and desc.role != phys.role:
                verdict = _Verdict(
                    phys.role,
                    f"{phys.reason} (description '{f.description}' suggests {desc.role}; "
                    "MR physics wins)",
                    True,
                )
        elif phys.role and desc.role and desc.role != phys.role:
            verdict, evidence = desc, 1
            verdict = _Verdict(
                desc.role, f"{desc.reason} (weak physics hint {phys.reason} overruled)", False
            )
        elif phys.role:
            verdict, evidence = phys, 1
            if desc.role == phys.role:
                verdict = _Verdict(phys.role, f"{phys.reason}; description agrees", False)
        elif desc.role:
            verdict, evidence = desc, 1
            verdict = _Verdict(desc.role, f"{desc.reason} ({phys.reason})", False)
        else:
            why = phys.reason if phys.conclusive or not desc.reason else desc.reason
            if not phys.conclusive and desc.reason and "names no role" in desc.reason:
                why = f"{phys.reason}; {desc.reason}"
            reasons[f.series_uid] = f"not chosen: no T1/T1c/T2/FLAIR evidence: {why}"
            continue
        if verdict.role is None:
            reasons[f.series_uid] = f"not chosen: {verdict.reason}"
            continue
        if verdict.role == "T1":
            role, contrast, note = _t1_contrast(f, carried)
            reason = f"{verdict.reason}; {note}"
            if role is Role.T1C and reason.startswith("T1:"):
                reason = "T1c:" + reason[3:]
            candidates.append(_Candidate(f, role, reason, False, evidence, contrast))
        else:
            role = Role(verdict.role)
            candidates.append(_Candidate(f, role, verdict.reason, False, evidence, ""))

    _infer_post_contrast(candidates)

    chosen: dict[Role, str | None] = {}
    t1c: Features | None = None
    for role in (Role.T1C, Role.T1, Role.T2, Role.FLAIR):
        group = [c for c in candidates if c.role is role]
        if not group:
            chosen[role] = None
            continue
        partner = t1c if role is Role.T1 else None
        best = max(group, key=lambda c: _rank(c, partner))
        if role is Role.T1C:
            t1c = best.f
        chosen[role] = best.f.series_uid
        reasons[best.f.series_uid] = best.reason
        for c in group:
            if c is not best:
                reasons[c.f.series_uid] = (
                    f"not chosen: {c.reason} — {_label(best.f)} preferred "
                    f"({_why_preferred(best, c, partner)})"
                )
    decisions = []
    by_uid = {uid: role for role, uid in chosen.items() if uid is not None}
    for f in feats:
        decisions.append(
            SeriesDecision(
                series_uid=f.series_uid,
                series_number=f.series_number,
                description=f.description,
                role=by_uid.get(f.series_uid),
                reason=reasons.get(f.series_uid, "not chosen"),
            )
        )
    return Classification(
        roles={role: chosen[role] for role in Role}, series=decisions + unreadable
    )


def _carried_over_tag(feats: Sequence[Features]) -> Features | None:
    """The study's first series when a contrast tag says nothing about timing: it is on every
    MR image series, or already on the (strictly) first series acquired, e.g. entered at
    registration and copied into every series."""
    mr = [f for f in feats if f.modality in ("MR", "") and f.sop_class in _MR_SOP_CLASSES | {""}]
    if len(mr) < 2:
        return None
    ordered = sorted(mr, key=lambda f: (f.when[0] or "~", f.when[1]))
    if all(f.contrast_tag for f in mr):
        return ordered[0]
    timed = [f for f in ordered if f.when[0]]
    if len(timed) >= 2 and timed[0].when[0] < timed[1].when[0]:
        first = timed[0]
        if first.contrast_tag and first.before_bolus is not True:
            return first
    return None


def _t1_contrast(f: Features, carried: Features | None) -> tuple[Role, str, str]:
    """(role, "pre" | "post" | "unknown", note) for a T1-weighted series."""
    if f.contrast_tag and f.before_bolus:
        return (
            Role.T1,
            "pre",
            f"pre-contrast: acquired before ContrastBolusStartTime ({f.contrast_tag})",
        )
    if f.contrast_no:
        return Role.T1, "pre", "pre-contrast: ContrastBolusAgentAdministered NO"
    if word := _search(_PRE_TEXT, f.text):
        return Role.T1, "pre", f"pre-contrast: description '{word}'"
    if f.contrast_tag and f.before_bolus is False:
        return Role.T1C, "post", f"post-contrast: {f.contrast_tag}, acquired after the bolus start"
    if f.contrast_tag and carried is None:
        return Role.T1C, "post", f"post-contrast: {f.contrast_tag}"
    if word := _search(_POST_TEXT, f.text):
        return Role.T1C, "post", f"post-contrast: description '{word}'"
    if f.contrast_tag and carried is not None:
        return (
            Role.T1,
            "unknown",
            f"no contrast evidence ({f.contrast_tag} is on every series from the first, "
            f"{_label(carried)}, on: not informative)",
        )
    return Role.T1, "unknown", "no contrast evidence"


def _infer_post_contrast(candidates: list[_Candidate]) -> None:
    """Tie-break: without any contrast evidence, the later of identical T1 protocols is T1c."""
    if any(c.role is Role.T1C for c in candidates):
        return
    t1s = sorted(
        (c for c in candidates if c.role is Role.T1 and not c.by_rule),
        key=lambda c: c.f.when,
    )
    for i, later in enumerate(t1s):
        if later.contrast != "unknown":
            continue
        earlier = next((e for e in t1s[:i] if _same_protocol(e.f, later.f)), None)
        if earlier is None or earlier.f.when == later.f.when:
            continue
        later.role = Role.T1C
        later.contrast = "post"
        note = (
            f"post-contrast by tie-break: later of two identical T1 protocols "
            f"({_label(earlier.f)} before {_label(later.f)}) with no contrast tag"
        )
        later.reason = "T1c:" + later.reason[3:].replace("no contrast evidence", note)
        if earlier.contrast == "unknown":
            earlier.reason = earlier.reason.replace(
                "no contrast evidence",
                f"pre-contrast by tie-break: earlier of two identical T1 protocols "
                f"({_label(later.f)} repeats it later)",
            )


# --------------------------------------------------------------------------- reading


def series_infos_from_dir(path: Path) -> list[SeriesInfo]:
    """Headers of every DICOM series under ``path`` (recursive; non-DICOM files are skipped).

    One representative instance per series (the lowest InstanceNumber), read without pixel
    data; ``n_instances`` counts distinct SOPInstanceUIDs.
    """
    path = Path(path)
    if not path.is_dir():
        raise NotADirectoryError(f"not a folder: {path}")
    reps: dict[str, tuple[int, pydicom.Dataset]] = {}
    sops: dict[str, set[str]] = {}
    skipped = 0
    for file in sorted(_files(path)):
        ds = _read_header(file)
        if ds is None:
            skipped += 1
            continue
        uid = str(_value(ds, "SeriesInstanceUID") or "")
        if not uid:
            skipped += 1
            continue
        number = _value(ds, "InstanceNumber")
        try:
            rank = int(number) if number not in (None, "") else 1 << 30
        except (TypeError, ValueError):
            rank = 1 << 30
        sops.setdefault(uid, set()).add(str(_value(ds, "SOPInstanceUID") or file))
        if uid not in reps or rank < reps[uid][0]:
            reps[uid] = (rank, ds)
    if skipped:
        log.info("classify: skipped non-DICOM or unreadable files", extra={"count": skipped})
    infos = [SeriesInfo(uid, ds, len(sops[uid])) for uid, (_, ds) in reps.items()]
    infos.sort(key=lambda s: (_float(_value(s.headers, "SeriesNumber")) or 0, s.series_uid))
    return infos


def _read_header(file: Path) -> pydicom.Dataset | None:
    """Headers without pixel data; files without preamble/meta (raw datasets, as some exports
    write) are read too when they hold a SOP class and a series UID. None for anything else."""
    try:
        return pydicom.dcmread(file, stop_before_pixels=True)
    except InvalidDicomError:
        pass
    except Exception:
        return None
    try:
        ds = pydicom.dcmread(file, stop_before_pixels=True, force=True)
        if _value(ds, "SOPClassUID") and _value(ds, "SeriesInstanceUID"):
            return ds
    except Exception:
        return None
    return None


def _files(root: Path) -> Iterable[Path]:
    """Regular files under root, following folder links once each (no cycles), no dot-files."""
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith("."):
                path = Path(folder) / name
                if path.is_file():
                    yield path
