"""`hat bench` end to end through the CLI, and `hat upscale --model bicubic`.

Uses the benchmark data next to the repository (``../shared/datasets``); skipped without it.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from hat_cli.baseline import bicubic_upscale, make_lr
from hat_cli.checkpoint import save_checkpoint
from hat_cli.cli import app
from hat_cli.imagefiles import read_rgb8 as read_image
from hat_cli.metrics import mod_crop, psnr, ssim
from hat_cli.model import HAT
from tests.conftest import TINY_CONFIG

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
SET5 = DATA / "Set5"
SET5_NAMES = ["baby", "bird", "butterfly", "head", "woman"]

pytestmark = pytest.mark.skipif(not (SET5 / "HR").is_dir(), reason=f"benchmark data not found at {DATA}")

runner = CliRunner()


def _bench(*args: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(app, ["bench", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def _lr_dir(scale: int) -> Path:
    return SET5 / "LR_bicubic" / f"X{scale}"


@pytest.fixture(scope="module")
def tiny_x4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny x4 HAT checkpoint."""
    config = replace(TINY_CONFIG, upscale=4)
    torch.manual_seed(0)
    model = HAT(config)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_x4.pth", model.state_dict(), config)


def _small_set(tmp_path: Path, names: list[str]) -> tuple[Path, Path]:
    """Copies of a few Set5 x4 HR/LR files (the smallest images) in tmp_path."""
    hr, lr = tmp_path / "HR", tmp_path / "LR"
    hr.mkdir()
    lr.mkdir()
    for name in names:
        shutil.copy(SET5 / "HR" / f"{name}.png", hr)
        shutil.copy(_lr_dir(4) / f"{name}_LRBI_x4.png", lr)
    return hr, lr


@pytest.mark.parametrize("given_lr", [True, False], ids=["given-lr", "generated-lr"])
def test_bicubic_set5_x4_matches_the_published_baseline(given_lr: bool) -> None:
    lr_args = ["--lr", _lr_dir(4)] if given_lr else []
    code, out, err = _bench("--hr", SET5 / "HR", *lr_args, "--scale", "4", "--model", "bicubic", "--json")
    assert code == 0, err
    data = json.loads(out)  # stdout is exactly the JSON
    assert data["scale"] == 4
    (model,) = data["models"]
    assert model["model"] == "bicubic"
    assert [img["name"] for img in model["images"]] == SET5_NAMES
    assert abs(model["mean"]["psnr"] - 28.42) <= 0.02
    assert abs(model["mean"]["ssim"] - 0.8104) <= 0.002
    assert model["seconds_total"] > 0 and model["megapixels_per_second"] > 0


def test_two_models_side_by_side_with_csv_and_saved_images(tmp_path: Path, tiny_x4: Path) -> None:
    hr, lr = _small_set(tmp_path, ["bird", "head"])
    table_path, sr_dir = tmp_path / "scores.csv", tmp_path / "sr"
    common = ["--hr", hr, "--lr", lr, "-s", "4", "--device", "cpu", "--csv", table_path, "--save-sr", sr_dir]
    # --weights before --model: columns follow the command line, not the option kinds.
    code, out, err = _bench(*common, "--weights", tiny_x4, "--model", "bicubic", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert [m["model"] for m in data["models"]] == ["tiny_x4.pth", "bicubic"]
    for model in data["models"]:
        assert [img["name"] for img in model["images"]] == ["bird", "head"]
        assert all(np.isfinite(img["psnr"]) and 0 < img["ssim"] <= 1 for img in model["images"])
    tiny, bicubic = data["models"]
    assert bicubic["mean"]["psnr"] > tiny["mean"]["psnr"]  # random weights lose to interpolation

    with table_path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["model"], r["image"]) for r in rows] == [
        ("tiny_x4.pth", "bird"),
        ("tiny_x4.pth", "head"),
        ("bicubic", "bird"),
        ("bicubic", "head"),
    ]
    assert float(rows[2]["psnr"]) == bicubic["images"][0]["psnr"]

    for name in ("bird", "head"):
        saved = read_image(sr_dir / "bicubic" / f"{name}.png")
        lr_img = read_image(lr / f"{name}_LRBI_x4.png")
        np.testing.assert_array_equal(saved, bicubic_upscale(lr_img, 4))
        assert read_image(sr_dir / "tiny_x4.pth" / f"{name}.png").shape == saved.shape

    # Without --json: a table with both models, a mean row and the timing on stdout.
    code, out, err = _bench("--hr", hr, "--lr", lr, "-s", "4", "-m", "bicubic", "-w", tiny_x4, "--device", "cpu")
    assert code == 0, err
    for text in ("bicubic", "tiny_x4.pth", "bird", "head", "mean", "MP/s", f"{bicubic['mean']['psnr']:.4f}"):
        assert text in out
    assert out.index("bicubic") < out.index("tiny_x4.pth")


