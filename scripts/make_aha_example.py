#!/usr/bin/env python
"""Example AHA report on a phantom study (stress with an LAD defect, and rest), for docs/aha_report.md.

Runs the automatic chain on the phantom's truth label maps: RV insertion points (slices together), AHA sector maps,
per-segment statistics of the phantom's truth MBF maps, and the report. Writes the full report to ``--out`` and
small palette PNG copies of the bullseye and the stress slice picture to ``docs/images/``.

    python scripts/make_aha_example.py --out /tmp/aha_example
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _slices(ps):
    from PerfusionSegLib.aha import aha_sector_map, find_insertion_points_stack

    labels = [t.labels for t in ps.truth]
    ips = find_insertion_points_stack(labels, spacing=[s.spacing for s in ps.study.slices],
                                      affines=[s.affine for s in ps.study.slices])
    out = []
    for s, t, ip in zip(ps.study.slices, ps.truth, ips):
        sm = aha_sector_map(t.labels, s.level, ip)
        peak = s.data[int(np.argmax(s.data[:, t.labels == 2].mean(axis=1)))]   # peak myocardial enhancement frame
        out.append({"level": s.level, "image": peak, "labels": t.labels, "sector_map": sm,
                    "map": np.where(sm > 0, t.mbf, np.nan), "insertion": ip})
    return out


def _small_png(src: Path, dst: Path) -> int:
    from PIL import Image

    from PerfusionSegLib.atomic import write_bytes_atomic

    with Image.open(src) as im:
        q = im.convert("RGB").quantize(colors=192, method=Image.Quantize.MEDIANCUT)
        buf = io.BytesIO()
        q.save(buf, format="PNG", optimize=True)
    write_bytes_atomic(dst, buf.getvalue())
    return len(buf.getvalue())


def main(argv=None) -> int:
    from PerfusionSegLib.phantom import generate_study
    from PerfusionSegLib.report import write_report

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/aha_example")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--docs", default=str(REPO / "docs" / "images"))
    args = ap.parse_args(argv)

    defect = {"territory": "LAD", "factor": 0.45, "transmural": False, "endo_fraction": 0.5}
    stress = generate_study(seed=args.seed, condition="stress", global_mbf=3.2, defect=defect, aif_images=False)
    rest = generate_study(seed=args.seed, condition="rest", global_mbf=1.0, aif_images=False)
    paths = write_report(args.out, _slices(stress), rest_slices=_slices(rest),
                         title=f"Phantom seed {args.seed}: LAD subendocardial defect (truth MBF)")
    docs = Path(args.docs)
    for key, name in (("bullseye", "aha_example_bullseye.png"), ("slices_stress", "aha_example_slices.png")):
        size = _small_png(paths[key], docs / name)
        print(f"{docs / name}: {size / 1024:.0f} KB")
    print("report:", ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
