"""RCAN and HAN: official reference outputs, detection from shapes, the attention modules against
hand-computed values, near-miss checkpoints, bf16 autocast and channels-last inputs."""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from hat_cli.model import HAT, HATConfig
from hat_cli.model.contract import Network, NotThisFamily
from hat_cli.model.padding import run_padded
from hat_cli.model.rcan import HAN_FAMILY, RCAN_FAMILY, HANConfig, RCANConfig
from hat_cli.model.rcan.arch import HAN, RCAN, ChannelSpatialAttention, LayerAttention

# The repository is cloned with ../shared beside it (CI too).
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "han-reference"
MANIFEST = FIXTURES / "manifest.json"
FAMILIES = {"han": HAN_FAMILY, "rcan": RCAN_FAMILY}
State = dict[str, torch.Tensor]


def _reference_cases() -> list[Any]:
    if not MANIFEST.is_file():
        reason = f"HAN/RCAN reference fixtures not found at {FIXTURES} (clone with ../shared beside the repo)"
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=reason))]
    manifest = json.loads(MANIFEST.read_text())
    return [
        pytest.param(entry, case, id=f"{name}-{case['input']}")
        for name, entry in manifest.items()
        for case in entry["cases"]
    ]


@cache
def _checkpoint(name: str) -> State:
    return torch.load(FIXTURES / name, map_location="cpu", weights_only=True)


