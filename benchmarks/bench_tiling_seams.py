"""Seam quality of tiled inference: our feathered blend against the official hard crop.

For every image and tile size, the same tiles are assembled two ways (the tile grid is identical,
so each tile's forward runs once and is reused):

- ``blend``: raised-cosine ramps inside the overlap, a context margin kept at zero weight;
- ``crop``: each tile's output cut to its non-overlapping core and pasted (official recipe).

Both are compared with the untiled output of the same network:

- ``PSNR``: tiled vs untiled (dB, outputs clamped to [0, 1]); higher = closer to untiled;
- ``seam``: for every output row boundary and column boundary, the mean |gradient| across it in
  the tiled output minus the same in the untiled output; the worst (max) of these, divided by
  the median |gradient| of the untiled output, in percent. 0 % = tiling added no edge anywhere.

Run: ``python benchmarks/bench_tiling_seams.py`` (model: the bundled ``hat-tiny`` when present,
else the fixture ``tiny_x4.pth``, whose weights are random); ``--model PATH_OR_PRESET``,
``--tiles 64 96 128``, ``--overlap 32``, ``--crop 160``, ``--bsd 3``.

``--model proxy`` trains a tiny x4 HAT (embed 24, depths (2,), heads (2,), window 8) for
``--train-steps`` L1 steps on T91 patches (training images only, none from the test sets) and
caches it in ``--proxy-path``: a stand-in with weights shaped by real photos until ``hat-tiny``
lands. Its Set5 x4 PSNR against bicubic is printed to show it learnt something.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hat_cli.api import Upscaler
from hat_cli.checkpoint import load_model, read_checkpoint, save_checkpoint
from hat_cli.errors import HatError
from hat_cli.model import HAT, HATConfig
from hat_cli.model.wrapper import ModelWrapper
from hat_cli.tiling import TileEngine, array_reader, make_plan, round_tile

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURE = SHARED / "fixtures" / "hat-reference" / "tiny_x4.pth"
PROXY = HATConfig(upscale=4, embed_dim=24, depths=(2,), num_heads=(2,), window_size=8, squeeze_factor=8)


class CachedModel(ModelWrapper):
    """Memoises tile outputs by input bytes: both assembly methods reuse the same forwards."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        self.cache: dict[str, torch.Tensor] = {}
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = hashlib.sha1(x.cpu().numpy().tobytes()).hexdigest() + str(tuple(x.shape))
        if key not in self.cache:
            self.calls += 1
            self.cache[key] = self.inner(x)
        return self.cache[key]


def train_proxy(path: Path, steps: int, batch: int = 4, patch: int = 32) -> None:
    """L1 steps of a tiny x4 HAT on bicubic-downscaled T91 patches, continuing a cached proxy
    that has had fewer than ``steps`` (its step count is kept in the checkpoint's metadata)."""
    done = 0
    model = HAT(PROXY)
    if path.is_file():
        state, meta = read_checkpoint(path)
        model.load_state_dict(state)
        done = int(meta.get("train_steps", 0))
    if done >= steps:
        return
    torch.manual_seed(done)
    rng = np.random.default_rng(done)
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((SHARED / "datasets/train/T91").iterdir())]
    photos = [p for p in photos if min(p.shape[:2]) >= patch * 4]
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3 if done == 0 else 1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps - done)
    started = time.time()
    for step in range(done + 1, steps + 1):
        hrs, lrs = [], []
        for _ in range(batch):
            photo = photos[rng.integers(len(photos))]
            top = rng.integers(photo.shape[0] - patch * 4 + 1)
            left = rng.integers(photo.shape[1] - patch * 4 + 1)
            hr = Image.fromarray(photo[top : top + patch * 4, left : left + patch * 4])
            hrs.append(np.asarray(hr))
            lrs.append(np.asarray(hr.resize((patch, patch), Image.Resampling.BICUBIC)))
        hr_t = torch.from_numpy(np.stack(hrs)).permute(0, 3, 1, 2).float() / 255
        lr_t = torch.from_numpy(np.stack(lrs)).permute(0, 3, 1, 2).float() / 255
        loss = (model(lr_t) - hr_t).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 25 == 0 or step == steps:
            print(f"  proxy step {step}/{steps}: L1 {loss.item():.4f} ({time.time() - started:.0f} s)", flush=True)
    save_checkpoint(path, model.eval().state_dict(), PROXY, extra_meta={"train_steps": steps})


def set5_gain(model: torch.nn.Module) -> tuple[float, float]:
    """Mean RGB PSNR on Set5 x4 (LR files -> HR, 4-pixel border cropped): model, PIL bicubic."""
    ours, cubic = [], []
    for hr_path in sorted((SHARED / "datasets/Set5/HR").glob("*.png")):
        lr = Image.open(SHARED / f"datasets/Set5/LR_bicubic/X4/{hr_path.stem}_LRBI_x4.png").convert("RGB")
        hr = torch.from_numpy(np.array(Image.open(hr_path).convert("RGB"))).permute(2, 0, 1).float() / 255
        hr = hr[:, : lr.height * 4, : lr.width * 4][:, 4:-4, 4:-4]
        x = torch.from_numpy(np.array(lr)).permute(2, 0, 1).float()[None] / 255
        with torch.inference_mode():
            sr = model(x)[0][:, 4:-4, 4:-4]
        up = torch.from_numpy(np.array(lr.resize((lr.width * 4, lr.height * 4), Image.Resampling.BICUBIC)))
        ours.append(psnr(sr, hr))
        cubic.append(psnr(up.permute(2, 0, 1).float()[:, 4:-4, 4:-4] / 255, hr))
    return float(np.mean(ours)), float(np.mean(cubic))


