"""The DICOM Segmentation (BINARY, highdicom) of the native labels (pure).

Segments: 1 necrotic / non-enhancing core (label 1, SCT 6574001 Necrosis), 2 edema (label 2,
SCT 79654002 Edema), 3 enhancing tumour (label 4, NCIt C113842 Enhancing Lesion); category SCT
49755003 Morphologically Abnormal Structure; anatomic region SCT 12738006 Brain; algorithm type
AUTOMATIC with the algorithm's name, model version and family (Artificial Intelligence).

Empty frames are omitted. An empty prediction (no tumour) still gives a valid SEG: the three
segments are described and highdicom then writes every (empty) frame, since a SEG needs at least
one; 1-bit frames keep that small (155 x 240 x 240 x 3 segments: about 3.3 MB). The PACS thus shows
that the study was processed and nothing was found; the SR says 0 mL.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from . import uids
from ._common import (
    LABEL_EDEMA,
    LABEL_ENHANCING,
    LABEL_NECROTIC,
    LABEL_RGB,
    NativeLabelsLike,
    OutputsError,
    check_labels,
    copy_patient_study,
    package_version,
    slice_geometry,
    source_series_uid,
)

DEFAULT_SERIES_NUMBER = 901

CATEGORY = codes.SCT.MorphologicallyAbnormalStructure  # SCT 49755003
BRAIN = codes.SCT.Brain  # SCT 12738006
NECROSIS = hd.sr.CodedConcept("6574001", "SCT", "Necrosis")
EDEMA = hd.sr.CodedConcept("79654002", "SCT", "Edema")
ENHANCING_LESION = hd.sr.CodedConcept("C113842", "NCIt", "Enhancing Lesion")


#: (segment number, label value, segment label, property type). Segment numbers are 1..3; the
#: label value 4 (BraTS enhancing) is segment 3.
SEGMENTS: tuple[tuple[int, int, str, hd.sr.CodedConcept], ...] = (
    (1, LABEL_NECROTIC, "Necrotic core", NECROSIS),
    (2, LABEL_EDEMA, "Edema", EDEMA),
    (3, LABEL_ENHANCING, "Enhancing tumour", ENHANCING_LESION),
)

#: segment number -> BraTS label value (what a reader maps back to).
SEGMENT_TO_LABEL: dict[int, int] = {number: label for number, label, _, _ in SEGMENTS}


def algorithm_identification(
    model_name: str, model_version: str
) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=model_name,
        family=codes.cid7162.ArtificialIntelligence,
        version=model_version,
        source="gliomaseg",
    )


def segment_descriptions(model_name: str, model_version: str) -> list[hd.seg.SegmentDescription]:
    algo = algorithm_identification(model_name, model_version)
    out = []
    for number, label, name, prop_type in SEGMENTS:
        out.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name,
                segmented_property_category=CATEGORY,
                segmented_property_type=prop_type,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algo,
                tracking_id=f"gliomaseg {name.lower()}",
                tracking_uid=uids.derived_uid("gliomaseg-segment", name),
                anatomic_regions=[BRAIN],
                display_color=hd.color.CIELabColor.from_rgb(*LABEL_RGB[label]),
            )
        )
    return out


def stacked_segments(labels: np.ndarray) -> np.ndarray:
    """(n, Rows, Columns, 3) uint8 0/1 masks: segment i+1 in [..., i]."""
    return np.stack([labels == label for _, label, _, _ in SEGMENTS], axis=-1).astype(np.uint8)


def labels_from_segments(masks: np.ndarray) -> np.ndarray:
    """Inverse of :func:`stacked_segments` for a (..., 3) mask array (segments never overlap)."""
    out = np.zeros(masks.shape[:-1], np.uint8)
    for i, (_, label, _, _) in enumerate(SEGMENTS):
        out[masks[..., i] > 0] = label
    return out


def build_seg(
    native: NativeLabelsLike,
    *,
    model_name: str = "gliomaseg",
    model_version: str,
    series_number: int = DEFAULT_SERIES_NUMBER,
    instance_uid_seed: str | None = None,
    series_description: str | None = None,
) -> pydicom.Dataset:
    """A BINARY DICOM-SEG of ``native.labels`` referencing ``native.datasets``.

    Parameters
    ----------
    native
        ``labels`` uint8 (n_slices, Rows, Columns) with values {0, 1, 2, 4}; ``datasets`` the
        source instances (headers suffice, PixelData is not read), ``labels[k]`` drawn on
        ``datasets[k]``; optional ``frame_numbers`` (1-based, per slice) when the source is one
        multi-frame instance (then ``datasets`` repeats it).
    model_name, model_version
        Written as the algorithm name and version of every segment and as software version.
    series_number
        SeriesNumber of the SEG series.
    instance_uid_seed
        Extra entropy for the derived UIDs (default: none, so UIDs depend only on the source
        series, the model version and the kind). Pass it only to make a deliberately distinct
        output of the same source and model.

    Returns
    -------
    highdicom.seg.Segmentation (a pydicom.Dataset), in the source study, with the patient and
    study attributes of the source.
    """
    datasets: Sequence[pydicom.Dataset] = list(native.datasets)
    labels = check_labels(native.labels, datasets)
    frame_numbers = getattr(native, "frame_numbers", None)
    # one orientation, distinct positions: a SEG viewers can place
    slice_geometry(datasets, frame_numbers)
    masks = stacked_segments(labels)
    sources: Sequence[pydicom.Dataset] = datasets
    if frame_numbers is not None:
        # one multi-frame source: SEG frames follow the source frames; frames the labels do not
        # cover (e.g. dropped localizer frames) stay empty and are omitted
        source = datasets[0]
        n_frames = int(source.get("NumberOfFrames", 1) or 1)
        if any(ds is not source and ds.SOPInstanceUID != source.SOPInstanceUID for ds in datasets):
            raise OutputsError(
                "frame_numbers are given, so every slice must come from one instance"
            )
        full = np.zeros((n_frames, *masks.shape[1:]), np.uint8)
        for k, frame in enumerate(frame_numbers):
            if not 1 <= int(frame) <= n_frames:
                raise OutputsError(f"frame_numbers must lie in 1..{n_frames}; got {frame}")
            full[int(frame) - 1] = masks[k]
        masks, sources = full, [source]
    seed = (
        source_series_uid(datasets)
        if instance_uid_seed is None
        else (f"{source_series_uid(datasets)}|{instance_uid_seed}")
    )
    version = str(model_version)
    try:
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=masks,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segment_descriptions(model_name, version),
            series_instance_uid=uids.series_uid(seed, version, uids.KIND_SEG),
            series_number=series_number,
            sop_instance_uid=uids.instance_uid(seed, version, uids.KIND_SEG, 0),
            instance_number=1,
            manufacturer="gliomaseg",
            manufacturer_model_name=model_name[:64],
            software_versions=[package_version(), version],  # type: ignore[arg-type]
            device_serial_number="0",
            content_label="GLIOMASEG",
            content_description=f"Glioma segmentation, model {version}"[:64],
            series_description=(series_description or f"gliomaseg tumour SEG {version} (research)")[
                :64
            ],
            omit_empty_frames=True,
            transfer_syntax_uid=ExplicitVRLittleEndian,
        )
    except (ValueError, TypeError) as exc:
        raise OutputsError(
            f"DICOM-SEG could not be built from the source instances: {exc}"
        ) from exc
    copy_patient_study(datasets[0], seg)
    return seg
