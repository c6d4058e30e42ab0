"""Tiled inference engine: planning, blending weights, exactness, OOM and fp32 fallbacks, uint8 bands."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hat_cli.api import Upscaler, tensor_to_array
from hat_cli.errors import DeviceOutOfMemory
from hat_cli.model import HAT, HATConfig
from hat_cli.model.compiled import CompiledNetwork
from hat_cli.model.ensemble import SelfEnsemble
from hat_cli.model.padding import reflect_pad_to_multiple
from hat_cli.tiling import (
    RunReport,
    TileEngine,
    array_reader,
    array_writer,
    axis_starts,
    axis_weights,
    choose_tile,
    default_overlap,
    make_plan,
    round_overlap,
    round_tile,
)

REFERENCE = Path(__file__).parent / "data" / "hat-reference"  # official-format fixture checkpoints
CPU = torch.device("cpu")


# --------------------------------------------------------------------------- fake models


class FakeNetwork(nn.Module):
    """The Network contract (hat_cli.model.contract) for the fake models below."""

    scale = 2
    size_multiple = 8
    input_range = 1.0
    in_channels = 3
    per_pixel = 48_000.0

    def bytes_per_input_pixel(self, dtype: torch.dtype | None = None) -> float:
        return self.per_pixel


class LocalNet(FakeNetwork):
    """A local operator shaped like a model: two 3x3 convs (receptive radius 2 input pixels) and a
    pixel shuffle, plus nearest upsampling of the input. (B, 3, h, w) -> (B, 3, s*h, s*w)."""

    radius = 2

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 3 * self.scale**2, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: Tensor) -> Tensor:
        assert x.shape[-2] % self.size_multiple == 0 and x.shape[-1] % self.size_multiple == 0
        self.calls.append(tuple(x.shape))
        residual = F.pixel_shuffle(self.conv2(torch.relu(self.conv1(x))), self.scale)
        return F.interpolate(x, scale_factor=self.scale, mode="nearest") + residual


def untiled(model: nn.Module, x: Tensor) -> Tensor:
    """The reference: the official recipe, (B, C, H, W) -> (B, C, sH, sW)."""
    h, w = x.shape[-2:]
    with torch.inference_mode():
        return model(reflect_pad_to_multiple(x, model.size_multiple))[..., : h * model.scale, : w * model.scale]


def run_tiled(engine: TileEngine, x: Tensor, tile: int, overlap: int | None = None, blend: str = "feather") -> Tensor:
    """(C, H, W) -> (C, sH, sW) through the engine with a float canvas."""
    return run_tiled_report(engine, x, tile, overlap, blend)[0]


def run_tiled_report(
    engine: TileEngine, x: Tensor, tile: int, overlap: int | None = None, blend: str = "feather"
) -> tuple[Tensor, RunReport]:
    """:func:`run_tiled`, with the engine's report of the run."""
    _, h, w = x.shape
    plan = make_plan(h, w, engine.scale, engine.window, tile, overlap, blend=blend)  # type: ignore[arg-type]
    canvas = torch.full((x.shape[0], h * engine.scale, w * engine.scale), float("nan"))

    def write(row: int, block: Tensor) -> None:
        canvas[:, row : row + block.shape[1]] = block

    report = engine.run(plan, lambda y0, y1, x0, x1: x[:, y0:y1, x0:x1], write)
    return canvas, report


