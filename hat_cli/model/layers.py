"""Building blocks any family may use: attention through SDPA, a oneDNN-backed Linear, in-place
residual adds, a bias cache, and what must change while torch.compile traces.

This module imports only torch and einops.
"""

from __future__ import annotations

import functools
import platform
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def compiling() -> bool:
    """True while torch.compile traces (torch >= 2.3 API, with the older private one as fallback)."""
    check = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling
    return bool(check())


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype in force for ``device_type``, or None when autocast is off."""
    try:
        if not torch.is_autocast_enabled(device_type):
            return None
        return torch.get_autocast_dtype(device_type)
    except (TypeError, AttributeError):  # torch < 2.4: no per-device queries
        if device_type == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


def cpu_autocast() -> bool:
    """Whether CPU autocast is on."""
    return autocast_dtype("cpu") is not None


def tensor_cache(maxsize: int | None = None):
    """``functools.lru_cache`` for functions returning tensors, building them outside inference
    mode: a tensor made under ``torch.inference_mode`` cannot serve autograd later (training,
    LAM) in the same process, while a normal tensor serves both."""

    def decorate(fn):
        @functools.wraps(fn)
        def build(*args):
            with torch.inference_mode(False):
                return fn(*args)

        memo = functools.lru_cache(maxsize=maxsize)(build)
        memo.__wrapped__ = fn  # what `cached` calls under torch.compile: the plain builder
        return memo

    return decorate


def cached(fn, *args):
    """``fn(*args)`` through its functools cache in eager mode; under torch.compile the cache (a
    Python side effect dynamo cannot trace) is skipped and the tensors are built in the graph."""
    return fn.__wrapped__(*args) if compiling() else fn(*args)


# Devices whose fused attention kernels need a head dim that is a multiple of 8 (CUDA's
# memory-efficient and cuDNN kernels; HAT and HAT-L have 30). Without padding, SDPA falls back
# to its unfused math path there. CPU's flash kernel takes any head dim.
PAD_HEAD_DIM_DEVICES = {"cuda"}

# Device types on which a network's input (and, through hat_cli.api.Upscaler, its convolution
# weights) is made channels-last, so that every convolution, the first included, runs on NHWC
# tensors (cuDNN's native layout for tensor cores). Every convolution after the first already
# runs on channels-last views of the (B, H, W, C) features. Off until measured on a GPU
# (benchmarks/gpu_check.py, "switches"); outputs are unchanged (tested on CPU).
CHANNELS_LAST_DEVICES: set[str] = set()


def to_channels_last(x: Tensor) -> Tensor:
    """``x`` in channels-last memory format on :data:`CHANNELS_LAST_DEVICES`, else ``x``."""
    return x.contiguous(memory_format=torch.channels_last) if x.device.type in CHANNELS_LAST_DEVICES else x


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, fused: bool) -> Tensor:
    """Scaled dot-product attention with an additive mask.

    q: (B, heads, Nq, d), k/v: (B, heads, Nk, d), mask: (heads, Nq, Nk) or broadcastable to
    (B, heads, Nq, Nk). ``fused`` picks PyTorch's SDPA kernels; otherwise the official plain math.
    """
    if not fused:
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1) + mask
        return scores.softmax(dim=-1) @ v
    # A 4-D mask is what lets CPU pick its flash kernel; with a 3-D one SDPA silently falls back
    # to the unfused math path (plus a NaN-guarding "safe" softmax), about 3.5x slower.
    mask = mask if mask.dim() == 4 else mask[None]
    head_dim = q.shape[-1]
    pad = -head_dim % 8 if q.device.type in PAD_HEAD_DIM_DEVICES else 0
    if pad:  # zero lanes add nothing to q.k and give zero output lanes, cut off below
        q, k, v = (F.pad(t, (0, pad)) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=head_dim**-0.5)
    return out[..., :head_dim] if pad else out


def add_residual(out: Tensor, shortcut: Tensor) -> Tensor:
    """``shortcut + out``, written into ``out`` (a fresh layer output: no extra buffer) unless
    that would lose precision, as under autocast (bf16 ``out``, fp32 residual stream)."""
    if out.dtype == torch.promote_types(out.dtype, shortcut.dtype):
        return out.add_(shortcut)
    return shortcut + out


class BiasKey(NamedTuple):
    """What a cached attention bias depends on besides its module."""

    variant: int  # -1: bias alone; k >= 0: plus shift-mask class k
    dtype: torch.dtype
    device: torch.device
    version: int  # the table's ``_version``: bumped by every in-place update


class BiasCache:
    """Caches ``table[index]`` (heads, Nq, Nk) per variant/dtype/device/table version for inference.

    The table's ``_version`` changes on every in-place update (``load_state_dict``, optimiser
    steps), so a cached bias can never be stale; while gradients flow it is always rebuilt.
    """

    def __init__(self) -> None:
        self._entries: dict[BiasKey, Tensor] = {}

    def get(
        self,
        table: Tensor,
        index: Tensor,
        shape: tuple[int, int],
        extra: Tensor | None = None,
        variant: int = -1,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """(heads, Nq, Nk) bias ``table[index]`` (+ ``extra``, a mask named by ``variant``) in ``dtype``."""
        dtype = dtype or table.dtype

        def build() -> Tensor:
            bias = rearrange(table[index.reshape(-1)], "(q k) h -> h q k", q=shape[0], k=shape[1])
            if extra is not None:
                bias = bias + extra.to(bias)
            return bias.to(dtype).contiguous()  # kernels copy strided masks on every call

        if compiling() or (torch.is_grad_enabled() and table.requires_grad):
            return build()
        key = BiasKey(variant, dtype, table.device, table._version)
        if key not in self._entries:
            self._entries = {k: v for k, v in self._entries.items() if k.version == table._version}
            self._entries[key] = build()
        return self._entries[key]


# CPU inference runs Linear layers through oneDNN (which PyTorch already uses for convolutions)
# instead of the BLAS: MKL picks its AVX2 kernels on AMD CPUs, oneDNN its AVX-512 ones, about 2x
# the GEMM rate there (90 -> 200 GFLOP/s per core on the EPYC this was measured on). Results
# are identical (same summation order, checked bit for bit). Set to False to compare.
ONEDNN_LINEAR = (
    platform.machine().lower() in ("x86_64", "amd64")
    and torch.backends.mkldnn.is_available()
    and hasattr(torch.ops.mkldnn, "_linear_pointwise")
)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters) whose fp32 CPU inference goes through oneDNN."""

    def use_onednn(self, x: Tensor) -> bool:
        """oneDNN's op has no autograd and ignores autocast: eager fp32 CPU inference only."""
        return (
            ONEDNN_LINEAR
            and x.device.type == "cpu"
            and x.dtype == torch.float32 == self.weight.dtype
            and not torch.is_grad_enabled()
            and not cpu_autocast()
            and not compiling()
        )

    def onednn(self, x: Tensor, post_op: str = "none") -> Tensor:
        """(..., in) -> (..., out) with an optional fused ``"gelu"`` (exact erf GELU)."""
        algorithm = "none" if post_op == "gelu" else ""
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, post_op, [], algorithm)

    def forward(self, x: Tensor) -> Tensor:
        return self.onednn(x) if self.use_onednn(x) else F.linear(x, self.weight, self.bias)
