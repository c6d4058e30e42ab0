"""x8 self-ensemble: the model wrapper, the Upscaler option and the CLI flags."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from hat_cli.api import Upscaler
from hat_cli.cli import app
from hat_cli.model import HAT
from hat_cli.model.ensemble import DIHEDRAL, SelfEnsemble
from tests.conftest import TINY_CONFIG


@pytest.fixture(scope="module")
def model() -> HAT:
    torch.manual_seed(0)
    return HAT(TINY_CONFIG).eval()


def _transform(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    return torch.rot90(x.flip(-1) if flip else x, turns, dims=(-2, -1))


@torch.no_grad()
def test_ensemble_is_the_mean_of_the_eight_mapped_back_predictions(model: HAT) -> None:
    x = torch.rand(2, 3, 12, 20)
    # Mapped back with transposes and flips instead of rot90, so the check is not the code again.
    back = {
        (0, False): lambda y: y,
        (1, False): lambda y: y.transpose(-2, -1).flip(-1),
        (2, False): lambda y: y.flip(-2, -1),
        (3, False): lambda y: y.transpose(-2, -1).flip(-2),
        (0, True): lambda y: y.flip(-1),
        (1, True): lambda y: y.transpose(-2, -1),
        (2, True): lambda y: y.flip(-2),
        (3, True): lambda y: y.flip(-2, -1).transpose(-2, -1),
    }
    assert set(back) == set(DIHEDRAL)
    expected = torch.stack([back[t](model(_transform(x, *t))) for t in DIHEDRAL]).mean(0)
    torch.testing.assert_close(SelfEnsemble(model)(x), expected, rtol=0, atol=1e-6)
    assert not torch.allclose(expected, model(x), atol=1e-4)  # the eight predictions do differ


@torch.no_grad()
@pytest.mark.parametrize("turns, flip", [(1, False), (2, True), (3, True)])
def test_ensemble_output_is_equivariant_to_flips_and_turns(model: HAT, turns: int, flip: bool) -> None:
    x = torch.rand(1, 3, 16, 24)  # window multiples: no padding, so symmetry is exact
    ensemble = SelfEnsemble(model)
    torch.testing.assert_close(
        ensemble(_transform(x, turns, flip)), _transform(ensemble(x), turns, flip), atol=1e-5, rtol=0
    )
    plain = model(_transform(x, turns, flip)) - _transform(model(x), turns, flip)
    assert plain.abs().max() > 1e-4  # ...which the network alone is not


@torch.no_grad()
def test_upscaler_option_whole_and_tiled(model: HAT) -> None:
    image = (np.random.default_rng(0).random((40, 52, 3)) * 255).astype(np.uint8)
    plain = Upscaler(model, device="cpu", tile=0, name="tiny")
    whole = Upscaler(model, device="cpu", tile=0, name="tiny", self_ensemble=True)
    tiled = Upscaler(model, device="cpu", tile=16, tile_overlap=8, name="tiny", self_ensemble=True)
    assert (plain.name, whole.name) == ("tiny", "tiny+") and whole.scale == 2
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    expected = SelfEnsemble(model)(x)[0].clamp(0, 1).mul(255).round().permute(1, 2, 0).numpy().astype(np.uint8)
    assert np.abs(whole.upscale(image).astype(int) - expected.astype(int)).max() <= 1
    assert tiled.last_stats is None
    tiled_out = tiled.upscale(image)
    assert tiled.last_stats is not None and tiled.last_stats.grid[0] * tiled.last_stats.grid[1] > 1
    assert np.abs(tiled_out.astype(int) - whole.upscale(image).astype(int)).mean() < 2


def test_cli_upscale_and_bench_flags(tmp_path: Path, tiny_checkpoint: Path) -> None:
    hr = tmp_path / "hr"
    hr.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8)).save(hr / f"{name}.png")
    runner = CliRunner()
    out = tmp_path / "a_x2.png"
    result = runner.invoke(
        app, ["upscale", str(hr / "a.png"), "-w", str(tiny_checkpoint), "--self-ensemble", "-o", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (64, 48)
    summary = json.loads(result.stdout.splitlines()[-1])
    assert (summary["model"], summary["scale"], summary["done"]) == ("tiny_x2.pth+", 2, 1)
    table = tmp_path / "scores.csv"
    args = ["bench", "--hr", str(hr), "--scale", "2", "--model", "bicubic", "-w", str(tiny_checkpoint)]
    result = runner.invoke(app, [*args, "--self-ensemble", "--csv", str(table)])
    assert result.exit_code == 0, result.output
    assert {row["model"] for row in csv.DictReader(table.open())} == {"bicubic", "tiny_x2.pth+"}