def image(h: int, w: int, seed: int = 0) -> Tensor:
    """(3, h, w) smooth-ish random image in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, h // 4 + 2, w // 4 + 2, generator=g)
    smooth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
    return (0.7 * smooth + 0.3 * torch.rand(3, h, w, generator=g)).clamp(0, 1)


def psnr(a: Tensor, b: Tensor) -> float:
    mse = ((a.clamp(0, 1) - b.clamp(0, 1)) ** 2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def tiny_hat(scale: int = 2, seed: int = 0) -> HAT:
    torch.manual_seed(seed)
    config = HATConfig(
        upscale=scale, embed_dim=12, depths=(2,), num_heads=(2,), window_size=8, compress_ratio=3, squeeze_factor=4
    )
    return HAT(config).eval()


# --------------------------------------------------------------------------- planning


def test_tile_and_overlap_rounding() -> None:
    assert round_tile(100, 16) == 96
    assert round_tile(5, 16) == 16  # at least one window
    assert round_tile(64, 8) == 64
    assert round_overlap(20, 16, 128) == 32  # overlap rounds up (quality) ...
    assert round_overlap(100, 16, 96) == 48  # ... but stays at most half the tile
    assert round_overlap(8, 8, 8) == 0
    assert round_overlap(0, 8, 64) == 0
    assert default_overlap(16) == 32 and default_overlap(8) == 32 and default_overlap(24) == 48


def test_edge_tiles_shift_inward() -> None:
    starts = axis_starts(100, 32, 16)
    assert starts == (0, 16, 32, 48, 64, 68)  # last tile ends at the border, same size, no padding
    assert axis_starts(32, 32, 8) == (0,)
    assert axis_starts(33, 32, 8) == (0, 1)
    for length in range(33, 200, 7):
        s = axis_starts(length, 32, 8)
        assert s[-1] + 32 == length and all(b - a <= 24 for a, b in itertools.pairwise(s))


def test_plan_pads_to_window_like_the_network() -> None:
    plan = make_plan(45, 70, 2, 8, 32, 16)
    assert (plan.padded_height, plan.padded_width) == (48, 72)
    assert (plan.tile_h, plan.tile_w, plan.overlap, plan.margin) == (32, 32, 16, 7.5)
    assert plan.ys == (0, 16) and plan.xs == (0, 16, 32, 40)
    narrow = make_plan(20, 300, 4, 16, 64)  # an axis shorter than a tile gets one (padded) tile
    assert narrow.ys == (0,) and narrow.tile_h == 32 and narrow.tile_w == 64
    whole = make_plan(50, 60, 4, 16, 64)  # tile covers the padded image: no tiling at all
    assert whole.whole and (whole.tile_h, whole.tile_w) == (64, 64)
    assert make_plan(50, 60, 4, 16, 0).whole


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize("blend", ["feather", "crop"])
@pytest.mark.parametrize(("length", "tile", "overlap", "scale"), [(100, 32, 16, 2), (72, 32, 16, 4), (200, 64, 32, 3)])
def test_weights_sum_to_one_and_keep_the_margin(blend: str, length: int, tile: int, overlap: int, scale: int) -> None:
    starts = axis_starts(length, tile, overlap)
    margin = 15 * overlap / 32
    weights = axis_weights(starts, tile, length, scale, overlap, margin, blend)  # type: ignore[arg-type]
    total = np.zeros(length * scale)
    for w in weights:
        total[w.lo : w.hi] += w.weight
        assert np.all(w.weight >= 0)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    # 2-D weights are products of 1-D ones: they sum to one too.
    grid = np.zeros((length * scale, length * scale))
    for r in weights:
        for c in weights:
            grid[r.lo : r.hi, c.lo : c.hi] += np.outer(r.weight, c.weight)
    np.testing.assert_allclose(grid, 1.0, atol=1e-6)
    for k, (start, w) in enumerate(zip(starts, weights, strict=True)):
        lo, hi = start * scale, (start + tile) * scale
        assert lo <= w.lo and w.hi <= hi
        if k > 0:  # interior left border: margin kept out of the blend
            assert w.lo >= lo + margin * scale
        else:  # image border: full weight right up to it
            assert w.lo == 0 and w.weight[0] == 1.0
        if k < len(starts) - 1:
            assert w.hi <= hi - margin * scale
        else:
            assert w.hi == length * scale and w.weight[-1] == 1.0


def test_feather_is_smooth_and_crop_is_a_step() -> None:
    starts = axis_starts(64, 32, 16)
    feather = axis_weights(starts, 32, 64, 4, 16, 6, "feather")
    crop = axis_weights(starts, 32, 64, 4, 16, 6, "crop")
    ramp = (16 - 2 * 6) * 4  # output pixels
    assert np.abs(np.diff(feather[1].weight)).max() <= math.pi / (2 * ramp) + 1e-6
    assert set(np.unique(crop[1].weight)) == {1.0}
    assert crop[0].hi == crop[1].lo == (16 + 32) // 2 * 4  # cut at the centre of the overlap


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("blend", ["feather", "crop"])
@pytest.mark.parametrize(("h", "w"), [(45, 70), (64, 64), (33, 100)])
def test_local_operator_tiled_equals_untiled(blend: str, h: int, w: int) -> None:
    model = LocalNet().eval()
    x = image(h, w)
    reference = untiled(model, x[None])[0]
    engine = TileEngine(model, CPU, torch.float32)
    out = run_tiled(engine, x, tile=32, overlap=16, blend=blend)
    assert make_plan(h, w, 2, 8, 32, 16).tiles > 1
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=0)


def test_whole_image_plan_is_bit_exact_with_the_network() -> None:
    model = tiny_hat()
    x = image(21, 30)[None]
    with torch.inference_mode():
        reference = model(x)  # HAT pads and crops itself
    out = Upscaler(model, device="cpu", tile=0).upscale_tensor(x)
    assert torch.equal(out, reference)


@pytest.mark.parametrize(("h", "w"), [(5, 7), (1, 20), (3, 1)])
def test_images_smaller_than_a_window_are_reflect_padded_and_cropped(h: int, w: int) -> None:
    model = LocalNet().eval()
    x = image(8, 24)[:, :h, :w].contiguous()
    out = run_tiled(TileEngine(model, CPU, torch.float32), x, tile=32)
    assert out.shape == (3, 2 * h, 2 * w)
    torch.testing.assert_close(out, untiled(model, x[None])[0], atol=1e-5, rtol=0)
    assert all(shape[-2] % 8 == 0 and shape[-1] % 8 == 0 for shape in model.calls)


def _fixture_x2() -> nn.Module:
    path = REFERENCE / "tiny_x2.pth"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    from hat_cli.checkpoint import load_model

    return load_model(path)


class Memo(FakeNetwork):
    """Reuses outputs for repeated tiles (feather and crop share the grid): halves test time."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.scale, self.size_multiple = model, model.scale, model.size_multiple
        self.cache: dict[bytes, Tensor] = {}

    def forward(self, x: Tensor) -> Tensor:
        key = x.numpy().tobytes() + bytes(str(x.shape), "ascii")
        if key not in self.cache:
            self.cache[key] = self.model(x)
        return self.cache[key]


