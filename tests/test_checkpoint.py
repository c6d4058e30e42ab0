"""Checkpoint loading: shape detection, wrappers, strict loading, and refusal of unsafe files."""

from __future__ import annotations

import pickle
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from hat_cli.checkpoint import identify, load_model, read_checkpoint, save_checkpoint
from hat_cli.cli import app
from hat_cli.errors import CheckpointError
from hat_cli.model import HAT, HATConfig, detect_config, family_named, find_family
from hat_cli.registry import load_registry

from .conftest import TINY_CONFIG


def random_config(rng: random.Random) -> HATConfig:
    heads = rng.choice([1, 2, 3])
    window = rng.choice([4, 6, 8, 16])
    groups = rng.randint(1, 3)
    return HATConfig(
        upscale=rng.choice([2, 3, 4, 8]),
        in_chans=rng.choice([1, 3]),
        embed_dim=heads * rng.choice([4, 6, 8]),
        depths=tuple(rng.randint(1, 3) for _ in range(groups)),
        num_heads=tuple(rng.choice([heads, 1]) for _ in range(groups)),
        window_size=window,
        compress_ratio=rng.choice([1, 2, 3]),
        squeeze_factor=rng.choice([1, 2, 4]),
        overlap_ratio=rng.choice([0.25, 0.5]),
        mlp_ratio=rng.choice([1.0, 1.5, 2.0, 4.0, 7 / 3]),
        qkv_bias=rng.random() < 0.8,
        patch_norm=rng.random() < 0.8,
        resi_connection=rng.choice(["1conv", "identity"]),
        num_feat=rng.choice([16, 64]),
    )


def test_detect_config_round_trips_many_random_configs() -> None:
    """Every shape-determined hyper-parameter is recovered; ratios may come back as another value
    that yields the same integer widths (e.g. 12 // 3 == 12 // 4), which is the same network."""
    rng = random.Random(0)
    for _ in range(60):
        config = random_config(rng)
        with torch.device("meta"):
            state = HAT(config).state_dict()
        detected = detect_config(state)
        with torch.device("meta"):
            rebuilt = HAT(detected).state_dict()
        assert {k: v.shape for k, v in rebuilt.items()} == {k: v.shape for k, v in state.items()}
        assert config.num_params == sum(v.numel() for v in state.values())  # the torch-free count
        assert detected.mlp_hidden == config.mlp_hidden
        assert detected.overlap_window_size == config.overlap_window_size
        same_widths = {
            "compress_ratio": config.compress_ratio,
            "squeeze_factor": config.squeeze_factor,
            "mlp_ratio": config.mlp_ratio,
            "overlap_ratio": config.overlap_ratio,
        }
        assert replace(detected, **same_widths) == config


@pytest.mark.parametrize("preset", load_registry().presets.values(), ids=lambda p: p.name)
def test_official_shapes_load_strictly(preset) -> None:
    """A state dict with the official layout of each preset (buffers, wrapper) loads strictly."""
    family = family_named(preset.arch)
    with torch.device("meta"):
        state = family.build(preset.config).state_dict()
    official = {**state, "relative_position_index_SA": torch.empty(256, 256, device="meta")}
    unwrapped = {k: v for k, v in official.items() if "relative_position_index" not in k}
    assert find_family(unwrapped) is family
    unwrapped_config = family.detect(unwrapped, preset.hidden)
    assert unwrapped_config == preset.config
    with torch.device("meta"):
        model = family.build(unwrapped_config)
    model.load_state_dict(state, strict=True, assign=True)
    assert preset.config.num_params == sum(p.numel() for p in model.parameters())


def test_wrappers_prefixes_and_buffers_are_handled(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = HAT(TINY_CONFIG)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    state["module.relative_position_index_SA"] = torch.full((16, 16), 10**6)  # garbage: must be ignored
    path = tmp_path / "wrapped.pth"
    torch.save({"params": {k: torch.zeros_like(v) for k, v in state.items()}, "params_ema": state}, path)
    loaded = load_model(path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key  # params_ema preferred over params


def test_safetensors_round_trip_keeps_metadata(tmp_path: Path) -> None:
    config = HATConfig.from_dict({**TINY_CONFIG.to_dict(), "conv_scale": 0.02, "img_range": 255.0})
    model = HAT(config)
    path = save_checkpoint(tmp_path / "m.safetensors", model.state_dict(), config)
    state, meta = read_checkpoint(path)
    assert identify(state, meta, path)[1] == config
    # explicit overrides win over stored metadata
    assert identify(state, meta, path, conv_scale=0.5)[1].conv_scale == 0.5


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/hat-pwned-marker",))


def _run_upscale(tmp_path: Path, weights: Path):
    from PIL import Image

    image = tmp_path / "in.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(image)
    return CliRunner().invoke(app, ["upscale", str(image), "--weights", str(weights), "--device", "cpu"])


def test_malicious_pickle_is_refused_and_never_executed(tmp_path: Path) -> None:
    marker = Path("/tmp/hat-pwned-marker")
    marker.unlink(missing_ok=True)
    evil = tmp_path / "evil.pth"
    torch.save({"params_ema": {"conv_first.weight": torch.zeros(1)}, "payload": _Exploit()}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(evil)
    result = _run_upscale(tmp_path, evil)
    assert result.exit_code == 2
    assert not marker.exists()
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "refused" in lines[0]
    # A raw (non-zip) pickle with code is refused the same way.
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Exploit()))
    assert _run_upscale(tmp_path, raw).exit_code == 2
    assert not marker.exists()


def test_non_hat_and_truncated_files_exit_2_with_one_line(tmp_path: Path, tiny_checkpoint: Path) -> None:
    other = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, other)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    for bad, expected in (
        (other, "not a HAT, HAN or RCAN checkpoint"),
        (truncated, "truncated"),
        (text, "safetensors"),
    ):
        result = _run_upscale(tmp_path, bad)
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and expected in lines[0] and str(bad.name) in lines[0]
