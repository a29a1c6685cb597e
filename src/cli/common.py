"""Shared CLI plumbing: bad input prints one line and exits with status 2; Ctrl-C and SIGTERM print what was kept
and exit with 130 and 143; warnings are one line each."""

from __future__ import annotations

import sys
import warnings
from typing import Callable, Sequence

from src.pipelines import defaults
from src.utils.errors import InputError
from src.utils.interrupts import Interrupted, terminate_as_interrupt


# How to build what an InputError says is missing (its `missing`).
REMEDIES = {
    "kg": f"build one with: python -m src.cli.make_kg --config {defaults.KG_CONFIG}",
    "model": f"train one with: python -m src.cli.train_lm --config {defaults.TRAIN_CONFIG}",
}


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run `main`; an InputError becomes `error: <message>` on stderr (with how to build what is missing) and exit
    status 2; Ctrl-C or SIGTERM becomes one line saying what was kept and how to resume, and exit status 130 or
    143."""
    previous_format, warnings.formatwarning = warnings.formatwarning, one_line_warning
    try:
        with terminate_as_interrupt():
            return main(argv)
    except InputError as exc:
        remedy = REMEDIES.get(exc.missing or "")
        print(f"error: {exc}" + (f" ({remedy})" if remedy else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        interrupted = exc if isinstance(exc, Interrupted) else Interrupted()
        print(interrupted.message(), file=sys.stderr)
        return interrupted.exit_status
    finally:
        warnings.formatwarning = previous_format


def add_dtype_argument(parser) -> None:
    """`--dtype float32|float16|bfloat16` (see `src.lm.model.resolve_dtype`)."""
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="weights' dtype (default float32; float16 needs CUDA; statistics and solves stay "
                             "float64)")
