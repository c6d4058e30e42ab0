"""`hat upscale` tiling options: --tile, --tile-overlap, --verbose, and the tile progress callback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import Progress
from typer.testing import CliRunner

from hat_cli import Upscaler
from hat_cli.baseline import BicubicUpscaler
from hat_cli.cli import app
from hat_cli.cli.progress import TileProgress
from hat_cli.cli.upscale import _attach

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
    upscaler = BicubicUpscaler(2)  # any upscaler: _attach sets its hooks
    _attach(upscaler, reporter=None, progress=None, verbose=False)  # --quiet, --json, no terminal: no bar
    assert upscaler.progress is None
    files_bar = Progress()
    _attach(upscaler, reporter=None, progress=files_bar, verbose=False)
    assert isinstance(upscaler.progress, TileProgress) and upscaler.progress._bar is files_bar
    own = TileProgress("x.png")
    own(1, 1)
    assert own._bar is None  # a single tile: no bar
    own(1, 4)
    assert own._bar is not None and len(own._bar.tasks) == 1
    own(4, 4)
    assert not own._bar.tasks  # the image is done; the next one starts a fresh count
    own.close()
    assert own._bar is None
    shared = Progress()
    files = shared.add_task("files", total=3)
    tiles = TileProgress("tiles", bar=shared)
    tiles(2, 6)
    assert [t.description for t in shared.tasks] == ["files", "tiles"]
    tiles(6, 6)
    tiles.close()
    assert [t.id for t in shared.tasks] == [files]  # the shared bar is left to its owner


def test_upscaler_hooks_report_progress_and_stats() -> None:
    from hat_cli.model import HAT, HATConfig

    config = HATConfig(upscale=2, embed_dim=12, depths=(1,), num_heads=(2,), window_size=4, squeeze_factor=4)
    upscaler = Upscaler(HAT(config), device="cpu", tile=8, tile_overlap=4)
    seen, stats = [], []
    upscaler.progress = lambda done, total: seen.append((done, total))
    upscaler.on_stats = stats.append
    upscaler.upscale_array(np.zeros((12, 20, 3), np.uint8))
    assert seen and seen[-1][0] == seen[-1][1] > 1
    assert len(stats) == 1 and stats[0] is upscaler.last_stats
