"""Benchmarks behind `make bench`, one module per benchmark and one entry point:

    python -m mmcore.bench <ingest|train|serve|abuse|gate|monitor|triggers> [its options] \\
        --out reports/bench/<name>.json

Each module's docstring says what it measures; every figure is set against a limit or a goal
measured in the same run on the same machine, so a report stands on its own.
"""
from __future__ import annotations

import argparse
import importlib

BENCHMARKS = ("ingest", "train", "serve", "abuse", "gate", "monitor", "triggers")


def main(argv: list[str] | None = None) -> int:
    """Runs one benchmark's `main` on the remaining arguments. Only that module is imported, so
    `ingest` does not pay for torch nor `gate` for a server."""
    ap = argparse.ArgumentParser(prog="python -m mmcore.bench", description=__doc__.split("\n")[0],
                                 epilog="`python -m mmcore.bench <name> -h`: that benchmark's options")
    ap.add_argument("name", choices=BENCHMARKS)
    ap.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own options")
    args = ap.parse_args(argv)
    return importlib.import_module(f"mmcore.bench.{args.name}").main(args.args)