@pytest.mark.parametrize("source", ["fixture", "seeded"])
def test_blend_not_worse_than_hard_crop_on_a_hat(source: str) -> None:
    model = _fixture_x2() if source == "fixture" else tiny_hat()
    x = image(32, 48, seed=3)
    reference = untiled(model, x[None])[0]
    engine = TileEngine(Memo(model), CPU, torch.float32)
    blend = psnr(run_tiled(engine, x, tile=24, overlap=16, blend="feather"), reference)
    crop = psnr(run_tiled(engine, x, tile=24, overlap=16, blend="crop"), reference)
    assert blend >= crop, (blend, crop)


# --------------------------------------------------------------------------- failures


class OutOfMemoryOnce(LocalNet):
    """Raises CUDA's out-of-memory error on the first call, or on every batch of several tiles."""

    def __init__(self, first: bool = True, batches: bool = False, always_above: int | None = None) -> None:
        super().__init__()
        self.first, self.batches, self.always_above = first, batches, always_above

    def forward(self, x: Tensor) -> Tensor:
        if self.first:
            self.first = False
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if self.batches and x.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (batch)")
        if self.always_above is not None and max(x.shape[-2:]) > self.always_above:
            raise RuntimeError("MPS backend out of memory")
        return super().forward(x)


def test_out_of_memory_halves_the_tile_and_never_pastes_a_failed_tile() -> None:
    model = OutOfMemoryOnce()
    x = image(45, 70)
    reference = untiled(LocalNet().eval(), x[None])[0]
    engine = TileEngine(model, CPU, torch.float32)
    out, report = run_tiled_report(engine, x, tile=32, overlap=16)
    assert report.oom_retries == 1 and engine.max_side == 16 and report.smallest_tile == 16
    assert model.calls and all(max(shape[-2:]) <= 16 for shape in model.calls)  # retried at half size
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=0)  # nothing from the failed call


def test_out_of_memory_on_a_whole_image_falls_back_to_overlapping_tiles() -> None:
    model = OutOfMemoryOnce()
    x = image(64, 96)
    out = run_tiled(TileEngine(model, CPU, torch.float32), x, tile=0)
    assert len({shape[-1] for shape in model.calls}) == 1 and model.calls[0][-1] == 48
    torch.testing.assert_close(out, untiled(LocalNet().eval(), x[None])[0], atol=1e-5, rtol=0)


