"""Run risky runtime work in a child process, so a crash or a hang becomes a result, not our end.

The child is started with 'spawn' (runtimes keep threads that do not survive fork); its stderr is
captured to a file so that the last words of a crashing runtime reach the report.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from crossinfer.errors import CrossinferError, error_class

_CONTEXT = multiprocessing.get_context("spawn")


@dataclass(frozen=True)
class ChildOutcome:
    """What became of the work: ok (with value), error (an exception), crashed or timeout."""

    status: str  # "ok" | "error" | "crashed" | "timeout"
    value: Any = None
    error_type: str = ""  # the exception's class name, for "error"
    message: str = ""
    stderr_tail: str = ""
    exitcode: int | None = None
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def error_class(self) -> type[CrossinferError] | None:
        """The crossinfer error the child raised (judge with issubclass); None: a foreign one."""
        return error_class(self.error_type) if self.status == "error" else None


def run_isolated(
    fn: Callable[..., Any], *args: Any, timeout_s: float, capture_stderr: bool = True
) -> ChildOutcome:
    """Call ``fn(*args)`` in a fresh process; fn and args must be picklable (module-level)."""
    receiver, sender = _CONTEXT.Pipe(duplex=False)
    with tempfile.NamedTemporaryFile(
        prefix="crossinfer-child-", suffix=".stderr", delete=False
    ) as f:
        stderr_path = f.name
    process = _CONTEXT.Process(
        target=_child_main,
        args=(sender, fn, args, stderr_path if capture_stderr else None),
        daemon=True,
    )
    start = time.perf_counter()
    try:
        process.start()
        sender.close()
        message = _receive(receiver, process, start + timeout_s)
        elapsed = time.perf_counter() - start
        if message is None:
            # the pipe reports EOF a moment before the dead child can be reaped
            process.join(max(0.0, min(5.0, start + timeout_s - time.perf_counter())))
            if process.is_alive():
                _kill(process)
                return ChildOutcome(
                    "timeout",
                    message=f"no result after {timeout_s:g} s; the child process was killed",
                    stderr_tail=_tail(stderr_path),
                    elapsed_s=elapsed,
                )
            process.join(5)
            return ChildOutcome(
                "crashed",
                message=_describe_exit(process.exitcode),
                stderr_tail=_tail(stderr_path),
                exitcode=process.exitcode,
                elapsed_s=elapsed,
            )
        process.join(10)
        if process.is_alive():  # it answered but will not exit: its answer still counts
            _kill(process)
        kind, payload = message
        if kind == "ok":
            return ChildOutcome("ok", value=payload, elapsed_s=elapsed)
        error_type, text, trace = payload
        return ChildOutcome(
            "error",
            value=trace,
            error_type=error_type,
            message=text,
            stderr_tail=_tail(stderr_path),
            exitcode=process.exitcode,
            elapsed_s=elapsed,
        )
    finally:
        receiver.close()
        with contextlib.suppress(OSError):
            os.unlink(stderr_path)


def _receive(receiver: Connection, process: Any, deadline: float) -> tuple[str, Any] | None:
    while True:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return None
        try:
            if receiver.poll(min(remaining, 0.5)):
                message: tuple[str, Any] = receiver.recv()
                return message
        except (EOFError, OSError):
            return None  # the child died with the pipe open: a crash
        if not process.is_alive() and not receiver.poll(0):
            return None


def _child_main(
    sender: Connection, fn: Callable[..., Any], args: tuple[Any, ...], stderr_path: str | None
) -> None:
    if stderr_path is not None:
        # native runtimes write straight to fd 2; keep it for the crash report
        fd = os.open(stderr_path, os.O_WRONLY | os.O_TRUNC)
        os.dup2(fd, 2)
        os.close(fd)
    try:
        value = fn(*args)
    except BaseException as exc:  # everything, KeyboardInterrupt included, goes to the parent
        sender.send(("error", (type(exc).__name__, str(exc), traceback.format_exc(limit=8))))
    else:
        sender.send(("ok", value))
    sender.close()


def _kill(process: Any) -> None:
    process.kill()
    process.join(5)


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "the child process vanished"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"the child process was killed by {name} (the runtime crashed)"
    return f"the child process exited with code {exitcode} before reporting a result"


def last_words(stderr_tail: str, lines: int = 3) -> str:
    """The last `lines` lines of a crashed child's stderr that say something: native stack
    frames (c10's "frame #12: ...", "Exception raised from ...") are left out, so that the
    error they follow (an assertion, a CUDA error) is what a report shows."""
    said = [
        line.strip()
        for line in stderr_tail.splitlines()
        if line.strip() and not line.lstrip().startswith(("frame #", "Exception raised from"))
    ]
    return "; ".join(said[-lines:])


def _tail(path: str, limit: int = 8000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            return fh.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""
