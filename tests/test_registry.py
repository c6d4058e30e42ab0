"""weights.toml: 14 official presets, aliases, validation of user registries."""

from __future__ import annotations

import filecmp
from importlib import resources
from pathlib import Path

import pytest

from hat_cli.errors import ConfigError
from hat_cli.registry import (
    MAX_REGISTRY_BYTES,
    FileTooLarge,
    NotRegularFile,
    is_allowed_url,
    load_registry,
    read_regular_file,
    url_problem,
)

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = {
    "HAT-S_SRx2", "HAT-S_SRx3", "HAT-S_SRx4", "HAT_SRx2", "HAT_SRx3", "HAT_SRx4",
    "HAT_SRx2_ImageNet-pretrain", "HAT_SRx3_ImageNet-pretrain", "HAT_SRx4_ImageNet-pretrain",
    "HAT-L_SRx2_ImageNet-pretrain", "HAT-L_SRx3_ImageNet-pretrain", "HAT-L_SRx4_ImageNet-pretrain",
    "Real_HAT_GAN_SRx4", "Real_HAT_GAN_SRx4_sharper",
}  # fmt: skip


def test_root_weights_toml_is_the_packaged_file() -> None:
    packaged = Path(str(resources.files("hat_cli").joinpath("weights.toml")))
    assert filecmp.cmp(ROOT / "weights.toml", packaged, shallow=False)


def test_all_official_checkpoints_are_listed_with_hashes_and_https_mirrors() -> None:
    registry = load_registry()
    assert set(registry.presets) >= OFFICIAL
    for name in OFFICIAL:
        preset = registry.presets[name]
        assert len(preset.sha256) == 64
        assert preset.urls and all(url.startswith("https://") for url in preset.urls)
        assert preset.config.window_size == 16 and preset.config.conv_scale == 0.01
    assert registry.presets["HAT-L_SRx4_ImageNet-pretrain"].config.depths == (6,) * 12
    assert registry.presets["HAT-S_SRx4"].config.compress_ratio == 24
    assert registry.presets["HAT-S_SRx4"].size == 81089561


@pytest.mark.parametrize(
    ("alias", "scale", "expected"),
    [
        ("hat", 4, "HAT_SRx4_ImageNet-pretrain"),
        ("hat", 2, "HAT_SRx2_ImageNet-pretrain"),
        ("hat-s", 3, "HAT-S_SRx3"),
        ("hat-l", 4, "HAT-L_SRx4_ImageNet-pretrain"),
        ("real-hat-gan", None, "Real_HAT_GAN_SRx4"),
        ("real-hat-gan-sharper", 4, "Real_HAT_GAN_SRx4_sharper"),
        ("hat_srx3", None, "HAT_SRx3"),
    ],
)
def test_aliases_and_names_resolve(alias: str, scale: int | None, expected: str) -> None:
    assert load_registry().resolve(alias, scale).name == expected


def test_resolution_errors_list_the_valid_choices() -> None:
    registry = load_registry()
    with pytest.raises(ConfigError, match="x2, x3, x4"):
        registry.resolve("hat-l", 8)
    with pytest.raises(ConfigError, match="hat-s"):
        registry.resolve("hta-s", 4)
    with pytest.raises(ConfigError, match="add --scale"):
        registry.resolve("hat", None)
    with pytest.raises(ConfigError, match="is x4, not x2"):
        registry.resolve("Real_HAT_GAN_SRx4", 2)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "extra.toml"
    path.write_text(text)
    return path


GOOD = """
[models.my-hat]
family = "hat-s"
scale = 2
file = "my-hat.safetensors"
sha256 = "{sha}"
urls = ["https://example.org/my-hat.safetensors", "http://127.0.0.1:8000/my-hat.safetensors"]
aliases = ["mine"]
"""


def test_user_registry_adds_presets_and_inherits_families(tmp_path: Path, monkeypatch) -> None:
    path = _write(tmp_path, GOOD.format(sha="ab" * 32))
    registry = load_registry(path)
    preset = registry.resolve("mine", 2)
    assert preset.name == "my-hat" and preset.config.embed_dim == 144 and preset.config.upscale == 2
    monkeypatch.setenv("HAT_REGISTRY", str(path))
    assert "my-hat" in load_registry().presets


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.format(sha="xyz"), "sha256"),
        (GOOD.format(sha="ab" * 32).replace("https://example.org", "http://example.org"), "not https"),
        (GOOD.format(sha="ab" * 32).replace('"my-hat.safetensors"', '"../../etc/passwd"', 1), "plain file name"),
        (GOOD.format(sha="ab" * 32).replace('"hat-s"', '"nope"'), "family"),
        ("[models.x\n", "not valid TOML"),
        (GOOD.format(sha="ab" * 32) + "embed_dim = 10\nnum_heads = [3]\ndepths = [1]\n", "architecture"),
    ],
)
def test_invalid_registries_are_rejected_with_the_reason(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_registry(_write(tmp_path, text))


def test_bundled_is_for_the_builtin_registry_only(tmp_path: Path) -> None:
    assert load_registry().presets["hat-tiny-x4"].bundled
    text = GOOD.format(sha="ab" * 32).replace("[models.my-hat]", "[models.hat-tiny-x4]") + "bundled = true\n"
    with pytest.raises(ConfigError, match=r"\[models.'hat-tiny-x4'\]: bundled = true is for the built-in registry"):
        load_registry(_write(tmp_path, text))
    overridden = load_registry(_write(tmp_path, text.replace("bundled = true", "bundled = false")))
    assert not overridden.presets["hat-tiny-x4"].bundled  # a user file may replace it, as a download


@pytest.mark.parametrize("schema", ["true", "1.0", '"1"'])
def test_schema_must_be_the_integer_1(tmp_path: Path, schema: str) -> None:
    with pytest.raises(ConfigError, match="schema must be an integer"):
        load_registry(_write(tmp_path, f"schema = {schema}\n"))
    assert len(load_registry(_write(tmp_path, "schema = 1\n"))) == len(load_registry())


def test_registry_reads_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    assert read_regular_file(path, 100) == b"x" * 100
    with pytest.raises(FileTooLarge):
        read_regular_file(path, 99)
    for other in (tmp_path, Path("/dev/zero")):
        with pytest.raises(NotRegularFile):
            read_regular_file(other, 100)
    assert len(read_regular_file(ROOT / "hat_cli" / "weights.toml", MAX_REGISTRY_BYTES)) < MAX_REGISTRY_BYTES // 16


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://example.org/a.pth", None),
        ("http://127.0.0.1:8000/a.pth", None),
        ("https://example.org./a%20b.pth?x=1", None),
        ("https://xn--bcher-kva.example/a.pth", None),
        ("http://example.org/a.pth", "is not https"),
        ("https://a..b/a.pth", "cannot be looked up"),
        ("https://" + "a" * 64 + ".org/a.pth", "cannot be looked up"),
        ("https://example.org:65536/a.pth", "is not a valid URL"),
        ("https://example.org:x/a.pth", "is not a valid URL"),
        ("http://[::1/a.pth", "is not a valid URL"),
        ("https://example.org/a b.pth", "space or control"),
        ("https://example.org/a\x00.pth", "space or control"),
        ("https://example.org/\u00e9.pth", "non-ASCII"),
    ],
)
def test_url_problems(url: str, problem: str | None) -> None:
    found = url_problem(url)
    assert (found is None) if problem is None else (problem in (found or "")), found
    assert is_allowed_url(url) == (problem is None)
