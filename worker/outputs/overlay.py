"""Colour overlay Secondary Capture series for viewers that cannot show a SEG (pure).

Choices (documented in the README):

* **Slices:** by default the slices with tumour plus ``margin`` neighbours on each side
  (``slices="tumour"``); ``slices="all"`` gives one instance per reference slice. With no tumour at
  all, one instance (the middle slice) says "No tumour found", so the PACS shows the run happened.
* **IOD:** single-frame Secondary Capture Image Storage, RGB, uncompressed (every viewer shows it;
  dciodvfy accepts it). SC has no Image Plane module, so ImagePositionPatient / Orientation are not
  written: instances are numbered in ascending position along the slice normal (the source
  order), PatientOrientation (required) gives the row/column directions, and each instance
  references its source slice (SourceImageSequence), which viewers use to link the two.
* **Picture:** the slice windowed to greyscale (0.5-99.5 percentile of the whole series inside
  the head, the same for every slice), enlarged by an integer factor to at least 480 pixels, the
  labels blended at 45 % with a solid outline. Okabe-Ito colours (colour-blind safe): necrotic
  core vermillion, edema bluish green, enhancing tumour yellow. A legend (with volumes when
  given) and a burned-in "NOT FOR DIAGNOSTIC USE" banner; BurnedInAnnotation is YES.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.uid import UID, ExplicitVRLittleEndian, RLELossless

from . import uids
from ._common import (
    LABEL_EDEMA,
    LABEL_ENHANCING,
    LABEL_NECROTIC,
    LABEL_RGB,
    REGION_NAMES,
    OutputsError,
    Region,
    check_labels,
    copy_patient_study,
    frame_attribute,
    frame_numbers_for,
    package_version,
    slice_geometry,
)

DEFAULT_SERIES_NUMBER = 903
BANNER = "NOT FOR DIAGNOSTIC USE"
MIN_SIDE_PX = 480
MAX_ZOOM = 4
ALPHA = 0.45
OVERLAY_TRANSFER_SYNTAXES = frozenset({str(ExplicitVRLittleEndian), str(RLELossless)})

_LEGEND: tuple[tuple[int, Region], ...] = (
    (LABEL_NECROTIC, Region.NECROTIC),
    (LABEL_EDEMA, Region.EDEMA),
    (LABEL_ENHANCING, Region.ENHANCING),
)


def orientation_letters(direction: Sequence[float]) -> str:
    """Patient-orientation letters of an LPS direction (e.g. "L", "PH" for an oblique one)."""
    letters = []
    for axis in np.argsort(-np.abs(np.asarray(direction, dtype=float))):
        c = float(direction[axis])
        if abs(c) < 0.1:
            continue
        letters.append(("L", "P", "H")[axis] if c > 0 else ("R", "A", "F")[axis])
    return "".join(letters) or "L"


def source_pixels(
    datasets: Sequence[pydicom.Dataset], frame_numbers: Sequence[int] | None = None
) -> np.ndarray:
    """(n, Rows, Columns) float32 stored values x RescaleSlope + RescaleIntercept.

    For a multi-frame source, slice k is frame ``frame_numbers[k]`` (1-based) with its own
    Pixel Value Transformation when the functional groups carry one.
    """
    frames = frame_numbers_for(datasets, frame_numbers)
    decoded: dict[str, np.ndarray] = {}
    out = []
    for k, (ds, frame) in enumerate(zip(datasets, frames, strict=True)):
        if "PixelData" not in ds:
            raise OutputsError(
                f"the overlay needs the source pixels: instance {k} has no PixelData "
                "(pass images= or read the instances with pixels)"
            )
        uid = str(ds.SOPInstanceUID)
        if uid not in decoded:
            decoded[uid] = ds.pixel_array
        arr = decoded[uid] if frame is None else decoded[uid][frame - 1]
        if arr.ndim != 2:
            raise OutputsError(
                f"slice {k}: expected a greyscale image or frame, got shape {arr.shape}"
            )
        seq = "PixelValueTransformationSequence"
        slope = frame_attribute(ds, frame, seq, "RescaleSlope")
        intercept = frame_attribute(ds, frame, seq, "RescaleIntercept")
        out.append(
            arr.astype(np.float32) * float(slope if slope not in (None, "") else 1)
            + float(intercept if intercept not in (None, "") else 0)
        )
    return np.stack(out)


def window(images: np.ndarray) -> tuple[float, float]:
    """Low/high display limits: 0.5 and 99.5 percentiles of the voxels above the background."""
    sample = images[:: max(1, images.shape[0] // 32)]
    fg = sample[sample > np.percentile(sample, 5)] if sample.size else sample
    if fg.size == 0:
        fg = sample.ravel()
    lo, hi = (float(v) for v in np.percentile(fg, [0.5, 99.5]))
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def selected_slices(
    labels: np.ndarray, order: np.ndarray, slices: Literal["all", "tumour"], margin: int
) -> list[int]:
    """Dataset indices to draw, in ascending position along the normal."""
    if slices == "all":
        return [int(i) for i in order]
    if slices != "tumour":
        raise OutputsError(f"slices must be 'all' or 'tumour'; got {slices!r}")
    has = labels[order].reshape(len(order), -1).any(axis=1)
    if not has.any():
        return [int(order[len(order) // 2])]
    keep = np.zeros_like(has)
    for j in np.flatnonzero(has):
        keep[max(0, j - margin) : j + margin + 1] = True
    return [int(order[j]) for j in np.flatnonzero(keep)]


_LUT = np.zeros((256, 3), np.uint8)
for _value, _colour in LABEL_RGB.items():
    _LUT[_value] = _colour


def _edges(big: np.ndarray) -> np.ndarray:
    """Labelled pixels with a 4-neighbour of another value (outline of every region)."""
    edge = np.zeros(big.shape, bool)
    edge[1:, :] |= big[1:, :] != big[:-1, :]
    edge[:-1, :] |= big[:-1, :] != big[1:, :]
    edge[:, 1:] |= big[:, 1:] != big[:, :-1]
    edge[:, :-1] |= big[:, :-1] != big[:, 1:]
    return edge & (big > 0)


def _font(size_px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size_px)
    except (TypeError, OSError, ImportError):  # Pillow built without FreeType
        return ImageFont.load_default()


@dataclass(frozen=True)
class _Layout:
    """What every picture of a series shares: size, fonts, and banner + legend drawn once."""

    size: tuple[int, int]  # (width, height)
    static: Image.Image  # RGBA: banner and legend on transparent
    title_xy: tuple[int, int]
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont
    small: ImageFont.ImageFont | ImageFont.FreeTypeFont


def _layout(size: tuple[int, int], legend: Sequence[tuple[tuple[int, int, int], str]]) -> _Layout:
    width, height = size
    static = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(static)
    px = max(10, round(min(width, height) / 30))
    font, small = _font(px), _font(max(9, round(px * 0.8)))
    pad = max(2, px // 3)
    bbox = draw.textbbox((0, 0), BANNER, font=font)
    bw, bh = bbox[2] - bbox[0], bbox[3] - bbox[1]
    draw.rectangle((0, 0, width, bh + 2 * pad + 2), fill=(150, 0, 0, 210))
    draw.text(((width - bw) // 2, pad - bbox[1]), BANNER, fill=(255, 255, 255, 255), font=font)
    line_h = px + pad
    top = height - (line_h * len(legend) + pad) - pad
    text_w = max(draw.textbbox((0, 0), text, font=small)[2] for _, text in legend)
    draw.rectangle((pad, top, pad * 3 + px + text_w + pad, height - pad), fill=(0, 0, 0, 170))
    for i, (colour, text) in enumerate(legend):
        ty = top + pad + i * line_h
        draw.rectangle((2 * pad, ty, 2 * pad + px - 2, ty + px - 2), fill=(*colour, 255))
        draw.text((3 * pad + px, ty), text, fill=(255, 255, 255, 255), font=small)
    return _Layout(size, static, (pad, int(bh) + 3 * pad + 2), font, small)


def render_slice(
    grey: np.ndarray, labels: np.ndarray, layout: _Layout, *, title: str, note: str | None = None
) -> np.ndarray:
    """One RGB uint8 picture: greyscale slice, blended labels, banner, title and legend."""
    size = layout.size
    grey_big = Image.fromarray(grey).resize(size, Image.Resampling.BILINEAR)
    rgb = np.repeat(np.asarray(grey_big)[..., None], 3, axis=2)
    if labels.any():
        big = np.asarray(Image.fromarray(labels).resize(size, Image.Resampling.NEAREST))
        mask = big > 0
        colour = _LUT[big[mask]].astype(np.float32)
        rgb[mask] = (rgb[mask] * (1 - ALPHA) + colour * ALPHA + 0.5).astype(np.uint8)
        edge = _edges(big)
        rgb[edge] = _LUT[big[edge]]
    canvas = Image.fromarray(rgb, "RGB").convert("RGBA")
    canvas.alpha_composite(layout.static)
    draw = ImageDraw.Draw(canvas)
    draw.text(
        layout.title_xy,
        title,
        fill=(255, 255, 255),
        font=layout.small,
        stroke_width=1,
        stroke_fill=(0, 0, 0),
    )
    if note:
        sb = draw.textbbox((0, 0), note, font=layout.font)
        draw.text(
            ((size[0] - (sb[2] - sb[0])) // 2, size[1] // 2),
            note,
            fill=(255, 255, 255),
            font=layout.font,
            stroke_width=2,
            stroke_fill=(0, 0, 0),
        )
    return np.asarray(canvas.convert("RGB"), dtype=np.uint8)


def build_overlay(
    labels: np.ndarray,
    datasets: Sequence[pydicom.Dataset],
    *,
    model_version: str,
    model_name: str = "gliomaseg",
    images: np.ndarray | None = None,
    volumes_ml: Mapping[str, float] | None = None,
    slices: Literal["all", "tumour"] = "tumour",
    margin: int = 3,
    frame_numbers: Sequence[int] | None = None,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
    series_number: int = DEFAULT_SERIES_NUMBER,
    instance_uid_seed: str | None = None,
) -> list[pydicom.Dataset]:
    """Secondary Capture instances of the reference slices with the labels in colour.

    Parameters
    ----------
    labels
        uint8 (n_slices, Rows, Columns), values {0, 1, 2, 4}; ``labels[k]`` drawn on ``datasets[k]``.
    datasets
        Source instances. Their PixelData is used unless ``images`` is given.
    images
        Optional (n_slices, Rows, Columns) source intensities in the same order (e.g. the
        converted volume's array), so headers without pixels suffice.
    volumes_ml
        Optional region volumes (``region_volumes_ml``) shown in the legend.
    slices, margin
        "tumour": slices with labels plus ``margin`` neighbours each side; "all": every slice.
    frame_numbers
        For one multi-frame source (repeated in ``datasets``): the 1-based frame of each slice.
    transfer_syntax_uid
        Explicit VR Little Endian (default: every PACS and viewer takes it) or RLE Lossless
        (about 3 times smaller, 35 ms more per instance; the receiver must accept RLE).

    Returns
    -------
    list of highdicom.sc.SCImage, InstanceNumber 1..n in ascending position along the normal.
    """
    if transfer_syntax_uid not in OVERLAY_TRANSFER_SYNTAXES:
        raise OutputsError(
            f"overlay transfer syntax must be one of {sorted(OVERLAY_TRANSFER_SYNTAXES)}; "
            f"got {transfer_syntax_uid!r}"
        )
    datasets = list(datasets)
    arr = check_labels(labels, datasets)
    geom = slice_geometry(datasets, frame_numbers)
    frames = frame_numbers_for(datasets, frame_numbers)
    if images is None:
        pixels = source_pixels(datasets, frame_numbers)
    else:
        pixels = np.asarray(images, dtype=np.float32)
        if pixels.shape != arr.shape:
            raise OutputsError(
                f"images must have the labels' shape {arr.shape}; got {pixels.shape}"
            )
    lo, hi = window(pixels)
    chosen = selected_slices(arr, geom.order, slices, margin)
    empty = not arr.any()
    rows, cols = arr.shape[1:]
    zoom = int(min(MAX_ZOOM, max(1, math.ceil(MIN_SIDE_PX / max(rows, cols)))))
    legend = []
    for value, region in _LEGEND:
        text = REGION_NAMES[region]
        if volumes_ml is not None and region.value in volumes_ml:
            text += f"  {float(volumes_ml[region.value]):.1f} mL"
        legend.append((LABEL_RGB[value], text))
    if volumes_ml is not None and Region.WHOLE_TUMOR.value in volumes_ml:
        legend.append(
            ((255, 255, 255), f"Whole tumour  {float(volumes_ml[Region.WHOLE_TUMOR.value]):.1f} mL")
        )

    layout = _layout((cols * zoom, rows * zoom), legend)
    source = datasets[0]
    src_series = str(source.SeriesInstanceUID)
    seed = src_series if instance_uid_seed is None else f"{src_series}|{instance_uid_seed}"
    version = str(model_version)
    series_uid = uids.series_uid(seed, version, uids.KIND_OVERLAY)
    iop = [
        float(v)
        for v in frame_attribute(
            source, frames[0], "PlaneOrientationSequence", "ImageOrientationPatient"
        )
    ]
    orientation = (orientation_letters(iop[:3]), orientation_letters(iop[3:]))
    out: list[pydicom.Dataset] = []
    total = len(datasets)
    rank = {int(k): j for j, k in enumerate(geom.order)}
    for number, k in enumerate(chosen, start=1):
        grey = np.clip((pixels[k] - lo) / (hi - lo) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        title = f"{model_name} {version} - slice {rank[k] + 1}/{total}"
        picture = render_slice(
            grey, arr[k], layout, title=title, note="No tumour found" if empty else None
        )
        ds = datasets[k]
        try:
            sc = hd.sc.SCImage(
                pixel_array=picture,
                transfer_syntax_uid=UID(transfer_syntax_uid),
                photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
                bits_allocated=8,
                coordinate_system=hd.CoordinateSystemNames.PATIENT,
                study_instance_uid=str(source.StudyInstanceUID),
                series_instance_uid=series_uid,
                series_number=series_number,
                sop_instance_uid=uids.instance_uid(seed, version, uids.KIND_OVERLAY, rank[k]),
                instance_number=number,
                manufacturer="gliomaseg",
                patient_orientation=(orientation[0][0], orientation[1][0]),
                pixel_spacing=(geom.row_spacing_mm / zoom, geom.column_spacing_mm / zoom),
                series_description=f"gliomaseg overlay {version} NOT FOR DIAGNOSIS"[:64],
                manufacturer_model_name=model_name[:64],
                software_versions=[package_version(), version],
            )
        except (ValueError, TypeError) as exc:
            raise OutputsError(f"overlay instance could not be built: {exc}") from exc
        sc.PatientOrientation = list(orientation)
        sc.BurnedInAnnotation = "YES"
        # Laterality is Type 2C (paired body parts only): naming the unpaired part says why it
        # is absent (dciodvfy flags an absent Laterality otherwise).
        sc.BodyPartExamined = str(source.get("BodyPartExamined") or "BRAIN")[:16]
        sc.ImageComments = BANNER
        sc.DerivationDescription = f"Labels of {model_name} {version} blended on the source slice"[
            :1024
        ]
        ref = pydicom.Dataset()
        ref.ReferencedSOPClassUID = ds.SOPClassUID
        ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        if frames[k] is not None:
            ref.ReferencedFrameNumber = frames[k]
        sc.SourceImageSequence = [ref]
        copy_patient_study(source, sc)
        out.append(sc)
    return out