def test_unpaired_files_are_reported_and_skipped(tmp_path: Path) -> None:
    hr, lr = _small_set(tmp_path, ["bird", "head"])
    shutil.copy(SET5 / "HR" / "woman.png", hr)  # no LR
    shutil.copy(_lr_dir(4) / "baby_LRBI_x4.png", lr)  # no HR
    code, out, err = _bench("--hr", hr, "--lr", lr, "-s", "4", "-m", "bicubic", "--json")
    assert code == 0, err
    assert [img["name"] for img in json.loads(out)["models"][0]["images"]] == ["bird", "head"]
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2
    assert "woman.png" in warnings[0] and "baby_LRBI_x4.png" in warnings[1]


def test_wrong_size_lr_fails_that_pair_only(tmp_path: Path) -> None:
    hr, lr = _small_set(tmp_path, ["bird", "head", "woman"])
    bad = lr / "head_LRBI_x4.png"
    Image.open(bad).resize((30, 30)).save(bad)  # head needs 70x70
    code, out, err = _bench("--hr", hr, "--lr", lr, "-s", "4", "-m", "bicubic", "--json")
    assert code == 1
    assert [img["name"] for img in json.loads(out)["models"][0]["images"]] == ["bird", "woman"]
    naming = [line for line in err.splitlines() if "head_LRBI_x4.png" in line]
    assert len(naming) == 1 and naming[0].startswith("error: head: LR") and "needs 70x70" in naming[0]


def test_generated_lr_is_scored_against_the_cropped_hr(tmp_path: Path) -> None:
    """An HR whose size is not a multiple of the scale: cropped, shrunk, upscaled, scored."""
    hr = tmp_path / "HR"
    hr.mkdir()
    Image.fromarray(read_image(SET5 / "HR" / "bird.png")[:101, :90]).save(hr / "odd.png")
    code, out, err = _bench("--hr", hr, "-s", "3", "-m", "bicubic", "--json", "--save-sr", tmp_path / "sr")
    assert code == 0, err
    cropped = mod_crop(read_image(hr / "odd.png"), 3)
    want = bicubic_upscale(make_lr(cropped, 3), 3)
    assert want.shape == (99, 90, 3)
    np.testing.assert_array_equal(read_image(tmp_path / "sr" / "bicubic" / "odd.png"), want)
    (score,) = json.loads(out)["models"][0]["images"]
    assert score["psnr"] == psnr(want, cropped, 3) and score["ssim"] == ssim(want, cropped, 3)


def test_usage_errors(tmp_path: Path, tiny_x4: Path) -> None:
    hr, lr = _small_set(tmp_path, ["bird"])
    code, _, err = _bench("--hr", hr, "-s", "4")
    assert code == 2 and "--model" in err
    code, _, err = _bench("--hr", hr, "-s", "2", "-w", tiny_x4)
    assert code == 2 and "x4 model but --scale 2" in err
    code, _, err = _bench("--hr", hr, "-s", "4", "-m", "bicubic", "-m", "bicubic")
    assert code == 2 and "given twice" in err
    code, _, err = _bench("--hr", hr, "--lr", lr, "-s", "3", "-m", "bicubic")  # x4 names at x3
    assert code == 2 and "no image pairs" in err
    (tmp_path / "empty").mkdir()
    code, _, err = _bench("--hr", tmp_path / "empty", "-s", "4", "-m", "bicubic")
    assert code == 2 and "no images in" in err


def test_upscale_with_bicubic(tmp_path: Path) -> None:
    source = tmp_path / "x.png"
    shutil.copy(_lr_dir(4) / "bird_LRBI_x4.png", source)
    result = runner.invoke(app, ["upscale", str(source), "--model", "bicubic", "--scale", "2"])
    assert result.exit_code == 0, result.output
    out = read_image(tmp_path / "x_x2.png")
    assert out.shape == (144, 144, 3)  # bird x4 input is 72x72
    np.testing.assert_array_equal(out, bicubic_upscale(read_image(source), 2))

    default = runner.invoke(app, ["upscale", str(source), "--model", "bicubic"])  # x4, as every upscaler
    assert default.exit_code == 0, default.output
    assert read_image(tmp_path / "x_x4.png").shape == (288, 288, 3)