def test_out_of_memory_in_a_batch_splits_the_batch_first() -> None:
    model = OutOfMemoryOnce(first=False, batches=True)
    x = image(40, 72)
    engine = TileEngine(model, CPU, torch.float32, batch=4)
    out = run_tiled(engine, x, tile=32, overlap=16)
    assert engine.max_batch == 1 and engine.max_side is None
    torch.testing.assert_close(out, untiled(LocalNet().eval(), x[None])[0], atol=1e-5, rtol=0)


def test_out_of_memory_keeps_halving_then_gives_up_cleanly() -> None:
    engine = TileEngine(OutOfMemoryOnce(first=False, always_above=8), CPU, torch.float32)
    out = run_tiled(engine, image(24, 24), tile=32, overlap=8)
    assert engine.max_side == 8 and torch.isfinite(out).all()
    hopeless = TileEngine(OutOfMemoryOnce(first=False, always_above=0), CPU, torch.float32)
    with pytest.raises(DeviceOutOfMemory):
        run_tiled(hopeless, image(16, 16), tile=16)


class NaNInHalf(FakeNetwork):
    """Nearest upsampling (exact in any precision) that returns NaN under autocast for tiles
    containing a bright pixel, as HAT overflowing in fp16 would."""

    def __init__(self) -> None:
        super().__init__()
        self.half_calls = 0

    def forward(self, x: Tensor) -> Tensor:
        out = x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1) * 0.5 + 0.25
        if torch.is_autocast_enabled("cpu"):
            self.half_calls += 1
            out = torch.where((x.amax(dim=(1, 2, 3)) > 0.99)[:, None, None, None], float("nan"), out)
        return out


