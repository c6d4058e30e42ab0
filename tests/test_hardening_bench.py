"""Hardening (issue 13), ``hat bench``: one bad pair never aborts the run (D7), two files with one
stem are two rows and two saved images (D21), names with markup are text (D1), and undecodable
names are scored and written back as they are (D10)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from hat_cli.errors import EXIT_OK, EXIT_SOME_FAILED
from tests._batch_images import gradient, write_png16
from tests._hardening import hat


def _hr(folder: Path, name: str, height: int = 16, width: int = 16) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(gradient(height, width)).save(folder / name)
    return folder / name


def test_d7_bad_pairs_are_reported_one_line_each_and_the_rest_is_scored(tmp_path: Path) -> None:
    hr = tmp_path / "hr"
    _hr(hr, "good.png", 32, 32)
    _hr(hr, "also_good.png", 40, 44)
    buffer = io.BytesIO()
    Image.fromarray(gradient(64, 64)).save(buffer, "PNG")
    (hr / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    write_png16(hr / "deep.png", gradient(16, 16, 3, 65535))
    tifffile.imwrite(hr / "float.tif", np.zeros((16, 16, 3), np.float32), photometric="rgb")
    _hr(hr, "tiny.png", 3, 3)  # smaller than the scale
    (hr / "[bold]x.png").write_bytes(b"not a png")
    result = hat("bench", "--hr", hr, "-s", "4", "--model", "bicubic", "--json")
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    scored = [image["name"] for image in json.loads(result.stdout)["models"][0]["images"]]
    assert sorted(scored) == ["also_good", "good"]
    lines = result.stderr.splitlines()
    errors = sorted(line for line in lines if line.startswith("error: "))
    assert len(errors) == 5 and lines[-1] == "5 of 7 image pair(s) could not be scored", lines
    expected = {
        "[bold]x": f"{hr / '[bold]x.png'}: not a recognised image",
        "deep": "16-bit image",
        "float": "32-bit floating-point images are not supported",
        "tiny": f"HR {hr / 'tiny.png'} (3x3) is smaller than the scale 4",
        "truncated": f"{hr / 'truncated.png'}: corrupt or truncated image",
    }
    for line in errors:
        name = next(key for key in expected if key in line)
        assert expected.pop(name) in line, line
    assert not expected and "Traceback" not in result.output


def test_d7_a_wrong_size_lr_fails_its_pair_only(tmp_path: Path) -> None:
    hr, lr = tmp_path / "hr", tmp_path / "lr"
    _hr(hr, "a.png")
    _hr(hr, "b.png")
    _hr(lr, "a_x2.png", 8, 8)
    _hr(lr, "b_x2.png", 7, 8)
    result = hat("bench", "--hr", hr, "--lr", lr, "-s", "2", "--model", "bicubic")
    assert result.exit_code == EXIT_SOME_FAILED
    assert [line for line in result.stderr.splitlines() if line.startswith("error")] == [
        f"error: b: LR {lr / 'b_x2.png'} is 8x7 but HR {hr / 'b.png'} cropped to a multiple of 2 needs 8x8 "
        "(width x height)"
    ]


def test_d21_same_stem_different_extension_are_two_rows_and_two_files(tmp_path: Path) -> None:
    hr, out = tmp_path / "hr", tmp_path / "sr"
    _hr(hr, "a.png")
    Image.fromarray(gradient(16, 16)[::-1].copy()).save(hr / "a.jpg", quality=95)
    result = hat("bench", "--hr", hr, "-s", "2", "--model", "bicubic", "--save-sr", out, "--json")
    assert result.exit_code == EXIT_OK, result.output
    images = json.loads(result.stdout)["models"][0]["images"]
    assert sorted(image["name"] for image in images) == ["a.jpg", "a.png"]
    assert sorted(p.name for p in (out / "bicubic").iterdir()) == ["a.jpg.png", "a.png.png"]
    with Image.open(out / "bicubic" / "a.jpg.png") as jpg, Image.open(out / "bicubic" / "a.png.png") as png:
        assert not np.array_equal(np.asarray(jpg), np.asarray(png))


def test_d1_unpaired_warnings_show_names_as_they_are(tmp_path: Path) -> None:
    hr, lr = tmp_path / "hr", tmp_path / "lr"
    _hr(hr, "a.png")
    _hr(hr, "[final].png")
    _hr(lr, "a_x2.png", 8, 8)
    result = hat("bench", "--hr", hr, "--lr", lr, "-s", "2", "--model", "bicubic", "--json")
    assert result.exit_code == EXIT_OK, result.output
    assert result.stderr.splitlines() == ["warning: 1 HR image(s) without an LR image, skipped: [final].png"]


def test_d10_an_undecodable_file_name_is_scored_and_kept_in_csv_and_json(tmp_path: Path) -> None:
    hr = tmp_path / "hr"
    _hr(hr, "ok.png")
    Image.fromarray(gradient(16, 16)).save(os.path.join(os.fsencode(hr), b"\xff.png"))
    result = hat("bench", "--hr", hr, "-s", "2", "--model", "bicubic", "--csv", tmp_path / "s.csv", "--json")
    assert result.exit_code == EXIT_OK, result.output
    names = sorted(image["name"] for image in json.loads(result.stdout)["models"][0]["images"])
    assert names == ["ok", "\udcff"]  # JSON's escape of os.fsdecode(b"\xff"): os.fsencode gives the byte back
    rows = (tmp_path / "s.csv").read_bytes().splitlines()
    assert sorted(row.split(b",")[2] for row in rows[1:]) == [b"ok", b"\xff"]  # the file's own name
