"""Shared CLI plumbing: bad input prints one line and exits with status 2."""

from __future__ import annotations

import sys
from typing import Callable, Sequence

from src.pipelines import defaults
from src.utils.errors import InputError


# How to build what an InputError says is missing (its `missing`).
REMEDIES = {
    "kg": f"build one with: python -m src.cli.make_kg --config {defaults.KG_CONFIG}",
    "model": f"train one with: python -m src.cli.train_lm --config {defaults.TRAIN_CONFIG}",
}


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run `main`; an InputError becomes `error: <message>` on stderr (with how to build what is missing) and exit
    status 2."""
    try:
        return main(argv)
    except InputError as exc:
        remedy = REMEDIES.get(exc.missing or "")
        print(f"error: {exc}" + (f" ({remedy})" if remedy else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def add_dtype_argument(parser) -> None:
    """`--dtype float32|float16|bfloat16` (see `src.lm.model.resolve_dtype`)."""
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="weights' dtype (default float32; float16 needs CUDA; statistics and solves stay "
                             "float64)")