def test_non_finite_half_precision_tiles_are_recomputed_in_fp32() -> None:
    x = image(40, 72) * 0.9
    x[:, 3, 5] = 1.0  # only the top-left tile sees it
    model = NaNInHalf()
    upscaler = Upscaler(model, device="cpu", precision="bf16", tile=32, tile_overlap=16)
    out = upscaler.upscale_tensor(x[None])[0]
    stats = upscaler.last_stats
    assert stats is not None and stats.report.fp32_fallbacks == 1 and model.half_calls == stats.grid[0] * stats.grid[1]
    assert "recomputed in fp32" in stats.describe()
    torch.testing.assert_close(out, untiled(model, x[None])[0], atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- uint8 bands, API


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_band_assembly_equals_float_path_rounded(dtype: type[np.generic]) -> None:
    peak = np.iinfo(dtype).max
    array = (image(45, 70, seed=1).permute(1, 2, 0).numpy() * peak).round().astype(dtype)
    upscaler = Upscaler(LocalNet(), device="cpu", tile=32, tile_overlap=16)
    banded = upscaler.upscale_array(array)
    floats = upscaler.upscale_tensor(torch.from_numpy(array.astype(np.float32) / peak).permute(2, 0, 1)[None])
    assert banded.dtype == dtype and banded.shape == (90, 140, 3)
    np.testing.assert_array_equal(banded, tensor_to_array(floats, dtype))


def test_bands_are_written_once_in_order_with_bounded_height() -> None:
    model = LocalNet().eval()
    array = (image(100, 50).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    plan = make_plan(100, 50, 2, 8, 32, 16)
    out = np.zeros((200, 100, 3), np.uint8)
    writer = array_writer(out)
    blocks: list[tuple[int, int]] = []

    def write(row: int, block: Tensor) -> None:
        blocks.append((row, block.shape[1]))
        writer(row, block)

    TileEngine(model, CPU, torch.float32).run(plan, array_reader(array), write)
    assert len(blocks) == len(plan.ys)
    assert [r for r, _ in blocks] == [0, *list(np.cumsum([n for _, n in blocks])[:-1])]
    assert sum(n for _, n in blocks) == 200
    assert max(n for _, n in blocks) <= plan.tile_h * plan.scale  # one band, not the image
    expected = tensor_to_array(untiled(model, torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255))
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1  # local op: tiled == untiled


def test_upscale_pil_and_progress_callback() -> None:
    from PIL import Image

    array = (image(40, 72).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    upscaler = Upscaler(LocalNet(), device="cpu", tile=32, tile_overlap=16)
    seen: list[tuple[int, int]] = []
    result = upscaler.upscale(Image.fromarray(array), progress=lambda done, total: seen.append((done, total)))
    assert isinstance(result, Image.Image) and result.size == (144, 80)
    stats = upscaler.last_stats
    assert stats is not None and stats.tile == 32 and stats.overlap == 16
    total = stats.grid[0] * stats.grid[1]
    assert seen == [(i, total) for i in range(1, total + 1)] and total > 1
    np.testing.assert_array_equal(np.asarray(result), upscaler.upscale_array(array))


def test_upscaler_validates_tile_arguments() -> None:
    from hat_cli.errors import ConfigError

    for bad in (-1, "big", 1.5):
        with pytest.raises(ConfigError):
            Upscaler(LocalNet(), device="cpu", tile=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Upscaler(LocalNet(), device="cpu", tile_overlap=-2)
    with pytest.raises(ConfigError):
        Upscaler(LocalNet(), device="cpu", tile_batch=0)


# --------------------------------------------------------------------------- memory model


class Sized(LocalNet):
    per_pixel = 1000.0


def test_auto_tile_is_the_largest_that_fits_the_budget() -> None:
    model = Sized()
    roomy = choose_tile(model, 60, 90, CPU, torch.float32, budget=10**9, host_budget=10**9)
    assert roomy.tile == 0 and "whole image" in roomy.reason
    tight = choose_tile(model, 300, 400, CPU, torch.float32, budget=40_000_000, host_budget=10**9)
    assert 0 < tight.tile < 400 and tight.tile % 8 == 0 and tight.batch == 1
    bigger = choose_tile(model, 300, 400, CPU, torch.float32, budget=80_000_000, host_budget=10**9)
    assert bigger.tile > tight.tile
    starved = choose_tile(model, 300, 400, CPU, torch.float32, budget=10, host_budget=10**9)
    assert starved.tile == 8 and "OOM" in starved.reason


def test_auto_tile_in_the_upscaler_tiles_under_a_small_budget() -> None:
    x = image(64, 96)[None]
    upscaler = Upscaler(Sized(), device="cpu", tile="auto", memory_budget=6_000_000)
    out = upscaler.upscale_tensor(x)
    stats = upscaler.last_stats
    assert stats is not None and stats.tile > 0 and stats.reason.startswith("auto")
    torch.testing.assert_close(out, untiled(LocalNet().eval(), x), atol=1e-5, rtol=0)


def test_hat_memory_model_grows_with_width_heads_and_scale() -> None:
    small = tiny_hat(scale=2).bytes_per_input_pixel()
    x4 = tiny_hat(scale=4).bytes_per_input_pixel()
    with torch.device("meta"):
        full = HAT(
            HATConfig(embed_dim=180, depths=(6,) * 6, num_heads=(6,) * 6, window_size=16)
        ).bytes_per_input_pixel()
    assert small < x4 < full
    assert tiny_hat().bytes_per_input_pixel(torch.bfloat16) < small


def test_cuda_choice_batches_tiles_and_keeps_the_band_in_host_memory() -> None:
    cuda = torch.device("cuda")  # only planned here: nothing touches a GPU
    model = Sized()
    choice = choose_tile(model, 400, 600, cuda, torch.bfloat16, budget=40_000_000, host_budget=10**9)
    per_tile = 1000.0 * choice.tile**2
    assert 0 < choice.tile < 600 and per_tile <= 40_000_000
    assert 1 <= choice.batch <= 8 and choice.batch * per_tile <= 40_000_000 and "GPU" in choice.reason
    roomy = choose_tile(model, 400, 600, cuda, torch.bfloat16, budget=10**12, host_budget=10**12)
    assert roomy.tile == 0 and roomy.batch == 1
    # A large GPU but little host RAM: the band accumulator (host side) limits the tile.
    host_bound = choose_tile(model, 400, 600, cuda, torch.bfloat16, budget=10**12, host_budget=20_000_000)
    assert 0 < host_bound.tile < 400


def test_available_ram_falls_back_without_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    from hat_cli import tiling

    assert tiling.available_ram() > 0 and tiling.free_device_memory(CPU) > 0

    def no_proc(*args: object, **kwargs: object) -> None:
        raise OSError("no /proc")

    monkeypatch.setattr("builtins.open", no_proc)
    assert tiling.available_ram() > 0


def test_plain_attention_costs_more_memory_than_fused() -> None:
    fused = tiny_hat()
    plain = tiny_hat()
    plain.set_fused_attention(False)
    assert plain.bytes_per_input_pixel() > fused.bytes_per_input_pixel()


def test_wrappers_report_the_memory_of_what_runs() -> None:
    """A plain-path HAT in each wrapper: the memory model (and tile choice) sees the plain path."""
    plain = tiny_hat()
    plain.set_fused_attention(False)
    fused_cost, plain_cost = tiny_hat().bytes_per_input_pixel(), plain.bytes_per_input_pixel()
    for wrapped in (SelfEnsemble(plain), CompiledNetwork(plain), SelfEnsemble(CompiledNetwork(plain))):
        assert wrapped.bytes_per_input_pixel() == plain_cost > fused_cost
        assert (wrapped.scale, wrapped.size_multiple, wrapped.input_range) == (plain.scale, 8, 1.0)
    budget = int((fused_cost + plain_cost) / 2 * 64 * 64)  # the fused path fits, the plain one does not
    fused_run = Upscaler(tiny_hat(), device="cpu", self_ensemble=True, memory_budget=budget)
    plain_run = Upscaler(plain, device="cpu", self_ensemble=True, memory_budget=budget)
    assert plain_run.runner.bytes_per_input_pixel() == plain_cost
    assert fused_run.plan(64, 64)[1].tile == 0 and plain_run.plan(64, 64)[1].tile > 0


def test_rows_run_in_balanced_batches() -> None:
    """5 tiles at batch 4 run as 3 + 2 (as many forwards as 4 + 1, fewer shapes to compile)."""
    model = LocalNet().eval()
    x = image(32, 96)
    engine = TileEngine(model, CPU, torch.float32, batch=4)
    out = run_tiled(engine, x, tile=32, overlap=16)
    assert [shape[0] for shape in model.calls] == [3, 2]
    torch.testing.assert_close(out, untiled(LocalNet().eval(), x[None])[0], atol=1e-5, rtol=0)


def test_device_bands_give_the_host_bands_result_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The band accumulator on the engine's device (forced for the CPU here) sums the same products."""
    from hat_cli import tiling

    array = (image(45, 70, seed=2).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    upscaler = Upscaler(tiny_hat(), device="cpu", tile=32, tile_overlap=16, tile_batch=2)
    host = upscaler.upscale_array(array), upscaler.upscale_tensor(torch.from_numpy(array).permute(2, 0, 1)[None] / 255)
    monkeypatch.setattr(tiling, "DEVICE_BANDS", {"cpu"})
    assert tiling.band_device(CPU) == CPU
    device = (
        upscaler.upscale_array(array),
        upscaler.upscale_tensor(torch.from_numpy(array).permute(2, 0, 1)[None] / 255),
    )
    np.testing.assert_array_equal(device[0], host[0])
    assert torch.equal(device[1], host[1])


def test_cuda_choice_counts_a_device_band_against_the_gpu_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    from hat_cli import tiling

    cuda = torch.device("cuda")  # only planned here: nothing touches a GPU
    model = Sized()
    host_band = choose_tile(model, 400, 600, cuda, torch.bfloat16, budget=10**12, host_budget=20_000_000)
    monkeypatch.setattr(tiling, "DEVICE_BANDS", {"cuda"})
    device_band = choose_tile(model, 400, 600, cuda, torch.bfloat16, budget=10**12, host_budget=20_000_000)
    assert 0 < host_band.tile < 400 and device_band.tile == 0  # the host no longer holds the band
    tight = choose_tile(model, 400, 600, cuda, torch.bfloat16, budget=40_000_000, host_budget=10**12)
    forward = 1000.0 * tight.tile**2
    band = 4 * 3 * (2 * tight.tile) * (2 * 600 + 2 * 2 * tight.tile)
    assert tight.estimate == forward * tight.batch + band <= 40_000_000