def _image(name: str) -> torch.Tensor:
    """A PNG as (1, 3, H, W) float in 0..1."""
    pixels = np.array(Image.open(FIXTURES / name).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(pixels).permute(2, 0, 1)[None]


def _loaded(state: State, family: Any, hidden: dict[str, Any] | None = None) -> RCAN:
    net = family.build(family.detect(state, hidden or {}))
    net.load_state_dict(state, strict=True)
    return net.eval()


# --------------------------------------------------------------------------- official reference outputs


@pytest.mark.parametrize(("entry", "case"), _reference_cases())
def test_reference_output(entry: dict[str, Any], case: dict[str, Any]) -> None:
    arch = dict(entry["arch"])
    family = FAMILIES[arch.pop("arch")]
    other = HAN_FAMILY if family is RCAN_FAMILY else RCAN_FAMILY
    state = _checkpoint(entry["checkpoint"])
    assert family.matches(state) and not other.matches(state)

    config = family.detect(state, {})
    assert config.to_dict() == arch
    assert config == family.config_from_dict(entry["arch"])

    net = family.build(config)
    net.load_state_dict(state, strict=True)
    assert isinstance(net, Network) and net.input_range == 255 and net.size_multiple == 1
    with torch.inference_mode():
        out = run_padded(net.eval(), _image(case["input"]))[0].numpy()

    expected = np.load(FIXTURES / case["output_npy"])
    height, width = case["lr_size"]
    assert out.shape == expected.shape == (3, height * config.scale, width * config.scale)
    assert np.abs(out - expected).max() <= 1e-5
    rounded = np.clip(np.round(out * 255), 0, 255)
    png = np.array(Image.open(FIXTURES / case["output_png"]).convert("RGB")).transpose(2, 0, 1)
    assert np.abs(rounded - png).max() <= 1  # only exact .5 ties may round the other way


# --------------------------------------------------------------------------- detection from shapes


def _random_config(rng: random.Random, cls: type[RCANConfig]) -> RCANConfig:
    n_feats = rng.choice([1, 3, 4, 8, 12, 16, 20, 24, 32, 64])
    return cls(
        scale=rng.choice([2, 3, 4, 8]),
        n_feats=n_feats,
        n_resgroups=rng.randint(1, 12),
        n_resblocks=rng.randint(1, 4),
        reduction=rng.randint(1, n_feats),
        n_colors=rng.choice([3, 3, 1, 4]),
        rgb_range=rng.choice([255.0, 1.0, 65535.0]),
    )


def _meta_state(config: RCANConfig) -> tuple[State, int]:
    """The state dict (shapes only) and parameter count of the network ``config`` builds."""
    family = HAN_FAMILY if isinstance(config, HANConfig) else RCAN_FAMILY
    with torch.device("meta"):
        net = family.build(config)
    return net.state_dict(), sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("cls", [RCANConfig, HANConfig])
def test_detection_round_trips(cls: type[RCANConfig]) -> None:
    rng = random.Random(f"{cls.__name__}-detect")
    family = HAN_FAMILY if cls is HANConfig else RCAN_FAMILY
    for _ in range(30):
        config = _random_config(rng, cls)
        state, num_params = _meta_state(config)
        assert family.matches(state)
        detected = family.detect(state, {"rgb_range": config.rgb_range})
        # Shapes only show n_feats // reduction: detection gives the largest reduction with that bottleneck.
        canonical = dataclasses.replace(config, reduction=config.n_feats // config.squeezed)
        assert detected == canonical and detected.squeezed == config.squeezed
        assert config.num_params == num_params
        assert config.param_shapes() == {k: tuple(v.shape) for k, v in state.items()}


@pytest.mark.parametrize("config", [RCANConfig(), HANConfig(), HANConfig(scale=3), RCANConfig(scale=8)])
def test_official_sizes_round_trip(config: RCANConfig) -> None:
    state, num_params = _meta_state(config)
    family = HAN_FAMILY if isinstance(config, HANConfig) else RCAN_FAMILY
    assert family.detect(state, {}) == config
    assert config.num_params == num_params


def test_config_from_dict_is_strict() -> None:
    assert HAN_FAMILY.config_from_dict({"scale": 2, "n_feats": 32}) == HANConfig(scale=2, n_feats=32)
    assert (HAN_FAMILY.config_type, RCAN_FAMILY.config_type) == (HANConfig, RCANConfig)
    with pytest.raises(ValueError, match="n_feat"):
        RCAN_FAMILY.config_from_dict({"n_feat": 32})
    with pytest.raises(ValueError, match="arch"):
        RCAN_FAMILY.config_from_dict({"arch": "han"})
    with pytest.raises(ValueError, match="scale 5"):
        RCAN_FAMILY.config_from_dict({"scale": 5})
    with pytest.raises(TypeError):
        RCAN_FAMILY.build(HANConfig())


def test_configs_import_without_torch() -> None:
    code = "import sys, hat_cli.model.rcan as r; r.HAN_FAMILY.config_from_dict({}); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# --------------------------------------------------------------------------- attention modules, by hand


def _softmax(row: np.ndarray) -> np.ndarray:
    exp = np.exp(row - row.max())
    return exp / exp.sum()


def test_layer_attention_by_hand() -> None:
    rng = np.random.default_rng(0)
    batch, layers, channels, height, width = 2, 3, 2, 2, 3
    x = rng.normal(scale=0.4, size=(batch, layers, channels, height, width))
    gamma = 0.6
    expected = np.empty_like(x)
    for b in range(batch):
        energy = np.array([[np.sum(x[b, i] * x[b, j]) for j in range(layers)] for i in range(layers)])
        for i in range(layers):
            weights = _softmax(energy[i].max() - energy[i])
            expected[b, i] = gamma * sum(weights[j] * x[b, j] for j in range(layers)) + x[b, i]

    module = LayerAttention()
    with torch.no_grad():
        module.gamma.fill_(gamma)
        out = module(torch.tensor(x, dtype=torch.float32))
    assert out.shape == (batch, layers * channels, height, width)
    np.testing.assert_allclose(out.numpy(), expected.reshape(batch, layers * channels, height, width), atol=1e-5)


def test_channel_spatial_attention_by_hand() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 3, 4))
    kernel, bias, gamma = rng.normal(size=(3, 3, 3)), 0.3, 0.7
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (1, 1)))  # zero padding over channels, rows, columns
    conv = np.full_like(x, bias)
    for b, c, h, w in np.ndindex(*x.shape):
        conv[b, c, h, w] += np.sum(kernel * padded[b, c : c + 3, h : h + 3, w : w + 3])
    expected = x * gamma / (1 + np.exp(-conv)) + x

    module = ChannelSpatialAttention()
    with torch.no_grad():
        module.conv.weight.copy_(torch.tensor(kernel).view(1, 1, 3, 3, 3))
        module.conv.bias.fill_(bias)
        module.gamma.fill_(gamma)
        inputs = torch.tensor(x, dtype=torch.float32)
        np.testing.assert_allclose(module(inputs).numpy(), expected, atol=1e-5)
        # the banded 2-D formulation is torch's Conv3d on the (1, C, H, W) volume
        reference = module.conv(inputs.unsqueeze(1)).squeeze(1)
        np.testing.assert_allclose(module.volume_conv(inputs).numpy(), reference.numpy(), atol=1e-5)


