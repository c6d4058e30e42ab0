"""Hardening (issue 13), checkpoints: no code runs (kept), and no shape is trusted either. Resource
bombs (D2) end in one line, exit 2, in seconds and little memory; malformed files (D11) are one
line, exit 2; broken weights and options (D4) fail clearly; content decides the format."""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hat_cli import checkpoint
from hat_cli.errors import EXIT_SOME_FAILED, EXIT_USAGE, CheckpointError
from hat_cli.model import HAT
from tests._hardening import hat, one_error, run_measured, save_png
from tests.conftest import TINY_CONFIG

GiB = 1 << 30


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return HAT(TINY_CONFIG).state_dict()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_png(tmp_path_factory.mktemp("img") / "in.png")


def save(path: Path, state: dict, meta: dict | None = None) -> Path:
    payload: dict = {"params_ema": state}
    if meta is not None:
        payload["hat_config"] = meta
    torch.save(payload, path)
    return path


def upscale(image: Path, weights: Path, *extra: str):
    out = image.parent / f"out_{weights.stem}.png"
    out.unlink(missing_ok=True)
    result = hat("upscale", image, "--weights", weights, "-o", out, *extra)
    assert not out.exists() or result.exit_code == 0
    return result


# --------------------------------------------------------------------------------------------- D2
def extra_block(state: dict) -> dict:
    """One key more builds 200,001 blocks if indices are trusted (110 s, 7.5 GB before)."""
    return {**state, "layers.0.residual_group.blocks.200000.norm1.weight": torch.zeros(12)}


def zero_stride(state: dict) -> dict:
    """4 bytes of storage claiming (300000, 3, 3, 3): 1.08 TB when materialised."""
    return {**state, "conv_first.weight": torch.zeros(1).expand(300000, 3, 3, 3)}


def huge_window(state: dict) -> dict:
    """Bias tables of a 120-pixel window (230 KB): 3.3 GB of position indices if built."""
    heads = state["layers.0.residual_group.blocks.0.attn.relative_position_bias_table"].shape[1]
    tables = {
        key: torch.zeros((2 * 120 - 1) ** 2, heads)
        for key in state
        if key.endswith("attn.relative_position_bias_table") and ".blocks." in key
    }
    ocab = {
        "layers.0.residual_group.overlap_attn.relative_position_bias_table": torch.zeros((120 + 180 - 1) ** 2, heads)
    }
    return {**state, **tables, **ocab}


@pytest.mark.parametrize(
    ("attack", "expected"),
    [
        (extra_block, "blocks of residual group 0 are not numbered 0..N-1"),
        (zero_stride, "claims (300000, 3, 3, 3) over 4 bytes of storage"),
        (huge_window, "window 120 (overlap window 180) is beyond the supported 32 (64)"),
    ],
    ids=["200001-blocks", "zero-stride-1TB", "window-120-3GB"],
)
def test_d2_resource_bombs_end_in_one_line_in_seconds_and_little_memory(
    tmp_path: Path, state, image: Path, attack, expected: str
) -> None:
    bomb = save(tmp_path / "bomb.pth", attack(state))
    started = time.monotonic()
    done, rss = run_measured("upscale", image, "--weights", bomb, "-o", tmp_path / "o.png", timeout=90)
    seconds = time.monotonic() - started
    assert done.returncode == EXIT_USAGE, done.stderr
    assert done.stderr.splitlines() == [f"error: {bomb}: " + done.stderr.split(f"{bomb}: ", 1)[1].strip()]
    assert expected in done.stderr
    assert seconds < 60 and rss < 1.5 * GiB, (seconds, rss)
    assert not (tmp_path / "o.png").exists()


