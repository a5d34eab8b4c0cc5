"""`perfusion export-onnx [MODEL] [--out DIR]`: the ResUNet as an ONNX graph, for torch-free inference.

Loads the model through the registry (sha256 checked) and writes ``DIR/<name>.onnx`` and its card
``DIR/<name>.onnx.json`` (sha256 of the graph and of the source weights). Then
``perfusion segment --runtime onnx --model DIR/<name>.onnx.json ...`` segments with ONNX Runtime, without importing
torch (a smaller, faster-starting process for batch work). Needs the packages ``onnx`` (export) and ``onnxruntime``.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("export-onnx", help="export the ResUNet to ONNX for torch-free inference",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=None, metavar="NAME|CARD",
                   help="model name in the models folder or a model card path (default: the shipped ResUNet)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import InvalidParameterError, UnreadableFileError
    from ..networks.onnx_model import export_onnx, load_onnx_model
    from ..networks.registry import resolve_card
    from .segment import _default_resunet

    if args.out.exists() and not args.out.is_dir():
        raise InvalidParameterError(f"--out {args.out} exists and is not a folder")
    try:
        import onnx  # noqa: F401 - torch's exporter needs it
    except ImportError:
        raise UnreadableFileError("exporting needs the onnx package: pip install onnx onnxruntime") from None
    card = resolve_card(args.model or _default_resunet(), None)
    onnx_card = export_onnx(card, args.out)
    model = load_onnx_model(onnx_card)            # the export reads back and verifies
    print(f"{onnx_card} ({model.architecture}, {model.in_channels} frames, graph {model.card['onnx']})")
    return 0
