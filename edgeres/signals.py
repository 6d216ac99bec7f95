"""Ctrl-C and SIGTERM end a run cleanly: one unwinds it, a second does not cut that short.

SIGTERM is what ``timeout``, a CI cancel and systemd send; it unwinds like Ctrl-C (as
SystemExit(143)), so every ``finally`` that removes a temporary runs. Shared by the CLI and
the calibration scripts; :mod:`edgeres.staging` holds them back around a bundle's swap.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

CAUGHT = (signal.SIGINT, signal.SIGTERM)


def one_interrupt_unwinds() -> Callable[[], None]:
    """SIGTERM (timeout, a CI cancel, systemd) unwinds like Ctrl-C, so staging folders and
    temporary files are removed by the code that made them instead of left behind; a second
    Ctrl-C or SIGTERM is ignored rather than cutting that cleanup short with a traceback.
    Returns what restores the caller's handlers (when no signal came: the process is
    exiting otherwise)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    got: list[int] = []

    def stop(signum: int, frame: object) -> None:
        got.append(signum)
        if len(got) > 1:  # not SIG_IGN: Python reports a signal that raced with that
            return
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, stop) for s in CAUGHT}

    def restore() -> None:
        if not got:
            for s, handler in previous.items():
                signal.signal(s, handler)

    return restore


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for a few system calls; they arrive when it ends.

    The Python handlers are swapped rather than the signals masked: a mask is per thread, and
    a convert has other threads (progress bars, runtimes) that would take the signal."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum))
                for s in CAUGHT}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if pending:
            signal.raise_signal(pending[0])  # now to the handler that was in place


def interrupt_status(exc: BaseException | None) -> int | None:
    """The exit status of an interrupt: Ctrl-C, or the SIGTERM handler above (not a plain
    ``sys.exit``), also where an extension module wrapped it (a signal during the import of
    a pybind11 module surfaces as ``ImportError: initialization failed``)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, KeyboardInterrupt):
            return 128 + signal.SIGINT
        if isinstance(exc, SystemExit) and exc.code == 128 + signal.SIGTERM:
            return exc.code
        exc = exc.__cause__ or exc.__context__
    return None