def test_han_attends_layers_like_last_conv_of_la() -> None:
    net = _random_network(HANConfig(scale=2, n_feats=6, n_resgroups=3, n_resblocks=1, reduction=2))
    stack = torch.randn(2, 4, 6, 5, 7) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(net.attend_layers(stack), net.last_conv(net.la(stack)), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- near misses


def _random_network(config: RCANConfig, seed: int = 0) -> RCAN:
    """A random network with its zero-initialised attention gammas set, so every path counts."""
    torch.manual_seed(seed)
    net = (HAN if isinstance(config, HANConfig) else RCAN)(config)
    if isinstance(net, HAN):
        with torch.no_grad():
            net.la.gamma.fill_(0.5)
            net.csa.gamma.fill_(0.8)
    return net.eval()


TINY_HAN = HANConfig(scale=4, n_feats=8, n_resgroups=3, n_resblocks=2, reduction=2)
TINY_RCAN = RCANConfig(scale=4, n_feats=8, n_resgroups=3, n_resblocks=2, reduction=2)


def _state(config: RCANConfig) -> State:
    return dict(_random_network(config).state_dict())


def test_han_without_layer_attention() -> None:
    state = _state(TINY_HAN)
    del state["la.gamma"]
    assert HAN_FAMILY.matches(state) and not RCAN_FAMILY.matches(state)
    with pytest.raises(NotThisFamily, match=r"missing la\.gamma: a HAN checkpoint without its layer attention"):
        HAN_FAMILY.detect(state, {})


def test_han_with_a_wrong_layer_stack() -> None:
    state = _state(TINY_HAN)
    state["last_conv.weight"] = torch.zeros(8, 8 * 11, 3, 3)  # official 11 layers, but only 3 groups here
    with pytest.raises(NotThisFamily, match=r"last_conv takes 88 channels.*stacks 4 body outputs"):
        HAN_FAMILY.detect(state, {})


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.update({"tail.0.0.weight": torch.zeros(40, 8, 3, 3)}), "unknown upsampler layout: .*40"),
        (lambda s: s.update({"tail.0.3.weight": s.pop("tail.0.2.weight")}), r"unknown upsampler layout: .*\[0, 3\]"),
        (lambda s: [s.pop(k) for k in [k for k in s if k.startswith("tail.0.")]], "unknown upsampler layout"),
        (lambda s: s.pop("tail.1.weight"), r"missing \['tail\.1\.weight'\]"),
    ],
    ids=["5x-channels", "odd-index", "no-upsampler", "no-last-conv"],
)
def test_rcan_with_a_broken_tail(edit: Any, message: str) -> None:
    state = _state(TINY_RCAN)
    edit(state)
    assert RCAN_FAMILY.matches(state)
    with pytest.raises(NotThisFamily, match=message):
        RCAN_FAMILY.detect(state, {})


def test_hat_is_neither() -> None:
    tiny = HATConfig(upscale=2, embed_dim=12, depths=(1,), num_heads=(2,), window_size=4, squeeze_factor=4)
    state = HAT(tiny).state_dict()
    assert not RCAN_FAMILY.matches(state) and not HAN_FAMILY.matches(state)
    for family in (RCAN_FAMILY, HAN_FAMILY):
        with pytest.raises(NotThisFamily):
            family.detect(state, {})


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("body.200000.body.0.body.0.weight", "index 200000 is beyond"),
        ("body.0.body.200000.body.0.weight", "index 200000 is beyond"),
        ("body.7.body.0.body.0.weight", "not numbered 0..4"),
        ("body.1.body.5.body.0.weight", "not numbered 0..3"),
    ],
)
def test_malformed_indices_are_refused_fast(key: str, message: str) -> None:
    state = _state(TINY_HAN)
    state[key] = torch.zeros(8, 8, 3, 3)
    start = time.perf_counter()
    with pytest.raises(NotThisFamily, match=message):
        HAN_FAMILY.detect(state, {})
    assert time.perf_counter() - start < 0.1