def load(name: str, proxy_path: Path, train_steps: int) -> tuple[torch.nn.Module, str]:
    if name == "proxy":
        train_proxy(proxy_path, train_steps)
        model = load_model(proxy_path)
        ours, cubic = set5_gain(model)
        return model, f"proxy-trained tiny HAT ({proxy_path.name}; Set5 x4 {ours:.2f} dB vs bicubic {cubic:.2f} dB)"
    if name == "auto":
        try:
            return Upscaler.from_preset("hat-tiny", scale=4, device="cpu").model, "hat-tiny"
        except HatError as exc:
            print(f"hat-tiny unavailable ({exc}); using fixture {FIXTURE.name} (random weights)")
            return load_model(FIXTURE), FIXTURE.name
    if Path(name).is_file():
        return load_model(name), Path(name).name
    return Upscaler.from_preset(name, device="cpu").model, name


def images(crop: int, bsd: int) -> list[tuple[str, np.ndarray]]:
    paths = sorted((SHARED / "datasets" / "Set5" / "HR").glob("*.png"))
    paths += sorted((SHARED / "datasets" / "BSD100" / "HR_modcrop" / "X4").glob("*.png"))[:bsd]
    result = []
    for path in paths:
        array = np.asarray(Image.open(path).convert("RGB"))
        h, w = array.shape[:2]
        ch, cw = min(crop, h), min(int(crop * 1.5), w)  # landscape crops: tiles differ per axis
        top, left = (h - ch) // 2, (w - cw) // 2
        result.append((path.stem, np.ascontiguousarray(array[top : top + ch, left : left + cw])))
    return result


def assemble(
    engine: TileEngine, array: np.ndarray, tile: int, overlap: int, blend: str, margin: int | None = None
) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, sH, sW) float32 via the library's engine."""
    h, w = array.shape[:2]
    scale = engine.scale
    plan = make_plan(h, w, scale, engine.window, tile, overlap, margin, blend=blend)  # type: ignore[arg-type]
    canvas = torch.empty(3, h * scale, w * scale)

    def write(row: int, block: torch.Tensor) -> None:
        canvas[:, row : row + block.shape[1]] = block

    engine.run(plan, array_reader(array), write)
    return canvas


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.clamp(0, 1) - b.clamp(0, 1)) ** 2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def seam_score(tiled: torch.Tensor, untiled: torch.Tensor) -> float:
    """Worst extra gradient across an output row/column boundary, % of the median gradient."""

    def profiles(x: torch.Tensor) -> torch.Tensor:
        x = x.clamp(0, 1)
        rows = (x[:, 1:] - x[:, :-1]).abs().mean(dim=(0, 2))  # across each row boundary
        cols = (x[:, :, 1:] - x[:, :, :-1]).abs().mean(dim=(0, 1))
        return torch.cat([rows, cols])

    base = profiles(untiled)
    return 100 * (profiles(tiled) - base).max().item() / base.median().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="auto")
    parser.add_argument("--tiles", type=int, nargs="+", default=[64, 96, 128])
    parser.add_argument("--overlap", type=int, default=None, help="input pixels (default: the library's)")
    parser.add_argument(
        "--margins", type=float, nargs="*", default=[], help="extra blend margins to compare (input pixels)"
    )
    parser.add_argument("--crop", type=int, default=160, help="crop height (width 1.5x) of each photo")
    parser.add_argument("--bsd", type=int, default=3, help="BSD100 images added to Set5")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--proxy-path", type=Path, default=Path("/tmp/hat-tiling-proxy-x4.pth"))
    parser.add_argument("--train-steps", type=int, default=400, help="proxy training steps in total")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, name = load(args.model, args.proxy_path, args.train_steps)
    cached = CachedModel(model.eval())
    engine = TileEngine(cached, torch.device("cpu"), torch.float32)
    data = images(args.crop, args.bsd)
    print(f"model {name} (x{model.scale}, window {model.size_multiple}); {len(data)} images, crop {args.crop}")

    methods = [("blend (ours)", "feather", None)] + [(f"blend, margin {m}", "feather", m) for m in args.margins]
    methods.append(("hard crop", "crop", None))
    rows: list[tuple[int, int, str, list[float], list[float]]] = []
    started = time.time()
    untiled = {}
    with torch.inference_mode():
        for stem, array in data:
            untiled[stem] = assemble(engine, array, 0, 0, "feather")
        for tile in args.tiles:
            overlap = make_plan(4096, 4096, model.scale, model.size_multiple, tile, args.overlap).overlap
            for label, blend, margin in methods:
                psnrs, seams = [], []
                for stem, array in data:
                    out = assemble(engine, array, tile, overlap, blend, margin)
                    psnrs.append(psnr(out, untiled[stem]))
                    seams.append(seam_score(out, untiled[stem]))
                rows.append((round_tile(tile, model.size_multiple), overlap, label, psnrs, seams))
            cached.cache.clear()  # the next tile size shares no tiles with this one
    print(f"({time.time() - started:.0f} s, {cached.calls} forwards)\n")
    print("| tile | overlap | method | PSNR vs untiled, dB (mean / min) | seam % (mean / max) |")
    print("|---:|---:|---|---:|---:|")
    for tile, overlap, label, psnrs, seams in rows:
        print(
            f"| {tile} | {overlap} | {label} | {np.mean(psnrs):.2f} / {np.min(psnrs):.2f} | "
            f"{np.mean(seams):.2f} / {np.max(seams):.2f} |"
        )


if __name__ == "__main__":
    main()
