"""Model presets from ``weights.toml`` (shipped in the package) plus optional user registries."""

from __future__ import annotations

import os
import re
import stat
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
# A registry is a short TOML file (the built-in weights.toml is about 15 KB): a bigger one is refused
# before it is read, and no more than this is ever read (/dev/zero, a file that grows meanwhile).
MAX_REGISTRY_BYTES = 1 << 20
# Model names and file names: the cache derives <file>.<12 hex>.part, <file>.<12 hex>.lock and
# <name>.sha256 from them, which must stay under the 255-byte name limit of common file systems.
MAX_NAME_LENGTH = 200
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


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a mirror (``is not https ...``), or None when it can.

    https everywhere; plain http only to loopback hosts (local mirrors and tests). The URL must also
    be one a request can be made of (else urllib fails in ways no retry helps, some of them not as
    an OSError): no spaces or control characters, a port from 0 to 65535, a host name IDNA can
    encode (labels of 1 to 63 characters), nothing but ASCII after the host.
    """
    if not url.isprintable() or " " in url:
        return "contains a space or control character (percent-encode it)"
    try:
        parsed = urlparse(url)
        hostname = parsed.hostname
        _ = parsed.port  # ValueError: not a number, or out of range
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        return f"is not a valid URL ({exc})"
    if not (parsed.scheme == "https" and hostname) and not (parsed.scheme == "http" and hostname in _LOOPBACK):
        return "is not https (plain http only for loopback)"
    try:
        hostname.encode("idna")
    except UnicodeError:
        return "has a host name that cannot be looked up (an empty part, or one over 63 characters)"
    if not parsed._replace(netloc="").geturl().isascii():
        return "has non-ASCII characters after its host (percent-encode them)"
    return None


def is_allowed_url(url: str) -> bool:
    """True when ``url`` may be a mirror (see :func:`url_problem`)."""
    return url_problem(url) is None


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
        problem = url_problem(url)
        _check(problem is None, where, f"URL {_short(url, 200)} {problem}")
    return urls


def _family_tables(data: Mapping[str, Any], source: str, base: Mapping[str, dict]) -> dict[str, dict]:
    own = _typed(data, "families", dict, source, {})
    for name, table in own.items():
        _check(isinstance(table, dict), source, f"[families.{name!r}] must be a table")
    return {**base, **own}


def _short(text: str, keep: int = 40) -> str:
    """``text``'s repr, its start only when it is long (a hostile value never floods the error line)."""
    return repr(text) if len(text) <= keep else f"{text[:keep]!r}... ({len(text)} characters)"


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
        config = family.config_from_dict({**base, **overrides, "scale": table["scale"]})
        _ = config.num_params  # counted here: e.g. mlp_ratio = 1e308 overflows only when it is used
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: bad architecture: {exc}") from None
    except ArithmeticError as exc:
        raise ConfigError(f"{where}: bad architecture: a value is too large ({exc})") from None
    return arch, config


def _preset(name: str, table: Mapping[str, Any], source: str, families: Mapping[str, dict], builtin: bool) -> Preset:
    _check(
        len(name) <= MAX_NAME_LENGTH,
        source,
        f"model name {_short(name)} is longer than {MAX_NAME_LENGTH} characters: shorten it",
    )
    _check(bool(_SAFE_FILE.fullmatch(name)), source, f"model name {name!r} may use only letters, digits and ._+-")
    where = f"{source}: [models.{name!r}]"
    for key in ("family", "scale", "file"):
        _check(key in table, where, f"missing required key {key!r}")
    scale = _typed(table, "scale", int, where)
    _check(scale > 0, where, f"scale must be a positive integer, not {scale!r}")
    file = _typed(table, "file", str, where)
    _check(
        len(file) <= MAX_NAME_LENGTH,
        where,
        f"file {_short(file)} is longer than {MAX_NAME_LENGTH} characters (the cache adds to it, and file "
        f"systems refuse names over 255 bytes): shorten it",
    )
    _check(bool(_SAFE_FILE.fullmatch(file)) and ".." not in file, where, f"file {file!r} must be a plain file name")
    sha = _typed(table, "sha256", str, where)
    if sha is not None:
        sha = sha.lower()
        _check(bool(_SHA256.fullmatch(sha)), where, "sha256 must be 64 hex digits")
    urls = _urls(table, where)
    _check(sha is not None or not urls, where, "urls need a sha256: a download that cannot be verified is never made")
    size = _typed(table, "size", int, where)
    _check(size is None or size > 0, where, "size must be a positive integer")
    bundled = _typed(table, "bundled", bool, where, False)
    _check(
        builtin or not bundled,
        where,
        "bundled = true is for the built-in registry only (its files ship inside hat-cli): remove it, and give "
        "the file's sha256 (and urls), or leave sha256 out and use 'hat models import'",
    )
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
        bundled=bundled,
        description=_typed(table, "description", str, where, ""),
        origin=_typed(table, "source", str, where, ""),
        source=source,
    )


