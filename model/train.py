"""The training loop (imports only torch, numpy, safetensors, tqdm and the model core).

Feeds on the .npz that ``gliomaseg prepare`` writes. Deterministic seed; resumable from
``<work>/checkpoint.pt``; validates on held-out cases every ``val_every`` steps by sliding-window
inference at the training spacing, and writes the best weights (mean Dice over WT/TC/ET and cases)
as a bundle into ``out``. Mixed precision (fp16 autocast + grad scaler) on CUDA.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm import tqdm

from model.bundle import save_bundle
from model.dataset import bits_to_regions, load_prepared
from model.network import NetworkConfig, UNet3D, count_parameters
from model.sampling import augment, region_loss, sample_patch
from model.sliding import sliding_window_probs

DEFAULT_VALIDATION = ("Brats18_CBICA_AME_1", "Brats18_TCIA02_370_1", "Brats18_2013_11_1")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 3000
    budget_min: float = 0.0  # > 0: the schedule also ends when this much training time has passed
    patch_size: tuple[int, int, int] = (80, 80, 80)
    batch_size: int = 1
    lr: float = 2e-3
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    tumour_prob: float = 0.33
    val_every: int = 150
    scan_quality_aug: bool = False  # + noise, blur, low resolution (model.sampling.augment)
    checkpoint_every: int = 50
    seed: int = 42
    threads: int = 2
    device: str = "auto"
    validation: tuple[str, ...] = DEFAULT_VALIDATION
    network: NetworkConfig = field(default_factory=NetworkConfig)
    name: str = "gliomaseg-unet3d"
    version: str = "0.1.0"


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def dice_np(pred: np.ndarray, ref: np.ndarray) -> float:
    p, r = pred.sum(), ref.sum()
    if p == 0 and r == 0:
        return 1.0
    return float(2 * np.logical_and(pred, ref).sum() / (p + r))


def validate(net, cases, patch, device) -> dict[str, dict[str, float]]:
    net.eval()
    out = {}
    for cid, (image, bits) in cases.items():
        probs = sliding_window_probs(net, torch.from_numpy(image), patch, overlap=0.5, device=device,
                                     amp=device.type == "cuda")  # fmt: skip
        pred = probs.numpy() >= 0.5
        ref = bits_to_regions(bits).astype(bool)
        out[cid] = {r: dice_np(pred[i], ref[i]) for i, r in enumerate(("WT", "TC", "ET"))}
    net.train()
    return out


def earlier_stages(init_meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The training history of a bundle a run starts from (``--init-from``), oldest first.

    Its own earlier stages, then one entry for the bundle itself: its weights' hash, the step and
    training time at which it was written, its configuration and validation scores.
    """
    prev = init_meta.get("training", {})
    stage = {
        "weights_sha256": init_meta.get("weights_sha256"),
        "initialised_from": prev.get("initialised_from"),
        "step": prev.get("step"),
        "elapsed_s": prev.get("elapsed_s"),
        "config": prev.get("config"),
        "validation_at_training_spacing": prev.get("validation_at_training_spacing"),
    }
    return [*prev.get("earlier_stages", []), stage]


