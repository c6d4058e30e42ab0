"""What the benchmarks share: the official HAT x4 configurations, the analytic multiply-add count,
and spandrel's HAT (the implementation chaiNNer uses) with the same random weights as ours.

Benchmark-only code: the package (``hat_cli``) never imports it. spandrel is found, in order, as an
installed package, or as a wheel in ``<repo>/.whl/`` (``pip download --no-deps spandrel==0.4.2
-d .whl``; a pure-Python wheel is importable as a zip, so a machine without network access needs
no install step).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
import sys
import types
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hat_cli.model import HAT, HATConfig  # noqa: E402

# Official x4 hyper-parameters (window 16, overlap 0.5, conv_scale 0.01, mlp 2, num_feat 64);
# /work/shared/reference/official-checkpoints.md lists them.
MODELS: dict[str, dict] = {
    "hat-s": dict(embed_dim=144, depths=(6,) * 6, num_heads=(6,) * 6, compress_ratio=24, squeeze_factor=24),
    "hat": dict(embed_dim=180, depths=(6,) * 6, num_heads=(6,) * 6, compress_ratio=3, squeeze_factor=30),
    "hat-l": dict(embed_dim=180, depths=(6,) * 12, num_heads=(6,) * 12, compress_ratio=3, squeeze_factor=30),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def our_config(name: str) -> HATConfig:
    return HATConfig(upscale=4, window_size=16, mlp_ratio=2.0, **MODELS[name])


# --------------------------------------------------------------------------- FLOPs


def network_macs(config: HATConfig, height: int, width: int) -> int:
    """Multiply-adds of one forward on a (H, W) input (padded to the window multiple), counting
    convolutions, linear layers and both attention matmuls; softmax, norms and activations are
    not multiply-adds and are left out (as FlopCounterMode does)."""
    ws = config.window_size
    pixels = (height + -height % ws) * (width + -width % ws)
    c, hidden, nf = config.embed_dim, config.mlp_hidden, config.num_feat
    cab = c // config.compress_ratio
    n, nk = ws * ws, config.overlap_window_size**2
    mlp = 2 * c * hidden
    hab = 3 * c * c + 2 * n * c + c * c + 9 * c * cab * 2 + mlp  # qkv, q.k + a.v, proj, CAB, MLP
    ca = 2 * c * (c // config.squeeze_factor)  # channel attention on the pooled vector, per image
    ocab = 3 * c * c + 2 * nk * c + c * c + mlp
    blocks = sum(config.depths)
    per_pixel = 9 * config.in_chans * c + blocks * hab + len(config.depths) * (ocab + 9 * c * c)
    per_pixel += 9 * c * c + 9 * c * nf  # conv_after_body, conv_before_upsample
    up, area = 0, 1
    for _ in range(int(math.log2(config.upscale))):
        up += 9 * nf * 4 * nf * area
        area *= 4
    per_pixel += up + 9 * nf * config.in_chans * area
    return pixels * per_pixel + blocks * ca


# --------------------------------------------------------------------------- spandrel


@functools.cache
def spandrel_hat_class() -> type[nn.Module]:
    """spandrel's ``HAT`` class, imported without ``spandrel/__init__`` (which needs torchvision).

    Raises ImportError (with the places looked at) when spandrel is neither installed nor in
    ``<repo>/.whl/``.
    """
    if "spandrel.architectures.HAT.__arch.HAT" in sys.modules:
        return sys.modules["spandrel.architectures.HAT.__arch.HAT"].HAT
    spec = importlib.util.find_spec("spandrel")
    if spec is None:
        wheels = sorted((REPO / ".whl").glob("spandrel-*.whl"))
        if not wheels:
            raise ImportError(f"spandrel is not installed and no spandrel wheel is in {REPO / '.whl'}")
        sys.path.append(str(wheels[-1]))  # pure Python: importable straight from the zip
        importlib.invalidate_caches()
        spec = importlib.util.find_spec("spandrel")
        if spec is None or spec.origin is None:
            raise ImportError(f"{wheels[-1]} holds no importable spandrel package")
    root = str(Path(spec.origin).parent) if spec.origin else next(iter(spec.submodule_search_locations or []))
    # Bare package objects for spandrel and its architecture folders, so that importing the HAT
    # arch module runs none of the package __init__ files on the way.
    for name, folder in (
        ("spandrel", root),
        ("spandrel.architectures", f"{root}/architectures"),
        ("spandrel.architectures.HAT", f"{root}/architectures/HAT"),
    ):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [folder]
            sys.modules[name] = module
    return importlib.import_module("spandrel.architectures.HAT.__arch.HAT").HAT


def spandrel_version() -> str:
    """The spandrel version found (installed or wheel), or a reason it is missing."""
    try:
        from importlib.metadata import version

        return version("spandrel")
    except Exception:
        wheels = sorted((REPO / ".whl").glob("spandrel-*.whl"))
        return wheels[-1].name.split("-")[1] if wheels else "missing"


def build_spandrel(config: HATConfig, seed: int = 0) -> nn.Module:
    """spandrel's HAT with ``config``'s hyper-parameters and its own random initialisation."""
    spandrel_hat = spandrel_hat_class()
    torch.manual_seed(seed)
    return spandrel_hat(
        upscale=config.upscale,
        in_chans=config.in_chans,
        embed_dim=config.embed_dim,
        depths=config.depths,
        num_heads=config.num_heads,
        window_size=config.window_size,
        compress_ratio=config.compress_ratio,
        squeeze_factor=config.squeeze_factor,
        conv_scale=config.conv_scale,
        overlap_ratio=config.overlap_ratio,
        mlp_ratio=config.mlp_ratio,
        img_range=config.img_range,
        upsampler="pixelshuffle",
        resi_connection=config.resi_connection,
    ).eval()


def build_pair(config: HATConfig, seed: int = 0) -> tuple[HAT, nn.Module]:
    """(ours, spandrel) with spandrel's random weights in both; index buffers are not weights."""
    spandrel = build_spandrel(config, seed)
    ours = HAT(config).eval()
    state = {k: v for k, v in spandrel.state_dict().items() if "relative_position_index" not in k}
    ours.load_state_dict(state, strict=True)
    for model in (ours, spandrel):
        model.requires_grad_(False)
    return ours, spandrel
