"""How much tiling changes HAN/RCAN outputs (their attention is image-global).

Channel attention averages over the whole input and HAN's layer attention correlates whole
feature maps, so a tile sees slightly different statistics than the whole image: unlike HAT
(window attention: tiled == untiled up to the blend), tiled HAN/RCAN outputs differ a little.
This prints the PSNR of tiled against whole-image outputs (8-bit, RGB) for the reference
checkpoints (random weights run through the official code) on the fixture inputs and on a crop
of a real photo.

    python benchmarks/bench_han_tiling.py [--shared ../shared]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hat_cli.api import Upscaler
from hat_cli.checkpoint import load_model


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    parser.add_argument("--crop", type=int, default=96, help="side of the photo crop (LR pixels)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    fixtures = args.shared / "fixtures" / "han-reference"
    manifest = json.loads((fixtures / "manifest.json").read_text())
    photo = np.asarray(Image.open(args.shared / "datasets" / "Set5" / "LR_bicubic" / "X2" / "baby_LRBI_x2.png"))
    crop = np.ascontiguousarray(photo[: args.crop, : args.crop, :3])
    print("| checkpoint | input | tile / overlap | PSNR tiled vs whole (dB) |")
    print("|---|---|---|---:|")
    for name, entry in manifest.items():
        model = load_model(fixtures / entry["checkpoint"])
        inputs = [
            (case["input"], np.asarray(Image.open(fixtures / case["input"]).convert("RGB"))) for case in entry["cases"]
        ]
        inputs.append((f"baby crop {args.crop}x{args.crop}", crop))
        for label, image in inputs:
            whole = Upscaler(model, device="cpu", tile=0).upscale_array(image)
            for tile, overlap in ((16, 8), (48, 16)):
                if tile >= max(image.shape[:2]):
                    continue
                tiled = Upscaler(model, device="cpu", tile=tile, tile_overlap=overlap).upscale_array(image)
                print(f"| {name} | {label} | {tile} / {overlap} | {psnr(whole, tiled):.1f} |", flush=True)


if __name__ == "__main__":
    main()
