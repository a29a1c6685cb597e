"""Ctrl-C and SIGTERM as one exception that says what an interrupted run kept and how to resume it.

`Interrupted` is a KeyboardInterrupt (so every `finally` and atomic write cleans up as for Ctrl-C) that carries the
signal and, once a pipeline has noted them (`note_kept`), what it kept and how to go on. `terminate_as_interrupt()`
makes SIGTERM raise it for the duration of a command.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal (SIGINT or SIGTERM). kept: what was kept; resume: how to go on (None: nothing)."""

    def __init__(self, signum: int = signal.SIGINT, kept: str | None = None, resume: str | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.kept, self.resume = signum, kept, resume

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS.get(self.signum, 128 + int(self.signum))

    def message(self) -> str:
        """One line: the signal, what was kept, how to resume."""
        text = f"interrupted by {signal.Signals(self.signum).name}"
        text += f": kept {self.kept}" if self.kept else ": nothing was written"
        return text + (f"; {self.resume}" if self.resume else "")


def note_kept(exc: BaseException, kept: str, resume: str | None = None) -> Interrupted:
    """`exc` (a KeyboardInterrupt) as an Interrupted that says what was kept and how to resume, for `raise ... from
    None`; the innermost note wins (the pipeline that wrote the files knows best)."""
    interrupted = exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT)
    if interrupted.kept is None:
        interrupted.kept, interrupted.resume = kept, resume
    return interrupted


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While inside: SIGTERM raises Interrupted(SIGTERM) and SIGINT Interrupted(SIGINT) in the main thread."""
    def raise_interrupted(signum, _frame):
        raise Interrupted(signum)

    try:
        previous = {s: signal.signal(s, raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals stay as they are
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