def test_absurd_and_uneven_sizes() -> None:
    state = _state(TINY_RCAN)
    state["head.0.weight"] = torch.empty(100_000, 3, 3, 3, device="meta")
    with pytest.raises(NotThisFamily, match="100000 output channels, beyond any real model"):
        RCAN_FAMILY.detect(state, {})
    state = _state(TINY_RCAN)
    for key in [k for k in state if k.startswith("body.1.body.1.")]:
        del state[key]
    state["body.1.body.1.weight"] = state.pop("body.1.body.2.weight")
    state["body.1.body.1.bias"] = state.pop("body.1.body.2.bias")
    with pytest.raises(NotThisFamily, match="different numbers of blocks"):
        RCAN_FAMILY.detect(state, {})


# --------------------------------------------------------------------------- precision and memory layout


@pytest.mark.parametrize(
    "config", [TINY_HAN, TINY_RCAN, dataclasses.replace(TINY_HAN, scale=3)], ids=["han", "rcan", "han-x3"]
)
def test_bf16_autocast_and_channels_last(config: RCANConfig) -> None:
    net = _random_network(config)
    x = torch.rand(1, 3, 13, 17)
    with torch.inference_mode():
        reference = run_padded(net, x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = run_padded(net, x).float()
        channels_last = run_padded(net, x.contiguous(memory_format=torch.channels_last))
    error = (half - reference).abs()
    assert error.max() < 0.03 and error.mean() < 0.005
    torch.testing.assert_close(channels_last, reference, atol=1e-5, rtol=0)


def test_network_contract() -> None:
    net = _random_network(TINY_HAN)
    assert isinstance(net, Network)
    assert (net.scale, net.size_multiple, net.input_range, net.in_channels) == (4, 1, 255.0, 3)
    assert 0 < net.bytes_per_input_pixel(torch.bfloat16) < net.bytes_per_input_pixel()
    hidden = _random_network(dataclasses.replace(TINY_RCAN, rgb_range=1.0))
    assert hidden.input_range == 1.0
    assert RCAN_FAMILY.detect(hidden.state_dict(), {"rgb_range": 1.0}).rgb_range == 1.0


def test_rgb_range_is_read_from_the_stored_mean_shift() -> None:
    """add_mean.bias = rgb_range * mean colour: a file trained on 0..1 is recognised without metadata."""
    for rgb_range in (255.0, 1.0):
        state = _random_network(dataclasses.replace(TINY_RCAN, rgb_range=rgb_range)).state_dict()
        assert RCAN_FAMILY.detect(state, {}).rgb_range == rgb_range
        assert RCAN_FAMILY.detect(state, {"rgb_range": 65535.0}).rgb_range == 65535.0  # metadata wins
    # A non-unit std (weight I / std, bias rgb_range * mean / std): 0..1 with std 0.2 has biases over 2.
    std = torch.tensor([0.2, 0.25, 0.3])
    mean = torch.tensor([0.45, 0.44, 0.40])
    for rgb_range in (1.0, 255.0):
        shifted = {
            **state,
            "add_mean.weight": torch.diag(1 / std)[:, :, None, None],
            "add_mean.bias": rgb_range * mean / std,
        }
        assert float(shifted["add_mean.bias"].max()) > 1.5 or rgb_range == 255.0
        assert RCAN_FAMILY.detect(shifted, {}).rgb_range == rgb_range
    state = {**state, "add_mean.bias": torch.zeros_like(state["add_mean.bias"])}  # no mean shift: the default
    assert RCAN_FAMILY.detect(state, {}).rgb_range == 255.0
