"""A training state file's ``train_state`` table, checked entry by entry before ``hat train
--resume`` applies it: a damaged or foreign file is one :class:`BadState` naming the entry, never
a crash in torch now or at the first step (the caller turns it into a ``CheckpointError``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor


def is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def is_finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class BadState(ValueError):
    """A training-state entry that is missing, or not of the form ``hat train`` writes it."""


def entry(table: Any, key: str, where: str) -> Any:
    if not isinstance(table, Mapping):
        raise BadState(f"{where} is not a table")
    if key not in table:
        raise BadState(f"{where} has no {key!r}")
    return table[key]


def tensors(table: Any, key: str) -> Mapping[str, Tensor]:
    """The file's ``key`` entry as a table of tensors (network weights)."""
    weights = entry(table, key, "the file")
    _checked(
        isinstance(weights, Mapping) and all(isinstance(v, Tensor) for v in weights.values()),
        f"{key} is not a table of tensors",
    )
    return weights


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _checked(ok: bool, message: str) -> None:
    if not ok:
        raise BadState(message)


def checked_state(
    st: Any, optimizer: torch.optim.Optimizer, scheduler: Any, generator: torch.Generator
) -> dict[str, Any]:
    """The entries of a training state's ``train_state`` table, each checked against the run it is
    to continue: its optimiser, learning-rate scheduler and data generator."""

    def get(key: str) -> Any:
        return entry(st, key, "train_state")

    iteration, loss_avg, val_psnr, wall_s = get("iteration"), get("loss_avg"), get("val_psnr"), get("wall_s")
    _checked(is_int(iteration) and iteration >= 0, "iteration is not a whole number >= 0")
    _checked(loss_avg is None or is_finite(loss_avg), "loss_avg is not a finite number")
    _checked(val_psnr is None or _is_real(val_psnr), "val_psnr is not a number")
    _checked(is_finite(wall_s) and wall_s >= 0, "wall_s is not a finite number >= 0")
    return {
        "optimizer": _checked_optimizer(get("optimizer"), optimizer),
        "scheduler": _like(scheduler.state_dict(), get("scheduler"), "scheduler"),
        "data_rng": _rng_state(get("data_rng"), generator.get_state(), "data_rng"),
        "torch_rng": _rng_state(get("torch_rng"), torch.get_rng_state(), "torch_rng"),
        "iteration": iteration,
        "loss_avg": loss_avg,
        "val_psnr": val_psnr,
        "history": _history(get("history")),
        "wall_s": float(wall_s),
    }


def _like(fresh: Any, loaded: Any, where: str) -> Any:
    """``loaded`` if it has ``fresh``'s form: tables with its keys (a key ``loaded`` lacks keeps the
    fresh value: a state from an older torch), lists of its length, values of its kinds."""
    if isinstance(fresh, Mapping):
        _checked(isinstance(loaded, Mapping), f"{where} is not a table")
        return {k: _like(v, loaded[k], f"{where}.{k}") if k in loaded else v for k, v in fresh.items()}
    if isinstance(fresh, list | tuple):
        _checked(
            isinstance(loaded, list | tuple) and len(loaded) == len(fresh), f"{where} is not a list of {len(fresh)}"
        )
        return type(fresh)(_like(f, v, f"{where}[{i}]") for i, (f, v) in enumerate(zip(fresh, loaded, strict=True)))
    _checked(_same_kind(fresh, loaded), f"{where} is {type(loaded).__name__}, expected {type(fresh).__name__}")
    return loaded


def _same_kind(fresh: Any, loaded: Any) -> bool:
    if fresh is None or isinstance(fresh, bool):
        return loaded is None or isinstance(loaded, bool)
    if is_int(fresh):
        return is_int(loaded)
    if isinstance(fresh, float):
        return is_finite(loaded)
    return type(loaded) is type(fresh)


# How this torch runs Adam, not what the run learnt: always this optimiser's own values (a file's
# amsgrad or capturable would ask for moments or a device the run does not have).
_ADAM_IMPLEMENTATION = (
    "amsgrad",
    "capturable",
    "differentiable",
    "fused",
    "foreach",
    "maximize",
    "decoupled_weight_decay",
)


def _checked_optimizer(loaded: Any, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``loaded`` (an Adam state dict) if it fits ``optimizer``: the same groups of the same
    parameters, hyper-parameters of the same kinds, and per parameter exactly Adam's step count and
    moments of its shape."""
    fresh = optimizer.state_dict()
    groups = _like(fresh["param_groups"], entry(loaded, "param_groups", "optimizer"), "optimizer.param_groups")
    _checked(
        [g["params"] for g in groups] == [g["params"] for g in fresh["param_groups"]],
        "optimizer: its parameter groups are not this network's",
    )
    for group, own in zip(groups, fresh["param_groups"], strict=True):
        group.update({flag: own[flag] for flag in _ADAM_IMPLEMENTATION if flag in own})
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state = entry(loaded, "state", "optimizer")
    _checked(
        isinstance(state, Mapping) and all(is_int(k) and 0 <= k < len(params) for k in state),
        "optimizer.state is not a table of this network's parameters",
    )
    keys = {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if groups[0].get("amsgrad") else set())
    return {
        "state": {k: _param_state(v, params[k], keys, f"optimizer.state[{k}]") for k, v in state.items()},
        "param_groups": groups,
    }


def _param_state(entry: Any, param: Tensor, keys: set[str], where: str) -> dict[str, Any]:
    """One parameter's Adam state: exactly ``keys``, a step count and float moments of its shape."""
    _checked(isinstance(entry, Mapping) and set(entry) == keys, f"{where} does not hold Adam's {sorted(keys)}")
    for key, value in entry.items():
        if key == "step":
            ok = is_finite(value) or (isinstance(value, Tensor) and value.numel() == 1 and value.is_floating_point())
        else:
            ok = isinstance(value, Tensor) and value.is_floating_point() and value.shape == param.shape
        _checked(ok, f"{where}.{key} does not fit the parameter of shape {tuple(param.shape)}")
    return dict(entry)


def _rng_state(loaded: Any, fresh: Tensor, where: str) -> Tensor:
    _checked(
        isinstance(loaded, Tensor) and loaded.dtype == fresh.dtype and loaded.shape == fresh.shape,
        f"{where} is not a generator state of {fresh.numel()} bytes",
    )
    return loaded


def _history(value: Any) -> list[tuple[int, float]]:
    pairs = value if isinstance(value, list | tuple) else None
    _checked(
        pairs is not None
        and all(isinstance(h, list | tuple) and len(h) == 2 and is_int(h[0]) and _is_real(h[1]) for h in pairs),
        "history is not a list of (iteration, PSNR) pairs",
    )
    return [(int(i), float(v)) for i, v in value]
