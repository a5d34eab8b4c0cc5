"""The `perfusion` command line: one module per subcommand, each with ``register(subparsers)``.

Exit status (CONVENTIONS): 0 success; 2 bad input or usage (one clear line on stderr, no traceback); 1 internal error.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from ..errors import PerfusionInputError

# subcommand modules, in the order `perfusion --help` lists them; a module that cannot be imported (an optional
# dependency missing) is skipped with a note instead of breaking every other command
COMMAND_MODULES = ("info", "preprocess", "phantom", "mbf", "segment", "evaluate", "report", "train", "calibrate_qc",
                   "export_onnx", "demo")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors: one line, status 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(prog="perfusion", description="Myocardial perfusion MRI analysis: segmentation, uncertainty, MBF, AHA report.")
    parser.add_argument("--version", action="version", version=f"perfusion {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(__name__):
                continue  # command not implemented in this build
            raise
        module.register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except PerfusionInputError as exc:
        msg = " ".join(str(exc).split())  # one line, whatever the message held
        print(f"perfusion {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("perfusion: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


def entry_point() -> None:
    sys.exit(main())