def _parse(
    data: Mapping[str, Any], source: str, base_families: Mapping[str, dict], builtin: bool = False
) -> list[Preset]:
    schema = _typed(data, "schema", int, source, SCHEMA_VERSION)  # not True, though True == 1
    _check(schema == SCHEMA_VERSION, source, f"schema {schema!r} is not supported (expected {SCHEMA_VERSION})")
    families = _family_tables(data, source, base_families)
    models = _typed(data, "models", dict, source, {})
    seen: dict[str, str] = {}
    presets = []
    for name, table in models.items():
        _check(isinstance(table, dict), source, f"[models.{_short(name)}] must be a table")
        preset = _preset(name, table, source, families, builtin)  # the name is checked (and bounded) first
        _check(name.lower() not in seen, source, f"models {seen.get(name.lower())!r} and {name!r} differ only in case")
        seen[name.lower()] = name
        presets.append(preset)
    return presets


def _read_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    except ValueError as exc:  # an integer of over 4300 digits (Python's int/str conversion limit)
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid TOML: nested too deeply") from None


def builtin_registry_text() -> str:
    return resources.files("hat_cli").joinpath("weights.toml").read_text(encoding="utf-8")


class FileRefused(ValueError):
    """A file :func:`read_regular_file` does not read."""


class NotRegularFile(FileRefused):
    """A folder, FIFO, socket or device."""


class FileTooLarge(FileRefused):
    """More bytes than the limit the file is read under."""


def read_regular_file(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of ``path``, which must be a regular file of at most ``limit`` bytes.

    Raises :class:`NotRegularFile` (a folder, a FIFO, /dev/zero) or :class:`FileTooLarge` for
    anything else, and OSError when it cannot be opened or read. A device is never opened (only
    stat'ed), the file is opened non-blocking (a FIFO swapped in meanwhile never waits for a
    writer), and at most ``limit + 1`` bytes are read, however much the file holds or grows.
    """
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise NotRegularFile("not a regular file")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile("not a regular file")
        if info.st_size > limit:
            raise FileTooLarge(f"{info.st_size:,} bytes")
        chunks, size = [], 0
        while chunk := os.read(fd, min(limit + 1 - size, 1 << 16)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise FileTooLarge(f"more than {limit:,} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_registry_file(path: Path) -> str:
    """The text of a user registry: a regular UTF-8 file of at most :data:`MAX_REGISTRY_BYTES`."""
    try:
        data = read_regular_file(path, MAX_REGISTRY_BYTES)
    except NotRegularFile:
        raise ConfigError(
            f"registry {path} is not a regular file: give --registry or {REGISTRY_ENV} a TOML file"
        ) from None
    except FileTooLarge as exc:
        raise ConfigError(
            f"registry {path} is too large ({exc}, over the {MAX_REGISTRY_BYTES >> 20} MiB limit): give "
            f"--registry or {REGISTRY_ENV} a TOML file of your own presets only"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read registry {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # a path with a NUL byte (from Python: argv and the environment have none)
        raise ConfigError(f"cannot read registry {path!r}: {exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a TOML registry (not UTF-8 text)") from None


def load_registry(extra: str | os.PathLike[str] | None = None) -> Registry:
    """The built-in presets, then ``extra`` (or ``$HAT_REGISTRY``) adding or overriding presets."""
    builtin = _read_toml(builtin_registry_text(), "weights.toml")
    presets = _parse(builtin, "weights.toml", {}, builtin=True)
    extra = extra or os.environ.get(REGISTRY_ENV) or None
    if extra:
        path = Path(extra)
        text = _read_registry_file(path)
        presets += _parse(_read_toml(text, str(path)), str(path), builtin.get("families", {}))
    return Registry(presets)
