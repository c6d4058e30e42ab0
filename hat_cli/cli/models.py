"""``hat models``: list, download, verify, import and remove checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table
from rich.text import Text

from ..errors import EXIT_SOME_FAILED, ConfigError, HatError
from ..registry import load_registry
from ..store import (
    download_checkpoint,
    expected_sha256,
    import_checkpoint,
    local_checkpoint,
    presets_by_name,
    remove_checkpoint,
    require_checkpoint,
    verify_checkpoint,
)
from .console import console, echo, one_line, print_error
from .options import HatCommand, HatSubGroup, JsonOpt, PresetScaleOpt, QuietOpt, RegistryOpt
from .progress import download_progress

NamesArg = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Argument(
        help="Preset names or aliases (an alias with several scales needs --scale).", metavar="NAME", show_default=False
    ),
]
NameArg = Annotated[str, typer.Argument(help="Preset name or alias.", metavar="NAME", show_default=False)]

app = typer.Typer(cls=HatSubGroup, help="List and manage model checkpoints.", no_args_is_help=True)


def _emit_json(rows: Any) -> None:
    echo(json.dumps(rows, indent=2))


@app.command("list", cls=HatCommand)
def list_models(registry: RegistryOpt = None, as_json: JsonOpt = False) -> None:
    """Show every preset: name, aliases, scale, parameters, size and whether it is available locally."""
    reg = load_registry(registry)
    rows = []
    for preset in sorted(reg, key=lambda p: (p.arch, p.family, p.name.lower())):
        path = local_checkpoint(preset)
        sha256 = expected_sha256(preset)
        rows.append(
            {
                "name": preset.name,
                "aliases": list(preset.aliases),
                "arch": preset.arch,
                "family": preset.family,
                "scale": preset.scale,
                "pretrain": preset.pretrain,
                "params": preset.config.num_params,
                "size": preset.size,
                "bundled": preset.bundled,
                "cached": path is not None,
                "path": str(path) if path else None,
                "sha256": sha256,
                "checksum": "registry" if preset.sha256 else ("imported" if sha256 else None),
                "source": preset.origin or (preset.urls[0] if preset.urls else None),
            }
        )
    if as_json:
        _emit_json(rows)
        return
    table = Table(title="Models")
    for column in ("name", "aliases", "arch", "scale", "params", "size", "available"):
        table.add_column(column, justify="right" if column in ("scale", "params", "size") else "left")
    for row in rows:
        size = f"{row['size'] / 1e6:.1f} MB" if row["size"] else "?"
        state = "bundled" if row["bundled"] else ("cached" if row["cached"] else "-")
        if state == "-" and row["checksum"] is None:
            state = "by hand"
        table.add_row(  # Text: names from user registries are shown as they are, never as markup
            Text(one_line(row["name"])),
            Text(one_line(", ".join(row["aliases"]))),
            row["arch"].upper(),
            f"x{row['scale']}",
            f"{row['params'] / 1e6:.2f} M",
            size,
            state,
        )
    console.print(table)


@app.command("download", cls=HatCommand)
def download(
    names: NamesArg = None,
    all_models: Annotated[bool, typer.Option("--all", help="Every preset of the registry.")] = False,
    scale: PresetScaleOpt = None,
    registry: RegistryOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Download checkpoints into the cache (verified by sha256; resumes interrupted downloads)."""
    reg = load_registry(registry)
    if all_models == bool(names):
        raise ConfigError("name one or more models (see 'hat models list') or pass --all, not both")
    presets = [p for p in reg if not p.bundled] if all_models else presets_by_name(reg, names or [], scale)
    progress = None if as_json else download_progress(quiet)
    rows, failures = [], []
    for preset in presets:
        try:
            result = download_checkpoint(preset, progress=progress)  # offline ($HAT_OFFLINE): names the file
        except HatError as exc:
            if len(presets) == 1:
                raise
            failures.append(exc)
            rows.append({"name": preset.name, "status": "failed", "path": None, "error": str(exc)})
            print_error(exc)
            continue
        status = "downloaded" if result.url else "cached"
        rows.append({"name": preset.name, "status": status, "path": str(result.path), "url": result.url})
        if not quiet and not as_json:
            echo(f"{status} {preset.name}: {result.path}")
    if as_json:
        _emit_json(rows)
    if failures:
        raise typer.Exit(EXIT_SOME_FAILED)


@app.command("path", cls=HatCommand)
def path(name: NameArg, scale: PresetScaleOpt = None, registry: RegistryOpt = None) -> None:
    """Print the local path of a checkpoint (error if it is not cached)."""
    echo(str(require_checkpoint(load_registry(registry).resolve(name, scale))))


@app.command("verify", cls=HatCommand)
def verify(
    names: NamesArg = None,
    scale: PresetScaleOpt = None,
    registry: RegistryOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Re-hash cached checkpoints against the registry: ok, mismatch or missing.

    Exits 1 if a file does not match, or if a model named on the command line is missing.
    """
    reg = load_registry(registry)
    presets = presets_by_name(reg, names, scale) if names else sorted(reg, key=lambda p: p.name.lower())
    results = [verify_checkpoint(preset) for preset in presets]
    failed = any(r.status == "mismatch" or (names and r.status == "missing") for r in results)
    if as_json:
        _emit_json(
            [
                {"name": r.name, "status": r.status, "path": str(r.path), "expected": r.expected, "actual": r.actual}
                for r in results
            ]
        )
    elif not quiet or failed:
        for r in results:
            if quiet and r.status == "ok":
                continue
            line = f"{r.status:8} {r.name}: {r.path}"
            if r.status == "mismatch":
                line += f" (sha256 {r.actual}, expected {r.expected}; 'hat models rm {r.name}' then download again)"
            echo(line)
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)


@app.command("import", cls=HatCommand)
def import_(
    file: Annotated[Path, typer.Argument(help="Checkpoint fetched by hand (e.g. from Google Drive).")],
    name: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--name", "-n", metavar="NAME", help="Preset it should be; default: the preset whose sha256 matches."
        ),
    ] = None,
    scale: PresetScaleOpt = None,
    registry: RegistryOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Copy a hand-downloaded checkpoint into the cache after checking its sha256 against the registry."""
    placed = import_checkpoint(file, load_registry(registry), name=name, scale=scale)
    if as_json:
        _emit_json([{"name": preset.name, "path": str(target)} for preset, target in placed])
    elif not quiet:
        for preset, target in placed:
            echo(f"imported {preset.name}: {target}")


@app.command("rm", cls=HatCommand)
def rm(
    names: Annotated[list[str], typer.Argument(help="Preset names or aliases.", metavar="NAME", show_default=False)],
    scale: PresetScaleOpt = None,
    registry: RegistryOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Delete cached checkpoints (and partial downloads) from the cache."""
    for preset in presets_by_name(load_registry(registry), names, scale):
        removed = remove_checkpoint(preset)
        if not quiet:
            if removed:
                echo("\n".join(f"removed {preset.name}: {p}" for p in removed))
            else:
                echo(f"{preset.name} is not cached")
