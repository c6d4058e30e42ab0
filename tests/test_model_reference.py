"""The model reproduces the official architecture's outputs (reference fixtures, float32)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from hat_cli.api import Upscaler, image_to_tensor
from hat_cli.cli import app
from hat_cli.model import HATConfig

from .conftest import REFERENCE, reference_cases
from .test_speed_paths import CONFIG as SPEED_CONFIG

CASES = reference_cases()
IDS = [case["input"] for _, _, case in CASES]


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "plain"])
@pytest.mark.parametrize(("name", "entry", "case"), CASES, ids=IDS)
def test_python_api_matches_reference(name: str, entry: dict, case: dict, fused: bool) -> None:
    upscaler = Upscaler.from_file(REFERENCE / entry["checkpoint"], device="cpu", precision="fp32")
    assert upscaler.model.config == HATConfig.from_dict(entry["arch"])
    upscaler.model.set_fused_attention(fused)
    image = Image.open(REFERENCE / case["input"])
    out = upscaler.upscale_tensor(image_to_tensor(image))[0].numpy()
    expected = np.load(REFERENCE / case["output_npy"])
    assert out.shape == expected.shape
    assert np.abs(out - expected).max() < 1e-5


@pytest.mark.parametrize(("name", "entry", "case"), CASES, ids=IDS)
def test_cli_png_matches_reference(tmp_path, name: str, entry: dict, case: dict) -> None:
    out_path = tmp_path / "out.png"
    result = CliRunner().invoke(
        app,
        [
            "upscale",
            str(REFERENCE / case["input"]),
            "-o",
            str(out_path),
            "--weights",
            str(REFERENCE / entry["checkpoint"]),
            "--device",
            "cpu",
            "--tile",
            "0",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    ours = np.asarray(Image.open(out_path).convert("RGB"), dtype=np.int16)
    expected = np.asarray(Image.open(REFERENCE / case["output_png"]).convert("RGB"), dtype=np.int16)
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() <= 1


def test_fused_and_plain_attention_agree_on_random_weights() -> None:
    torch.manual_seed(1)
    from hat_cli.model import HAT

    config = replace(SPEED_CONFIG, upscale=3)  # scale 3 on top of the speed tests' x2 config
    model = HAT(config).eval()
    # Non-trivial bias tables so masks and biases matter.
    for name, param in model.named_parameters():
        if "relative_position_bias_table" in name:
            param.data.normal_(0, 1)
    x = torch.rand(2, 3, 13, 9)  # not a window multiple, two images, 4x3 windows with shift regions
    with torch.inference_mode():
        fused = model(x)
        model.set_fused_attention(False)
        plain = model(x)
    assert fused.shape == (2, 3, 39, 27)
    assert torch.allclose(fused, plain, atol=1e-5)
