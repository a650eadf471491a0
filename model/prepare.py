"""``gliomaseg prepare``: BraTS case folders -> one compact compressed .npz for training.

Each case is cropped to the brain, resampled to the training spacing, z-scored inside the brain
(model/preprocessing.py, the code serving uses too) and quantised to int8; the regions WT/TC/ET and
the brain mask are packed as bits of one uint8 array. Keys: ``<case>/image`` (int8, 4 x X x Y x Z),
``<case>/bits`` (uint8: bit0 WT, bit1 TC, bit2 ET, bit3 brain) and ``meta`` (JSON).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from model import preprocessing as pp
from model.data import find_cases, load_case
from model.dataset import FORMAT, bits_to_regions, load_prepared  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


def prepare_case(case, spacing_mm: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    pre = pp.preprocess(case.images, case.spacing_mm, spacing_mm)
    regions = pp.labels_to_regions(case.labels[pre.box]).astype(np.float32)
    rreg = pp.resample(regions, pre.image.shape[1:]) >= 0.5
    bits = (
        rreg[0].astype(np.uint8)
        | (rreg[1].astype(np.uint8) << 1)
        | (rreg[2].astype(np.uint8) << 2)
        | (pre.mask.astype(np.uint8) << 3)
    )
    return pp.quantise(pre.image), bits


def prepare_dataset(
    data_dir: Path, out: Path, spacing_mm: tuple[float, float, float], progress=None
) -> dict:
    files = [f for f in find_cases(data_dir) if f.seg is not None]
    if not files:
        raise FileNotFoundError(f"no labelled BraTS case folders under {data_dir}")
    arrays: dict[str, np.ndarray] = {}
    cases = []
    it = progress(files) if progress else files
    for f in it:
        case = load_case(f)
        image, bits = prepare_case(case, spacing_mm)
        arrays[f"{f.case_id}/image"] = image
        arrays[f"{f.case_id}/bits"] = bits
        cases.append({"case": f.case_id, "shape": list(bits.shape), "naming": f.naming})
    meta = {
        "format": FORMAT,
        "spacing_mm": list(spacing_mm),
        "channels": list(pp.CHANNELS),
        "regions": list(pp.REGIONS),
        "quant_scale": pp.QUANT_SCALE,
        "cases": cases,
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, out)
    return meta
