"""Preprocessing, network, sampling, sliding windows and bundles (no real data needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from config.errors import BundleError
from model import preprocessing as pp
from model.bundle import load_bundle, save_bundle
from model.network import NetworkConfig, UNet3D
from model.sampling import augment, region_loss, sample_patch
from model.sliding import gaussian_weights, sliding_window_probs, window_starts


def test_regions_labels_round_trip():
    labels = np.array([0, 1, 2, 4, 2, 0], dtype=np.uint8)
    regions = pp.labels_to_regions(labels)
    assert regions.tolist() == [
        [False, True, True, True, True, False],
        [False, True, False, True, False, False],
        [False, False, False, True, False, False],
    ]
    assert pp.regions_to_labels(regions).tolist() == labels.tolist()


def test_regions_to_labels_enforces_nesting():
    # ET outside TC/WT is not enhancing tumour: the hierarchy wins
    regions = np.array([[False], [False], [True]])
    assert pp.regions_to_labels(regions).tolist() == [0]


def test_zscore_inside_mask_only():
    img = np.zeros((4, 4, 4), np.float32)
    mask = np.zeros((4, 4, 4), bool)
    mask[1:3, 1:3, 1:3] = True
    img[mask] = np.arange(8, dtype=np.float32)
    img[0, 0, 0] = 1000  # outside the brain: ignored and zeroed
    z = pp.zscore(img, mask)
    assert z[0, 0, 0] == 0
    assert z[mask].mean() == pytest.approx(0, abs=1e-6)
    assert z[mask].std() == pytest.approx(1, abs=1e-5)


def test_crop_box_margin_in_mm():
    mask = np.zeros((20, 20, 20), bool)
    mask[5:10, 6:8, 10:11] = True
    box = pp.crop_box(mask, (1.0, 2.0, 4.0), margin_mm=4.0)
    assert box == (slice(1, 14), slice(4, 10), slice(9, 12))


def test_preprocess_shapes_and_errors():
    rng = np.random.default_rng(0)
    brain = np.zeros((40, 30, 20), bool)
    brain[5:35, 5:25, 3:17] = True
    images = {
        c: (rng.random(brain.shape) * 100 + 50).astype(np.float32) * brain for c in pp.CHANNELS
    }
    pre = pp.preprocess(images, (1.0, 1.0, 1.0), (2.0, 2.0, 2.0))
    assert pre.image.shape[0] == 4 and pre.image.dtype == np.float32
    assert pre.cropped_shape == (38, 28, 20)
    assert pre.image.shape[1:] == (19, 14, 10)
    with pytest.raises(ValueError, match="missing FLAIR"):
        pp.preprocess({c: images[c] for c in ("T1", "T1c", "T2")}, (1, 1, 1), (2, 2, 2))
    bad = dict(images, T2=np.zeros((5, 5, 5), np.float32))
    with pytest.raises(ValueError, match="one grid"):
        pp.preprocess(bad, (1, 1, 1), (2, 2, 2))


def test_quantise_round_trip_error_small():
    z = np.linspace(-6, 6, 101).astype(np.float32)
    assert np.abs(pp.dequantise(pp.quantise(z)) - z).max() <= 0.5 / pp.QUANT_SCALE + 1e-6


def test_unet_shapes():
    net = UNet3D(NetworkConfig(base_filters=4, depth=3))
    out = net(torch.zeros(2, 4, 16, 24, 8))
    assert out.shape == (2, 3, 16, 24, 8)


def test_sample_patch_pads_and_centres_on_tumour():
    rng = np.random.default_rng(1)
    image = np.ones((4, 10, 40, 40), np.float32)
    regions = np.zeros((3, 10, 40, 40), np.float32)
    regions[0, 5, 30:32, 30:32] = 1
    tv = np.argwhere(regions[0] > 0)
    for _ in range(20):
        a, b = sample_patch(image, regions, (16, 16, 16), rng, tumour_prob=1.0, tumour_voxels=tv)
        assert a.shape == (4, 16, 16, 16) and b.shape == (3, 16, 16, 16)
        assert b[0].sum() > 0  # jitter is at most a quarter patch: the tumour stays inside


def test_augment_keeps_shapes_and_binary_targets():
    rng = np.random.default_rng(2)
    x = torch.randn(2, 4, 16, 16, 16)
    y = (torch.rand(2, 3, 16, 16, 16) > 0.5).float()
    for _ in range(5):
        xa, ya = augment(x, y, rng, p_spatial=1.0)
        assert xa.shape == x.shape and ya.shape == y.shape
        assert set(torch.unique(ya).tolist()) <= {0.0, 1.0}


def test_region_loss_lower_for_better_prediction():
    y = torch.zeros(1, 3, 8, 8, 8)
    y[:, :, 2:6, 2:6, 2:6] = 1
    good = (y * 2 - 1) * 8
    assert region_loss(good, y) < region_loss(torch.zeros_like(y), y) < region_loss(-good, y)


def test_window_starts_cover_the_volume():
    for size, patch in ((10, 16), (100, 64), (64, 64), (81, 40)):
        starts = window_starts(size, patch, 0.5)
        covered = np.zeros(max(size, patch), bool)
        for s in starts:
            covered[s : s + patch] = True
        assert covered[:size].all()
        assert starts[-1] + patch == max(size, patch)


class Pointwise(torch.nn.Module):
    """A network whose output at a voxel depends only on that voxel: any tiling gives the same result."""

    def forward(self, x):
        return torch.cat([x[:, :1], -x[:, 1:2], x[:, 2:3] * 2], dim=1)


def test_sliding_window_blending_equals_whole_volume_for_pointwise_net():
    x = torch.randn(4, 20, 37, 9)
    probs = sliding_window_probs(Pointwise(), x, (16, 16, 16), overlap=0.5, mirror=True)
    expected = torch.sigmoid(Pointwise()(x[None]))[0]
    assert probs.shape == (3, 20, 37, 9)
    assert torch.allclose(probs, expected, atol=1e-5)
    w = gaussian_weights((16, 16, 16))
    assert w.max() == 1 and w.min() > 0 and w[8, 8, 8] > w[0, 0, 0]


def _meta():
    return {
        "name": "t",
        "version": "0",
        "channels": ["T1", "T1c", "T2", "FLAIR"],
        "label_map": {},
        "outputs": ["WT", "TC", "ET"],
        "spacing_mm": [2, 2, 2],
        "patch_size": [16, 16, 16],
        "normalisation": {},
        "network": NetworkConfig(base_filters=4, depth=3).to_json(),
    }


def test_bundle_round_trip_and_verification(tmp_path):
    net = UNet3D(NetworkConfig(base_filters=4, depth=3))
    save_bundle(tmp_path / "b", net, _meta(), fp16=True)
    b = load_bundle(tmp_path / "b", device="cpu")
    assert (b.name, b.version, b.patch_size, b.spacing_mm) == (
        "t",
        "0",
        (16, 16, 16),
        (2.0, 2.0, 2.0),
    )
    for k, v in net.state_dict().items():
        assert torch.allclose(b.network.state_dict()[k], v.half().float())

    meta_path = tmp_path / "b" / "metadata.json"
    good = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(dict(good, channels=["T1c", "T1", "T2", "FLAIR"])))
    with pytest.raises(BundleError, match="channels must be"):
        load_bundle(tmp_path / "b")
    meta_path.write_text(json.dumps(dict(good, weights_sha256="0" * 64)))
    with pytest.raises(BundleError, match="weights_sha256"):
        load_bundle(tmp_path / "b")
    meta_path.write_text(json.dumps({k: v for k, v in good.items() if k != "spacing_mm"}))
    with pytest.raises(BundleError, match="lacks spacing_mm"):
        load_bundle(tmp_path / "b")
    meta_path.write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match="must be a folder"):
        load_bundle(tmp_path / "nowhere")


def test_bundle_rejects_weights_of_another_network(tmp_path):
    save_bundle(tmp_path / "b", UNet3D(NetworkConfig(base_filters=8, depth=3)), _meta())
    with pytest.raises(BundleError, match="weights must fit"):
        load_bundle(tmp_path / "b")


def test_training_core_imports_only_torch_numpy_safetensors_tqdm():
    """A GPU host may offer only its own torch: the core must not need the service's packages."""
    import subprocess
    import sys

    blocked = [
        "nibabel",
        "scipy",
        "config",
        "click",
        "pydantic",
        "pydantic_settings",
        "SimpleITK",
        "PIL",
    ]
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import model.train, model.bundle, model.inference, model.sliding, model.sampling\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_bias_field_is_smooth_and_keeps_background():
    from model.sampling import _bias_field

    x = torch.ones(1, 4, 24, 24, 24)
    x[:, :, :3] = 0  # outside the brain
    y = _bias_field(x, np.random.default_rng(3))
    assert (y[:, :, :3] == 0).all()
    inside = y[:, :, 3:]
    # smooth: neighbouring voxels differ far less than the field varies across the patch
    step = (inside[..., 1:] - inside[..., :-1]).abs().max()
    assert step < 0.2 * (inside.max() - inside.min()) + 1e-6


