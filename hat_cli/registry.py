"""Model presets from ``weights.toml`` (shipped in the package) plus optional user registries."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .errors import ConfigError
from .model.config import HATConfig

REGISTRY_ENV = "HAT_REGISTRY"
SCHEMA_VERSION = 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SAFE_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_PRESET_KEYS = {
    "family",
    "scale",
    "file",
    "sha256",
    "size",
    "urls",
    "aliases",
    "pretrain",
    "bundled",
    "description",
}


@dataclass(frozen=True)
class Preset:
    """One checkpoint of the registry."""

    name: str
    family: str
    scale: int
    file: str
    sha256: str
    config: HATConfig
    urls: tuple[str, ...] = ()
    size: int | None = None
    aliases: tuple[str, ...] = ()
    pretrain: str = ""
    bundled: bool = False
    description: str = ""
    source: str = field(default="", compare=False)  # registry file it came from

    @property
    def bundled_path(self) -> Path:
        """Where a bundled checkpoint lives inside the package."""
        return Path(str(resources.files("hat_cli"))) / "models" / self.file


def is_allowed_url(url: str) -> bool:
    """https everywhere; plain http only to loopback hosts (local mirrors and tests)."""
    parsed = urlparse(url)
    if parsed.scheme == "https":
        return bool(parsed.hostname)
    return parsed.scheme == "http" and (parsed.hostname or "") in _LOOPBACK


class Registry:
    """Presets by full name, plus ``(alias, scale) -> preset`` resolution."""

    def __init__(self, presets: Iterable[Preset]) -> None:
        self.presets: dict[str, Preset] = {}
        for preset in presets:
            self.presets[preset.name] = preset  # later registries override earlier ones
        self.aliases: dict[str, dict[int, str]] = {}
        for preset in self.presets.values():
            for alias in preset.aliases:
                self.aliases.setdefault(alias.lower(), {})[preset.scale] = preset.name

    def __iter__(self):
        return iter(self.presets.values())

    def __len__(self) -> int:
        return len(self.presets)

    def names(self) -> list[str]:
        return sorted(self.presets, key=str.lower)

    def resolve(self, name: str, scale: int | None = None) -> Preset:
        """A full preset name, or an alias with a scale, to exactly one preset.

        Errors list the valid choices so the user can fix the command at once.
        """
        by_lower = {n.lower(): n for n in self.presets}
        if name.lower() in by_lower:
            preset = self.presets[by_lower[name.lower()]]
            if scale is not None and scale != preset.scale:
                raise ConfigError(
                    f"model {preset.name} is x{preset.scale}, not x{scale}: drop --scale or pick "
                    f"another model (see 'hat models list')"
                )
            return preset
        scales = self.aliases.get(name.lower())
        if scales is None:
            choices = ", ".join(sorted(self.aliases) + self.names())
            raise ConfigError(f"unknown model {name!r}; choose one of: {choices}")
        if scale is None:
            if len(scales) == 1:
                return self.presets[next(iter(scales.values()))]
            raise ConfigError(
                f"model {name!r} exists at scales {', '.join(f'x{s}' for s in sorted(scales))}: add --scale N"
            )
        if scale not in scales:
            raise ConfigError(
                f"model {name!r} has no x{scale} checkpoint; available: {', '.join(f'x{s}' for s in sorted(scales))}"
            )
        return self.presets[scales[scale]]


def _check(condition: bool, source: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{source}: {message}")


def _parse(data: Mapping[str, Any], source: str, base_families: Mapping[str, dict]) -> list[Preset]:
    schema = data.get("schema", SCHEMA_VERSION)
    _check(schema == SCHEMA_VERSION, source, f"schema {schema} is not supported (expected {SCHEMA_VERSION})")
    families = {**base_families, **data.get("families", {})}
    presets = []
    for name, table in data.get("models", {}).items():
        where = f"{source}: [models.{name!r}]"
        _check(isinstance(table, dict), source, f"[models.{name!r}] must be a table")
        _check(bool(_SAFE_FILE.match(name)), source, f"model name {name!r} may use only letters, digits and ._+-")
        for key in ("family", "scale", "file", "sha256"):
            _check(key in table, where, f"missing required key {key!r}")
        family = table["family"]
        _check(family in families, where, f"family {family!r} is not defined under [families]")
        file = table["file"]
        _check(
            isinstance(file, str) and bool(_SAFE_FILE.match(file)) and ".." not in file,
            where,
            f"file {file!r} must be a plain file name (no folders)",
        )
        sha = str(table["sha256"]).lower()
        _check(bool(_SHA256.match(sha)), where, "sha256 must be 64 hex digits")
        urls = tuple(table.get("urls", ()))
        for url in urls:
            _check(is_allowed_url(url), where, f"URL {url!r} is not https (plain http only for loopback)")
        size = table.get("size")
        _check(size is None or (isinstance(size, int) and size > 0), where, "size must be a positive integer")
        arch = {k: v for k, v in table.items() if k not in _PRESET_KEYS}
        try:
            config = HATConfig.from_dict({**families[family], **arch, "upscale": int(table["scale"])})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: bad architecture: {exc}") from exc
        _check(not config.extra, where, f"unknown keys {sorted(config.extra)}")
        presets.append(
            Preset(
                name=name,
                family=family,
                scale=int(table["scale"]),
                file=file,
                sha256=sha,
                config=config,
                urls=urls,
                size=size,
                aliases=tuple(table.get("aliases", ())),
                pretrain=str(table.get("pretrain", "")),
                bundled=bool(table.get("bundled", False)),
                description=str(table.get("description", "")),
                source=source,
            )
        )
    return presets


def _read_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc


def builtin_registry_text() -> str:
    return resources.files("hat_cli").joinpath("weights.toml").read_text(encoding="utf-8")


def load_registry(extra: str | os.PathLike[str] | None = None) -> Registry:
    """The built-in presets, then ``extra`` (or ``$HAT_REGISTRY``) adding or overriding presets."""
    builtin = _read_toml(builtin_registry_text(), "weights.toml")
    presets = _parse(builtin, "weights.toml", {})
    extra = extra or os.environ.get(REGISTRY_ENV) or None
    if extra:
        path = Path(extra)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read registry {path}: {exc.strerror or exc}") from exc
        presets += _parse(_read_toml(text, str(path)), str(path), builtin.get("families", {}))
    return Registry(presets)
