"""How visible each labelled sub-region is on each sequence: a data check behind the model card.

For every case with labels, each sequence is z-scored over the brain (the model's own
normalisation, without the crop) and the mean z inside enhancing tumour (4), necrosis (1) and
edema (2) is printed, with the brain just around the tumour (a 15-voxel shell outside the
whole tumour) for reference. Enhancing tumour that is not brighter than that shell on T1c is
not "enhancing" in the image, whatever the label says; no model trained on enhancement finds it.

    python -m model.contrast DATA_DIR [--cases A,B] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from model.data import find_cases, load_case

REGIONS = {"ET": (4,), "NCR": (1,), "ED": (2,)}


def case_contrast(images: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, Any]:
    brain = np.any([im > 0 for im in images.values()], axis=0)
    tumour = labels > 0
    shell = ndi.binary_dilation(tumour, iterations=15) & brain & ~tumour
    out: dict[str, Any] = {"volume_ml": {}, "z": {}}
    for name, values in REGIONS.items():
        out["volume_ml"][name] = round(float(np.isin(labels, values).sum()) / 1000, 1)
    for role, im in images.items():
        v = im[brain]
        mu, sd = float(v.mean()), float(v.std()) or 1.0
        z = {"shell": round((float(im[shell].mean()) - mu) / sd, 2) if shell.any() else None}
        for name, values in REGIONS.items():
            m = np.isin(labels, values)
            z[name] = round((float(im[m].mean()) - mu) / sd, 2) if m.any() else None
        out["z"][role] = z
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--cases", default=None, help="comma-separated case ids (default: all)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    wanted = set(args.cases.split(",")) if args.cases else None
    report: dict[str, Any] = {}
    print(
        f"{'case':26} {'ET ml':>6} {'T1c ET':>7} {'T1c shell':>9} {'ET-shell':>8} {'FLAIR ED':>8}"
    )
    for files in find_cases(args.data):
        if files.seg is None or (wanted and files.case_id not in wanted):
            continue
        case = load_case(files)
        assert case.labels is not None
        r = case_contrast(case.images, case.labels)
        report[files.case_id] = r
        t1c, flair = r["z"]["T1c"], r["z"]["FLAIR"]
        diff = (
            f"{t1c['ET'] - t1c['shell']:+8.2f}"
            if t1c["ET"] is not None and t1c["shell"] is not None
            else f"{'-':>8}"
        )
        print(
            f"{files.case_id:26} {r['volume_ml']['ET']:6.1f} {t1c['ET'] or 0:+7.2f} "
            f"{t1c['shell'] or 0:+9.2f} {diff} {flair['ED'] or 0:+8.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
