"""`perfusion segment INPUT... --out DIR [--method auto|resunet|daugs]`: label maps on the input grid.

Writes ``DIR/S_labels.nii.gz`` per input (stem S); with DAUGS also ``DIR/S_umap.nii.gz`` and ``DIR/S_daugs.json``
(U_pp of every pool member and the one chosen). Per-slice QC flags are printed. ``--method auto`` (the default)
takes the DAUGS pool when one is installed (or given with --pool), else the ResUNet.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_geometry_options, geometry_kwargs, unique_stems

DEFAULT_RESUNET_MODEL = "resunet"   # what the training pipeline exports (resunet.json + resunet.pt)


def register(subparsers) -> None:
    p = subparsers.add_parser("segment", help="segment LV blood pool, myocardium and RV (ResUNet or DAUGS pool)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="series files or DICOM folders")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--method", choices=("auto", "resunet", "daugs"), default="auto",
                   help="auto (default): the installed DAUGS pool, else the ResUNet")
    p.add_argument("--model", metavar="NAME|CARD", default=None,
                   help=f"ResUNet model name in the models folder or a model card path (default {DEFAULT_RESUNET_MODEL})")
    p.add_argument("--pool", metavar="P", default=None, help="DAUGS pool name or folder (default: the shipped pool)")
    p.add_argument("--umap-stride", type=int, default=2, metavar="N", help="DAUGS U-map patch stride (default 2)")
    p.add_argument("--exhaustive", action="store_true",
                   help="DAUGS: run every pool member at the U-map stride, as published, instead of the staged search "
                        "(the same choice in about 80 %% of phantom series; minutes per study on a 2-core CPU)")
    p.add_argument("--ensemble", type=int, default=1, metavar="K",
                   help="DAUGS: labels from the mean probabilities of the K best-ranked members instead of the chosen "
                        "member alone (not in the paper; the U-map and QC uncertainty stay the chosen member's). "
                        "Measured with K = 5: myocardium Dice +0.032 on coarsely labelled real series, +0.005 on the "
                        "phantom (docs/daugs.md); default 1")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--bf16", action="store_true", help="bfloat16 inference (faster on CPUs with AVX512-BF16 and GPUs)")
    p.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                   help="ResUNet: torch (default) or ONNX Runtime, without torch (an ONNX card from "
                        "`perfusion export-onnx`, given with --model or found beside the model card)")
    p.add_argument("--adapt-bn", action="store_true",
                   help="re-estimate the networks' BatchNorm statistics on each input series (test-time adaptation; "
                        "torch only). Measured: better on coarsely labelled real series, much worse on some phantom "
                        "presets (docs/daugs.md); off by default")
    add_geometry_options(p)
    p.set_defaults(func=run)


def _default_resunet() -> str:
    """The shipped ResUNet name; if absent, the only installed ResUNet card; else the default (the error names it)."""
    from ..networks.registry import default_models_dir, list_models

    if (default_models_dir() / f"{DEFAULT_RESUNET_MODEL}.json").is_file():
        return DEFAULT_RESUNET_MODEL
    resunets = [m["name"] for m in list_models() if m["architecture"] == "resunet" and m["weights_present"]]
    return resunets[0] if len(resunets) == 1 else DEFAULT_RESUNET_MODEL


def run(args: argparse.Namespace) -> int:
    from ..errors import InvalidParameterError
    from ..networks.registry import load_model
    from ..readers import load_series
    from ..writers import write_labels, write_map
    from ..atomic import write_text_atomic

    if args.umap_stride < 1:
        raise InvalidParameterError(f"--umap-stride must be at least 1, got {args.umap_stride}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InvalidParameterError(f"--out {out} exists and is not a folder")

    if args.method == "auto" and args.runtime == "onnx":
        args.method = "resunet"                 # only the ResUNet runs on ONNX Runtime
    if args.method == "auto":
        from ..analysis import AnalysisOptions, resolve_method
        # a named ResUNet (--model) means the ResUNet; otherwise what is installed, the pool first
        args.method = "resunet" if args.model is not None and args.pool is None else \
            resolve_method(AnalysisOptions(method="auto", pool=args.pool, model=args.model))
    model = None
    if args.runtime == "onnx" and args.method != "resunet":
        raise InvalidParameterError("--runtime onnx runs the ResUNet: give --method resunet (or --model)")
    if args.runtime == "onnx" and args.adapt_bn:
        raise InvalidParameterError("--adapt-bn needs the torch runtime (ONNX models are frozen)")
    if args.exhaustive and args.method != "daugs":
        raise InvalidParameterError("--exhaustive is the DAUGS pool search: give --method daugs (or --pool)")
    if args.ensemble < 1:
        raise InvalidParameterError(f"--ensemble must be at least 1, got {args.ensemble}")
    if args.ensemble > 1 and args.method != "daugs":
        raise InvalidParameterError("--ensemble averages DAUGS pool members: give --method daugs (or --pool)")
    name = (_default_resunet() if args.model is None else args.model) if args.method == "resunet" else None
    if args.method == "resunet" and args.runtime == "onnx":
        from ..networks.onnx_model import load_onnx_model
        from ..networks.registry import resolve_card
        model = load_onnx_model(name if str(name).endswith(".onnx.json") else resolve_card(name))
    elif args.method == "resunet":
        from ..errors import UnreadableFileError
        try:
            model = load_model(name, device=args.device)
        except UnreadableFileError as exc:
            if args.model is not None or "no model named" not in str(exc):
                raise
            raise UnreadableFileError(f"{exc}; train one with `perfusion train` or give --model CARD "
                                      f"(or set PERFUSION_MODELS_DIR)") from None
    # read every input before writing anything: a bad input stops the run with nothing written
    series_list = [load_series(p, **geometry_kwargs(args)) for p in args.inputs]
    daugs_results = None
    if args.method == "daugs":
        from PerfusionDAUGSLib.daugs import run_daugs
        # every slice in one call: the pool members run over all slices' patches together
        daugs_results = run_daugs(series_list, args.pool, umap_stride=args.umap_stride, seg_stride=16,
                                  fast=not args.exhaustive, device=args.device, bf16=args.bf16,
                                  adapt_bn=args.adapt_bn, ensemble=args.ensemble)
    out.mkdir(parents=True, exist_ok=True)
    for i, (stem, series) in enumerate(zip(unique_stems(args.inputs), series_list)):
        if args.method == "resunet":
            from ..inference import segment_series
            result = segment_series(series, model, bf16=args.bf16 and args.runtime == "torch", adapt_bn=args.adapt_bn)
            labels, flags = result.labels, result.qc["flags"]
        else:
            result = daugs_results[i]
            labels, flags = result.labels, list(result.flags)
            write_map(result.umap, out / f"{stem}_umap.nii.gz", spacing=series.spacing, affine=series.affine)
            write_text_atomic(out / f"{stem}_daugs.json", result.to_json())
        path = write_labels(labels, out / f"{stem}_labels.nii.gz", spacing=series.spacing, affine=series.affine)
        extra = f"  chosen {result.chosen} (U_pp {result.upp_chosen:.4g})" if args.method == "daugs" else ""
        print(f"{path}  QC: {', '.join(flags) if flags else 'ok'}{extra}")
    return 0
