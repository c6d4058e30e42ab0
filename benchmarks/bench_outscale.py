"""Which resize after the network, and is x8 better as the x4 network twice? (``--outscale``)

Ground truth is Set5 (``--hr``); each case makes the input from HR with MATLAB bicubic, as the
benchmarks do, so every output can be scored against real pixels (PSNR on Y, ``hat bench``'s
recipe, border = the total factor):

* x8: LR = HR / 8. ``x4 twice`` (the network on its own output, x16, then shrunk to x8) against ``x4, then resize x2``
  with MATLAB bicubic or Lanczos, and plain bicubic x8.
* x3: LR = HR / 3. ``x4, then shrink x0.75`` with antialiased MATLAB bicubic or Lanczos (what
  ``--outscale 3`` does with a x4-only model), against plain bicubic x3.
* x2: LR = HR / 2. ``x4, then shrink x0.5`` against the x2 network itself.

    python benchmarks/bench_outscale.py --hr ../shared/datasets/Set5/HR --model hat-tiny
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from hat_cli import Upscaler
from hat_cli.baseline import bicubic_upscale, make_lr
from hat_cli.imagefiles import list_images, read_rgb8
from hat_cli.metrics import mod_crop, psnr
from hat_cli.outscale import resize_array


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hr", type=Path, required=True)
    parser.add_argument("--model", default="hat-tiny")
    args = parser.parse_args()
    x4 = Upscaler.from_preset(args.model, scale=4, offline=True, device="cpu", tile=0)
    try:
        x2 = Upscaler.from_preset(args.model, scale=2, offline=True, device="cpu", tile=0)
    except Exception:
        x2 = None
    rows: dict[str, list[float]] = {}

    def score(name: str, sr: np.ndarray, hr: np.ndarray, factor: int) -> None:
        rows.setdefault(name, []).append(psnr(sr, hr, crop_border=factor))

    for path in list_images(args.hr):
        full = read_rgb8(path)
        # x8
        hr = mod_crop(full, 8)
        lr = make_lr(hr, 8)
        once = x4.upscale_array(lr)
        h, w = hr.shape[:2]
        score(
            "x8: x4 twice (x16), then MATLAB bicubic x0.5", resize_array(x4.upscale_array(once), h, w, "bicubic"), hr, 8
        )
        score("x8: x4, then MATLAB bicubic x2", resize_array(once, h, w, "bicubic"), hr, 8)
        score("x8: x4, then Lanczos x2", resize_array(once, h, w, "lanczos"), hr, 8)
        score("x8: bicubic x8", bicubic_upscale(lr, 8), hr, 8)
        # x3 with a x4 model
        hr = mod_crop(full, 3)
        lr = make_lr(hr, 3)
        h, w = hr.shape[:2]
        big = x4.upscale_array(lr)
        score("x3: x4, then MATLAB bicubic x0.75 (antialiased)", resize_array(big, h, w, "bicubic"), hr, 3)
        score("x3: x4, then Lanczos x0.75", resize_array(big, h, w, "lanczos"), hr, 3)
        score("x3: bicubic x3", bicubic_upscale(lr, 3), hr, 3)
        # x2 with a x4 model
        hr = mod_crop(full, 2)
        lr = make_lr(hr, 2)
        h, w = hr.shape[:2]
        big = x4.upscale_array(lr)
        score("x2: x4, then MATLAB bicubic x0.5 (antialiased)", resize_array(big, h, w, "bicubic"), hr, 2)
        score("x2: x4, then Lanczos x0.5", resize_array(big, h, w, "lanczos"), hr, 2)
        if x2 is not None:
            score("x2: the x2 network", x2.upscale_array(lr), hr, 2)
        score("x2: bicubic x2", bicubic_upscale(lr, 2), hr, 2)

    print(f"| {args.model}, Set5, PSNR Y (dB) | mean |")
    print("|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {np.mean(values):.3f} |")


if __name__ == "__main__":
    main()
