"""Helpers every benchmark shares: best-of-N timing and writing the numbers a reader can diff."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def best_time(fn: Callable[[], T], repeats: int) -> tuple[float, T]:
    """Best wall time in seconds of `repeats` calls of `fn`, and the last call's result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out  # type: ignore[return-value]


def write_results(path: Path, result: Any) -> None:
    """Write a benchmark's numbers as indented JSON (creating the folder) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def add_results_options(parser: argparse.ArgumentParser) -> None:
    """`--out FILE` (where the run writes its numbers) and `--markdown RESULTS_JSON` (print the
    docs' tables from a stored results file and run nothing)."""
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None, metavar="RESULTS_JSON",
                        help="print the docs' tables from a results file and exit (runs nothing)")


def printed_markdown(args: argparse.Namespace, render: Callable[[dict], str]) -> bool:
    """With `--markdown FILE`, print `render(FILE's numbers)` and return True (the caller stops)."""
    if args.markdown is None:
        return False
    print(render(json.loads(args.markdown.read_text(encoding="utf-8"))))
    return True