def test_small_enhancing_tumour_becomes_necrosis():
    from model.inference import postprocess_et

    labels = np.zeros((10, 10, 10), np.uint8)
    labels[2:6, 2:6, 2:6] = 2
    labels[3:5, 3:5, 3:5] = 4  # 8 voxels of 1 mm^3
    assert (postprocess_et(labels, (1, 1, 1), 200.0) == 4).sum() == 0
    assert (postprocess_et(labels, (1, 1, 1), 200.0) == 1).sum() == 8
    assert (postprocess_et(labels, (3, 3, 3), 200.0) == 4).sum() == 8  # 216 mm^3: kept
    assert (postprocess_et(labels, (1, 1, 1), 0.0) == 4).sum() == 8  # rule off


def test_predict_case_refuses_bad_spacing(tmp_path):
    from model.inference import predict_case

    save_bundle(tmp_path / "b", UNet3D(NetworkConfig(base_filters=4, depth=3)), _meta())
    b = load_bundle(tmp_path / "b", device="cpu")
    images = {c: np.ones((8, 8, 8), np.float32) for c in pp.CHANNELS}
    with pytest.raises(ValueError, match="spacing_mm must be three positive numbers"):
        predict_case(b, images, (1.0, 0.0, 1.0))
    labels = predict_case(b, images, (1.0, 1.0, 1.0))
    assert labels.shape == (8, 8, 8) and labels.dtype == np.uint8


