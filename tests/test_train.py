"""hat train: loss goes down, checkpoints load, resume and Ctrl-C continue exactly; the bundled hat-tiny."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from hat_cli.baseline import bicubic_upscale, make_lr
from hat_cli.checkpoint import load_model, read_checkpoint
from hat_cli.cli import app
from hat_cli.errors import CheckpointError, ConfigError
from hat_cli.imagefiles import read_rgb8 as read_image
from hat_cli.metrics import mod_crop, psnr
from hat_cli.registry import load_registry
from hat_cli.train import TrainOptions, TrainProgress, parse_arch, state_path_for, train, upscale_uint8
from tests.conftest import TINY_CONFIG

SET5 = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "Set5" / "HR"

TINY = replace(TINY_CONFIG, num_feat=8)


def _images(folder: Path, count: int = 4, size: int = 40) -> Path:
    """Smooth colour gradients with a few edges: learnable in a handful of iterations."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(count):
        a, b, c = rng.uniform(0.2, 1.0, 3)
        img = np.stack([a * xx, b * yy, c * (xx + yy) / 2], axis=-1)
        img[size // 3 : size // 2, :, i % 3] = 0.9  # a bar: an edge to sharpen
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


def _options(tmp_path: Path, **kw) -> TrainOptions:
    data = _images(tmp_path / "hr")
    base = dict(
        hr_dirs=[data],
        out=tmp_path / "run" / "tiny.pth",
        scale=2,
        config=TINY,
        iters=30,
        batch_size=4,
        patch_size=16,
        lr=2e-3,
        val_every=0,
        save_every=0,
        seed=1,
        threads=1,
    )
    return TrainOptions(**{**base, **kw})


def test_a_few_iterations_lower_the_loss_and_write_an_official_checkpoint(tmp_path: Path) -> None:
    seen: list[TrainProgress] = []
    options = _options(tmp_path, val_hr=tmp_path / "hr", val_every=15)
    result = train(options, seen.append)

    steps = [p for p in seen if p.event == "step"]
    assert [p.iteration for p in steps] == list(range(1, 31))
    first, last = (np.mean([p.step_loss for p in part]) for part in (steps[:5], steps[-5:]))
    assert last < 0.7 * first and steps[-1].loss < steps[0].loss
    assert steps[-1].its_per_sec > 0 and steps[-1].eta_s == 0
    vals = [p.val_psnr for p in seen if p.event == "val"]
    assert len(vals) == 2 and vals[1] > vals[0]
    assert result.iterations == 30 and result.val_psnr == vals[1]

    raw = torch.load(result.out, weights_only=True)
    assert {"params_ema", "params", "hat_config"} <= raw.keys()
    assert raw["hat_config"]["train"]["iters"] == 30 and raw["hat_config"]["train"]["lr"] == 2e-3
    model = load_model(result.out)
    assert model.config.to_dict() == TINY.to_dict()
    for key, value in raw["params_ema"].items():
        assert torch.equal(model.state_dict()[key], value)
    assert state_path_for(result.out).is_file()


def test_safetensors_output_holds_ema_weights_and_hyper_parameters(tmp_path: Path) -> None:
    result = train(_options(tmp_path, iters=3, out=tmp_path / "tiny.safetensors"))
    _, meta = read_checkpoint(result.out)
    assert meta["train"]["iterations_done"] == 3 and meta["embed_dim"] == 12
    assert load_model(result.out).scale == 2


def test_resume_after_ctrl_c_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    straight = train(_options(tmp_path / "a", iters=8))

    def interrupt(p: TrainProgress) -> None:
        if p.iteration == 5:
            raise KeyboardInterrupt

    options = _options(tmp_path / "b", iters=8)
    with pytest.raises(KeyboardInterrupt):
        train(options, interrupt)
    state = torch.load(state_path_for(options.out), weights_only=True)
    assert state["train_state"]["iteration"] == 5

    seen: list[int] = []
    resumed = train(
        _options(tmp_path / "b", iters=8, resume=state_path_for(options.out)), lambda p: seen.append(p.iteration)
    )
    assert seen[0] == 6 and resumed.iterations == 8
    a, b = torch.load(straight.out, weights_only=True), torch.load(resumed.out, weights_only=True)
    for group in ("params", "params_ema"):
        for key in a[group]:
            torch.testing.assert_close(a[group][key], b[group][key], rtol=1e-5, atol=1e-6)


def test_resume_needs_a_state_file_and_the_same_scale(tmp_path: Path) -> None:
    first = train(_options(tmp_path, iters=2, out=tmp_path / "m.safetensors"))
    with pytest.raises(CheckpointError, match="no training state"):
        train(_options(tmp_path, iters=4, resume=first.out))
    with pytest.raises(ConfigError, match="x2 run"):
        train(_options(tmp_path, iters=4, scale=4, patch_size=32, resume=first.state))


def test_fine_tuning_from_another_scale_keeps_the_body(tmp_path: Path) -> None:
    x2 = train(_options(tmp_path / "x2", iters=2))
    x4 = train(_options(tmp_path / "x4", iters=1, lr=1e-12, scale=4, patch_size=32, config=None, init=x2.out))
    a, b = read_checkpoint(x2.out)[0], read_checkpoint(x4.out)[0]
    assert load_model(x4.out).scale == 4
    torch.testing.assert_close(a["conv_first.weight"], b["conv_first.weight"], rtol=0, atol=1e-6)


def test_parse_arch() -> None:
    tiny = parse_arch("hat-tiny")
    assert (tiny.embed_dim, tiny.depths, tiny.window_size, tiny.num_feat) == (48, (2, 2, 2), 8, 32)
    cfg = parse_arch("embed_dim=24,depths=2x3,num_heads=4x3,window_size=8,squeeze_factor=8,mlp_ratio=1.5", scale=2)
    assert (cfg.upscale, cfg.depths, cfg.num_heads, cfg.mlp_ratio) == (2, (2, 2, 2), (4, 4, 4), 1.5)
    assert parse_arch("hat-s,depths=2/4").num_heads == (6, 6)
    with pytest.raises(ConfigError):
        parse_arch("embed_dim=48,colour=red")
    with pytest.raises(ConfigError):
        parse_arch("embed_dim=50,num_heads=4x1,depths=1x1")
    with pytest.raises(ConfigError, match="squeeze_factor"):
        parse_arch("embed_dim=12,depths=1x1,num_heads=2x1")


def test_cli_trains_and_reports(tmp_path: Path) -> None:
    data = _images(tmp_path / "hr")
    out = tmp_path / "cli.pth"
    args = ["train", "--hr", str(data), "--scale", "2", "--out", str(out), "--iters", "3", "-b", "2"]
    args += [
        "--patch-size",
        "16",
        "--arch",
        "embed_dim=12,depths=1x1,num_heads=2x1,window_size=4,squeeze_factor=4,num_feat=8",
    ]
    result = CliRunner().invoke(app, [*args, "--device", "cpu", "--threads", "1", "--val-hr", str(data)])
    assert result.exit_code == 0, result.output
    assert "3 iterations" in result.output and "validation PSNR" in result.output
    assert "iteration 3/3: loss" in result.output  # not a terminal: a status line per checkpoint
    assert load_model(out).config.embed_dim == 12
    both = CliRunner().invoke(app, [*args, "--init", str(out)])
    assert both.exit_code == 2 and "not both" in both.output


# --------------------------------------------------------------------------- the bundled model


BUNDLED = [preset for preset in load_registry() if preset.bundled]


def test_hat_tiny_x4_is_bundled() -> None:
    preset = load_registry().resolve("hat-tiny", 4)
    assert preset.name == "hat-tiny-x4" and preset in BUNDLED


@pytest.mark.parametrize("preset", BUNDLED, ids=lambda p: p.name)
def test_bundled_model_matches_the_registry(preset) -> None:
    data = preset.bundled_path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == preset.sha256 and len(data) == preset.size < 5_000_000
    model = load_model(preset.bundled_path)
    assert model.config == preset.config


@pytest.mark.skipif(not SET5.is_dir(), reason="shared datasets not present")
@pytest.mark.parametrize("preset", BUNDLED, ids=lambda p: p.name)
def test_bundled_model_beats_bicubic_on_set5_bird(preset) -> None:
    model = load_model(preset.bundled_path)
    hr = mod_crop(read_image(SET5 / "bird.png"), preset.scale)
    lr = make_lr(hr, preset.scale)
    ours = psnr(upscale_uint8(model, lr, torch.device("cpu")), hr, crop_border=preset.scale)
    bicubic = psnr(bicubic_upscale(lr, preset.scale), hr, crop_border=preset.scale)
    assert ours > bicubic + 1.0
