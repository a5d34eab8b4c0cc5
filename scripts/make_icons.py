#!/usr/bin/env python3
"""Draw the extension's 128x128 icons (module icons, sample-data thumbnail, extension icon) with Pillow.

Colours are the label colours of CONVENTIONS (LV blood pool, LV myocardium, RV blood pool) and the AHA territory
colours used by the Slicer glue. Run from anywhere: python scripts/make_icons.py
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
S = 128
LV, MYO, RV = (217, 51, 51), (51, 178, 217), (242, 191, 51)
TERRITORY = {"LAD": (41, 112, 204), "RCA": (214, 77, 66), "LCX": (56, 168, 89)}
SEG_TERRITORY = {1: "LAD", 2: "LAD", 3: "RCA", 4: "RCA", 5: "LCX", 6: "LCX", 7: "LAD", 8: "LAD", 9: "RCA",
                 10: "RCA", 11: "LCX", 12: "LCX", 13: "LAD", 14: "LAD", 15: "RCA", 16: "LCX"}


def short_axis(draw: ImageDraw.ImageDraw, cx=72, cy=64, r_in=22, r_out=36):
    draw.ellipse([cx - 70, cy - 40, cx - 16, cy + 40], fill=RV)                      # RV crescent behind
    draw.ellipse([cx - r_out, cy - r_out, cx + r_out, cy + r_out], fill=MYO)        # myocardium
    draw.ellipse([cx - r_in, cy - r_in, cx + r_in, cy + r_in], fill=LV)             # LV blood pool


def module_seg() -> Image.Image:
    img = Image.new("RGBA", (S, S), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle([2, 2, S - 3, S - 3], radius=18, fill=(28, 28, 36, 255))
    short_axis(d)
    return img


def module_daugs() -> Image.Image:
    img = module_seg()
    rng = np.random.default_rng(0)
    over = Image.new("RGBA", (S, S), (0, 0, 0, 0))
    d = ImageDraw.Draw(over)
    for y in range(10, S - 10, 18):                                                   # patch grid + "uncertainty"
        for x in range(10, S - 10, 18):
            r = math.hypot(x + 8 - 72, y + 8 - 64)
            u = math.exp(-((r - 29) / 7) ** 2) * (0.6 + 0.4 * rng.random())          # high on the myocardial border
            d.rectangle([x, y, x + 15, y + 15], outline=(255, 255, 255, 90), fill=(255, 140, 0, int(150 * u)))
    return Image.alpha_composite(img, over)


def phantom_thumb() -> Image.Image:
    yy, xx = np.mgrid[:S, :S]
    r = np.hypot(yy - 64, xx - 70)
    body = np.exp(-(((yy - 64) / 58) ** 2 + ((xx - 64) / 62) ** 2) ** 2)
    img = 0.25 * body
    img[r < 36] = 0.45
    img[r < 22] = 0.95
    img[np.hypot(yy - 64, xx - 34) < 22] = np.maximum(img[np.hypot(yy - 64, xx - 34) < 22], 0.85)
    img[(r >= 22) & (r < 36) & (np.arctan2(yy - 64, xx - 70) > 0.6) & (np.arctan2(yy - 64, xx - 70) < 1.6)] = 0.3
    img += np.random.default_rng(1).normal(0, 0.03, img.shape)
    g = (255 * np.clip(img, 0, 1)).astype(np.uint8)
    return Image.fromarray(np.stack([g, g, g, np.full_like(g, 255)], axis=-1), "RGBA")


def bullseye() -> Image.Image:
    """Extension icon: AHA bullseye in territory colours (segment 1 at 12 o'clock, counter-clockwise)."""
    img = Image.new("RGBA", (S, S), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    c = S / 2
    rings = [(60, 1, 6, 60.0), (42, 7, 6, 60.0), (24, 13, 4, 90.0)]
    for radius, first, n, width in rings:
        for i in range(n):
            seg = first + i
            # PIL angles: 0 = 3 o'clock, clockwise; segment 1 centred at 12 o'clock, numbers counter-clockwise
            centre = -90.0 - i * width
            d.pieslice([c - radius, c - radius, c + radius, c + radius], centre - width / 2, centre + width / 2,
                       fill=TERRITORY[SEG_TERRITORY[seg]], outline=(255, 255, 255), width=2)
    d.ellipse([c - 8, c - 8, c + 8, c + 8], fill=(255, 255, 255), outline=(255, 255, 255))
    return img


def main():
    out = {
        REPO / "PerfusionSeg/Resources/Icons/PerfusionSeg.png": module_seg(),
        REPO / "PerfusionSeg/Resources/Icons/PerfusionPhantom.png": phantom_thumb(),
        REPO / "PerfusionDAUGS/Resources/Icons/PerfusionDAUGS.png": module_daugs(),
        REPO / "Resources/Icons/CardiacPerfusion.png": bullseye(),
    }
    for path, img in out.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, optimize=True)
        print(path.relative_to(REPO), img.size, path.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