def test_gamma_changes_contrast_keeps_moments_and_background():
    from model.sampling import _gamma

    rng = np.random.default_rng(0)
    x = torch.zeros(1, 2, 12, 12, 12)
    x[:, :, 2:10, 2:10, 2:10] = torch.from_numpy(
        rng.normal(0, 1, (1, 2, 8, 8, 8)).astype(np.float32)
    )
    y = _gamma(x, np.random.default_rng(5), gamma_range=(1.5, 1.5))
    inside = x[0, 0, 2:10, 2:10, 2:10]
    out = y[0, 0, 2:10, 2:10, 2:10]
    assert torch.all(y[:, :, 0] == 0) and torch.all(y[:, :, :, :, 11] == 0)
    assert abs(float(out.mean() - inside.mean())) < 1e-4
    assert abs(float(out.std() - inside.std())) < 1e-3
    # a gamma above 1 is monotone but not linear: the ranking stays, the shape changes
    flat_in, flat_out = inside.flatten(), out.flatten()
    assert torch.equal(torch.argsort(flat_in), torch.argsort(flat_out))
    corr = float(torch.corrcoef(torch.stack([flat_in, flat_out]))[0, 1])
    assert 0.9 < corr < 0.9999


def _brain_block(seed: int = 0) -> torch.Tensor:
    """Two channels of z-scored-like noise in a block; 0 (outside the brain) around it."""
    rng = np.random.default_rng(seed)
    x = torch.zeros(1, 2, 16, 16, 16)
    x[:, :, 3:13, 3:13, 3:13] = torch.from_numpy(
        rng.normal(0, 1, (1, 2, 10, 10, 10)).astype(np.float32)
    )
    return x


