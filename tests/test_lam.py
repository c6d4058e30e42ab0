"""Local Attribution Maps: the official numbers (lam-reference fixtures) through the API and
``hat lam``, batching, statistics, kernels, pictures and every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from hat_cli.checkpoint import load_model, save_checkpoint
from hat_cli.cli import app
from hat_cli.errors import EXIT_USAGE, ConfigError, ImageTooSmall
from hat_cli.lam import (
    Window,
    attribute,
    choose_step_batch,
    correlate,
    diffusion_index,
    gaussian_kernel,
    gini,
    path_kernels,
    window_gradient,
)
from hat_cli.lam_pictures import colorize, colormap_lut, kde_density, lr_from_hr
from hat_cli.model import HAT
from tests.conftest import SHARED, TINY_CONFIG

LAM_REFERENCE = SHARED / "fixtures" / "lam-reference"
ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def lam_cases() -> list[tuple[str, dict]]:
    manifest = LAM_REFERENCE / "manifest.json"
    if not manifest.is_file():
        return []
    return list(json.loads(manifest.read_text()).items())


CASES = lam_cases()
needs_fixtures = pytest.mark.skipif(not CASES, reason=f"no LAM reference fixtures at {LAM_REFERENCE}")


def _reference(case: dict) -> dict[str, np.ndarray]:
    return {key: np.load(LAM_REFERENCE / case[key]) for key in ("attribution", "map", "sr")}


def _case_args(case: dict) -> list[str]:
    window, path = case["window"], case["path"]
    return [
        str(LAM_REFERENCE / case["lr"]),
        "--weights",
        str(LAM_REFERENCE / case["checkpoint"]),
        "--at",
        f"{window['w']},{window['h']}",
        "--window",
        str(window["size"]),
        "--sigma",
        str(path["sigma"]),
        "--steps",
        str(path["fold"]),
        "--kernel",
        str(path["kernel"]),
        "--device",
        "cpu",
    ]


def _relative(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


# --------------------------------------------------------------------------- the official numbers


@needs_fixtures
@pytest.mark.parametrize(("name", "case"), CASES, ids=[name for name, _ in CASES])
def test_reference_case_through_the_api(name: str, case: dict) -> None:
    net = load_model(LAM_REFERENCE / case["checkpoint"]).eval().requires_grad_(False)
    lr = np.asarray(Image.open(LAM_REFERENCE / case["lr"]).convert("RGB"))
    window, path = case["window"], case["path"]
    result = attribute(
        net,
        lr,
        Window(window["w"], window["h"], window["size"]),
        sigma=path["sigma"],
        steps=path["fold"],
        kernel=path["kernel"],
    )
    expected = _reference(case)
    assert result.attribution.dtype == np.float32 and result.attribution.shape == expected["attribution"].shape
    assert _relative(result.attribution, expected["attribution"]) < 1e-4
    assert np.abs(result.map - expected["map"]).max() < 1e-4
    assert np.abs(result.sr - expected["sr"]).max() < 1e-5
    assert abs(result.diffusion_index - case["diffusion_index"]) < 0.01
    assert result.steps == path["fold"] and result.steps_per_second > 0 and result.batch >= 1


@needs_fixtures
@pytest.mark.parametrize(("name", "case"), CASES, ids=[name for name, _ in CASES])
def test_reference_case_through_the_cli(name: str, case: dict, tmp_path: Path) -> None:
    out = tmp_path / "lam"
    args = ["lam", *_case_args(case), "--json", "-o", str(out)]
    if name.endswith("short"):  # the real entry point once, in a subprocess
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        run = subprocess.run([sys.executable, "-m", "hat_cli", *args], capture_output=True, text=True, env=env)
        assert run.returncode == 0, run.stderr
        stdout = run.stdout
    else:
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        stdout = result.stdout
    report = json.loads(stdout)
    window = case["window"]
    assert report["window"] == {"x": window["w"], "y": window["h"], "size": window["size"]}
    assert report["model"] == Path(case["checkpoint"]).name and report["steps"] == case["path"]["fold"]
    assert {"seconds", "steps_per_second", "batch", "diffusion_index"} <= report.keys()
    assert abs(report["diffusion_index"] - case["diffusion_index"]) < 0.01
    attribution = np.load(out / "attribution.npy")
    assert attribution.dtype == np.float32
    assert _relative(attribution, _reference(case)["attribution"]) < 1e-4


# --------------------------------------------------------------------------- batching


class _Wrapped:
    """A Network around a HAT that takes 0..255 inputs (as RCAN/HAN) and fails on big batches."""

    def __init__(self, net: HAT, max_batch: int = 1000) -> None:
        self.net, self.max_batch = net, max_batch
        self.scale, self.size_multiple, self.in_channels, self.input_range = net.scale, net.size_multiple, 3, 255.0

    def bytes_per_input_pixel(self, dtype: torch.dtype | None = None) -> float:
        return self.net.bytes_per_input_pixel(dtype)

    def parameters(self):
        return self.net.parameters()

    def buffers(self):
        return self.net.buffers()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.max_batch:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.net(x / 255.0) * 255.0


@pytest.fixture(scope="module")
def tiny_net() -> HAT:
    torch.manual_seed(0)
    return HAT(TINY_CONFIG).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def small_image() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (8, 11, 3), dtype=np.uint8)


def test_batched_steps_equal_one_at_a_time(tiny_net: HAT, small_image: np.ndarray) -> None:
    kwargs = dict(window=Window(5, 6, 6), sigma=1.0, steps=5, kernel=5)
    single = attribute(tiny_net, small_image, batch=1, **kwargs)
    batched = attribute(tiny_net, small_image, batch=5, **kwargs)
    auto = attribute(tiny_net, small_image, **kwargs)
    assert single.batch == 1 and batched.batch == 5 and auto.batch == 4  # probe step, then the rest at once
    for other in (batched, auto):
        assert _relative(other.attribution, single.attribution) < 1e-5
        assert np.abs(other.sr - single.sr).max() < 1e-5
        assert abs(other.diffusion_index - single.diffusion_index) < 1e-4


def test_any_network_input_range_and_out_of_memory_halving(tiny_net: HAT, small_image: np.ndarray) -> None:
    kwargs = dict(window=Window(2, 3, 8), sigma=1.2, steps=4, kernel=3)
    plain = attribute(tiny_net, small_image, batch=4, **kwargs)
    wrapped = attribute(_Wrapped(tiny_net, max_batch=1), small_image, batch=4, **kwargs)
    assert wrapped.batch == 1 and wrapped.oom_retries == 2  # 4 -> 2 -> 1
    assert _relative(wrapped.attribution, plain.attribution) < 1e-4
    assert np.abs(wrapped.sr - plain.sr).max() < 1e-5


def test_bf16_autocast_stays_close_to_fp32(tiny_net: HAT, small_image: np.ndarray) -> None:
    kwargs = dict(window=Window(5, 6, 6), steps=3, kernel=5, batch=3)
    fp32 = attribute(tiny_net, small_image, **kwargs)
    bf16 = attribute(tiny_net, small_image, dtype=torch.bfloat16, **kwargs)
    assert bf16.attribution.dtype == np.float32 and bf16.sr.dtype == np.float32
    assert np.corrcoef(fp32.attribution.ravel(), bf16.attribution.ravel())[0, 1] > 0.99


def test_choose_batch_fills_the_budget() -> None:
    cpu = torch.device("cpu")
    assert choose_step_batch(100.0, 50, cpu, budget=1000) == 10
    assert choose_step_batch(100.0, 50, cpu, budget=10) == 1
    assert choose_step_batch(100.0, 5, cpu, budget=10**9) == 5
    assert choose_step_batch(1.0, 500, cpu, budget=10**9) == 64


def test_memory_budget_limits_the_batch(tiny_net: HAT, small_image: np.ndarray) -> None:
    result = attribute(tiny_net, small_image, Window(0, 0, 4), steps=3, kernel=3, memory_budget=1)
    assert result.batch == 1


# --------------------------------------------------------------------------- the math


def _official_gini(values: list[float]) -> float:
    array = np.array(values, dtype=np.float64)
    if array.min() < 0:
        array -= array.min()
    array = np.sort(array + 1e-7)
    n = len(array)
    return sum((2 * (i + 1) - n - 1) * x for i, x in enumerate(array)) / (n * array.sum())


@pytest.mark.parametrize(
    ("values", "expected"),
    [([1, 1, 1, 1], 0.0), ([0, 0, 0, 1], 0.75), ([4, 1, 3, 2], 0.25), ([-1, 1, 0], 4 / 9)],
)
def test_gini_hand_computed(values: list[float], expected: float) -> None:
    assert gini(np.array(values, dtype=np.float32)) == pytest.approx(expected, abs=1e-6)
    assert gini(np.array(values)) == pytest.approx(_official_gini(values), abs=1e-12)


def test_diffusion_index_hand_computed() -> None:
    assert diffusion_index(np.ones((4, 4))) == pytest.approx(100.0)
    one_hot = np.zeros((2, 2))
    one_hot[1, 0] = 1.0
    assert diffusion_index(one_hot) == pytest.approx(25.0, abs=1e-4)


@pytest.mark.parametrize(("size", "sigma"), [(1, 0.5), (3, 1.0), (5, 0.8), (9, 1.2), (9, 0.0)])
def test_kernels_sum_to_one_and_match_the_closed_form(size: int, sigma: float) -> None:
    kernel = gaussian_kernel(size, sigma).numpy()
    assert kernel.shape == (size, size) and kernel.sum() == pytest.approx(1.0, abs=1e-12)
    axis = np.arange(size) - size // 2
    line = np.exp(-(axis**2) / (2 * (sigma + 1e-5) ** 2))
    np.testing.assert_allclose(kernel, np.outer(line, line) / line.sum() ** 2, rtol=1e-12, atol=1e-300)
    assert np.array_equal(kernel, kernel.T) and np.array_equal(kernel, kernel[::-1])


def test_path_kernels_blur_to_the_input_and_derivatives_sum_to_zero() -> None:
    blur, derivative = path_kernels(1.2, 4, 9)
    assert blur.shape == derivative.shape == (4, 9, 9)
    np.testing.assert_allclose(blur[0], gaussian_kernel(9, 0.9), rtol=1e-12)
    delta = torch.zeros(9, 9, dtype=torch.float64)
    delta[4, 4] = 1.0
    assert torch.equal(blur[-1], delta)  # the last step is the unblurred input
    np.testing.assert_allclose(derivative[0], (gaussian_kernel(9, 0.9) - gaussian_kernel(9, 1.2)) * 4, rtol=1e-12)
    assert derivative.sum(dim=(1, 2)).abs().max() < 1e-12


def test_correlate_uses_reflect_101_borders() -> None:
    image = torch.from_numpy(np.random.default_rng(2).random((2, 6, 7))).float()
    kernels = torch.rand(3, 5, 5, dtype=torch.float64)
    out = correlate(image, kernels).numpy()
    padded = np.pad(image.numpy(), ((0, 0), (2, 2), (2, 2)), mode="reflect")  # numpy's reflect = reflect-101
    for k in range(3):
        for c in range(2):
            for y in range(6):
                for x in range(7):
                    expected = (padded[c, y : y + 5, x : x + 5] * kernels[k].numpy()).sum()
                    assert out[k, c, y, x] == pytest.approx(expected, abs=1e-5)


def test_window_gradient_is_the_official_objective() -> None:
    sr = torch.rand(2, 3, 12, 10, dtype=torch.float64)
    rows = (sr[:, :, :-1, :] - sr[:, :, 1:, :]) ** 2
    cols = (sr[:, :, :, :-1] - sr[:, :, :, 1:]) ** 2
    magnitude = torch.sqrt(rows[:, :, :, :-1] + cols[:, :, :-1, :])
    for window in (Window(2, 3, 4), Window(6, 8, 4)):  # the second touches the last row and column
        expected = magnitude[:, :, window.y : window.y + 4, window.x : window.x + 4].sum()
        assert window_gradient(sr, window).item() == pytest.approx(expected.item(), rel=1e-6)


def test_seismic_colours_match_matplotlib() -> None:
    lut = colormap_lut()
    assert lut.shape == (256, 3)
    np.testing.assert_array_equal(lut[0], (0.0, 0.0, 0.3))
    np.testing.assert_array_equal(lut[-1], (0.5, 0.0, 0.0))
    values = np.array([0.0, 0.25, 0.5, 0.6, 0.75, 0.9, 1.0], dtype=np.float32)
    expected = [[0, 0, 76], [1, 1, 255], [255, 253, 253], [255, 153, 153], [253, 0, 0], [177, 0, 0], [127, 0, 0]]
    assert colorize(values).tolist() == expected  # (255 * matplotlib seismic(v)).astype(uint8), matplotlib 3.11


def test_kde_matches_scipy_gaussian_kde() -> None:
    rows, cols = np.mgrid[0:6, 0:7]
    attribution_map = ((rows * 7 + cols * 3) % 5) / 4.0
    attribution_map[2, 3] = 3.0
    density = kde_density(attribution_map)
    # scipy.stats.gaussian_kde(positions, weights=map)(positions), over its max (scipy 1.17)
    for (y, x), value in {
        (0, 0): 0.2106638987796856,
        (5, 6): 0.2726963715367613,
        (3, 2): 0.7849821519281148,
        (1, 5): 0.6054023891376857,
    }.items():
        assert density[y, x] == pytest.approx(value, rel=1e-9)
    assert kde_density(np.zeros((3, 3))).max() == 0.0
    single = np.zeros((3, 3))
    single[1, 1] = 2.0
    assert kde_density(single)[1, 1] == 1.0


# --------------------------------------------------------------------------- the command


@pytest.fixture
def lr_image(tmp_path: Path) -> Path:
    path = tmp_path / "lr.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def second_checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(1)
    model = HAT(TINY_CONFIG)
    return save_checkpoint(tmp_path / "other" / "second.pth", model.state_dict(), TINY_CONFIG)


def test_pictures_are_written_with_the_expected_sizes(tmp_path: Path, tiny_checkpoint: Path, lr_image: Path) -> None:
    out = tmp_path / "out"
    args = ["lam", str(lr_image), "-w", str(tiny_checkpoint), "--at", "4,6", "--window", "8", "--steps", "3"]
    result = runner.invoke(app, [*args, "--kernel", "5", "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "DI " in result.stdout
    sr_size = (24, 20)  # x2 of 12 x 10
    sizes = {name: Image.open(out / f"{name}.png").size for name in ("saliency", "blend", "kde", "kde_blend", "sr")}
    assert set(sizes.values()) == {sr_size}
    assert Image.open(out / "input.png").size == (12, 10)
    assert Image.open(out / "strip.png").size == (5 * 24, 20)
    attribution = np.load(out / "attribution.npy")
    assert attribution.shape == (3, 10, 12) and attribution.dtype == np.float32
    assert json.loads((out / "lam.json").read_text())["window"] == {"x": 4, "y": 6, "size": 8}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_several_models_make_one_comparison_strip(
    tmp_path: Path, tiny_checkpoint: Path, second_checkpoint: Path, lr_image: Path
) -> None:
    out = tmp_path / "out"
    args = ["lam", str(lr_image), "-w", str(second_checkpoint), "-w", str(tiny_checkpoint), "--at", "0,0"]
    result = runner.invoke(app, [*args, "--window", "6", "--steps", "2", "--kernel", "3", "--json", "-o", str(out)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["model"] for line in lines] == ["second.pth", "tiny_x2.pth"]  # command-line order
    for line in lines:
        assert (out / line["model"] / "attribution.npy").is_file() and (out / line["model"] / "strip.png").is_file()
    width, height = Image.open(out / "comparison.png").size
    assert width == 3 * 24 and height > 2 * 20


def test_several_models_must_be_networks_of_one_scale_each_given_once(
    tmp_path: Path, tiny_checkpoint: Path, lr_image: Path
) -> None:
    torch.manual_seed(2)
    config = replace(TINY_CONFIG, upscale=4)
    x4 = save_checkpoint(tmp_path / "x4" / "tiny_x4.pth", HAT(config).state_dict(), config)
    base = ["lam", str(lr_image), "--at", "0,0", "--window", "4", "--steps", "2", "--kernel", "3", "--device", "cpu"]
    cases = {
        "mixed scales": (["-w", str(tiny_checkpoint), "-w", str(x4)], "tiny_x4.pth is x4 but tiny_x2.pth is x2"),
        "same file twice": (["-w", str(tiny_checkpoint), "-w", str(tiny_checkpoint)], "given twice"),
        "bicubic among networks": (["-w", str(tiny_checkpoint), "-m", "bicubic"], "bicubic has no network"),
    }
    bracketed = save_checkpoint(tmp_path / "m[1].pth", HAT(config).state_dict(), config)
    underscored = save_checkpoint(tmp_path / "m_1_.pth", HAT(config).state_dict(), config)  # the same folder name
    cases["two models, one folder"] = (
        ["-w", str(bracketed), "-w", str(underscored), "-o", str(tmp_path / "out")],
        "models m[1].pth, m_1_.pth would share the folder",
    )
    for models, message in cases.values():
        result = runner.invoke(app, [*base, *models])
        assert result.exit_code == 2, result.output
        assert result.stderr.strip().splitlines() == [result.stderr.strip()] and message in result.stderr
    assert not (tmp_path / "out").exists()  # refused before any model ran


def test_from_hr_makes_the_lr_as_lam_does(tmp_path: Path, tiny_checkpoint: Path) -> None:
    hr = Image.fromarray(np.random.default_rng(4).integers(0, 256, (11, 13, 3), dtype=np.uint8))
    hr.save(tmp_path / "hr.png")
    expected = hr.crop((0, 0, 12, 10)).resize((6, 5), Image.Resampling.BICUBIC)
    lr, cropped = lr_from_hr(hr, 2)
    assert cropped.size == (12, 10) and np.array_equal(np.asarray(lr), np.asarray(expected))
    out = tmp_path / "out"
    args = ["lam", str(tmp_path / "hr.png"), "--from-hr", "-w", str(tiny_checkpoint), "--at", "2,2", "--window", "4"]
    result = runner.invoke(app, [*args, "--steps", "2", "--kernel", "3", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert np.array_equal(np.asarray(Image.open(out / "lr.png")), np.asarray(expected))
    assert np.load(out / "attribution.npy").shape == (3, 5, 6)
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "dot.png")  # smaller than the scale
    result = runner.invoke(
        app, ["lam", str(tmp_path / "dot.png"), "--from-hr", "-w", str(tiny_checkpoint), "--at", "0,0"]
    )
    assert result.exit_code == 2 and result.stderr.startswith(f"error: {tmp_path / 'dot.png'}: HR image 1x1"), (
        result.stderr
    )


BAD_INPUTS = {
    "window outside": (["--at", "30,2"], "outside the 24x20 SR image"),
    "window negative": (["--at", "-1,2"], "outside the 24x20 SR image"),
    "window larger": (["--at", "0,0", "--window", "21"], "larger than the 24x20 SR image"),
    "window runs past": (["--at", "20,2", "--window", "8"], "runs past"),
    "zero steps": (["--at", "0,0", "--steps", "0"], "steps 0"),
    "even kernel": (["--at", "0,0", "--kernel", "4"], "odd"),
    "zero sigma": (["--at", "0,0", "--sigma", "0"], "sigma"),
    "bad corner": (["--at", "1;2"], "X,Y"),
    "image too small": (["--at", "0,0", "--window", "4", "--kernel", "25"], "too small"),
    "bicubic": (["--at", "0,0", "--model", "bicubic", "--scale", "2"], "bicubic"),
    "huge steps": (["--at", "0,0", "--steps", "99999999999999999999999"], "from 1 to 1000"),
    "huge kernel": (["--at", "0,0", "--kernel", "1001"], "from 1 to 101"),
    "huge sigma": (["--at", "0,0", "--sigma", "1e308"], "<= 1000"),
    "stdout": (["--at", "0,0", "-o", "-"], "-o -: hat lam writes a folder"),
    "long folder name": (["--at", "0,0", "-o", "d" * 300], "unusable folder name"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(case: str, tiny_checkpoint: Path, lr_image: Path) -> None:
    extra, message = BAD_INPUTS[case]
    model = [] if "--model" in extra else ["-w", str(tiny_checkpoint)]
    result = runner.invoke(app, ["lam", str(lr_image), *model, *extra, "--device", "cpu"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("option", ["--window", "--batch"])
def test_window_and_batch_below_one_are_one_usage_line(option: str, tiny_checkpoint: Path, lr_image: Path) -> None:
    result = runner.invoke(app, ["lam", str(lr_image), "-w", str(tiny_checkpoint), "--at", "0,0", option, "0"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: Invalid value for '{option}'"), result.stderr


def test_the_image_is_read_and_checked_before_any_model_is_opened(tmp_path: Path) -> None:
    """hat-l is not cached and --offline forbids fetching it: opening it would fail with exit 2."""
    base = ["--model", "hat-l", "--offline", "--at", "0,0", "--window", "2"]
    unreadable = tmp_path / "broken.png"
    unreadable.write_bytes(b"not an image")
    result = runner.invoke(app, ["lam", str(unreadable), *base])
    assert result.exit_code == 1, result.output  # InputImageError, not the offline message
    assert result.stderr.strip().splitlines() == [
        f"error: {unreadable}: not a recognised image (unknown format or corrupt header)"
    ]
    small = tmp_path / "small.png"
    Image.new("RGB", (3, 3)).save(small)
    result = runner.invoke(app, ["lam", str(small), *base])
    assert result.exit_code == 2 and "too small" in result.stderr and "offline" not in result.stderr, result.stderr


def test_channels_the_model_cannot_take_exit_1_before_any_model_runs(
    tmp_path: Path, tiny_checkpoint: Path, lr_image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("hat_cli.lam.attribute", lambda *args, **kwargs: pytest.fail("a model ran"))
    config = replace(TINY_CONFIG, in_chans=1)
    gray = save_checkpoint(tmp_path / "gray.pth", HAT(config).state_dict(), config)
    args = ["lam", str(lr_image), "-w", str(tiny_checkpoint), "-w", str(gray), "--at", "0,0", "--window", "4"]
    result = runner.invoke(app, [*args, "--kernel", "3", "--steps", "2", "--json"])
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines() == ["error: gray.pth: 3-channel image, the model takes 1 channels"]


def test_user_text_is_printed_verbatim(tmp_path: Path, tiny_checkpoint: Path) -> None:
    path = tmp_path / "odd [bold]name[red].png"
    Image.new("RGB", (3, 3)).save(path)
    result = runner.invoke(app, ["lam", str(path), "-w", str(tiny_checkpoint), "--at", "0,0", "--window", "2"])
    assert result.exit_code == 2 and "odd [bold]name[red].png" in result.stderr


def test_library_errors_are_typed(tiny_net: HAT, small_image: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="outside"):
        attribute(tiny_net, small_image, Window(22, 0, 4))  # SR is 22 x 16
    with pytest.raises(ConfigError, match="steps"):
        attribute(tiny_net, small_image, Window(0, 0, 4), steps=0)
    with pytest.raises(ConfigError, match="batch"):
        attribute(tiny_net, small_image, Window(0, 0, 4), batch=0)
    with pytest.raises(ImageTooSmall) as error:
        attribute(tiny_net, small_image[:3, :3], Window(0, 0, 4))
    assert error.value.exit_code == EXIT_USAGE


@pytest.mark.parametrize("arch", ["han", "rcan"])
def test_lam_works_for_han_and_rcan(arch: str, small_image: np.ndarray) -> None:
    """Convolutional families with an input range of 255 and no size multiple: batched == one at a time."""
    from hat_cli.model.rcan import HANConfig, RCANConfig
    from hat_cli.model.rcan.arch import build_network

    config_type = HANConfig if arch == "han" else RCANConfig
    torch.manual_seed(0)
    net = build_network(config_type(scale=2, n_feats=8, n_resgroups=2, n_resblocks=1, reduction=4))
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if name.endswith("gamma"):
                parameter.fill_(0.3)
    net = net.eval().requires_grad_(False)
    kwargs = dict(window=Window(4, 5, 6), sigma=1.2, steps=4, kernel=5)
    single = attribute(net, small_image, batch=1, **kwargs)
    batched = attribute(net, small_image, batch=4, **kwargs)
    assert single.sr.shape == (3, 16, 22) and np.isfinite(single.attribution).all()
    assert np.abs(single.attribution).max() > 0
    assert _relative(batched.attribution, single.attribution) < 1e-5
    assert 0 < single.diffusion_index < 100


def test_an_existing_file_as_output_folder_is_one_line(tiny_checkpoint: Path, lr_image: Path) -> None:
    result = runner.invoke(app, ["lam", str(lr_image), "-w", str(tiny_checkpoint), "--at", "0,0", "-o", str(lr_image)])
    assert result.exit_code == 2 and result.stderr.strip() == f"error: -o {lr_image}: exists and is not a folder"