def deflated(source: Path, target: Path, padding: int) -> Path:
    """``source`` re-zipped with deflate, plus a zero member of ``padding`` bytes (a zip bomb)."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zout:
        prefix = zin.infolist()[0].filename.split("/")[0]
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
        zout.writestr(f"{prefix}/data/bomb", bytes(padding))
    return target


def test_d2_a_deflated_zip_is_capped_before_torch_reads_it(
    tmp_path: Path, state, image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bomb = deflated(save(tmp_path / "plain.pth", state), tmp_path / "bomb.pth", 64 << 20)
    assert bomb.stat().st_size < 1 << 20

    def never(*args, **kwargs):
        raise AssertionError("torch.load reached: the archive was inflated")

    monkeypatch.setattr(torch, "load", never)
    with pytest.raises(CheckpointError, match=r"inflate to .* \(a compression bomb"):
        checkpoint.read_checkpoint(bomb)
    line = one_error(upscale(image, bomb), EXIT_USAGE)
    assert "compression bomb" in line


def test_d2_a_deflated_but_honest_checkpoint_still_loads(tmp_path: Path, state, image: Path) -> None:
    """The neighbour: re-zipping with deflate alone (float weights shrink little) is accepted."""
    honest = deflated(save(tmp_path / "plain.pth", state), tmp_path / "honest.pth", 0)
    assert upscale(image, honest).exit_code == 0


# -------------------------------------------------------------------------------------------- D11
def _zero_size(state):
    return {**state, "conv_first.weight": torch.zeros(0, 3, 3, 3)}


def _conv_1d(state):
    return {**state, "conv_first.weight": state["conv_first.weight"].flatten()}


def _empty_table(state):
    return {**state, "layers.0.residual_group.blocks.0.attn.relative_position_bias_table": torch.zeros(0, 2)}


def _empty_ocab(state):
    return {**state, "layers.0.residual_group.overlap_attn.relative_position_bias_table": torch.zeros(0, 2)}


def _scalar_conv_last(state):
    return {**state, "conv_last.weight": torch.tensor(1.0)}


def _no_blocks(state):
    return {k: v for k, v in state.items() if ".blocks." not in k}


def _wrong_width(state):
    return {**state, "conv_after_body.weight": torch.zeros(5, 5, 3, 3)}


MALFORMED = {
    "zero-size": (_zero_size, None, "conv_first.weight is empty"),
    "1-D-conv_first": (_conv_1d, None, "conv_first.weight has 1 dimensions, expected 4"),
    "empty-bias-table": (_empty_table, None, "relative_position_bias_table is empty"),
    "empty-ocab-table": (_empty_ocab, None, "relative_position_bias_table is empty"),
    "scalar-conv_last": (_scalar_conv_last, None, "conv_last.weight has 0 dimensions"),
    "no-blocks": (_no_blocks, None, "not a HAT, HAN or RCAN checkpoint"),
    "wrong-width": (_wrong_width, None, "do not match"),
    "string-conv_scale": (dict, {"conv_scale": "abc"}, "conv_scale must be a finite number, got 'abc'"),
    "string-img_range": (dict, {"img_range": "1.0"}, "img_range must be a finite number, got '1.0'"),
    "nan-conv_scale": (dict, {"conv_scale": float("nan")}, "conv_scale must be a finite number"),
    "zero-img_range": (dict, {"img_range": 0}, "img_range"),
    "list-img_range": (dict, {"img_range": [1]}, "img_range must be a finite number"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_d11_malformed_checkpoints_are_one_line_exit_2(tmp_path: Path, state, image: Path, case: str) -> None:
    edit, meta, expected = MALFORMED[case]
    path = save(tmp_path / f"{case}.pth", edit(state), meta)
    line = one_error(upscale(image, path), EXIT_USAGE)
    assert str(path) in line and expected in line, line


@pytest.mark.parametrize(
    ("meta", "expected"),
    [('{"img_range": "x"}', "img_range must be a finite number"), ("[1, 2", "is not JSON"), ('"text"', None)],
    ids=["string", "broken-json", "not-an-object"],
)
def test_d11_safetensors_metadata_is_checked_too(
    tmp_path: Path, state, image: Path, meta: str, expected: str | None
) -> None:
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"hat_config": meta})
    result = upscale(image, path)
    if expected is None:  # metadata that is not an object is ignored: official defaults
        assert result.exit_code == 0, result.output
    else:
        assert expected in one_error(result, EXIT_USAGE)


def test_safetensors_named_pth_is_read_as_safetensors(tmp_path: Path, state, image: Path) -> None:
    path = tmp_path / "really_safetensors.pth"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    result = upscale(image, path)
    assert result.exit_code == 0 and "possibly code" not in result.output, result.output
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[:5000])
    assert "unreadable or truncated safetensors" in one_error(upscale(image, truncated), EXIT_USAGE)


def test_pickled_code_is_still_refused_and_never_run(tmp_path: Path, image: Path) -> None:
    """Kept from the audit: a pickle that would run code is refused, the code never runs."""
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pth"
    torch.save({"params_ema": {"conv_first.weight": torch.zeros(1)}, "x": Evil()}, path)
    assert "possibly code" in one_error(upscale(image, path), EXIT_USAGE)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------- D4
def test_d4_nan_weights_and_inf_bias_fail_the_file_clearly(tmp_path: Path, state, image: Path) -> None:
    nan = save(tmp_path / "nan.pth", {k: torch.full_like(v, float("nan")) for k, v in state.items()})
    inf = save(
        tmp_path / "inf.pth", {**state, "conv_last.bias": torch.full_like(state["conv_last.bias"], float("inf"))}
    )
    for weights in (nan, inf):
        line = one_error(upscale(image, weights), EXIT_SOME_FAILED)  # nothing else: no numpy warning
        assert str(image) in line and "NaN or infinite values" in line
        assert not (image.parent / f"out_{weights.stem}.png").exists()


def test_d4_a_nan_model_in_bench_is_left_out_and_the_others_are_scored(tmp_path: Path, state) -> None:
    hr = tmp_path / "hr"
    for index in range(2):
        save_png(hr / f"img{index}.png", 16, 16, value=60 + 40 * index)
    nan = save(tmp_path / "nan.pth", {k: torch.full_like(v, float("nan")) for k, v in state.items()})
    good = save(tmp_path / "good.pth", state)
    result = hat("bench", "--hr", hr, "-s", "2", "--weights", nan, "--weights", good, "-m", "bicubic", "--json")
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    data = json.loads(result.stdout)
    assert [m["model"] for m in data["models"]] == ["good.pth", "bicubic"]
    assert all(len(m["images"]) == 2 for m in data["models"])
    [failure] = data["model_failures"]
    assert (failure["model"], failure["image"]) == ("nan.pth", "img0")
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert line.startswith("error: nan.pth on img0: the network produced NaN or infinite values")
    assert line.endswith("nan.pth is left out of the results")


def test_d4_a_lone_nan_model_in_bench_still_gives_json_and_csv(tmp_path: Path, state) -> None:
    save_png(tmp_path / "hr" / "img0.png", 16, 16)
    nan = save(tmp_path / "nan.pth", {k: torch.full_like(v, float("nan")) for k, v in state.items()})
    result = hat("bench", "--hr", tmp_path / "hr", "-s", "2", "--weights", nan, "--json", "--csv", tmp_path / "s.csv")
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    data = json.loads(result.stdout)
    assert data["models"] == [] and [f["model"] for f in data["model_failures"]] == ["nan.pth"]
    assert (tmp_path / "s.csv").read_text() == "scale,model,image,psnr,ssim,seconds\n"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--conv-scale", "nan"], "--conv-scale nan: must be a finite number"),
        (["--conv-scale", "inf"], "--conv-scale inf: must be a finite number"),
        (["--img-range", "0"], "--img-range 0.0: must be a finite number > 0"),
        (["--img-range", "-1"], "--img-range -1.0: must be a finite number > 0"),
        (["--img-range", "nan"], "--img-range nan: must be a finite number > 0"),
    ],
)
def test_d4_hidden_hyper_parameter_options_are_validated(
    tmp_path: Path, state, image: Path, flags: list[str], expected: str
) -> None:
    weights = save(tmp_path / "w.pth", state)
    assert expected in one_error(upscale(image, weights, *flags), EXIT_USAGE)


def test_d4_valid_hidden_values_still_work(tmp_path: Path, state, image: Path) -> None:
    weights = save(tmp_path / "w.pth", state, {"conv_scale": 0.02, "img_range": 255})
    assert upscale(image, weights, "--conv-scale", "0.01").exit_code == 0
    assert json.loads(json.dumps(checkpoint.read_checkpoint(weights)[1])) == {"conv_scale": 0.02, "img_range": 255}


def test_a_weights_name_too_long_for_the_file_system_is_one_line(tmp_path: Path, image: Path) -> None:
    weights = tmp_path / ("w" * 300 + ".pth")
    for command in (["upscale", image, "-o", tmp_path / "o.png"], ["lam", image, "--at", "0,0"]):
        line = one_error(hat(*command, "--weights", weights), EXIT_USAGE)
        assert line == f"error: {weights}: cannot read (File name too long)"