def test_noise_changes_only_the_brain():
    from model.sampling import _noise

    x = _brain_block()
    y = _noise(x, np.random.default_rng(1), max_variance=0.1)
    assert torch.all(y[:, :, :3] == 0) and torch.all(y[:, :, 13:] == 0)
    diff = (y - x)[:, :, 3:13, 3:13, 3:13]
    assert 0 < float(diff.std()) <= float(np.sqrt(0.1)) * 1.1


def test_blur_smooths_inside_and_keeps_background():
    from model.sampling import _blur

    x = _brain_block()
    y = _blur(x, np.random.default_rng(2), sigma_range=(1.0, 1.0), p_channel=1.0)
    assert torch.all(y[:, :, :3] == 0) and torch.all(y[:, :, :, :, 13:] == 0)
    inner = (slice(None), slice(None), slice(5, 11), slice(5, 11), slice(5, 11))
    # white noise blurred with sigma 1 voxel: neighbours become correlated, variance drops
    assert float(y[inner].std()) < 0.6 * float(x[inner].std())
    assert abs(float(y[inner].mean() - x[inner].mean())) < 0.2
    a, b = y[0, 0, 5:11, 5:11, 5:10].flatten(), y[0, 0, 5:11, 5:11, 6:11].flatten()
    assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.3
    # p_channel 0: nothing changes
    assert torch.equal(_blur(x, np.random.default_rng(2), p_channel=0.0), x)


def test_low_resolution_loses_detail_keeps_shape_and_background():
    from model.sampling import _low_resolution

    x = _brain_block()
    y = _low_resolution(x, np.random.default_rng(3), zoom_range=(0.5, 0.5), p_channel=1.0)
    assert y.shape == x.shape
    assert torch.all(y[:, :, :3] == 0) and torch.all(y[:, :, :, 13:] == 0)
    inner = (slice(None), slice(None), slice(4, 12), slice(4, 12), slice(4, 12))
    assert float(y[inner].std()) < 0.8 * float(x[inner].std())
    # a smooth signal (a ramp across the brain) survives: coarse detail is kept, fine detail lost
    ramp = torch.zeros(1, 1, 16, 16, 16)
    ramp[..., 3:13, 3:13, 3:13] = torch.linspace(-2, 2, 10).view(10, 1, 1) + 0.01
    r = _low_resolution(ramp, np.random.default_rng(3), zoom_range=(0.5, 0.5), p_channel=1.0)
    a, b = ramp[..., 4:12, 4:12, 4:12].flatten(), r[..., 4:12, 4:12, 4:12].flatten()
    assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.95


def test_augment_with_scan_quality_keeps_shapes_and_background():
    rng = np.random.default_rng(4)
    x = _brain_block().repeat(2, 2, 1, 1, 1)  # (2, 4, 16, 16, 16); the block is flip-symmetric
    y = (torch.rand(2, 3, 16, 16, 16) > 0.5).float()
    outside = ~(x != 0).any(dim=1, keepdim=True).expand_as(x)
    for _ in range(5):
        xa, ya = augment(x, y, rng, p_spatial=0.0, p_noise=1.0, p_blur=1.0, p_lowres=1.0)
        assert xa.shape == x.shape and ya.shape == y.shape
        assert torch.all(xa[outside] == 0) and not torch.equal(xa, x)


def test_earlier_stages_carry_the_history_of_the_starting_bundle():
    from model.train import earlier_stages

    stage1 = {"weights_sha256": "a" * 64, "training": {"step": 1100, "elapsed_s": 5000.0}}
    hist1 = earlier_stages(stage1)
    assert hist1 == [
        {"weights_sha256": "a" * 64, "initialised_from": None, "step": 1100, "elapsed_s": 5000.0,
         "config": None, "validation_at_training_spacing": None}
    ]  # fmt: skip
    stage2 = {"weights_sha256": "b" * 64,
              "training": {"step": 1700, "initialised_from": "x", "earlier_stages": hist1}}  # fmt: skip
    hist2 = earlier_stages(stage2)
    assert [h["weights_sha256"] for h in hist2] == ["a" * 64, "b" * 64]
    assert hist2[1]["step"] == 1700 and hist2[1]["initialised_from"] == "x"
