"""Hardening of ``hat train``: hostile outputs, options, architectures, resume files, validation and
training images are one line with a documented exit code, found before training starts, and a run
that fails late (out of memory, a validation image gone bad) keeps what it has trained."""

from __future__ import annotations

import copy
import os
import stat
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import hat_cli.train as train_module
from hat_cli.checkpoint import save_checkpoint
from hat_cli.errors import EXIT_SOME_FAILED, EXIT_USAGE, DeviceOutOfMemory, InputImageError
from hat_cli.model import HAT, HATConfig
from hat_cli.train import (
    TrainOptions,
    TrainProgress,
    load_training_data,
    parse_arch,
    read_rgb,
    state_path_for,
    train,
)
from tests._hardening import hat, one_error

ARCH = "embed_dim=8,depths=1,num_heads=2,window_size=4,compress_ratio=2,squeeze_factor=4"
TINY = HATConfig(upscale=2, embed_dim=8, depths=(1,), num_heads=(2,), window_size=4, compress_ratio=2, squeeze_factor=4)
CPU_OOM = (
    "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 bytes"
)


def _png(path: Path, size: int = 24, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _png16(path: Path, size: int = 24) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.arange(size * size, dtype=np.uint16).reshape(size, size) * 100).save(path)
    return path


def _corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return path


def _folder(path: Path, count: int = 2) -> Path:
    for i in range(count):
        _png(path / f"img{i}.png", seed=i)
    return path


@pytest.fixture
def hr(tmp_path: Path) -> Path:
    return _folder(tmp_path / "hr")


def _train(hr: Path, out: Path, *args: str | Path):
    """``hat train`` of the tiny architecture: x2, two iterations of two 16-pixel patches."""
    base = ["train", "--hr", hr, "-o", out, "-s", "2", "--iters", "2", "-b", "2", "--patch-size", "16"]
    arch = [] if any(a in ("--arch", "--init", "--resume") for a in args) else ["--arch", ARCH]
    return hat(*base, "--device", "cpu", "--threads", "1", *arch, *args)


def _options(hr: Path, out: Path, **kw: Any) -> TrainOptions:
    base: dict[str, Any] = dict(
        hr_dirs=[hr], out=out, scale=2, config=TINY, iters=2, batch_size=2, patch_size=16, val_every=0, save_every=0
    )
    return TrainOptions(**{**base, "threads": 1, **kw})


# --------------------------------------------------------------------------- 1: --out


def _device(path: Path) -> Path:
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # /dev/null's numbers
    except PermissionError:
        pytest.skip("creating a device node needs root")
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("make", [_device, _fifo], ids=["device", "fifo"])
def test_out_that_is_not_a_regular_file_is_refused_not_replaced(hr: Path, tmp_path: Path, make: Callable) -> None:
    target = make(tmp_path / "special.pth")
    mode = target.lstat().st_mode
    line = one_error(_train(hr, target), EXIT_USAGE)
    assert "--out" in line and "not a regular file" in line
    assert target.lstat().st_mode == mode  # still the device / pipe


def test_out_name_too_long_is_one_line_before_training(hr: Path, tmp_path: Path) -> None:
    line = one_error(_train(hr, tmp_path / ("x" * 300 + ".pth")), EXIT_USAGE)
    assert "--out" in line and "too long" in line
    # The checkpoint's name fits but its state file's does not, in a folder still to be made: before,
    # stat said "no such file", training ran, and saving failed at the end.
    out = tmp_path / "new" / ("y" * 248 + ".pth")
    line = one_error(_train(hr, out), EXIT_USAGE)
    assert ".state.pth" in line and "too long" in line
    assert not (tmp_path / "new").exists()


# --------------------------------------------------------------------------- 2: --val-hr


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (_corrupt, "not a recognised image"),
        (_png16, "16-bit"),
        (lambda p: _png(p, size=3), "cannot score"),
    ],
    ids=["corrupt", "16-bit", "3x3"],
)
def test_bad_validation_image_fails_before_training(hr: Path, tmp_path: Path, make: Callable, says: str) -> None:
    bad = make(tmp_path / "val" / "bad.png")
    _png(tmp_path / "val" / "good.png")
    steps: list[TrainProgress] = []
    with pytest.raises(InputImageError) as caught:
        train(_options(hr, tmp_path / "m.pth", val_hr=tmp_path / "val"), steps.append)
    assert str(caught.value).startswith(f"--val-hr {bad}: ") and says in str(caught.value)
    assert steps == []  # found before the first iteration, not after the last
    line = one_error(_train(hr, tmp_path / "m.pth", "--val-hr", tmp_path / "val"), EXIT_SOME_FAILED)
    assert str(bad) in line


