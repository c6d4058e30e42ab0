"""``hat models``: list presets (download/verify/import live here too)."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from ..registry import load_registry
from ..store import local_checkpoint
from .console import console
from .options import JsonOpt, RegistryOpt

app = typer.Typer(help="List and manage model checkpoints.", no_args_is_help=True)


def _params(config) -> int:
    import torch

    from ..model import HAT

    with torch.device("meta"):
        return sum(p.numel() for p in HAT(config).parameters())


@app.command("list")
def list_models(registry: RegistryOpt = None, as_json: JsonOpt = False) -> None:
    """Show every preset: name, aliases, scale, parameters, size and whether it is available locally."""
    reg = load_registry(registry)
    rows = []
    for preset in sorted(reg, key=lambda p: (p.family, p.name.lower())):
        path = local_checkpoint(preset)
        rows.append(
            {
                "name": preset.name,
                "aliases": list(preset.aliases),
                "family": preset.family,
                "scale": preset.scale,
                "pretrain": preset.pretrain,
                "params": _params(preset.config),
                "size": preset.size,
                "bundled": preset.bundled,
                "cached": path is not None,
                "path": str(path) if path else None,
                "sha256": preset.sha256,
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="HAT models")
    for column in ("name", "aliases", "scale", "params", "size", "available"):
        table.add_column(column, justify="right" if column in ("scale", "params", "size") else "left")
    for row in rows:
        size = f"{row['size'] / 1e6:.1f} MB" if row["size"] else "?"
        state = "bundled" if row["bundled"] else ("cached" if row["cached"] else "-")
        table.add_row(
            row["name"],
            ", ".join(row["aliases"]),
            f"x{row['scale']}",
            f"{row['params'] / 1e6:.2f} M",
            size,
            state,
        )
    console.print(table)
