from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from hat_cli.checkpoint import save_checkpoint
from hat_cli.model import HAT, HATConfig
from tests.store_server import LocalServer

if TYPE_CHECKING:
    from tests.ray_cluster import LoopbackCluster

DATA = Path(__file__).parent / "data"
REFERENCE = DATA / "hat-reference"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"

torch.set_num_threads(min(2, torch.get_num_threads()))


def reference_cases() -> list[tuple[str, dict, dict]]:
    """(model name, model entry, case) for every case of the reference manifest."""
    manifest = json.loads((REFERENCE / "manifest.json").read_text())
    return [(name, entry, case) for name, entry in manifest.items() for case in entry["cases"]]


TINY_CONFIG = HATConfig(
    upscale=2,
    embed_dim=12,
    depths=(1,),
    num_heads=(2,),
    window_size=4,
    compress_ratio=3,
    squeeze_factor=4,
    mlp_ratio=1.0,
)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty model cache folder, with no offline mode or extra registry inherited from the shell."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("HAT_CACHE_DIR", str(folder))
    monkeypatch.delenv("HAT_OFFLINE", raising=False)
    monkeypatch.delenv("HAT_REGISTRY", raising=False)
    return folder


@pytest.fixture
def server() -> Iterator[LocalServer]:
    """A real HTTP server on 127.0.0.1 with scripted faults (tests/store_server.py)."""
    with LocalServer() as srv:
        yield srv


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    """A random tiny x2 HAT saved in the official .pth layout."""
    torch.manual_seed(0)
    model = HAT(TINY_CONFIG)
    return save_checkpoint(tmp_path / "tiny_x2.pth", model.state_dict(), TINY_CONFIG, params=model.state_dict())


@pytest.fixture(scope="session")
def loopback_ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackCluster]:
    """One real 2-node Ray cluster on 127.0.0.1 (tests/ray_cluster.py) for every Ray test module:
    starting one takes 7-19 s here. Use it through a fixture that calls ``ensure_nodes()`` first, so
    a node killed by an earlier test is back. Teardown checks that no Ray process outlived it."""
    from tests.ray_cluster import LoopbackCluster

    cluster = LoopbackCluster(tmp_path_factory.mktemp("ray-cluster"), nodes=2)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
        assert cluster.survivors() == [], "Ray processes outlived the cluster"
