"""`hat upscale` on one image, `hat models list`, entry points and error messages."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from hat_cli import Upscaler
from hat_cli.cli import app
from hat_cli.cli.options import ModelListOpt, ModelOrderCommand, WeightsListOpt, model_specs, open_models
from hat_cli.errors import ConfigError

runner = CliRunner()


def _image(tmp_path: Path, name: str = "photo.png", size: tuple[int, int] = (10, 7)) -> Path:
    path = tmp_path / name
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_upscale_writes_default_name_and_refuses_to_overwrite(tmp_path: Path, tiny_checkpoint: Path) -> None:
    source = _image(tmp_path)
    args = ["upscale", str(source), "--weights", str(tiny_checkpoint), "--device", "cpu"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    out = tmp_path / "photo_x2.png"
    with Image.open(out) as image:
        assert image.size == (20, 14) and image.mode == "RGB"
    before = out.read_bytes()
    second = runner.invoke(app, args)
    assert second.exit_code != 0 and "--overwrite" in second.output
    assert out.read_bytes() == before
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_api_and_cli_agree(tmp_path: Path, tiny_checkpoint: Path) -> None:
    source = _image(tmp_path)
    out = tmp_path / "cli.png"
    result = runner.invoke(app, ["upscale", str(source), "-o", str(out), "-w", str(tiny_checkpoint), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    api = Upscaler.from_file(tiny_checkpoint, device="cpu").upscale(Image.open(source))
    assert np.array_equal(np.asarray(api), np.asarray(Image.open(out)))


def test_scale_conflict_and_conflicting_options_are_usage_errors(tmp_path: Path, tiny_checkpoint: Path) -> None:
    source = _image(tmp_path)
    conflict = runner.invoke(app, ["upscale", str(source), "-w", str(tiny_checkpoint), "--scale", "4"])
    assert conflict.exit_code == 2 and "x2 model but --scale 4" in conflict.output
    both = runner.invoke(app, ["upscale", str(source), "-w", str(tiny_checkpoint), "--model", "hat-s"])
    assert both.exit_code == 2 and "not both" in both.output


def test_preset_not_cached_names_the_file_and_where_to_put_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HAT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HAT_OFFLINE", "1")
    result = runner.invoke(app, ["upscale", str(_image(tmp_path)), "--scale", "4"])
    assert result.exit_code == 2
    assert "HAT_SRx4_ImageNet-pretrain" in result.output and str(tmp_path / "cache") in result.output
    assert "4ee053c42461187846dc0e93aa5abd34591c0725a8e044a59000e92ee215e833" in result.output


def test_unknown_model_and_bad_scale_list_choices(tmp_path: Path, cache: Path, monkeypatch) -> None:
    monkeypatch.setenv("HAT_OFFLINE", "1")
    source = str(_image(tmp_path))
    unknown = runner.invoke(app, ["upscale", source, "--model", "hat-xl", "--scale", "4"])
    assert unknown.exit_code == 2 and "hat-s" in unknown.output and "bicubic" in unknown.output
    bad_scale = runner.invoke(app, ["upscale", source, "--model", "hat-l", "--scale", "5"])
    assert bad_scale.exit_code == 2 and "x2, x3, x4" in bad_scale.output
    assert len(bad_scale.output.strip().splitlines()) == 1


def test_bad_input_image_is_one_line_and_exit_1(tmp_path: Path, tiny_checkpoint: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    result = runner.invoke(app, ["upscale", str(broken), "-w", str(tiny_checkpoint)])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "broken.png" in lines[0]


def test_models_list_json_has_every_preset() -> None:
    result = runner.invoke(app, ["models", "list", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    by_name = {row["name"]: row for row in rows}
    assert len([r for r in rows if not r["bundled"]]) >= 14
    assert by_name["HAT-S_SRx4"]["params"] > 9_000_000 and by_name["HAT-S_SRx4"]["scale"] == 4
    table = runner.invoke(app, ["models", "list"])
    assert table.exit_code == 0 and "HAT-S_SRx4" in table.stdout


def test_python_dash_m_and_debug_traceback(tmp_path: Path) -> None:
    help_run = subprocess.run([sys.executable, "-m", "hat_cli", "--help"], capture_output=True, text=True)
    assert help_run.returncode == 0 and "upscale" in help_run.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "hat_cli", "upscale", str(_image(tmp_path)), "-w", str(tmp_path / "no.pth")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "Traceback" not in missing.stderr and "no.pth" in missing.stderr


def test_commands_without_a_model_do_not_import_torch(tmp_path: Path) -> None:
    # `hat models list/path`, `--help` and a `--dry-run` (outputs are named without building the
    # network) should answer at once, not after torch's multi-second import.
    image = _image(tmp_path)
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from hat_cli.cli import app\n"
        "for args in (['--help'], ['models', 'list', '--json'], ['models', 'path', 'hat-tiny', '--scale', '4'],\n"
        "             ['upscale', '--help'], ['upscale', sys.argv[1], '-m', 'hat-tiny', '--dry-run']):\n"
        "    result = CliRunner().invoke(app, args)\n"
        "    assert result.exit_code == 0, (args, result.output)\n"
        "print('torch' in sys.modules, 'hat_cli.model.hat.arch' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(image)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "False"]


# --------------------------------------------------------------------------- several --model/--weights


def test_open_models_names_each_model_once(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """One duplicate-name rule for hat bench and hat lam: a file name met again in another folder is
    named by its path; a model or file given twice is a usage error."""
    other = tmp_path / "other" / tiny_checkpoint.name
    other.parent.mkdir()
    shutil.copy(tiny_checkpoint, other)
    opened = open_models([("weights", tiny_checkpoint), ("weights", other)], device="cpu", self_ensemble=True)
    assert [name for name, _ in opened] == ["tiny_x2.pth+", f"{other}+"]  # the path keeps the ensemble's "+"
    with pytest.raises(ConfigError, match="given twice"):
        open_models([("weights", tiny_checkpoint), ("weights", tmp_path / "." / tiny_checkpoint.name)], device="cpu")
    with pytest.raises(ConfigError, match="model hat-tiny-x4 is given twice"):
        open_models([("model", "hat-tiny"), ("model", "hat-tiny-x4")], device="cpu")
    with pytest.raises(ConfigError, match="model bicubic is given twice"):
        open_models([("model", "bicubic"), ("model", "bicubic")], scale=2)


def test_model_specs_keep_the_command_line_order(tmp_path: Path, tiny_checkpoint: Path) -> None:
    probe = typer.Typer()
    seen = []

    @probe.command(cls=ModelOrderCommand)
    def run(ctx: typer.Context, model: ModelListOpt = None, weights: WeightsListOpt = None) -> None:
        seen.append(model_specs(ctx, model or [], weights or []))

    result = runner.invoke(probe, ["-w", "a.pth", "-m", "hat", "--weights", "b.pth", "--model", "bicubic"])
    assert result.exit_code == 0, result.output
    assert seen == [[("weights", Path("a.pth")), ("model", "hat"), ("weights", Path("b.pth")), ("model", "bicubic")]]
