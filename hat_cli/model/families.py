"""The network families hat can load, in the order a checkpoint is offered to them.

A new family is a package under ``hat_cli/model/`` whose family object (see
:class:`~hat_cli.model.contract.Family`) is added to :data:`FAMILIES`; nothing else changes.
Torch-free: the registry reads configurations through these objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from .contract import Family
from .hat import HAT_FAMILY
from .rcan import HAN_FAMILY, RCAN_FAMILY

if TYPE_CHECKING:
    from torch import Tensor

# More specific families first: a family whose keys extend another's must be asked before it
# (HAN is RCAN plus attention modules; RCAN's own matcher also refuses HAN keys).
FAMILIES: tuple[Family, ...] = (HAT_FAMILY, HAN_FAMILY, RCAN_FAMILY)


def family_named(name: str) -> Family:
    """The family called ``name`` (``hat``, ...); ``KeyError`` listing the known ones."""
    for family in FAMILIES:
        if family.name == name:
            return family
    raise KeyError(f"unknown network family {name!r} (known: {', '.join(f.name for f in FAMILIES)})")


def find_family(state: Mapping[str, Tensor]) -> Family | None:
    """The first family whose key names match ``state``, or None."""
    return next((family for family in FAMILIES if family.matches(state)), None)


def family_titles() -> str:
    """``HAT, HAN or RCAN``: for messages about files that are none of them."""
    titles = [family.title for family in FAMILIES]
    return titles[0] if len(titles) == 1 else f"{', '.join(titles[:-1])} or {titles[-1]}"


__all__ = ["FAMILIES", "family_named", "family_titles", "find_family"]