def _log(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def train(
    data: Path,
    out: Path,
    work: Path,
    cfg: TrainConfig,
    *,
    extra_meta: dict | None = None,
    init_from: Path | None = None,
) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "train_log.jsonl"
    torch.set_num_threads(cfg.threads) if cfg.threads > 0 else None
    device = torch.device("cuda" if (cfg.device == "auto" and torch.cuda.is_available()) else
                          ("cpu" if cfg.device == "auto" else cfg.device))  # fmt: skip
    set_seed(cfg.seed)
    meta, cases = load_prepared(data)
    unknown = [c for c in cfg.validation if c not in cases]
    if unknown:
        raise ValueError(f"validation cases must be in {data}; not found: {', '.join(unknown)}")
    val_cases = {c: cases[c] for c in cfg.validation}
    train_ids = sorted(c for c in cases if c not in cfg.validation)
    train_cases = [(c, cases[c][0], bits_to_regions(cases[c][1])) for c in train_ids]
    tumour_voxels = [np.argwhere(reg[0] > 0) for _, _, reg in train_cases]

    net = UNet3D(cfg.network).to(device)
    fmt = torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format
    net = net.to(memory_format=fmt)  # type: ignore[call-overload]  # about 25% faster on CPU (mkldnn)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    rng = np.random.default_rng(cfg.seed)
    step = 0
    best: dict[str, Any] = {"score": -1.0, "step": 0, "dice": {}}
    elapsed_s = 0.0
    earlier: list[dict[str, Any]] = []  # the stages the initial weights came from
    ckpt = work / "checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        scaler.load_state_dict(state["scaler"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        step, best, elapsed_s = state["step"], state["best"], state.get("elapsed_s", 0.0)
        earlier = state.get("earlier_stages", [])
        _log(log_path, {"event": "resume", "step": step, "time": time.time()})
    elif init_from is not None:
        # No checkpoint (e.g. a fresh machine): start from a bundle's weights, not from zero.
        # The optimiser and schedule start anew; the bundle's validation score is the bar a
        # new best must beat, so a worse early checkpoint never replaces it.
        init_from = Path(init_from)
        init_meta = json.loads((init_from / "metadata.json").read_text())
        if init_meta.get("network") != cfg.network.to_json():
            raise ValueError(
                f"--init-from {init_from}: its network {init_meta.get('network')} differs from "
                f"the one configured {cfg.network.to_json()}"
            )
        weights = load_file(str(init_from / "weights.safetensors"))
        net.load_state_dict({k: v.float() for k, v in weights.items()})
        prev = init_meta.get("training", {})
        prev_val = prev.get("validation_at_training_spacing", {})
        if list(prev.get("split", {}).get("validation", [])) == list(cfg.validation) and prev_val:
            score = float(np.mean(list(prev_val["mean"].values())))
            best = {"score": score, "step": 0, "dice": prev_val.get("cases", {})}
        earlier = earlier_stages(init_meta)
        _log(log_path, {"event": "init", "from": str(init_from), "previous_step": prev.get("step"),
                        "best": best["score"], "time": time.time()})  # fmt: skip

    base_meta = {
        "name": cfg.name, "version": cfg.version, "channels": meta["channels"],
        "label_map": {"0": "background", "1": "necrotic / non-enhancing tumour core", "2": "edema",
                      "4": "enhancing tumour"},
        "outputs": ["WT", "TC", "ET"],
        "output_activation": "sigmoid; labels: WT>0.5 -> 2, and TC>0.5 -> 1, and ET>0.5 -> 4 (nested)",
        "spacing_mm": meta["spacing_mm"], "patch_size": list(cfg.patch_size),
        "normalisation": {"method": "zscore-brain", "module": "model.preprocessing",
                          "crop_margin_mm": 4.0, "clip_z": 6.3, "resampling": "trilinear"},
        "network": cfg.network.to_json(), "parameters": count_parameters(net),
        "inference": {"overlap": 0.5, "blending": "gaussian sigma=patch/8"},
        "training": {"data": meta["cases"] and [c["case"] for c in meta["cases"]],
                     "split": {"train": train_ids, "validation": list(cfg.validation)},
                     "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()
                                if k != "network"},
                     "device": str(device), "threads": torch.get_num_threads()},
    }  # fmt: skip
    if init_from is not None:
        base_meta["training"]["initialised_from"] = str(init_from)
    if earlier:
        base_meta["training"]["earlier_stages"] = earlier
    if extra_meta:
        base_meta.update(extra_meta)
    if step == 0:
        _log(log_path, {"event": "start", "time": time.time(), "train": train_ids,
                        "validation": list(cfg.validation), "parameters": count_parameters(net),
                        "device": str(device)})  # fmt: skip

    def save_checkpoint() -> None:
        tmp = work / "checkpoint.pt.tmp"
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "scaler": scaler.state_dict(),
                    "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "step": step,
                    "best": best, "elapsed_s": elapsed_s, "earlier_stages": earlier}, tmp)  # fmt: skip
        os.replace(tmp, ckpt)

    p_noise, p_blur, p_lowres = (0.1, 0.2, 0.25) if cfg.scan_quality_aug else (0.0, 0.0, 0.0)
    net.train()
    bar = tqdm(total=cfg.steps, initial=step, desc="train", dynamic_ncols=True, mininterval=5)
    losses: list[float] = []
    t_last = time.monotonic()

    def progress() -> float:
        p = step / cfg.steps
        if cfg.budget_min > 0:
            p = max(p, elapsed_s / (cfg.budget_min * 60))
        return min(p, 1.0)

    while progress() < 1.0:
        lr = cfg.lr * (1 - progress()) ** cfg.poly_power
        for g in opt.param_groups:
            g["lr"] = lr
        imgs, regs = [], []
        for _ in range(cfg.batch_size):
            i = int(rng.integers(len(train_cases)))
            _, image, reg = train_cases[i]
            a, b = sample_patch(image, reg, cfg.patch_size, rng, tumour_prob=cfg.tumour_prob,
                                tumour_voxels=tumour_voxels[i])  # fmt: skip
            imgs.append(a)
            regs.append(b)
        x = torch.from_numpy(np.stack(imgs)).to(device)
        y = torch.from_numpy(np.stack(regs)).to(device)
        x, y = augment(x, y, rng, p_noise=p_noise, p_blur=p_blur, p_lowres=p_lowres)
        x = x.contiguous(memory_format=fmt)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            logits = net(x)
        loss = region_loss(logits, y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
        scaler.step(opt)
        scaler.update()
        step += 1
        now = time.monotonic()
        elapsed_s += now - t_last
        t_last = now
        losses.append(loss.item())
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", best=f"{best['score']:.3f}")
        last = progress() >= 1.0
        if step % cfg.val_every == 0 or last:
            dice = validate(net, val_cases, cfg.patch_size, device)
            mean = {r: float(np.mean([d[r] for d in dice.values()])) for r in ("WT", "TC", "ET")}
            score = float(np.mean(list(mean.values())))
            improved = score > best["score"]
            record = {"event": "validation", "step": step, "elapsed_s": round(elapsed_s, 1),
                      "loss": float(np.mean(losses[-cfg.val_every:])), "lr": lr, "dice": dice, "mean": mean,
                      "score": score, "improved": improved, "time": time.time()}  # fmt: skip
            _log(log_path, record)
            tqdm.write(f"step {step}: loss {record['loss']:.3f} val Dice WT {mean['WT']:.3f} "
                       f"TC {mean['TC']:.3f} ET {mean['ET']:.3f}" + (" (best)" if improved else ""))  # fmt: skip
            if improved:
                best = {"score": score, "step": step, "dice": dice, "mean": mean}
                m = dict(base_meta)
                m["training"] = dict(base_meta["training"], step=step, elapsed_s=round(elapsed_s, 1),
                                     validation_at_training_spacing={"mean": mean, "cases": dice})  # fmt: skip
                save_bundle(out, net, m)
            t_last = time.monotonic()
        if step % cfg.checkpoint_every == 0 or last:
            save_checkpoint()
    bar.close()
    _log(
        log_path,
        {"event": "end", "step": step, "best": best, "elapsed_s": elapsed_s, "time": time.time()},
    )
    return best
