"""Reading the .npz that ``gliomaseg prepare`` writes (training core: numpy only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from model import preprocessing as pp

FORMAT = "gliomaseg-prepared-1"


def load_prepared(path: Path) -> tuple[dict, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(meta, {case: (image float32 (4, X, Y, Z), bits uint8 (X, Y, Z))})."""
    with np.load(path) as z:
        meta = json.loads(z["meta"].tobytes().decode())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: format must be {FORMAT}; got {meta.get('format')!r}")
        cases = {
            c["case"]: (pp.dequantise(z[f"{c['case']}/image"]), z[f"{c['case']}/bits"])
            for c in meta["cases"]
        }
    return meta, cases


def bits_to_regions(bits: np.ndarray) -> np.ndarray:
    return np.stack([(bits >> i) & 1 for i in range(3)]).astype(np.float32)
