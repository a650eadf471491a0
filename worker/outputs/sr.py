"""The measurement report: Comprehensive 3D SR, TID 1500, volumes in mL (pure).

Content: one TID 1411 volumetric group per SEG segment (necrotic core, edema, enhancing tumour),
each referencing its segment of the SEG and holding a Volume (SCT 118565006) in UCUM "ml"; one
TID 1501 group each for the tumour core (labels 1 + 4) and the whole tumour (1 + 2 + 4), which are
unions of segments and so reference no single segment. Every group names the algorithm and model
version (TID 4019); the observation context names the device (gliomaseg, model version).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes

from . import uids
from ._common import REGION_NAMES, OutputsError, Region, copy_patient_study, package_version
from .seg import BRAIN, CATEGORY, SEGMENTS

DEFAULT_SERIES_NUMBER = 902

ML = hd.sr.CodedConcept("ml", "UCUM", "milliliter")
VOLUME = codes.SCT.Volume  # SCT 118565006

#: Region -> SEG segment number (the three regions the SEG holds).
REGION_SEGMENT: dict[Region, int] = {
    Region.NECROTIC: 1,
    Region.EDEMA: 2,
    Region.ENHANCING: 3,
}


def _measurement(value_ml: float, algo: hd.sr.AlgorithmIdentification) -> hd.sr.Measurement:
    return hd.sr.Measurement(
        name=VOLUME,
        value=float(value_ml),
        unit=ML,
        algorithm_id=algo,
        finding_sites=[hd.sr.FindingSite(BRAIN)],
    )


def build_sr(
    volumes_ml: Mapping[str, float],
    seg: pydicom.Dataset,
    datasets: Sequence[pydicom.Dataset],
    *,
    model_name: str = "gliomaseg",
    model_version: str,
    series_number: int = DEFAULT_SERIES_NUMBER,
    instance_uid_seed: str | None = None,
) -> pydicom.Dataset:
    """A TID 1500 Measurement Report of the region volumes, referencing the SEG's segments.

    Parameters
    ----------
    volumes_ml
        What :func:`worker.outputs.volumes.region_volumes_ml` returns: "necrotic", "edema",
        "enhancing", "tumor_core", "whole_tumor" (all five required).
    seg
        The SEG built by :func:`worker.outputs.seg.build_seg` for the same source.
    datasets
        The source instances (headers suffice).
    """
    missing = [r.value for r in Region if r.value not in volumes_ml]
    if missing:
        raise OutputsError(f"volumes_ml must hold every region; missing {missing}")
    bad = {k: v for k, v in volumes_ml.items() if not float(v) >= 0}
    if bad:
        raise OutputsError(f"volumes must be finite and >= 0 mL; got {bad}")
    if not datasets:
        raise OutputsError("no source instances given")
    source = datasets[0]
    if str(seg.StudyInstanceUID) != str(source.StudyInstanceUID):
        raise OutputsError("the SEG must belong to the source study; its StudyInstanceUID differs")
    src_series = str(source.SeriesInstanceUID)
    seed = src_series if instance_uid_seed is None else f"{src_series}|{instance_uid_seed}"
    version = str(model_version)

    algo = hd.sr.AlgorithmIdentification(name=model_name, version=version)
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uids.derived_uid("gliomaseg-device", model_name, version),
            name=model_name[:64],
            manufacturer_name="gliomaseg",
            model_name=version[:64],
        ),
    )
    groups: list = []
    segment_types = {number: prop for number, _, _, prop in SEGMENTS}
    for region, number in REGION_SEGMENT.items():
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=uids.derived_uid(seed, version, uids.KIND_SR, "tracking", region.value),
                    identifier=REGION_NAMES[region],
                ),
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=str(seg.SOPClassUID),
                    sop_instance_uid=str(seg.SOPInstanceUID),
                    segment_number=number,
                    source_series=hd.sr.SourceSeriesForSegmentation(src_series),
                ),
                finding_type=segment_types[number],
                finding_category=CATEGORY,
                algorithm_id=algo,
                finding_sites=[hd.sr.FindingSite(BRAIN)],
                measurements=[_measurement(volumes_ml[region.value], algo)],
            )
        )
    for region in (Region.TUMOR_CORE, Region.WHOLE_TUMOR):
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=uids.derived_uid(seed, version, uids.KIND_SR, "tracking", region.value),
                    identifier=REGION_NAMES[region],
                ),
                finding_type=codes.SCT.Neoplasm,
                finding_category=CATEGORY,
                algorithm_id=algo,
                finding_sites=[hd.sr.FindingSite(BRAIN)],
                measurements=[_measurement(volumes_ml[region.value], algo)],
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.LN.BrainMRI,
        imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport,
    )
    try:
        sr = hd.sr.Comprehensive3DSR(
            evidence=[seg],
            content=report,
            series_instance_uid=uids.series_uid(seed, version, uids.KIND_SR),
            series_number=series_number,
            sop_instance_uid=uids.instance_uid(seed, version, uids.KIND_SR, 0),
            instance_number=1,
            manufacturer="gliomaseg",
            is_complete=True,
            is_final=False,
            is_verified=False,
            series_description=f"gliomaseg tumour volumes {version} (research)"[:64],
            manufacturer_model_name=model_name[:64],
            software_versions=[package_version(), version],
        )
    except (ValueError, TypeError) as exc:
        raise OutputsError(f"measurement SR could not be built: {exc}") from exc
    copy_patient_study(source, sr)
    return sr


def volumes_from_sr(sr: pydicom.Dataset) -> dict[str, float]:
    """Read the volumes back (for tests and `gliomaseg job`): region name -> mL."""
    parsed = hd.sr.Comprehensive3DSR.from_dataset(sr, copy=True)
    by_name = {REGION_NAMES[r]: r.value for r in Region}
    out: dict[str, float] = {}
    content: Any = parsed.content  # a MeasurementReport once parsed
    groups = list(content.get_volumetric_roi_measurement_groups()) + list(
        content.get_image_measurement_groups()
    )
    for group in groups:
        region = by_name.get(str(group.tracking_identifier))
        if region is None:
            continue
        for m in group.get_measurements(name=VOLUME):
            out[region] = float(m.value)
    return out
