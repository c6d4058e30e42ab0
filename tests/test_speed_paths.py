"""Every speed path gives the plain path's output.

Fast paths under test: SDPA attention (4-D masks), shifted windows gathered in one index_select
and grouped by mask class, OCAB from strided views, oneDNN linear layers (GELU fused), head-dim
padding for CUDA kernels (forced on CPU here), autocast with cached low-precision masks, and the
torch.compile'd forward.
"""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from einops import rearrange
from PIL import Image
from torch import nn

from hat_cli.api import Upscaler, image_to_tensor
from hat_cli.checkpoint import load_model
from hat_cli.model import HAT, HATConfig, layers
from hat_cli.model.compiled import CompiledNetwork
from hat_cli.model.hat.arch import OCAB
from hat_cli.model.hat.windows import (
    SHIFT_MASK_VALUE,
    overlap_relative_position_index,
    shift_mask,
    shift_mask_classes,
    window_order,
    window_partition,
    window_reverse,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MANIFEST = SHARED / "fixtures" / "hat-reference" / "manifest.json"

# Window 4 keeps images small; heads (3, 2) give head dims 8 and 12.
CONFIG = HATConfig(
    upscale=2,
    embed_dim=24,
    depths=(2, 2),
    num_heads=(3, 2),
    window_size=4,
    compress_ratio=2,
    squeeze_factor=6,
    mlp_ratio=2.0,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: on a busy runner, OpenMP threads cost far more than they give (10x here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_model(config: HATConfig = CONFIG, seed: int = 0) -> HAT:
    """Random weights with non-trivial bias tables, so biases and shift masks matter."""
    torch.manual_seed(seed)
    model = HAT(config).eval()
    for name, param in model.named_parameters():
        if "relative_position_bias_table" in name:
            param.data.normal_(0, 1)
    return model


# (B, H, W) inputs: 1x1 window, one window row, one window column, odd sizes, batch of two.
SHAPES = [(1, 4, 4), (1, 4, 12), (1, 12, 4), (1, 8, 16), (2, 13, 9)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_model_fast_path_equals_plain_path(shape: tuple[int, int, int]) -> None:
    model = random_model()
    x = torch.rand(shape[0], 3, *shape[1:])
    with torch.inference_mode():
        fast = model(x)
        model.set_fused_attention(False)
        plain = model(x)
    assert fast.shape == (shape[0], 3, 2 * shape[1], 2 * shape[2])
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shift", [0, 2], ids=["unshifted", "shifted"])
@pytest.mark.parametrize(("batch", "height", "width"), [(1, 4, 4), (1, 4, 16), (1, 16, 4), (2, 12, 8)])
def test_hab_gathered_windows_equal_roll_and_partition(shift: int, batch: int, height: int, width: int) -> None:
    block = random_model().layers[0].residual_group.blocks[1 if shift else 0]
    assert block.shift_size == shift
    x = torch.randn(batch, height, width, CONFIG.embed_dim)
    with torch.inference_mode():
        block.attn.fused = True
        fast = block(x)
        block.attn.fused = False
        reference = block(x)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=0)


def official_ocab(block: OCAB, x: torch.Tensor) -> torch.Tensor:
    """OCAB as the official code writes it: nn.Unfold windows, (b nh nw) order, plain softmax."""
    h, w, c = x.shape[1:]
    ws, ows, heads = block.window_size, block.overlap_win_size, block.num_heads
    qkv = block.qkv(block.norm1(x))
    q = window_partition(qkv[..., :c], ws)  # b*nW, ws*ws, c
    unfold = nn.Unfold(kernel_size=ows, stride=ws, padding=(ows - ws) // 2)
    kv = unfold(qkv[..., c:].permute(0, 3, 1, 2))  # b, 2c*ows*ows, nW
    k, v = rearrange(kv, "b (two c oh ow) nw -> two (b nw) (oh ow) c", two=2, c=c, oh=ows, ow=ows)
    q, k, v = (rearrange(t, "w n (heads d) -> w heads n d", heads=heads) for t in (q, k, v))
    index = overlap_relative_position_index(ws, ows)
    bias = block.relative_position_bias_table[index.view(-1)].view(ws * ws, ows * ows, -1).permute(2, 0, 1)
    attn = ((q * (c // heads) ** -0.5) @ k.transpose(-2, -1) + bias).softmax(-1)
    out = window_reverse(rearrange(attn @ v, "w heads n d -> w n (heads d)"), ws, h, w)
    x = block.proj(out) + x
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "plain"])
@pytest.mark.parametrize(("batch", "height", "width"), [(1, 4, 4), (1, 8, 12), (2, 12, 4)])
def test_ocab_strided_views_equal_official_unfold(fused: bool, batch: int, height: int, width: int) -> None:
    block = random_model().layers[1].residual_group.overlap_attn
    block.fused = fused
    x = torch.randn(batch, height, width, CONFIG.embed_dim)
    with torch.inference_mode():
        torch.testing.assert_close(block(x), official_ocab(block, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 8, 8), (2, 12, 16), (1, 4, 12), (3, 4, 4)])
def test_window_order_is_rolled_partition_grouped_by_mask_class(batch: int, height: int, width: int) -> None:
    ws, shift = 4, 2
    x = torch.randn(batch, height, width, 5)
    index, inverse, groups = window_order(height, width, ws, shift, batch, torch.device("cpu"))
    assert torch.equal(index.sort().values, torch.arange(batch * height * width))
    assert torch.equal(index[inverse], torch.arange(index.numel()))
    windows = x.reshape(-1, 5)[index].view(-1, ws * ws, 5)
    # Official windows: (b nh nw) order of the rolled image, with the full per-window mask.
    official = window_partition(torch.roll(x, (-shift, -shift), (1, 2)), ws).view(batch, -1, ws * ws, 5)
    masks = shift_mask(height, width, ws, shift)
    classes = shift_mask_classes(ws, shift)
    nw = width // ws
    seen = []
    assert groups[0][0] == 0 and groups[-1][1] == windows.shape[0]
    for start, stop, shift_class in groups:
        for pos in range(start, stop):
            window, image = divmod(pos, batch)  # window-major, batch-minor
            seen.append(window)
            match = (official[image] == windows[pos]).all(-1).all(-1).nonzero().flatten().tolist()
            assert len(match) == 1
            assert torch.equal(masks[match[0]], classes[shift_class])
            # Row-major inside a class, and the class matches the window's grid position.
            row, col = divmod(match[0], nw)
            assert shift_class == 2 * (row == height // ws - 1) + (col == nw - 1)
    assert sorted(set(seen)) == list(range(windows.shape[0] // batch))
    assert set(classes.unique().tolist()) <= {0.0, SHIFT_MASK_VALUE}


@pytest.mark.skipif(not layers.ONEDNN_LINEAR, reason="oneDNN linear op not available on this build/CPU")
def test_onednn_linear_equals_blas_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = layers.Linear(24, 40)
    x = torch.randn(3, 16, 24)
    with torch.inference_mode():
        assert layer.use_onednn(x)
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
        gelu = torch.nn.functional.gelu(torch.nn.functional.linear(x, layer.weight, layer.bias))
        torch.testing.assert_close(layer.onednn(x, "gelu"), gelu)
    assert not layer.use_onednn(x)  # autograd on: plain F.linear
    model = random_model()
    x = torch.rand(2, 3, 12, 8)
    with torch.inference_mode():
        fast = model(x)
        monkeypatch.setattr(layers, "ONEDNN_LINEAR", False)
        blas = model(x)
    torch.testing.assert_close(fast, blas, atol=1e-5, rtol=0)


def test_head_dim_padding_for_cuda_kernels_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    config = HATConfig(
        upscale=2, embed_dim=30, depths=(2,), num_heads=(3,), window_size=4, compress_ratio=3, squeeze_factor=5
    )  # head dim 10: padded to 16
    model = random_model(config)
    x = torch.rand(1, 3, 12, 8)
    padded_calls = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        padded_calls.append(q.shape[-1])
        return real_sdpa(q, *args, **kwargs)

    with torch.inference_mode():
        unpadded = model(x)
        monkeypatch.setattr(layers, "PAD_HEAD_DIM_DEVICES", {"cpu"})
        monkeypatch.setattr(layers.F, "scaled_dot_product_attention", spy)
        padded = model(x)
    assert padded_calls and set(padded_calls) == {16}
    torch.testing.assert_close(padded, unpadded, atol=1e-5, rtol=0)


def test_autocast_bf16_uses_cached_masks_per_dtype() -> None:
    model = random_model()
    x = torch.rand(1, 3, 12, 8)
    fp32 = Upscaler(model, device="cpu", precision="fp32").upscale_tensor(x)
    bf16 = Upscaler(model, device="cpu", precision="bf16").upscale_tensor(x)
    again = Upscaler(model, device="cpu", precision="fp32").upscale_tensor(x)
    assert bf16.dtype == torch.float32
    # In-place residual adds must not demote the fp32 residual stream to autocast's bf16.
    block = model.layers[0].residual_group
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert block(torch.randn(1, 8, 8, CONFIG.embed_dim)).dtype == torch.float32
    assert torch.equal(fp32, again)  # the bf16 masks did not replace the fp32 ones
    assert (bf16 - fp32).abs().max() < 0.1


def test_compiled_forward_matches_eager_and_buckets_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    # aot_eager traces exactly what inductor would compile (dynamo + AOT graphs, in-graph masks
    # and window indices) without minutes of C++ compilation on a CPU runner.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    config = HATConfig(
        upscale=2, embed_dim=12, depths=(2,), num_heads=(2,), window_size=4, compress_ratio=3, squeeze_factor=4
    )
    model = random_model(config)
    upscaler = Upscaler(model, device="cpu", precision="fp32", compile=True)
    assert isinstance(upscaler.runner, CompiledNetwork)
    upscaler.runner.max_shapes = 1
    for h, w in [(13, 9), (16, 12), (5, 7)]:  # 13x9 and 16x12 share the 16x12 bucket; 5x7 runs eagerly
        x = torch.rand(1, 3, h, w)
        with torch.inference_mode():
            expected = model(x)
        torch.testing.assert_close(upscaler.upscale_tensor(x), expected, atol=1e-5, rtol=0)
    assert upscaler.runner.compiled_shapes == {(1, 3, 16, 12)}


def reference_cases() -> list[tuple[dict, dict]]:
    if not MANIFEST.is_file():
        return []
    manifest = json.loads(MANIFEST.read_text())
    return [(entry, case) for entry in manifest.values() for case in entry["cases"]]


@pytest.mark.skipif(not MANIFEST.is_file(), reason="shared reference fixtures not present")
@pytest.mark.parametrize(("entry", "case"), reference_cases(), ids=lambda v: v.get("input", ""))
def test_fast_path_matches_reference_fixtures(entry: dict, case: dict) -> None:
    model = load_model(MANIFEST.parent / entry["checkpoint"])
    x = image_to_tensor(Image.open(MANIFEST.parent / case["input"]))
    with torch.inference_mode():
        out = model(x)[0].numpy()
    expected = np.load(MANIFEST.parent / case["output_npy"])
    assert out.shape == expected.shape
    assert np.abs(out - expected).max() < 1e-5


def test_gradients_flow_after_inference_filled_the_caches() -> None:
    """Index tables cached during inference must still serve autograd (training, LAM) later."""
    model = HAT(replace(CONFIG, window_size=4))
    x = torch.rand(1, 3, 12, 8)
    with torch.inference_mode():
        model(x)
    x.requires_grad_(True)
    model(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_channels_last_input_and_weights_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA channels-last switch, forced on CPU: NHWC input and convolution weights."""
    model = random_model()
    x = torch.rand(2, 3, 13, 9)
    with torch.inference_mode():
        expected = model(x)
    monkeypatch.setattr(layers, "CHANNELS_LAST_DEVICES", {"cpu"})
    upscaler = Upscaler(model, device="cpu", precision="fp32", tile=0)
    weight = model.conv_first.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    seen = []
    hook = model.conv_first.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    out = upscaler.upscale_tensor(x)
    hook.remove()
    assert seen and seen[0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_compiled_network_pads_a_smaller_batch_to_the_compiled_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The last, smaller chunk of a grid row reuses the graph of the full batch: one graph per image."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    config = HATConfig(
        upscale=2, embed_dim=12, depths=(2,), num_heads=(2,), window_size=4, compress_ratio=3, squeeze_factor=4
    )
    model = random_model(config)
    x = torch.rand(1, 3, 8, 40)  # tile 16, overlap 8: 1 x 4 tiles; batch 3 -> balanced chunks of 2 + 2
    eager = Upscaler(model, device="cpu", precision="fp32", tile=16, tile_overlap=8, tile_batch=3)
    expected = eager.upscale_tensor(x)
    upscaler = Upscaler(model, device="cpu", precision="fp32", compile=True, tile=16, tile_overlap=8, tile_batch=3)
    torch.testing.assert_close(upscaler.upscale_tensor(x), expected, atol=1e-5, rtol=0)
    assert upscaler.runner.compiled_shapes == {(2, 3, 8, 16)}
    runner = upscaler.runner
    tiles = torch.rand(3, 3, 8, 16)
    with torch.inference_mode():
        full = runner(tiles)
        one = runner(tiles[:1])  # padded to the compiled batch of 3, cut back to 1
        torch.testing.assert_close(one, model(tiles[:1]), atol=1e-5, rtol=0)
        torch.testing.assert_close(full, model(tiles), atol=1e-5, rtol=0)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # another precision: a bucket of its own
            runner(tiles)
    assert one.shape == (1, 3, 16, 32)
    assert runner.compiled_shapes == {(2, 3, 8, 16), (3, 3, 8, 16)} and len(runner._buckets) == 3
    off = Upscaler(model, device="cpu", precision="fp32", compile=True, tile=16, tile_overlap=8, tile_batch=3)
    off.runner.pad_batch = False
    with torch.inference_mode():
        off.runner(tiles)
        off.runner(tiles[:1])
    assert off.runner.compiled_shapes == {(3, 3, 8, 16), (1, 3, 8, 16)}
