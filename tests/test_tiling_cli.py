"""`hat upscale` tiling options: --tile, --tile-overlap, --verbose, and the tile progress callback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from hat_cli import Upscaler
from hat_cli.cli import app
from hat_cli.cli.progress import TileProgress, tile_progress

runner = CliRunner()


def _photo(tmp_path: Path, size: tuple[int, int] = (40, 28)) -> Path:
    path = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_tile_overlap_and_verbose_reach_the_engine(tmp_path: Path, tiny_checkpoint: Path) -> None:
    source, out = _photo(tmp_path), tmp_path / "out.png"
    args = ["upscale", str(source), "-o", str(out), "-w", str(tiny_checkpoint), "--device", "cpu"]
    result = runner.invoke(app, [*args, "--tile", "16", "--tile-overlap", "8", "--verbose"])
    assert result.exit_code == 0, result.output
    assert "tiles of 16 px, overlap 8" in result.output and "cpu (fp32)" in result.output
    expected = Upscaler.from_file(tiny_checkpoint, device="cpu", tile=16, tile_overlap=8).upscale(Image.open(source))
    np.testing.assert_array_equal(np.asarray(Image.open(out)), np.asarray(expected))


def test_auto_tile_is_the_default_and_verbose_says_why(tmp_path: Path, tiny_checkpoint: Path) -> None:
    source, out = _photo(tmp_path), tmp_path / "out.png"
    result = runner.invoke(app, ["upscale", str(source), "-o", str(out), "-w", str(tiny_checkpoint), "-v"])
    assert result.exit_code == 0, result.output
    assert "auto: whole image fits" in result.output
    whole = Upscaler.from_file(tiny_checkpoint, device="cpu", tile=0).upscale(Image.open(source))
    np.testing.assert_array_equal(np.asarray(Image.open(out)), np.asarray(whole))


def test_bad_tile_options_are_usage_errors(tmp_path: Path, tiny_checkpoint: Path) -> None:
    source = _photo(tmp_path)
    base = ["upscale", str(source), "-w", str(tiny_checkpoint), "--device", "cpu"]
    bad_tile = runner.invoke(app, [*base, "--tile", "-3"])
    assert bad_tile.exit_code == 2 and "--tile" in bad_tile.output
    bad_overlap = runner.invoke(app, [*base, "--tile-overlap", "-1"])
    assert bad_overlap.exit_code == 2


def test_progress_shows_only_for_several_tiles_and_not_when_quiet() -> None:
    with tile_progress("x.png", enabled=False) as callback:
        assert callback is None
    bar = TileProgress("x.png")
    bar(1, 1)
    assert bar._bar is None  # a single tile: no bar
    bar(1, 4)
    assert bar._bar is not None
    bar(4, 4)
    bar.close()
    assert bar._bar is None
