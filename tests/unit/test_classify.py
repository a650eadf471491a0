"""Sequence classification: physics, descriptions in many vendors' styles, rules, tie-breaks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from config.settings import ClassifyRule
from dicom_node import studygen
from dicom_node.classify import (
    Classification,
    Role,
    SeriesInfo,
    assign_roles,
    series_infos_from_dir,
)

MR = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
AXIAL = [1, 0, 0, 0, 1, 0]
SAGITTAL = [0, 1, 0, 0, 0, -1]


def info(
    description: str = "",
    *,
    number: int = 1,
    time: str = "090000",
    n: int = 24,
    orientation: list[float] | None = None,
    **tags: object,
) -> SeriesInfo:
    """A header-only series (one representative instance)."""
    ds = Dataset()
    ds.SOPClassUID = MR
    ds.Modality = "MR"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = number
    ds.SeriesDate = "20240314"
    ds.SeriesTime = time
    ds.SeriesDescription = description
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.ImageOrientationPatient = orientation or AXIAL
    ds.SliceThickness = "5"
    for keyword, value in tags.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return SeriesInfo(ds.SeriesInstanceUID, ds, n)


def t1se(description: str = "", **kw: object) -> SeriesInfo:
    return info(description, ScanningSequence="SE", RepetitionTime="550", EchoTime="11", **kw)


def t2tse(description: str = "", **kw: object) -> SeriesInfo:
    return info(description, ScanningSequence="SE", RepetitionTime="5000", EchoTime="98", **kw)


def flair(description: str = "", **kw: object) -> SeriesInfo:
    return info(
        description,
        ScanningSequence=["SE", "IR"],
        RepetitionTime="9000",
        EchoTime="89",
        InversionTime="2500",
        **kw,
    )


def roles_of(result: Classification) -> dict[str, str | None]:
    return {role.value: uid for role, uid in result.roles.items()}


def role_of(result: Classification, s: SeriesInfo) -> Role | None:
    return result.decision(s.series_uid).role


# --------------------------------------------------------------------------- physics


def test_physics_picks_the_four_roles_with_reasons() -> None:
    a, b, c, d = (
        t1se("", number=2),
        t2tse("", number=3),
        flair("", number=4),
        t1se("", number=9, time="093000", ContrastBolusAgent="GADAVIST"),
    )
    result = assign_roles([a, b, c, d], [])
    assert roles_of(result) == {
        "T1": a.series_uid,
        "T1c": d.series_uid,
        "T2": b.series_uid,
        "FLAIR": c.series_uid,
    }
    assert result.missing() == []
    reasons = {x.series_uid: x.reason for x in result.series}
    assert reasons[c.series_uid] == "FLAIR: IR with TI 2500 ms, TR 9000 ms, TE 89 ms"
    assert "ContrastBolusAgent 'GADAVIST'" in reasons[d.series_uid]
    assert reasons[a.series_uid].startswith("T1: spin echo, TR 550 ms, TE 11 ms")


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        # MPRAGE (Siemens), IR-FSPGR / BRAVO (GE: GR with TI only), T1-FLAIR
        (
            dict(
                ScanningSequence=["GR", "IR"],
                RepetitionTime="2300",
                EchoTime="2.98",
                InversionTime="900",
            ),
            "T1",
        ),
        (
            dict(ScanningSequence="GR", RepetitionTime="8.9", EchoTime="3.2", InversionTime="450"),
            "T1",
        ),
        (
            dict(
                ScanningSequence=["SE", "IR"],
                RepetitionTime="2000",
                EchoTime="9",
                InversionTime="860",
            ),
            "T1",
        ),
        # 3D spoiled gradient echo without IR, 2D FLASH T1
        (dict(ScanningSequence="GR", RepetitionTime="20", EchoTime="4.5"), "T1"),
        (dict(ScanningSequence="GR", RepetitionTime="250", EchoTime="2.5"), "T1"),
        # 3D FLAIR (SPACE/CUBE/VISTA: long TE), 2D FLAIR at 1.5 T
        (
            dict(
                ScanningSequence=["SE", "IR"],
                RepetitionTime="5000",
                EchoTime="390",
                InversionTime="1800",
            ),
            "FLAIR",
        ),
        (
            dict(
                ScanningSequence="IR", RepetitionTime="4800", EchoTime="387", InversionTime="1650"
            ),
            "FLAIR",
        ),
        (
            dict(
                ScanningSequence=["SE", "IR"],
                RepetitionTime="8000",
                EchoTime="120",
                InversionTime="2000",
            ),
            "FLAIR",
        ),
        # T2 TSE / 3D T2 SPACE
        (dict(ScanningSequence="SE", RepetitionTime="3200", EchoTime="400"), "T2"),
        (dict(ScanningSequence="SE", RepetitionTime="4000", EchoTime="85"), "T2"),
        # no role: PD, STIR, T2* GRE
        (dict(ScanningSequence="SE", RepetitionTime="4000", EchoTime="12"), None),
        (
            dict(
                ScanningSequence=["SE", "IR"],
                RepetitionTime="4000",
                EchoTime="40",
                InversionTime="150",
            ),
            None,
        ),
        (dict(ScanningSequence="GR", RepetitionTime="600", EchoTime="20"), None),
    ],
)
def test_physics_table(tags: dict[str, object], expected: str | None) -> None:
    s = info("", **tags)
    result = assign_roles([s], [])
    role = role_of(result, s)
    assert (role.value if role else None) == expected, result.series[0].reason


# --------------------------------------------------------------------------- descriptions

# (description, expected role) with no TR/TE/TI at all: only the name tells.
NAMES = [
    # Siemens
    ("t1_se_tra", "T1"),
    ("t1_se_tra_KM", "T1c"),
    ("t1_mprage_sag_p2_iso", "T1"),
    ("t1_mprage_tra_iso_KM", "T1c"),
    ("t2_tse_tra", "T2"),
    ("t2_blade_tra", "T2"),
    ("t2_tirm_tra_dark-fluid", "FLAIR"),
    ("t2_spc_da-fl_sag_p2_iso", "FLAIR"),
    ("T1_AX_SE", "T1"),
    ("MRHR_T1_AX_POST_GAD_SE", "T1c"),
    ("MRHR_T2_AX_SE", "T2"),
    ("MRHR_FLAIR_AX_SE_IR", "FLAIR"),
    ("t1_fl2d_tra_nativ", "T1"),
    # GE
    ("Ax T1 SE", "T1"),
    ("Ax T1 +C", "T1c"),
    ("AX T1 POST", "T1c"),
    ("Sag T1 FLAIR", "T1"),
    ("AX T2 FLAIR", "FLAIR"),
    ("AX FLAIR", "FLAIR"),
    ("Ax T2 FSE", "T2"),
    ("Ax T2 PROPELLER", "T2"),
    ("3D BRAVO", "T1"),
    ("Ax 3D BRAVO +C", "T1c"),
    ("AX T1 PRE", "T1"),
    # Philips
    ("T1W_SE", "T1"),
    ("T1W_SE+C", "T1c"),
    ("T1W_3D_TFE", "T1"),
    ("sT1W_3D_TFE+Gd", "T1c"),
    ("T2W_TSE", "T2"),
    ("FLAIR_LongTR", "FLAIR"),
    ("3D_FLAIR", "FLAIR"),
    # Hitachi / Canon / others
    ("T1WI_SE_AX", "T1"),
    ("T1WI_SE_AX_Gd", "T1c"),
    ("T2WI_FSE_AX", "T2"),
    ("FLAIR_AX", "FLAIR"),
    ("T1 C+", "T1c"),
    ("T1CE", "T1c"),
    ("T1 KM", "T1c"),
    ("T1 MDC", "T1c"),
    ("POST T1 AX", "T1c"),
    ("T1 POST-GAD", "T1c"),
    ("T1 w/ contrast", "T1c"),
    ("T1 with contrast", "T1c"),
    ("T1 PRE-GAD", "T1"),
    ("T1 non contrast", "T1"),
    ("T1 W/O", "T1"),
    ("T1 pre contrast", "T1"),
    ("T1 non-enhanced", "T1"),
    ("3DT1 GADOVIST", "T1c"),
    ("MPRAGE", "T1"),
    ("sT2W_TSE", "T2"),
    ("eT1W_SE", "T1"),
    ("T1 vor KM", "T1"),
    ("T1 nach KM", "T1c"),
    ("T1 ohne KM", "T1"),
    ("AX T1 FLAIR +C", "T1c"),
    ("Sag CUBE T1 +C", "T1c"),
    ("Sag CUBE FLAIR", "FLAIR"),
    ("VISTA_FLAIR", "FLAIR"),
    ("t1_vibe_fs_tra_KM", "T1c"),
    ("T1W_TSE_Gd", "T1c"),
    ("Axial T1 Spin Echo Post Gadolinium", "T1c"),
    ("T2 FLAIR POST", "FLAIR"),
    ("T1_SE_AX_CE", "T1c"),
    ("T2W_FSE_AX", "T2"),
    ("t2_tse_tra_320_p2", "T2"),
    # never chosen
    ("localizer", None),
    ("3-pl loc", None),
    ("AAHead_Scout_32ch-head-coil", None),
    ("Survey", None),
    ("Ax DWI 1000b", None),
    ("ep2d_diff_3scan_trace_p2", None),
    ("ep2d_diff_3scan_trace_p2_ADC", None),
    ("Apparent Diffusion Coefficient (mm2/s)", None),
    ("dADC", None),
    ("DTI_FA", None),
    ("ep2d_perf", None),
    ("Ax DSC Perfusion", None),
    ("T1 DCE", None),
    ("SWI_Images", None),
    ("Ax SWAN", None),
    ("Pha_Images", None),
    ("mIP_Images(SW)", None),
    ("ep2d_bold_rest", None),
    ("T1 MPR AX", None),
    ("T1 +C SUB", None),
    ("tof_3d_multi-slab", None),
    ("PD_TSE", None),
    ("T2*_GRE_tra", None),
    ("AX GRE", None),
    ("T2_FFE", None),
    ("T2 GRE", None),
    ("T1 dynamic", None),
    ("DISCO", None),
    ("AX DIFFUSION", None),
    ("svs_se_135", None),
    ("PDWI_FSE_AX", None),
    ("STIR_COR", None),
]


@pytest.mark.parametrize(("description", "expected"), NAMES)
def test_description_only(description: str, expected: str | None) -> None:
    s = info(description)
    result = assign_roles([s], [])
    role = role_of(result, s)
    assert (role.value if role else None) == expected, result.series[0].reason
    assert result.series[0].reason  # always a reason


def test_physics_wins_over_a_lying_description() -> None:
    fl = flair("t2_tse_tra")  # named T2, physics says FLAIR
    t1f = info(  # named FLAIR, but TI 860 / TE 9: a T1-FLAIR
        "AX FLAIR",
        ScanningSequence=["SE", "IR"],
        RepetitionTime="2000",
        EchoTime="9",
        InversionTime="860",
        number=2,
    )
    result = assign_roles([fl, t1f], [])
    assert role_of(result, fl) is Role.FLAIR
    assert role_of(result, t1f) is Role.T1
    assert "MR physics wins" in result.decision(fl.series_uid).reason


def test_flair_name_without_recorded_inversion_stays_flair() -> None:
    fl = info(
        "Ax T2 FLAIR",
        ScanningSequence="SE",
        RepetitionTime="9000",
        EchoTime="120",
        InversionTime="0",
    )
    t2 = info("Ax T2 FLAIR", ScanningSequence="SE", RepetitionTime="3000", EchoTime="90", number=2)
    result = assign_roles([fl, t2], [])
    assert role_of(result, fl) is Role.FLAIR
    assert "headers record no inversion" in result.decision(fl.series_uid).reason
    assert role_of(result, t2) is Role.T2  # TR 3000 cannot be a FLAIR: physics wins


def test_description_naming_t1_on_a_diffusion_series_is_not_chosen() -> None:
    dwi = info("t1_se_tra", ScanningSequence="EP", RepetitionTime="5000", EchoTime="90")
    b = info(
        "T1W_SE",
        ScanningSequence="SE",
        RepetitionTime="3000",
        EchoTime="80",
        DiffusionBValue=1000.0,
        number=2,
    )
    result = assign_roles([dwi, b], [])
    assert result.roles[Role.T1] is None
    assert "echo-planar" in result.decision(dwi.series_uid).reason
    assert "b-value 1000" in result.decision(b.series_uid).reason


@pytest.mark.parametrize(
    ("image_type", "word"),
    [
        (["DERIVED", "SECONDARY", "MPR"], "MPR"),
        (["DERIVED", "PRIMARY", "DIFFUSION", "ADC"], "diffusion"),
        (["ORIGINAL", "PRIMARY", "LOCALIZER"], "localizer"),
        (["DERIVED", "SECONDARY"], "derived"),
        (["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"], "mosaic"),
        (["ORIGINAL", "PRIMARY", "P", "ND"], "phase"),
        (["DERIVED", "PRIMARY", "MIP"], "MIP"),
    ],
)
def test_image_type_exclusions_beat_perfect_t1_physics(image_type: list[str], word: str) -> None:
    s = t1se("T1 SE AX", ImageType=image_type, ContrastBolusAgent="Gadolinium")
    result = assign_roles([s], [])
    assert result.roles[Role.T1C] is None and result.roles[Role.T1] is None
    assert word.lower() in result.series[0].reason.lower()
    assert result.series[0].reason.startswith("not chosen")


def test_dynamic_series_is_never_chosen() -> None:
    dce = t1se("Ax T1 SE", NumberOfTemporalPositions=40, ContrastBolusAgent="Gd")
    result = assign_roles([dce], [])
    assert result.roles[Role.T1C] is None
    assert "40 temporal positions" in result.series[0].reason


def test_our_own_outputs_are_never_chosen_even_by_a_rule() -> None:
    seg = info(
        "GLIOMASEG tumour segmentation", Modality="SEG", SOPClassUID="1.2.840.10008.5.1.4.1.1.66"
    )
    sc = info("Ax T1 +C", SOPClassUID="1.2.840.10008.5.1.4.1.1.7", Modality="OT", number=2)
    sr = info("T1", Modality="SR", SOPClassUID="1.2.840.10008.5.1.4.1.1.88.33", number=3)
    rule = ClassifyRule(name="all", role="T1c", match={"SeriesDescription": "."})
    result = assign_roles([seg, sc, sr], [rule])
    assert result.missing() == list(Role)
    assert all("not an MR image" in d.reason for d in result.series)


# --------------------------------------------------------------------------- contrast tie-break


def test_repeated_identical_t1_without_contrast_tag_later_is_t1c() -> None:
    pre = t1se("t1_se_tra", number=3, time="091000")
    post = t1se("t1_se_tra", number=9, time="093500")
    result = assign_roles([post, pre], [])
    assert result.roles[Role.T1] == pre.series_uid
    assert result.roles[Role.T1C] == post.series_uid
    reason = result.decision(post.series_uid).reason
    assert "later of two identical T1 protocols" in reason
    assert "earlier of two identical" in result.decision(pre.series_uid).reason


def test_identical_t1s_with_a_contrast_tag_use_the_tag_not_the_order() -> None:
    # the earlier carries the tag (e.g. series numbers reassigned): the tag decides
    loc = info("localizer", number=1, time="090000")
    a = t1se("T1", number=3, time="091000", ContrastBolusAgent="Dotarem")
    b = t1se("T1", number=9, time="093500")
    result = assign_roles([loc, a, b], [])
    assert result.roles[Role.T1C] == a.series_uid
    assert result.roles[Role.T1] == b.series_uid


def test_contrast_tag_carried_over_from_registration_is_not_informative() -> None:
    """Every series, the localizer included, carries the agent: order and names decide."""
    tag = {"ContrastBolusAgent": "GADOVIST"}
    loc = info("localizer", number=1, time="090000", **tag)
    pre = t1se("t1_se_tra", number=3, time="091000", **tag)
    t2 = t2tse("t2_tse_tra", number=4, time="091500", **tag)
    post = t1se("t1_se_tra", number=9, time="093500", **tag)
    result = assign_roles([loc, pre, t2, post], [])
    assert result.roles[Role.T1] == pre.series_uid
    assert result.roles[Role.T1C] == post.series_uid
    assert "not informative" in result.decision(pre.series_uid).reason
    # a pre-contrast word in the description also beats a carried-over tag
    named = t1se("T1 SE AX PRE", number=3, time="091000", **tag)
    result = assign_roles([loc, named, t2], [])
    assert result.roles[Role.T1] == named.series_uid and result.roles[Role.T1C] is None


def test_contrast_bolus_start_time_splits_pre_and_post() -> None:
    tag = {"ContrastBolusAgent": "Gadolinium", "ContrastBolusStartTime": "092500"}
    loc = info("3-plane loc", number=1, time="090000", AcquisitionTime="090000", **tag)
    pre = t1se("Ax T1 SE", number=3, time="091000", AcquisitionTime="091012", **tag)
    post = t1se("Ax T1 SE", number=8, time="093000", AcquisitionTime="093010", **tag)
    result = assign_roles([loc, pre, post], [])
    assert result.roles[Role.T1] == pre.series_uid
    assert result.roles[Role.T1C] == post.series_uid
    assert "acquired before ContrastBolusStartTime" in result.decision(pre.series_uid).reason
    assert "after the bolus start" in result.decision(post.series_uid).reason


def test_different_t1_protocols_do_not_infer_contrast() -> None:
    se = t1se("T1 SE", number=3, time="091000")
    mprage = info(
        "T1 3D",
        number=9,
        time="093500",
        ScanningSequence=["GR", "IR"],
        RepetitionTime="2300",
        EchoTime="3",
        InversionTime="900",
    )
    result = assign_roles([se, mprage], [])
    assert result.roles[Role.T1C] is None
    assert Role.T1C in result.missing()


def test_enhanced_multiframe_is_read_inside_the_functional_groups() -> None:
    def enhanced(
        desc: str, te: float, tr: float, ti: float | None, contrast: str | None
    ) -> SeriesInfo:
        s = info(
            desc,
            SOPClassUID=ENHANCED_MR,
            NumberOfFrames=20,
            n=1,
            ImageType=["ORIGINAL", "PRIMARY", "VOLUME", "NONE"],
            ImageOrientationPatient=None,
            SliceThickness=None,
        )
        shared = Dataset()
        timing = Dataset()
        timing.RepetitionTime = tr
        timing.FlipAngle = 90
        shared.MRTimingAndRelatedParametersSequence = [timing]
        echo = Dataset()
        echo.EffectiveEchoTime = te
        shared.MREchoSequence = [echo]
        modifier = Dataset()
        modifier.InversionRecovery = "YES" if ti else "NO"
        if ti:
            modifier.InversionTimes = [ti]
        shared.MRModifierSequence = [modifier]
        frame_type = Dataset()
        frame_type.FrameType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
        frame_type.EchoPulseSequence = "SPIN"
        shared.MRImageFrameTypeSequence = [frame_type]
        orient = Dataset()
        orient.ImageOrientationPatient = AXIAL
        shared.PlaneOrientationSequence = [orient]
        measures = Dataset()
        measures.SliceThickness = 3
        measures.PixelSpacing = [1, 1]
        shared.PixelMeasuresSequence = [measures]
        s.headers.SharedFunctionalGroupsSequence = [shared]
        frame = Dataset()
        if contrast:
            usage = Dataset()
            usage.ContrastBolusAgentNumber = 1
            usage.ContrastBolusAgentAdministered = contrast
            frame.ContrastBolusUsageSequence = [usage]
        s.headers.PerFrameFunctionalGroupsSequence = [frame]
        return s

    fl = enhanced("", 100, 9000, 2500, None)
    t1 = enhanced("", 10, 500, None, "NO")
    t1c = enhanced("", 10, 500, None, "YES")
    result = assign_roles([fl, t1, t1c], [])
    assert role_of(result, fl) is Role.FLAIR
    assert role_of(result, t1) is Role.T1
    assert role_of(result, t1c) is Role.T1C
    assert "ContrastBolusAgentAdministered YES" in result.decision(t1c.series_uid).reason


# --------------------------------------------------------------------------- tie-breaks


def test_tie_break_prefers_axial_then_thinner_then_more_slices_then_later() -> None:
    sag = t2tse("T2 sag", number=2, orientation=SAGITTAL, SliceThickness="1")
    ax5 = t2tse("T2 ax", number=3, SliceThickness="5")
    result = assign_roles([sag, ax5], [])
    assert result.roles[Role.T2] == ax5.series_uid
    assert "axial over SAG" in result.decision(sag.series_uid).reason

    ax3 = t2tse("T2 ax thin", number=4, SliceThickness="3")
    assert assign_roles([ax5, ax3], []).roles[Role.T2] == ax3.series_uid

    many = t2tse("T2", number=5, n=40)
    few = t2tse("T2", number=6, n=20)
    result = assign_roles([many, few], [])
    assert result.roles[Role.T2] == many.series_uid
    assert "more slices (40 vs 20)" in result.decision(few.series_uid).reason

    partial = t2tse("T2 ax thin", number=7, SliceThickness="1", n=3)
    result = assign_roles([ax5, partial], [])
    assert result.roles[Role.T2] == ax5.series_uid
    assert "covers a volume" in result.decision(partial.series_uid).reason

    early = t2tse("T2", number=5, time="090000")
    late = t2tse("T2", number=6, time="091500")
    assert assign_roles([late, early], []).roles[Role.T2] == late.series_uid


# --------------------------------------------------------------------------- admin rules


def test_admin_rules_override_first_match_wins() -> None:
    odd = info("BRAIN_SEQ_A", number=5)  # no physics, no known name
    t2 = t2tse("t2_tse_tra", number=6)
    t2_other = t2tse("t2_tse_cor_custom", number=700)
    fl = flair("t2_tirm_tra_dark-fluid", number=8)
    rules = [
        ClassifyRule(name="site T1c", role="T1c", match={"SeriesDescription": r"^brain_seq_a$"}),
        ClassifyRule(name="research range", role="ignore", ranges={"SeriesNumber": (600, None)}),
        ClassifyRule(name="custom FLAIR", role="FLAIR", match={"SeriesDescription": "t2_tse"}),
        ClassifyRule(name="never reached", role="T1", match={"SeriesDescription": "t2_tse"}),
    ]
    result = assign_roles([odd, t2, t2_other, fl], rules)
    assert result.roles[Role.T1C] == odd.series_uid
    assert "admin rule 'site T1c'" in result.decision(odd.series_uid).reason
    assert role_of(result, t2_other) is None
    assert "admin rule 'research range' ignores it" in result.decision(t2_other.series_uid).reason
    # the rule makes the TSE a FLAIR, beating the physics FLAIR
    assert result.roles[Role.FLAIR] == t2.series_uid
    assert result.roles[Role.T2] is None
    assert "assigned by an admin rule" in result.decision(fl.series_uid).reason


def test_admin_rule_needs_every_condition_and_the_keyword() -> None:
    s = t2tse("t2_tse_tra", number=4)
    rules = [
        ClassifyRule(
            role="ignore", match={"SeriesDescription": "t2"}, ranges={"SeriesNumber": (5, 9)}
        ),
        ClassifyRule(role="ignore", match={"ProtocolName": "t2"}),  # keyword absent
        ClassifyRule(role="ignore", ranges={"EchoTime": (90, 100)}),
    ]
    result = assign_roles([s], rules)
    assert role_of(result, s) is None
    assert "rule '#3' ignores it (EchoTime 98 in [90, 100])" in result.series[0].reason
    assert assign_roles([s], rules[:2]).roles[Role.T2] == s.series_uid


# --------------------------------------------------------------------------- studies from studygen


def _cube(seed: int, shape: tuple[int, int, int] = (12, 10, 6)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 800, size=shape).astype(np.int16)


AFFINE = np.diag([-1.0, -1.0, 3.0, 1.0])
ALL_KINDS = ("LOCALIZER", "T1", "T2", "FLAIR", "PD", "DWI", "ADC", "SWI", "T1c", "T1c_MPR")


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, studygen.StudyWritten]:
    root = tmp_path_factory.mktemp("studies")
    out = {}
    for i, vendor in enumerate(studygen.VENDORS):
        volumes = {k: (_cube(i * 20 + j), AFFINE) for j, k in enumerate(ALL_KINDS)}
        out[vendor] = studygen.write_study(volumes, root / vendor, vendor=vendor)
    volumes = {k: (_cube(99), AFFINE) for k in ("T1", "T1c", "T2", "FLAIR", "T1_FLAIR")}
    volumes = {k: (_cube(50 + j, (12, 10, 16)), AFFINE) for j, k in enumerate(ALL_KINDS)}
    out["oblique_thick"] = studygen.write_study(
        volumes, root / "oblique", vendor="ge", oblique_deg=20, slice_mm=6
    )
    out["mprage"] = studygen.write_study(
        volumes, root / "mprage", vendor="ge", t1_technique="mprage"
    )
    return out


@pytest.mark.parametrize("vendor", [*studygen.VENDORS, "mprage", "oblique_thick"])
def test_studygen_vendor_studies_are_classified(
    studies: dict[str, studygen.StudyWritten], vendor: str, tmp_path: Path
) -> None:
    study = studies[vendor]
    root = study.series["T1"].paths[0].parent.parent
    result = assign_roles(series_infos_from_dir(root), [])
    expected = {role: study.series[role].series_uid for role in ("T1", "T1c", "T2", "FLAIR")}
    assert roles_of(result) == expected, "\n".join(d.reason for d in result.series)
    chosen = set(expected.values())
    for key, written in study.series.items():
        d = result.decision(written.series_uid)
        if written.series_uid not in chosen:
            assert d.role is None and d.reason.startswith("not chosen"), (key, d.reason)


def test_studygen_study_without_contrast_tags_uses_the_description(tmp_path: Path) -> None:
    volumes = {k: (_cube(5), AFFINE) for k in ("T1", "T1c", "T2", "FLAIR")}
    study = studygen.write_study(volumes, tmp_path, vendor="philips", contrast_tags=False)
    result = assign_roles(series_infos_from_dir(tmp_path), [])
    assert result.roles[Role.T1C] == study.series["T1c"].series_uid
    assert "description '+c'" in result.decision(study.series["T1c"].series_uid).reason


def test_studygen_repeated_t1_same_name_no_tag(tmp_path: Path) -> None:
    volumes = {"pre": (_cube(1), AFFINE), "post": (_cube(2), AFFINE), "T2": (_cube(3), AFFINE)}
    study = studygen.write_study(
        volumes,
        tmp_path,
        vendor="siemens",
        kinds={"pre": "T1", "post": "T1c"},
        descriptions={"pre": "t1_se_tra", "post": "t1_se_tra"},
        contrast_tags=False,
    )
    result = assign_roles(series_infos_from_dir(tmp_path), [])
    assert result.roles[Role.T1] == study.series["pre"].series_uid
    assert result.roles[Role.T1C] == study.series["post"].series_uid
    assert result.missing() == [Role.FLAIR]


def test_missing_flair(tmp_path: Path) -> None:
    volumes = {k: (_cube(7), AFFINE) for k in ("LOCALIZER", "T1", "T1c", "T2", "DWI", "ADC")}
    studygen.write_study(volumes, tmp_path, vendor="ge")
    result = assign_roles(series_infos_from_dir(tmp_path), [])
    assert result.missing() == [Role.FLAIR]
    assert result.roles[Role.FLAIR] is None


# --------------------------------------------------------------------------- reading and CLI


def test_series_infos_skip_non_dicom_and_count_instances(
    studies: dict[str, studygen.StudyWritten], tmp_path: Path
) -> None:
    study = studies["hitachi"]
    root = study.series["T1"].paths[0].parent.parent
    infos = series_infos_from_dir(root)
    assert len(infos) == len(study.series)
    by_uid = {s.series_uid: s for s in infos}
    t1 = study.series["T1"]
    assert by_uid[t1.series_uid].n_instances == len(t1.paths)
    assert "PixelData" not in by_uid[t1.series_uid].headers
    assert by_uid[t1.series_uid].headers.InstanceNumber == 1
    raw = pydicom.dcmread(t1.paths[0])  # a dataset without preamble and meta (some exports)
    raw.preamble = None
    raw.file_meta = pydicom.dataset.FileMetaDataset()
    pydicom.dcmwrite(tmp_path / "raw", raw, enforce_file_format=False, implicit_vr=True)
    (raw_info,) = series_infos_from_dir(tmp_path)
    assert raw_info.series_uid == t1.series_uid
    (tmp_path / "raw").unlink()
    (tmp_path / "README.txt").write_text("not dicom")
    (tmp_path / "noise.bin").write_bytes(bytes(range(256)) * 40)
    (tmp_path / "trunc.dcm").write_bytes(t1.paths[0].read_bytes()[:200])
    assert series_infos_from_dir(tmp_path) == []
    with pytest.raises(NotADirectoryError):
        series_infos_from_dir(tmp_path / "README.txt")


def test_cli_json_and_text(studies: dict[str, studygen.StudyWritten]) -> None:
    from gliomaseg.cli import cli

    study = studies["siemens"]
    root = study.series["T1"].paths[0].parent.parent
    runner = CliRunner()
    res = runner.invoke(cli, ["classify", str(root), "--json"], obj={})
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert set(data) == {"roles", "series"}
    assert list(data["roles"]) == ["T1", "T1c", "T2", "FLAIR"]
    assert data["roles"]["FLAIR"] == study.series["FLAIR"].series_uid
    assert len(data["series"]) == len(study.series)
    for entry in data["series"]:
        assert set(entry) == {"series_uid", "series_number", "description", "role", "reason"}
        assert entry["reason"]
    assert {e["role"] for e in data["series"]} == {None, "T1", "T1c", "T2", "FLAIR"}

    res = runner.invoke(cli, ["classify", str(root)], obj={})
    assert res.exit_code == 0, res.output
    assert "t2_tirm_tra_dark-fluid" in res.stdout
    assert "not chosen: localizer" in res.stdout


def test_cli_empty_folder_exits_1(tmp_path: Path) -> None:
    from gliomaseg.cli import cli

    res = CliRunner().invoke(cli, ["classify", str(tmp_path)], obj={})
    assert res.exit_code == 1
    assert "no DICOM series" in res.output


def test_malformed_header_values_do_not_crash() -> None:
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    s = info("T1", SeriesNumber=None)
    for keyword, raw in (
        ("RepetitionTime", b"abc "),
        ("EchoTime", b"1.2.3."),
        ("ImageOrientationPatient", b"x\\y"),
    ):
        tag = Tag(keyword)
        s.headers._dict[tag] = RawDataElement(tag, "DS", len(raw), raw, 0, False, True)
    result = assign_roles([s], [])
    assert result.series[0].series_number is None
    assert result.roles[Role.T1] == s.series_uid  # the description still tells
    assert "TR ? ms" in result.series[0].reason


def test_cli_applies_admin_rules_from_the_toml_file(
    studies: dict[str, studygen.StudyWritten], tmp_path: Path
) -> None:
    from gliomaseg.cli import cli

    study = studies["ge"]
    root = study.series["T1"].paths[0].parent.parent
    config = tmp_path / "gliomaseg.toml"
    config.write_text(
        "[[classify.rules]]\n"
        'name = "FLAIR by number"\n'
        'role = "ignore"\n'
        'match = { SeriesDescription = "flair" }\n'
        "ranges = { SeriesNumber = [1, 99] }\n"
    )
    res = CliRunner().invoke(
        cli, ["--config", str(config), "classify", str(root), "--json"], obj={}
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["roles"]["FLAIR"] is None
    flair_uid = study.series["FLAIR"].series_uid
    (entry,) = [e for e in data["series"] if e["series_uid"] == flair_uid]
    assert entry["reason"].startswith("not chosen: admin rule 'FLAIR by number' ignores it")
