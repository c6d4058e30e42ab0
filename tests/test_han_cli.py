"""HAN and RCAN through every door: the loader, the Python API, `hat upscale` (whole, tiled,
self-ensemble, batch --json), `hat bench` beside a HAT and bicubic, and presets imported by hand."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from hat_cli.api import Upscaler
from hat_cli.checkpoint import load_model, save_checkpoint
from hat_cli.cli import app
from hat_cli.model import HAT
from hat_cli.model.rcan import HANConfig, RCANConfig
from hat_cli.model.rcan.arch import build_network
from hat_cli.registry import load_registry
from tests.conftest import TINY_CONFIG
from tests.store_server import write_registry

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "han-reference"
MANIFEST = FIXTURES / "manifest.json"
needs_fixtures = pytest.mark.skipif(not MANIFEST.is_file(), reason=f"fixtures not found at {FIXTURES}")
runner = CliRunner()

TINY = {
    "han": HANConfig(scale=2, n_feats=8, n_resgroups=2, n_resblocks=1, reduction=4),
    "rcan": RCANConfig(scale=3, n_feats=8, n_resgroups=2, n_resblocks=1, reduction=4),
}


def hat(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


def _cases() -> list:
    if not MANIFEST.is_file():
        return [pytest.param(None, None, None, marks=needs_fixtures)]
    manifest = json.loads(MANIFEST.read_text())
    return [
        pytest.param(name, entry, case, id=f"{name}-{case['input']}")
        for name, entry in manifest.items()
        for case in entry["cases"]
    ]


def _tiny_file(folder: Path, arch: str, seed: int = 0) -> Path:
    """A random tiny HAN/RCAN saved as the official trainers do (a bare state dict, .pt)."""
    torch.manual_seed(seed)
    network = build_network(TINY[arch])
    with torch.no_grad():  # perturb the zero-initialised attention gammas so they matter
        for name, parameter in network.named_parameters():
            if name.endswith("gamma"):
                parameter.fill_(0.3)
    path = folder / f"tiny_{arch}.pt"
    torch.save(network.state_dict(), path)
    return path


def _photo(path: Path, height: int = 20, width: int = 28, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx / width, yy / height, (xx + yy) / (width + height)], axis=-1) * 200
    image = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(image).save(path)
    return path


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize(("name", "entry", "case"), _cases())
def test_reference_outputs_through_the_api_and_the_cli(name: str, entry: dict, case: dict, tmp_path: Path) -> None:
    checkpoint = FIXTURES / entry["checkpoint"]
    model = load_model(checkpoint)
    assert type(model).__name__ == entry["arch"]["arch"].upper() and model.scale == entry["arch"]["scale"]
    image = np.asarray(Image.open(FIXTURES / case["input"]).convert("RGB"))
    expected = np.load(FIXTURES / case["output_npy"])
    upscaler = Upscaler(model, device="cpu", precision="fp32", tile=0)
    x = torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)[None]
    out = upscaler.upscale_tensor(x)[0].numpy()
    assert np.abs(out - expected).max() <= 1e-5

    result = hat("upscale", FIXTURES / case["input"], "--weights", checkpoint, "-o", tmp_path / "out.png", "-q")
    assert result.exit_code == 0, result.output
    written = np.asarray(Image.open(tmp_path / "out.png")).astype(int)
    reference = np.asarray(Image.open(FIXTURES / case["output_png"]).convert("RGB")).astype(int)
    assert np.abs(written - reference).max() <= 1


@needs_fixtures
def test_tiling_a_han_changes_its_global_attention_only_slightly() -> None:
    """Channel and layer attention see the whole input: tiles change them a little (measured)."""
    model = load_model(FIXTURES / "han_x4.pt")
    image = np.asarray(Image.open(FIXTURES / "han_x4_24x32_in.png").convert("RGB"))
    whole = Upscaler(model, device="cpu", tile=0).upscale_array(image).astype(float)
    tiled = Upscaler(model, device="cpu", tile=16, tile_overlap=8).upscale_array(image).astype(float)
    assert Upscaler(model, device="cpu", tile=16, tile_overlap=8).plan(24, 32)[1].tile == 16
    psnr = 10 * np.log10(255**2 / np.mean((whole - tiled) ** 2))
    assert 25 < psnr < 99  # different, but close (the figure is in the README)


# --------------------------------------------------------------------------- every command


@pytest.mark.parametrize("arch", ["han", "rcan"])
def test_upscale_whole_tiled_ensemble_and_batch_json(arch: str, tmp_path: Path) -> None:
    weights = _tiny_file(tmp_path, arch)
    scale = TINY[arch].scale
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(2):
        _photo(folder / f"p{index}.png", seed=index)
    whole = hat("upscale", folder, "--weights", weights, "-o", tmp_path / "whole", "--tile", "0", "--json")
    assert whole.exit_code == 0, whole.output
    records = [json.loads(line) for line in whole.stdout.splitlines()]
    files = [r for r in records if r["type"] == "file"]
    assert [r["status"] for r in files] == ["done", "done"]
    assert records[-1]["scale"] == scale and records[-1]["exit_code"] == 0
    out = Image.open(tmp_path / "whole" / f"p0_x{scale}.png")
    assert out.size == (28 * scale, 20 * scale)

    tiled = hat("upscale", folder, "--weights", weights, "-o", tmp_path / "tiled", "--tile", "8", "--tile-overlap", "4")
    assert tiled.exit_code == 0, tiled.output
    a = np.asarray(out).astype(float)
    b = np.asarray(Image.open(tmp_path / "tiled" / f"p0_x{scale}.png")).astype(float)
    assert a.shape == b.shape and np.abs(a - b).mean() < 8  # global attention: close, not equal

    plus = hat("upscale", folder / "p0.png", "--weights", weights, "-o", tmp_path / "plus.png", "--self-ensemble")
    assert plus.exit_code == 0, plus.output
    assert Image.open(tmp_path / "plus.png").size == (28 * scale, 20 * scale)


def test_self_ensemble_of_a_han_is_the_mean_of_the_eight_transforms(tmp_path: Path) -> None:
    model = load_model(_tiny_file(tmp_path, "han"))
    x = torch.rand(1, 3, 10, 14)
    ensemble = Upscaler(model, device="cpu", tile=0, self_ensemble=True).upscale_tensor(x)
    plain = Upscaler(model, device="cpu", tile=0)
    outputs = []
    for flip in (False, True):
        for turns in range(4):
            view = torch.rot90(x.flip(-1) if flip else x, turns, dims=(-2, -1))
            back = torch.rot90(plain.upscale_tensor(view), -turns, dims=(-2, -1))
            outputs.append(back.flip(-1) if flip else back)
    torch.testing.assert_close(ensemble, torch.stack(outputs).mean(0), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["han", "rcan"])
def test_bench_scores_a_han_or_rcan_beside_a_hat_and_bicubic(tmp_path: Path, arch: str) -> None:
    scale = TINY[arch].scale
    hr = tmp_path / "HR"
    hr.mkdir()
    for index in range(2):
        _photo(hr / f"img{index}.png", 48, 54, seed=index)
    weights = _tiny_file(tmp_path, arch)
    hat_config = replace(TINY_CONFIG, upscale=scale)
    hat_file = save_checkpoint(tmp_path / f"tiny_hat_x{scale}.pth", HAT(hat_config).state_dict(), hat_config)
    result = hat(
        "bench",
        "--hr",
        hr,
        "--scale",
        scale,
        "--weights",
        weights,
        "--weights",
        hat_file,
        "--model",
        "bicubic",
        "--json",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [m["model"] for m in data["models"]] == [weights.name, hat_file.name, "bicubic"]
    assert data["scale"] == scale
    assert all(len(m["images"]) == 2 and m["mean"]["psnr"] > 10 for m in data["models"])


def test_a_han_file_of_another_scale_is_refused_with_the_scale_it_has(tmp_path: Path) -> None:
    weights = _tiny_file(tmp_path, "han")
    result = hat("upscale", _photo(tmp_path / "p.png"), "--weights", weights, "--scale", "4")
    assert result.exit_code == 2 and "is a x2 model" in result.stderr


def test_hat_only_flags_are_refused_for_a_han(tmp_path: Path) -> None:
    weights = _tiny_file(tmp_path, "han")
    result = hat("upscale", _photo(tmp_path / "p.png"), "--weights", weights, "--conv-scale", "0.02")
    assert result.exit_code == 2 and "--conv-scale" in result.stderr and "HAN" in result.stderr


# --------------------------------------------------------------------------- presets imported by hand


def test_official_han_and_rcan_presets_are_listed_without_downloads() -> None:
    registry = load_registry()
    for arch in ("HAN", "RCAN"):
        for deg, scale in (("BI", 2), ("BI", 3), ("BI", 4), ("BI", 8), ("BD", 3)):
            preset = registry.presets[f"{arch}_{deg}X{scale}"]
            assert preset.arch == arch.lower() and preset.scale == scale and preset.sha256 is None
            assert preset.urls == () and preset.origin.startswith("https://")
    assert registry.resolve("han", 4).name == "HAN_BIX4" and registry.resolve("rcan-bd").name == "RCAN_BDX3"
    assert registry.presets["RCAN_BIX4"].config.num_params == 15_592_379  # the paper's 15.59 M
    assert registry.presets["HAN_BIX4"].config.num_params == 16_071_769  # the paper's 16.07 M


def test_importing_a_file_without_a_public_checksum_records_its_sha256(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    families = {"tinyhan": {"arch": "han", "n_feats": 8, "n_resgroups": 2, "n_resblocks": 1, "reduction": 4}}
    table = {"family": "tinyhan", "scale": 2, "file": "TINY_HAN.pt", "source": "https://example.org/drive"}
    registry = write_registry(tmp_path / "r.toml", {"TINY_HAN_X2": table}, families)
    monkeypatch.setenv("HAT_REGISTRY", str(registry))
    photo = _photo(tmp_path / "p.png")

    missing = hat("upscale", photo, "--model", "TINY_HAN_X2", "-o", tmp_path / "a.png")
    assert (
        missing.exit_code == 2
        and "no public checksum" in missing.stderr
        and "https://example.org/drive" in missing.stderr
    )

    wrong = _tiny_file(tmp_path, "rcan")  # an RCAN x3 is not this preset
    refused = hat("models", "import", wrong, "--name", "TINY_HAN_X2")
    assert refused.exit_code == 2 and "not TINY_HAN_X2" in refused.stderr

    weights = _tiny_file(tmp_path, "han")
    imported = hat("models", "import", weights, "--name", "TINY_HAN_X2")
    assert imported.exit_code == 0, imported.output
    assert hat("models", "verify", "TINY_HAN_X2").exit_code == 0
    done = hat("upscale", photo, "--model", "TINY_HAN_X2", "-o", tmp_path / "a.png", "--offline")
    assert done.exit_code == 0, done.output
    listed = json.loads(hat("models", "list", "--json").stdout)
    [row] = [r for r in listed if r["name"] == "TINY_HAN_X2"]
    assert row["cached"] and row["checksum"] == "imported" and len(row["sha256"]) == 64

    path = Path(row["path"])
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # the file changes behind our back
    assert hat("models", "verify", "TINY_HAN_X2").exit_code == 1
    assert hat("models", "rm", "TINY_HAN_X2").exit_code == 0
    assert not list((cache / "checkpoints").iterdir())


def test_registry_refuses_urls_without_a_checksum(tmp_path: Path) -> None:
    from hat_cli.errors import ConfigError

    table = {"family": "han", "scale": 2, "file": "X.pt", "urls": ["https://example.org/X.pt"]}
    with pytest.raises(ConfigError, match="urls need a sha256"):
        load_registry(write_registry(tmp_path / "r.toml", {"X": table}))
