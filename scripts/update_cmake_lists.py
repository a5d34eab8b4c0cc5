#!/usr/bin/env python3
"""Regenerate the Python file lists of PerfusionSeg/CMakeLists.txt and PerfusionDAUGS/CMakeLists.txt.

slicerMacroBuildScriptedModule installs only the files it is told about, so every .py of the module, its *Lib package
and its private glue package must be listed. Run after adding files:  python scripts/update_cmake_lists.py
(``--check`` exits 1 when a list is out of date, for CI). Only the block between the BEGIN/END markers is rewritten.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULES = {"PerfusionSeg": ("PerfusionSegLib", "PerfusionSegUtils"), "PerfusionDAUGS": ("PerfusionDAUGSLib",)}
BEGIN, END = "# BEGIN generated Python file list (scripts/update_cmake_lists.py)", "# END generated Python file list"


def python_files(module: str) -> list:
    root = REPO / module
    files = [f"{module}.py"]
    for package in MODULES[module]:
        files += sorted(p.relative_to(root).as_posix() for p in (root / package).rglob("*.py")
                        if "__pycache__" not in p.parts)
    return files


def block(module: str) -> str:
    lines = [BEGIN, "set(MODULE_PYTHON_SCRIPTS"] + [f"  {f}" for f in python_files(module)] + ["  )", END]
    return "\n".join(lines)


def updated_text(module: str) -> tuple:
    path = REPO / module / "CMakeLists.txt"
    text = path.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return path, text, text[:start] + block(module) + text[end:]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether the lists are up to date")
    args = parser.parse_args(argv)
    stale = []
    for module in MODULES:
        path, old, new = updated_text(module)
        if old != new:
            stale.append(path)
            if not args.check:
                path.write_text(new)
    for path in stale:
        print(("out of date: " if args.check else "updated: ") + str(path.relative_to(REPO)))
    return 1 if (stale and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
