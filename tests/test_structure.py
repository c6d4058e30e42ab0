"""The house rules of docs/architecture.md, checked on the code: who may import whom, one atomic
writer (and the permissions it gives), one pixel layer, one family contract."""

from __future__ import annotations

import ast
import os
import stat
import sys
import tokenize
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hat_cli import pixels
from hat_cli.atomic import TEMP_SUFFIX, atomic_write
from hat_cli.checkpoint import load_model, save_checkpoint
from hat_cli.cli import app
from hat_cli.model import FAMILIES, HAT, HATConfig, Network, detect_config, find_family
from hat_cli.model.hat.config import ratio_for
from tests.conftest import TINY_CONFIG

PACKAGE = Path(__file__).resolve().parents[1] / "hat_cli"
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"
MODULES = sorted(PACKAGE.rglob("*.py"))


def imports(path: Path) -> list[tuple[str, int]]:
    """(module, relative level) of every import statement in a file, nested ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level))
    return found


def absolute(path: Path, module: str, level: int) -> str:
    """The dotted name a (possibly relative) import refers to."""
    if not level:
        return module
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    base = parts[:-level] if path.name != "__init__.py" else parts[: len(parts) - level + 1]
    return ".".join(base + ([module] if module else []))


def test_model_code_imports_only_torch_einops_and_itself() -> None:
    stdlib = set(sys.stdlib_module_names)
    for path in (PACKAGE / "model").rglob("*.py"):
        for module, level in imports(path):
            name = absolute(path, module, level)
            top = name.split(".")[0]
            assert top in stdlib or top in ("torch", "einops") or name.startswith("hat_cli.model"), (path, name)


@pytest.mark.parametrize("ui", ["typer", "rich", "tqdm", "click"])
def test_only_the_cli_imports_terminal_libraries(ui: str) -> None:
    for path in MODULES:
        if "cli" in path.relative_to(PACKAGE).parts[:1]:
            continue
        assert all(absolute(path, m, lv).split(".")[0] != ui for m, lv in imports(path)), path


def test_the_library_never_imports_the_cli_or_ray() -> None:
    for path in MODULES:
        rel = path.relative_to(PACKAGE).parts
        for module, level in imports(path):
            name = absolute(path, module, level)
            if rel[0] not in ("cli", "__main__.py"):  # the entry points
                assert not name.startswith("hat_cli.cli"), (path, name)
            if rel[0] != "ray.py" and rel[0] != "cli":
                assert name.split(".")[0] != "ray", (path, name)


def test_files_are_only_ever_renamed_into_place_by_the_atomic_helper() -> None:
    for path in MODULES:
        if path.name == "atomic.py":
            continue
        text = path.read_text(encoding="utf-8")
        for call in ("os.replace(", "os.rename(", "mkstemp(", "NamedTemporaryFile(", "shutil.move("):
            assert call not in text, (path, call)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_write_gives_umask_permissions_and_leaves_nothing_on_failure(tmp_path: Path, umask_022) -> None:
    target = atomic_write(tmp_path / "a.bin", lambda handle: handle.write(b"x"))
    assert stat.S_IMODE(target.stat().st_mode) == 0o644 and target.read_bytes() == b"x"

    def broken(handle) -> None:
        handle.write(b"half")
        raise RuntimeError("encoder crashed")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "b.bin", broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_checkpoints_from_train_and_import_get_umask_permissions(tmp_path: Path, umask_022) -> None:
    torch.manual_seed(0)
    model = HAT(TINY_CONFIG)
    for name in ("w.pth", "w.safetensors"):
        path = save_checkpoint(tmp_path / name, model.state_dict(), TINY_CONFIG, params=model.state_dict())
        assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_hat_train_and_models_import_outputs_get_umask_permissions(
    tmp_path: Path, cache: Path, umask_022, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    from tests.store_server import sha256, write_registry

    hr = tmp_path / "hr"
    hr.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(hr / f"{i}.png")
    out = tmp_path / "run" / "m.pth"
    arch = "embed_dim=12,depths=1x1,num_heads=2x1,window_size=4,squeeze_factor=4,mlp_ratio=1"
    args = ["train", "--hr", str(hr), "--out", str(out), "--scale", "2", "--arch", arch]
    result = CliRunner().invoke(app, [*args, "--iters", "2", "--batch-size", "1", "--patch-size", "8", "-q"])
    assert result.exit_code == 0, result.output
    for written in (out, out.with_name("m.state.pth")):
        assert stat.S_IMODE(written.stat().st_mode) == 0o644
    table = {"family": "hat-tiny", "scale": 2, "file": "mine.pth", "sha256": sha256(out.read_bytes())}
    registry = write_registry(tmp_path / "r.toml", {"mine": table})
    result = CliRunner().invoke(app, ["models", "import", str(out), "--name", "mine", "--registry", str(registry)])
    assert result.exit_code == 0, result.output
    imported = next((cache / "checkpoints").glob("*.pth"))
    assert stat.S_IMODE(imported.stat().st_mode) == 0o644 and sha256(imported.read_bytes()) == sha256(out.read_bytes())
    assert not list((cache / "checkpoints").glob(f"*{TEMP_SUFFIX}"))


# --------------------------------------------------------------------------- pixel layer


def test_one_rounding_rule_half_up_everywhere() -> None:
    values = np.array([0.5, 1.5, 2.5, 254.5, 0.49999999999999994, 254.49999], dtype=np.float64)
    assert pixels.to_levels(values).tolist() == [1, 2, 3, 255, 0, 254]
    unit = torch.tensor([[[0.5 / 255, 1.5 / 255, 2.5 / 255, float("nan"), 2.0, -1.0]]], dtype=torch.float64)
    assert pixels.quantize(unit.float()).ravel().tolist() == pixels.quantize_array(unit.numpy()).ravel().tolist()
    deep = torch.tensor([[[0.5 / 65535, 2.5 / 65535, 65534.5 / 65535, float("nan"), 2.0, -1.0]]], dtype=torch.float64)
    quantized = pixels.quantize(deep.float(), np.uint16)
    assert quantized.dtype == np.uint16 and quantized.flags.writeable
    levels = deep.float().numpy() * np.float32(65535)  # quantize scales in float32, then rounds half up
    assert quantized.ravel().tolist() == pixels.to_levels(levels, np.uint16).ravel().tolist()
    from hat_cli.imresize import to_uint8

    assert to_uint8(values).tolist() == pixels.to_levels(values).tolist()


def test_integer_pixels_survive_the_round_trip_at_both_depths() -> None:
    for dtype, top in ((np.uint8, 255), (np.uint16, 65535)):
        array = np.arange(top + 1, dtype=dtype).reshape(1, -1, 1)
        np.testing.assert_array_equal(pixels.quantize(pixels.to_tensor(array), dtype), array)
        np.testing.assert_array_equal(pixels.quantize_array(pixels.to_unit(array), dtype), array)


# --------------------------------------------------------------------------- family contract


def test_hat_is_a_family_and_a_network() -> None:
    model = HAT(TINY_CONFIG)
    assert isinstance(model, Network)
    family = find_family(model.state_dict())
    assert family is not None and family.name == "hat" and family in FAMILIES
    config = family.detect(model.state_dict(), {"conv_scale": 0.02})
    assert config == TINY_CONFIG.__class__(**{**TINY_CONFIG.to_dict(), "conv_scale": 0.02})
    assert family.config_from_dict({**TINY_CONFIG.to_dict(), "scale": 2}) == TINY_CONFIG
    with pytest.raises(ValueError, match="unknown"):
        family.config_from_dict({**TINY_CONFIG.to_dict(), "bogus": 1})


def test_overlap_ratio_read_from_shapes_rebuilds_the_same_window_for_every_pair() -> None:
    naive = [(ws, k) for ws in range(1, 65) for k in range(2 * ws + 1) if int(ws * (k / ws)) != k]
    assert len(naive) == 83  # what a plain k / ws got wrong
    for ws, k in naive:
        assert int(ws * ratio_for(k, ws)) == k
    for ws, k in naive[:3]:
        config = HATConfig(
            upscale=2, embed_dim=4, depths=(1,), num_heads=(1,), window_size=ws, overlap_ratio=k / ws,
            compress_ratio=1, squeeze_factor=1, num_feat=4,
        )  # fmt: skip
        with torch.device("meta"):
            state = HAT(config).state_dict()
        detected = detect_config(state)
        assert detected.overlap_window_size == ws + int(ws * config.overlap_ratio)


def test_an_unknown_file_is_one_clear_error(tmp_path: Path) -> None:
    from hat_cli.errors import CheckpointError

    path = tmp_path / "resnet.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(CheckpointError, match=r"not a HAT, HAN or RCAN checkpoint"):
        load_model(path)


def test_no_clobber_write_never_replaces_a_file_that_appears_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hat_cli.errors import OutputExists

    target = tmp_path / "out.png"

    def racing(handle) -> None:
        handle.write(b"ours")
        target.write_bytes(b"theirs")  # another process finishes the same output first...

    monkeypatch.setattr(Path, "exists", lambda self: False)  # ...just after any existence check
    with pytest.raises(OutputExists):
        atomic_write(target, racing, overwrite=False)
    monkeypatch.undo()
    assert target.read_bytes() == b"theirs" and sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_a_run_sweeps_each_output_folder_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hat_cli import atomic

    swept: list[Path] = []
    monkeypatch.setattr(atomic, "sweep_stale", lambda folder: swept.append(folder) or 0)
    temps = atomic.TempFiles()
    for index in range(3):
        atomic_write(tmp_path / f"{index}.bin", lambda handle: handle.write(b"x"), temps=temps)
    assert swept == [tmp_path]


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, lazy imports included (a submodule's imports are its own)."""
    names = {
        ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p for p in MODULES
    }

    def owner(name: str) -> str | None:
        while name and name not in names:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        found = set()
        for module, level in imports(path):
            target = absolute(path, module, level)
            for candidate in (target, *(f"{target}.{a}" for a in _imported_names(path, module, level))):
                dep = owner(candidate)
                if dep is not None and dep != name and not name.startswith(dep + "."):
                    found.add(dep)
        graph[name] = found
    return graph


