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
from .model.contract import ModelConfig
from .model.families import family_named

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
    "source",
}


@dataclass(frozen=True)
class Preset:
    """One checkpoint of the registry."""

    name: str
    family: str
    scale: int
    file: str
    sha256: str | None  # None: no public checksum; a file imported by hand is pinned (hat_cli.store)
    config: ModelConfig
    arch: str = "hat"  # the network family (hat_cli.model.families) the config belongs to
    urls: tuple[str, ...] = ()
    size: int | None = None
    aliases: tuple[str, ...] = ()
    pretrain: str = ""
    bundled: bool = False
    description: str = ""
    origin: str = ""  # where the official file is published (for files fetched by hand)
    source: str = field(default="", compare=False)  # registry file it came from

    @property
    def hidden(self) -> dict[str, Any]:
        """The config's values that tensor shapes cannot show, for loading the file."""
        return {name: getattr(self.config, name) for name in self.config.HIDDEN}

    @property
    def bundled_path(self) -> Path:
        """Where a bundled checkpoint lives inside the package."""
        return Path(str(resources.files("hat_cli"))) / "models" / self.file


def is_allowed_url(url: str) -> bool:
    """https everywhere; plain http only to loopback hosts (local mirrors and tests)."""
    try:
        parsed = urlparse(url)
        hostname = parsed.hostname
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False
    if parsed.scheme == "https":
        return bool(hostname)
    return parsed.scheme == "http" and (hostname or "") in _LOOPBACK


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


def _typed(table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = None) -> Any:
    """``table[key]`` if it has type ``kind`` (bools are not ints), else one clear ConfigError."""
    if key not in table:
        return default
    value = table[key]
    wrong_bool = isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))
    _check(isinstance(value, kind) and not wrong_bool, where, f"{key} must be {_kind_name(kind)}, not {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", bool: "true or false", list: "a list", dict: "a table"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _strings(table: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    values = _typed(table, key, list, where, [])
    _check(all(isinstance(v, str) for v in values), where, f"{key} must be a list of strings, not {values!r}")
    return tuple(values)


def _urls(table: Mapping[str, Any], where: str) -> tuple[str, ...]:
    urls = _strings(table, "urls", where)
    for url in urls:
        _check(is_allowed_url(url), where, f"URL {url!r} is not https (plain http only for loopback)")
    return urls


def _family_tables(data: Mapping[str, Any], source: str, base: Mapping[str, dict]) -> dict[str, dict]:
    own = _typed(data, "families", dict, source, {})
    for name, table in own.items():
        _check(isinstance(table, dict), source, f"[families.{name!r}] must be a table")
    return {**base, **own}


def _config(families: Mapping[str, dict], table: Mapping[str, Any], where: str) -> tuple[str, ModelConfig]:
    """``(family arch, config)``: the family table, overridden by the model table's architecture keys."""
    name = _typed(table, "family", str, where)
    _check(name in families, where, f"family {name!r} is not defined under [families]")
    base = dict(families[name])
    arch = base.pop("arch", "hat")
    _check(isinstance(arch, str), where, f"family {name!r}: arch must be a string")
    try:
        family = family_named(arch)
    except KeyError as exc:
        raise ConfigError(f"{where}: family {name!r}: {exc.args[0]}") from None
    overrides = {k: v for k, v in table.items() if k not in _PRESET_KEYS}
    try:
        return arch, family.config_from_dict({**base, **overrides, "scale": table["scale"]})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: bad architecture: {exc}") from None


def _preset(name: str, table: Mapping[str, Any], source: str, families: Mapping[str, dict]) -> Preset:
    where = f"{source}: [models.{name!r}]"
    _check(bool(_SAFE_FILE.fullmatch(name)), source, f"model name {name!r} may use only letters, digits and ._+-")
    for key in ("family", "scale", "file"):
        _check(key in table, where, f"missing required key {key!r}")
    scale = _typed(table, "scale", int, where)
    _check(scale > 0, where, f"scale must be a positive integer, not {scale!r}")
    file = _typed(table, "file", str, where)
    _check(bool(_SAFE_FILE.fullmatch(file)) and ".." not in file, where, f"file {file!r} must be a plain file name")
    sha = _typed(table, "sha256", str, where)
    if sha is not None:
        sha = sha.lower()
        _check(bool(_SHA256.fullmatch(sha)), where, "sha256 must be 64 hex digits")
    urls = _urls(table, where)
    _check(sha is not None or not urls, where, "urls need a sha256: a download that cannot be verified is never made")
    size = _typed(table, "size", int, where)
    _check(size is None or size > 0, where, "size must be a positive integer")
    arch, config = _config(families, table, where)
    return Preset(
        name=name,
        family=table["family"],
        scale=scale,
        file=file,
        sha256=sha,
        config=config,
        arch=arch,
        urls=urls,
        size=size,
        aliases=_strings(table, "aliases", where),
        pretrain=_typed(table, "pretrain", str, where, ""),
        bundled=_typed(table, "bundled", bool, where, False),
        description=_typed(table, "description", str, where, ""),
        origin=_typed(table, "source", str, where, ""),
        source=source,
    )


def _parse(data: Mapping[str, Any], source: str, base_families: Mapping[str, dict]) -> list[Preset]:
    schema = data.get("schema", SCHEMA_VERSION)
    _check(schema == SCHEMA_VERSION, source, f"schema {schema!r} is not supported (expected {SCHEMA_VERSION})")
    families = _family_tables(data, source, base_families)
    models = _typed(data, "models", dict, source, {})
    seen: dict[str, str] = {}
    presets = []
    for name, table in models.items():
        _check(isinstance(table, dict), source, f"[models.{name!r}] must be a table")
        _check(name.lower() not in seen, source, f"models {seen.get(name.lower())!r} and {name!r} differ only in case")
        seen[name.lower()] = name
        presets.append(_preset(name, table, source, families))
    return presets


def _read_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{source}: not valid TOML: nested too deeply") from None


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
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a TOML registry (not UTF-8 text)") from None
        presets += _parse(_read_toml(text, str(path)), str(path), builtin.get("families", {}))
    return Registry(presets)