def test_empty_validation_folder_is_named(hr: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    line = one_error(_train(hr, tmp_path / "m.pth", "--val-hr", tmp_path / "empty"), EXIT_USAGE)
    assert f"--val-hr {tmp_path / 'empty'}" in line and "no images" in line
    assert not (tmp_path / "m.pth").exists()


def test_validation_failing_late_keeps_the_trained_weights(
    hr: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A validation image that goes bad after the check (deleted, rewritten): the weights are saved
    before the final validation, so the error costs nothing."""

    def gone(*args: Any, **kwargs: Any) -> float:
        raise InputImageError("a: /val/a.png: no such file")

    monkeypatch.setattr(train_module, "validate", gone)
    out = tmp_path / "m.pth"
    with pytest.raises(InputImageError, match=r"^--val-hr: a: /val/a.png: no such file \(.*saved"):
        train(_options(hr, out, val_hr=hr, val_every=0))
    state = torch.load(state_path_for(out), weights_only=True)
    assert state["train_state"]["iteration"] == 2 and out.is_file()
    # Mid-run too: the failing validation at iteration 1 saves iteration 1.
    with pytest.raises(InputImageError):
        train(_options(hr, tmp_path / "mid.pth", val_hr=hr, val_every=1))
    assert torch.load(state_path_for(tmp_path / "mid.pth"), weights_only=True)["train_state"]["iteration"] == 1


# --------------------------------------------------------------------------- 3: option values


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--ema-decay", "nan"),
        ("--ema-decay", "-5"),
        ("--ema-decay", "1"),
        ("--lr", "-1"),
        ("--lr", "nan"),
        ("--lr", "inf"),
        ("--seed", "99999999999999999999999"),
        ("--seed", "-1"),
        ("--scale", "5"),
        ("--patch-size", "17"),
    ],
)
def test_option_out_of_range_is_one_line_and_nothing_written(hr: Path, tmp_path: Path, option: str, value: str) -> None:
    out = tmp_path / "m.pth"
    line = one_error(_train(hr, out, option, value), EXIT_USAGE)
    assert option in line
    assert not out.exists()


def test_scale_is_checked_before_the_init_checkpoint_is_read(hr: Path, tmp_path: Path) -> None:
    init = tmp_path / "init.pth"
    assert _train(hr, init).exit_code == 0
    for scale in ("0", "1"):
        line = one_error(_train(hr, tmp_path / "m.pth", "--init", init, "--scale", scale), EXIT_USAGE)
        assert f"--scale {scale}" in line


def _forward_failing_at(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """HAT's forward runs out of memory (as the CPU allocator says it) on its ``call``-th call."""
    forward, calls = HAT.forward, [0]

    def failing(self: HAT, x: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == call:
            raise RuntimeError(CPU_OOM)
        return forward(self, x)

    monkeypatch.setattr(HAT, "forward", failing)


def test_out_of_memory_at_the_first_step_is_one_line_naming_the_batch(
    hr: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _forward_failing_at(monkeypatch, 1)
    line = one_error(_train(hr, tmp_path / "m.pth"), EXIT_SOME_FAILED)
    assert "out of memory" in line and "--batch-size" in line and "no checkpoint saved" in line


def test_out_of_memory_mid_run_saves_and_the_resume_continues_exactly(
    hr: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = train(_options(hr, tmp_path / "a.pth", iters=4))
    _forward_failing_at(monkeypatch, 3)
    out = tmp_path / "b.pth"
    with pytest.raises(DeviceOutOfMemory, match=r"saved .* at iteration 2"):
        train(_options(hr, out, iters=4))
    monkeypatch.undo()
    resumed = train(_options(hr, out, iters=4, resume=state_path_for(out)))
    a, b = torch.load(straight.out, weights_only=True), torch.load(resumed.out, weights_only=True)
    for group in ("params", "params_ema"):
        for key in a[group]:
            torch.testing.assert_close(a[group][key], b[group][key], rtol=1e-5, atol=1e-6)


def test_out_of_memory_in_validation_keeps_the_weights(
    hr: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def too_big(*args: Any) -> np.ndarray:
        raise RuntimeError(CPU_OOM)

    monkeypatch.setattr(train_module, "upscale_uint8", too_big)
    out = tmp_path / "m.pth"
    with pytest.raises(DeviceOutOfMemory, match=r"validating whole images of --val-hr .*\(saved .* at iteration 2"):
        train(_options(hr, out, val_hr=hr))
    assert torch.load(state_path_for(out), weights_only=True)["train_state"]["iteration"] == 2


# --------------------------------------------------------------------------- 4: --arch


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("depths=2x", "depths='2x'"),
        ("depths=abc", "depths='abc'"),
        ("depths=2x99999999999", "groups"),
        ("hat-tiny,upsampler=nearest", "pixelshuffle"),
        ("hat-tiny,in_chans=1", "in_chans"),
        ("hat-tiny,mlp_ratio=1e30", "mlp_ratio"),
        ("hat-tiny,mlp_ratio=0.001", "mlp_ratio"),
        ("hat-tiny,qkv_bias=yes", "true or false"),
        ("embed_dim=3000000,num_heads=1x6", "embed_dim"),
        ("hat-tiny,num_feat=10000000", "num_feat"),
        ("hat-tiny,depths=30x10", "blocks"),
        ("hat-l,embed_dim=1200,num_heads=6x12", "M parameters"),
        ("nosuchfamily", "unknown model"),
        ("rcan", "not a HAT model"),
    ],
)
def test_hostile_arch_is_one_line_naming_arch(hr: Path, tmp_path: Path, spec: str, says: str) -> None:
    line = one_error(_train(hr, tmp_path / "m.pth", "--arch", spec), EXIT_USAGE)
    assert "--arch" in line and says in line


def test_arch_bounds_leave_the_official_sizes_alone() -> None:
    assert parse_arch("hat-l").num_params < 50_000_000
    assert parse_arch("hat-s,depths=2/4").num_heads == (6, 6)


# --------------------------------------------------------------------------- 5: --resume


@pytest.fixture
def state(hr: Path, tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / "run" / "m.pth"
    train(_options(hr, out))
    return torch.load(state_path_for(out), weights_only=True)


def _set(key: str, value: Any) -> Callable[[dict], None]:
    return lambda data: data["train_state"].__setitem__(key, value)


def _group(key: str, value: Any) -> Callable[[dict], None]:
    return lambda data: data["train_state"]["optimizer"]["param_groups"][0].__setitem__(key, value)


def _add_group(data: dict) -> None:
    groups = data["train_state"]["optimizer"]["param_groups"]
    groups.append(dict(groups[0]))


DAMAGE: dict[str, Callable[[dict], None]] = {
    "no optimizer": lambda data: data["train_state"].pop("optimizer"),
    "optimizer an int": _set("optimizer", 5),
    "scheduler a string": _set("scheduler", "cosine"),
    "iteration a string": _set("iteration", "five"),
    "loss_avg a string": _set("loss_avg", "low"),
    "val_psnr a string": _set("val_psnr", "high"),
    "rng of the wrong size": _set("data_rng", torch.zeros(10, dtype=torch.uint8)),
    "torch rng a list": _set("torch_rng", [1, 2]),
    "another param group": _add_group,
    "other parameters": _group("params", [0, 1]),
    "lr a string": _group("lr", "fast"),
    "moment of another shape": lambda data: data["train_state"]["optimizer"]["state"][0].__setitem__(
        "exp_avg", torch.zeros(3)
    ),
    "moments missing": lambda data: data["train_state"]["optimizer"]["state"].__setitem__(0, {"step": 1.0}),
    "exp_avg_sq missing": lambda data: data["train_state"]["optimizer"]["state"][0].pop("exp_avg_sq"),
    "step a bool tensor": lambda data: data["train_state"]["optimizer"]["state"][0].__setitem__(
        "step", torch.tensor(True)
    ),
    "history an int": _set("history", 5),
    "history of strings": _set("history", [["1", "x"]]),
    "wall_s a string": _set("wall_s", "long"),
    "newer version": _set("version", 99),
    "train_state an int": lambda data: data.__setitem__("train_state", 5),
    "no params": lambda data: data.pop("params"),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_damaged_resume_state_is_one_line_naming_it(
    hr: Path, tmp_path: Path, state: dict[str, Any], damage: Callable[[dict], None]
) -> None:
    broken = copy.deepcopy(state)
    damage(broken)
    path = tmp_path / "broken.state.pth"
    torch.save(broken, path)
    line = one_error(_train(hr, tmp_path / "m.pth", "--iters", "3", "--resume", path), EXIT_USAGE)
    assert f"--resume {path}" in line
    assert not (tmp_path / "m.pth").exists()


@pytest.mark.parametrize("flag", ["amsgrad", "capturable"])
def test_adam_implementation_flags_in_a_state_are_this_runs_own(
    hr: Path, tmp_path: Path, state: dict[str, Any], flag: str
) -> None:
    """A file's amsgrad (moments it lacks) or capturable (a device it lacks) would crash the first
    step: how Adam runs is this torch's choice, not the file's."""
    changed = copy.deepcopy(state)
    _group(flag, True)(changed)
    path = tmp_path / "flag.state.pth"
    torch.save(changed, path)
    result = _train(hr, tmp_path / "m.pth", "--iters", "3", "--resume", path)
    assert result.exit_code == 0, result.output


def test_init_of_an_unusable_name_or_a_one_channel_network_is_one_line(hr: Path, tmp_path: Path) -> None:
    long_name = tmp_path / ("a" * 300 + ".pth")
    assert "File name too long" in one_error(_train(hr, tmp_path / "m.pth", "--init", long_name), EXIT_USAGE)
    grey = replace(TINY, in_chans=1)
    grey_file = save_checkpoint(tmp_path / "grey.pth", HAT(grey).state_dict(), grey)
    line = one_error(_train(hr, tmp_path / "m.pth", "--init", grey_file), EXIT_USAGE)
    assert f"--init {grey_file}: in_chans 1" in line


def test_a_huge_conv_scale_is_refused_before_training(hr: Path, tmp_path: Path) -> None:
    line = one_error(_train(hr, tmp_path / "m.pth", "--arch", "hat-tiny,conv_scale=1e308"), EXIT_USAGE)
    assert "conv_scale must be within" in line


def test_resume_of_a_weights_file_points_to_init(hr: Path, tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    train(_options(hr, weights))
    line = one_error(_train(hr, tmp_path / "m.pth", "--resume", weights), EXIT_USAGE)
    assert "no training state" in line and "--init" in line and "init=" not in line


# --------------------------------------------------------------------------- 6: --hr


def test_stray_training_files_are_skipped_with_one_warning(hr: Path, tmp_path: Path) -> None:
    _corrupt(hr / "broken.png")
    _png16(hr / "deep.png")
    result = _train(hr, tmp_path / "m.pth")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and str(hr / "broken.png") in warnings[0] and "deep.png" not in warnings[0]
    seen: list[str] = []
    sampler = load_training_data(_options(hr, tmp_path / "x.pth"), seen.append)
    assert len(sampler.pairs) == 3 and len(seen) == 1  # the 16-bit image trains, read as 8 bits


def test_sixteen_bit_training_images_are_rounded_to_eight_bits(tmp_path: Path) -> None:
    path = _png16(tmp_path / "deep.png")
    values = np.asarray(Image.open(path), dtype=np.float64)
    expected = np.floor(values / 257 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(read_rgb(path), np.repeat(expected[:, :, None], 3, axis=2))


def test_training_folder_without_a_readable_image_is_one_line_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    _corrupt(bad / "a.png")
    _corrupt(bad / "b.png")
    line = one_error(_train(bad, tmp_path / "m.pth"), EXIT_SOME_FAILED)
    assert f"--hr {bad}" in line and "none of the 2" in line
    small = tmp_path / "small"
    _png(small / "a.png", size=8)
    _corrupt(small / "b.png")
    line = one_error(_train(small, tmp_path / "m.pth"), EXIT_USAGE)
    assert f"--hr {small}" in line and "16x16" in line and "1 unreadable" in line