def test_modules_import_each_other_without_cycles() -> None:
    """The layers of docs/architecture.md: counting lazy imports too, no module needs itself back."""
    graph = import_graph()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            assert state.get(dep) != 1, " -> ".join([*trail, node, dep])
            if dep not in state:
                visit(dep, [*trail, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def documented_layers() -> dict[str, int]:
    """``hat_cli.<module>`` -> its layer in docs/architecture.md's table (ground 0 ... top last)."""
    layers: dict[str, int] = {}
    level = -1
    for line in ARCHITECTURE.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 3 or not cells[1].startswith("`"):
            continue
        if cells[0]:
            level += 1
        layers["hat_cli." + cells[1].strip("`").removesuffix(".py").removesuffix("/").replace("/", ".")] = level
    return layers


def layer_of(module: str, layers: dict[str, int]) -> int | None:
    while module and module not in layers:
        module = module.rpartition(".")[0]
    return layers.get(module)


def test_every_module_is_in_the_architecture_table() -> None:
    layers = documented_layers()
    entry_points = {"hat_cli", "hat_cli.__main__"}  # lazy attributes and ``python -m hat_cli``: above it all
    missing = [name for name in import_graph() if name not in entry_points and layer_of(name, layers) is None]
    assert not missing, f"add to docs/architecture.md: {missing}"


def test_modules_import_only_their_own_or_lower_layers() -> None:
    layers = documented_layers()
    for name, deps in import_graph().items():
        own = layer_of(name, layers)
        if own is None:  # the entry points
            continue
        for dep in deps:
            dep_layer = layer_of(dep, layers)
            assert dep_layer is None or dep_layer <= own, f"{name} (layer {own}) imports {dep} (layer {dep_layer})"


# Integer <-> float pixel arithmetic outside pixels.py: a division or product by a peak, or a
# rounding call (the one rule is pixels.round_half_up).
_PIXEL_ARITHMETIC = (
    *("/255", "*255", "255*", "255.0*", "/65535", "*65535", "65535*", "65535.0*", "/257"),
    *("np.round(", "np.rint(", ".round("),
)
_PIXEL_EXCEPTIONS = {
    "metrics.py": "the benchmark recipe's constants (BT.601 luma, PSNR peak, SSIM c1/c2)",
    "lam_pictures.py": "colour maps truncated to uint8 exactly as the official LAM pictures are",
}


def test_pixel_conversions_live_in_the_pixel_layer() -> None:
    for path in MODULES:
        if path.name == "pixels.py" or path.name in _PIXEL_EXCEPTIONS:
            continue
        code = _code_only(path)
        for pattern in _PIXEL_ARITHMETIC:
            assert pattern not in code, f"{path}: {pattern!r}; use hat_cli.pixels"


# Comments and literal text (an f-string's text parts are their own tokens from Python 3.12 on).
_NOT_CODE = {tokenize.COMMENT, tokenize.STRING, tokenize.ENCODING, getattr(tokenize, "FSTRING_MIDDLE", -1)}


def _code_only(path: Path) -> str:
    """A file's code without comments, string literals (docstrings quote formulas) or spaces."""
    kept = []
    with path.open("rb") as handle:
        for token in tokenize.tokenize(handle.readline):
            if token.type not in _NOT_CODE:
                kept.append(token.string)
    return "".join(kept)


def _imported_names(path: Path, module: str, level: int) -> list[str]:
    """The names a ``from X import a, b`` takes (submodules among them count as imports)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "") == module and node.level == level:
            found += [alias.name for alias in node.names]
    return found
