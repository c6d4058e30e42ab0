"""Pairing rules, image reading and ``run_bench`` end to end on small synthetic folders."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hat_cli.baseline import bicubic_model, bicubic_upscale, make_lr
from hat_cli.errors import ConfigError, InputImageError
from hat_cli.evaluation import (
    BenchResult,
    ImagePair,
    ImageScore,
    check_pairs,
    load_pair,
    pair_images,
    run_bench,
    write_csv,
)
from hat_cli.imagefiles import read_rgb8 as read_image
from hat_cli.metrics import mod_crop, psnr, ssim


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def _names(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


# ------------------------------------------------------------------ pairing


def test_pairing_usual_suffixes(tmp_path: Path) -> None:
    hr, lr = tmp_path / "hr", tmp_path / "lr"
    _touch(hr, "baby.png", "bird.png", "butterfly.png", "img_001_SRF_4_HR.png", "woman.png", "extra.png")
    _touch(
        lr,
        "baby_LRBI_x4.png",
        "birdx4.png",
        "butterfly_x4.jpg",
        "img_001_SRF_4_LR.png",
        "woman_x2.png",  # another scale: never paired at x4
        "orphan_LR.png",
        "notes.txt",  # not an image
        ".hidden_x4.png",  # hidden
    )
    pairing = pair_images(hr, lr, 4)
    got = {p.name: (p.hr.name, p.lr.name) for p in pairing.pairs}  # type: ignore[union-attr]
    assert got == {
        "baby": ("baby.png", "baby_LRBI_x4.png"),
        "bird": ("bird.png", "birdx4.png"),
        "butterfly": ("butterfly.png", "butterfly_x4.jpg"),
        "img_001": ("img_001_SRF_4_HR.png", "img_001_SRF_4_LR.png"),
    }
    assert [p.name for p in pairing.pairs] == ["baby", "bird", "butterfly", "img_001"]  # HR order
    assert _names(pairing.unpaired_hr) == ["extra.png", "woman.png"]
    assert _names(pairing.unpaired_lr) == ["orphan_LR.png", "woman_x2.png"]


def test_pairing_other_scale_and_case(tmp_path: Path) -> None:
    hr, lr = tmp_path / "hr", tmp_path / "lr"
    _touch(hr, "Woman.PNG", "head_GT.png")
    _touch(lr, "woman_lrbi_X2.png", "head_bicubic_x2_LR.bmp")
    pairing = pair_images(hr, lr, 2)
    assert {p.name: p.lr.name for p in pairing.pairs} == {  # type: ignore[union-attr]
        "Woman": "woman_lrbi_X2.png",
        "head": "head_bicubic_x2_LR.bmp",
    }
    assert pairing.unpaired_hr == pairing.unpaired_lr == []


def test_a_name_is_never_stripped_to_nothing(tmp_path: Path) -> None:
    hr, lr = tmp_path / "hr", tmp_path / "lr"
    _touch(hr, "x4.png")
    _touch(lr, "x4_LR.png")  # "_LR" goes, then "x4" must stay: it is the whole name
    pairing = pair_images(hr, lr, 4)
    assert [(p.name, p.lr.name) for p in pairing.pairs] == [("x4", "x4_LR.png")]  # type: ignore[union-attr]


def test_identical_stems_win_over_suffix_rules(tmp_path: Path) -> None:
    hr, lr = tmp_path / "hr", tmp_path / "lr"
    _touch(hr, "cat.png")
    _touch(lr, "cat_x4.png", "cat.png")  # the loose match comes first by name, the exact one wins
    pairing = pair_images(hr, lr, 4)
    assert [(p.hr.name, p.lr.name) for p in pairing.pairs] == [("cat.png", "cat.png")]  # type: ignore[union-attr]
    assert _names(pairing.unpaired_lr) == ["cat_x4.png"]


def test_ambiguous_hr_keys_only_pair_exactly(tmp_path: Path) -> None:
    hr, lr = tmp_path / "hr", tmp_path / "lr"
    _touch(hr, "dog.png", "dog_HR.png")
    _touch(lr, "dog_x4.png", "dog_HR.png")
    pairing = pair_images(hr, lr, 4)
    # dog_HR.png pairs by identical stem; dog_x4 could mean either HR file, so it is left alone.
    assert [(p.name, p.lr.name) for p in pairing.pairs] == [("dog_HR", "dog_HR.png")]  # type: ignore[union-attr]
    assert _names(pairing.unpaired_hr) == ["dog.png"]
    assert _names(pairing.unpaired_lr) == ["dog_x4.png"]


def test_no_lr_folder_means_generated_inputs(tmp_path: Path) -> None:
    _touch(tmp_path, "b.png", "a_HR.png", "c.txt")
    pairing = pair_images(tmp_path, None, 3)
    assert [(p.name, p.hr.name, p.lr) for p in pairing.pairs] == [
        ("a", "a_HR.png", None),
        ("b", "b.png", None),
    ]
    with pytest.raises(ConfigError):
        pair_images(tmp_path / "missing", None, 3)
    with pytest.raises(ConfigError):
        pair_images(tmp_path, None, 0)


# ------------------------------------------------------------------ images


def _smooth(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 120 + 70 * np.sin(xx / (3.0 + seed)) * np.cos(yy / 5.0)
    img = base[..., None] + np.array([10.0, -5.0, 0.0]) + rng.normal(0, 6, (h, w, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _save(img: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def test_read_image_modes(tmp_path: Path) -> None:
    rgb = _smooth(6, 5, 0)
    rgba = np.dstack([rgb, np.full((6, 5), 7, np.uint8)])
    np.testing.assert_array_equal(read_image(_save(rgba, tmp_path / "a.png")), rgb)  # alpha dropped
    gray = rgb[..., 0]
    out = read_image(_save(gray, tmp_path / "g.png"))
    assert out.shape == (6, 5) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, gray)

    Image.fromarray(np.full((4, 4), 1000, np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(InputImageError, match="16-bit"):
        read_image(tmp_path / "deep.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(InputImageError, match=r"junk\.png"):
        read_image(tmp_path / "junk.png")


def test_make_lr_and_bicubic_shapes() -> None:
    hr = _smooth(27, 34, 1)
    lr = make_lr(hr, 4)
    assert lr.shape == (6, 8, 3) and lr.dtype == np.uint8  # 27x34 cropped to 24x32 first
    sr = bicubic_upscale(lr, 4)
    assert sr.shape == (24, 32, 3) and sr.dtype == np.uint8
    assert bicubic_upscale(lr[..., 0], 3).shape == (18, 24)
    assert bicubic_model(4)(lr).shape == (24, 32, 3)


def test_load_pair_size_check(tmp_path: Path) -> None:
    hr_path = _save(_smooth(26, 30, 2), tmp_path / "hr" / "x.png")
    good = _save(_smooth(6, 7, 3), tmp_path / "lr" / "x_x4.png")  # 26x30 -> 24x28 -> 6x7
    hr, lr = load_pair(ImagePair("x", hr_path, good), 4)
    assert hr.shape == (24, 28, 3) and lr.shape == (6, 7, 3)
    bad = _save(_smooth(7, 8, 3), tmp_path / "lr2" / "x_x4.png")  # ceil instead of floor
    with pytest.raises(InputImageError, match=r"^x: LR .* needs 7x6"):
        load_pair(ImagePair("x", hr_path, bad), 4)


# ------------------------------------------------------------------ run_bench


@pytest.fixture
def hr_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "HR"
    for i, (h, w) in enumerate([(26, 30), (24, 24), (33, 20)]):
        _save(_smooth(h, w, i), folder / f"im{i}.png")
    return folder


def _oracle(hr_dir: Path, scale: int) -> dict[bytes, np.ndarray]:
    """A 'model' that knows the answers: generated LR bytes -> mod-cropped HR."""
    table = {}
    for path in sorted(hr_dir.iterdir()):
        hr = mod_crop(read_image(path), scale)
        table[make_lr(hr, scale).tobytes()] = hr
    return table


def test_run_bench_scores_and_json_shape(hr_dir: Path) -> None:
    answers = _oracle(hr_dir, 4)
    seen: list[tuple[str, str]] = []

    def progress(model: str, score: ImageScore) -> None:
        seen.append((model, score.name))

    result = run_bench(
        hr_dir,
        4,
        {"bicubic": bicubic_model(4), "oracle": lambda lr: answers[lr.tobytes()]},
        progress=progress,
    )
    assert isinstance(result, BenchResult)
    assert [m.model for m in result.models] == ["bicubic", "oracle"]
    bicubic, oracle = result.models

    # Scores are exactly the metrics on (bicubic(generated LR), cropped HR), crop = scale, Y.
    for score in bicubic.images:
        hr = mod_crop(read_image(hr_dir / f"{score.name}.png"), 4)
        sr = bicubic_upscale(make_lr(hr, 4), 4)
        assert score.psnr == psnr(sr, hr, 4, "y")
        assert score.ssim == ssim(sr, hr, 4, "y")
        assert score.seconds > 0
    assert bicubic.mean.psnr == pytest.approx(np.mean([s.psnr for s in bicubic.images]))
    assert bicubic.mean.ssim == pytest.approx(np.mean([s.ssim for s in bicubic.images]))
    assert 15 < bicubic.mean.psnr < 60 and 0 < bicubic.mean.ssim < 1
    assert bicubic.seconds_total == pytest.approx(sum(s.seconds for s in bicubic.images))
    pixels = 24 * 28 + 24 * 24 + 32 * 20
    assert bicubic.megapixels_per_second == pytest.approx(pixels / 1e6 / bicubic.seconds_total)

    assert all(s.psnr == float("inf") and s.ssim == 1.0 for s in oracle.images)
    assert oracle.mean.psnr == float("inf")
    assert seen == [(m, n) for n in ("im0", "im1", "im2") for m in ("bicubic", "oracle")]

    data = json.loads(result.to_json())
    assert list(data) == ["scale", "models", "failures", "model_failures"]
    assert data["failures"] == [] and data["model_failures"] == []
    assert data["scale"] == 4
    model = data["models"][0]
    assert list(model) == ["model", "mean", "images", "seconds_total", "megapixels_per_second"]
    assert list(model["mean"]) == ["psnr", "ssim"]
    assert list(model["images"][0]) == ["name", "psnr", "ssim", "seconds"]
    assert [img["name"] for img in model["images"]] == ["im0", "im1", "im2"]
    assert data["models"][1]["mean"]["psnr"] is None  # inf is not JSON: written as null
    assert result.to_dict()["models"][1]["mean"]["psnr"] == float("inf")


def test_run_bench_options_and_outputs(hr_dir: Path, tmp_path: Path) -> None:
    save = tmp_path / "sr"
    result = run_bench(
        (hr_dir, None), 2, {"bi/cubic x2": bicubic_model(2)}, crop_border=0, channel="rgb", save_sr_dir=save
    )
    (model,) = result.models
    for score in model.images:
        hr = mod_crop(read_image(hr_dir / f"{score.name}.png"), 2)
        saved = read_image(save / "bi_cubic_x2" / f"{score.name}.png")
        np.testing.assert_array_equal(saved, bicubic_upscale(make_lr(hr, 2), 2))
        assert score.psnr == psnr(saved, hr, 0, "rgb")
        assert score.ssim == ssim(saved, hr, 0, "rgb")

    buf = io.StringIO()
    write_csv(result, buf)
    rows = list(csv.reader(io.StringIO(buf.getvalue())))
    assert rows[0] == ["scale", "model", "image", "psnr", "ssim", "seconds"]
    assert len(rows) == 1 + 3
    assert rows[1][:3] == ["2", "bi/cubic x2", "im0"]
    assert float(rows[1][3]) == model.images[0].psnr  # full precision round-trip
    write_csv(result, tmp_path / "out.csv")
    assert (tmp_path / "out.csv").read_text(encoding="utf-8") == buf.getvalue()


def test_run_bench_checks_lr_sizes_before_running_models(hr_dir: Path, tmp_path: Path) -> None:
    lr_dir = tmp_path / "LR"
    _save(_smooth(6, 7, 0), lr_dir / "im0_x4.png")  # right
    _save(_smooth(6, 7, 1), lr_dir / "im1_x4.png")  # wrong: needs 6x6
    calls = []

    def model(lr: np.ndarray) -> np.ndarray:
        calls.append(lr.shape)
        return bicubic_upscale(lr, 4)

    with pytest.raises(InputImageError, match=r"^im1: "):
        run_bench((hr_dir, lr_dir), 4, {"m": model})
    assert calls == []


def test_check_pairs_keeps_the_good_ones(hr_dir: Path, tmp_path: Path) -> None:
    lr_dir = tmp_path / "LR"
    _save(_smooth(6, 7, 0), lr_dir / "im0_x4.png")  # right
    _save(_smooth(6, 7, 1), lr_dir / "im1_x4.png")  # wrong: needs 6x6
    (lr_dir / "im2_x4.png").write_bytes(b"not an image")
    good, errors = check_pairs(pair_images(hr_dir, lr_dir, 4), 4)
    assert [p.name for p in good] == ["im0"]
    assert [str(e).split(":")[0] for e in errors] == ["im1", str(lr_dir / "im2_x4.png")]
    assert all(isinstance(e, InputImageError) for e in errors)
    good, errors = check_pairs(pair_images(hr_dir, None, 4).pairs, 4)  # generated inputs: HR only
    assert (len(good), errors) == (3, [])


def test_run_bench_rejects_bad_model_output(hr_dir: Path) -> None:
    with pytest.raises(ConfigError, match="x4 model"):
        run_bench(hr_dir, 4, {"x2": bicubic_model(2)})
    with pytest.raises(ConfigError, match="uint8"):
        run_bench(hr_dir, 4, {"float": lambda lr: bicubic_upscale(lr, 4).astype(np.float32)})
    with pytest.raises(ConfigError):
        run_bench(hr_dir, 4, {})
    with pytest.raises(ConfigError, match="no image pairs"):
        run_bench([], 4, {"b": bicubic_model(4)})
    with pytest.raises(ConfigError, match="not a folder"):
        run_bench(hr_dir.parent / "missing", 4, {"b": bicubic_model(4)})
    with pytest.raises(ConfigError, match="share an SR folder"):
        run_bench(hr_dir, 4, {"a/b": bicubic_model(4), "a b": bicubic_model(4)}, save_sr_dir=hr_dir.parent)


def test_run_bench_too_small_to_score(tmp_path: Path) -> None:
    hr_path = _save(_smooth(16, 16, 0), tmp_path / "HR" / "tiny.png")  # 8x8 after a 4-pixel crop
    with pytest.raises(InputImageError, match=r"^tiny: cannot score"):
        run_bench([ImagePair("tiny", hr_path)], 4, {"b": bicubic_model(4)})


def test_run_bench_grayscale(tmp_path: Path) -> None:
    gray = _smooth(24, 28, 5)[..., 1]
    hr_path = _save(gray, tmp_path / "HR" / "g.png")
    shapes = []

    def model(lr: np.ndarray) -> np.ndarray:
        shapes.append(lr.shape)
        return bicubic_upscale(lr, 4)

    result = run_bench([ImagePair("g", hr_path, None)], 4, {"m": model})
    assert shapes == [(6, 7, 3)]  # models always get three channels
    sr = bicubic_upscale(make_lr(gray, 4), 4)  # channels stay equal, so this is the scored image
    (score,) = result.models[0].images
    assert score.psnr == psnr(sr, gray, 4)  # the gray value itself, no luma formula
    assert score.ssim == ssim(sr, gray, 4)


def test_keep_going_names_each_failed_pair_by_its_name(hr_dir: Path, tmp_path: Path) -> None:
    """A pair that fails on its header (an unreadable LR) is named like one that fails later."""
    lr_dir = tmp_path / "LR"
    _save(_smooth(6, 7, 0), lr_dir / "im0_x4.png")
    (lr_dir / "im1_x4.png").write_bytes(b"not an image")
    _save(_smooth(8, 5, 2), lr_dir / "im2_x4.png")  # HR 33x20 -> 8x5
    result = run_bench((hr_dir, lr_dir), 4, {"b": bicubic_model(4)}, keep_going=True)
    assert [f.name for f in result.failures] == ["im1"]
    assert str(lr_dir / "im1_x4.png") in result.failures[0].error
    assert [image.name for image in result.models[0].images] == ["im0", "im2"]
