"""Third-party chatter (native runtime logs on fd 2, Python warnings, library log records) caught
while a command works, kept in a file, and summarised once: "25x Axis 1 is out-of-range".
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import typing
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# ORT prefixes each line with a timestamp: without it, 25 copies of one warning are one
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?\s*")
_MAX_SHOWN = 5
_MAX_CHARS = 110


@dataclass
class CapturedOutput:
    """What was caught: lines in the order they came, and the file that keeps them."""

    lines: list[str] = field(default_factory=list)
    log_path: Path | None = None

    def counts(self) -> list[tuple[str, int]]:
        """Distinct messages, most frequent first (ties: first seen first)."""
        counter = collections.Counter(self.lines)
        return sorted(counter.items(), key=lambda item: -item[1])

    def summary(self) -> list[str]:
        """One headline and at most five distinct messages; nothing when nothing was caught."""
        if not self.lines:
            return []
        counts = self.counts()
        where = f" (all of it in {self.log_path})" if self.log_path else ""
        out = [f"third-party messages: {len(self.lines)} line(s), {len(counts)} distinct{where}:"]
        for text, count in counts[:_MAX_SHOWN]:
            short = text if len(text) <= _MAX_CHARS else text[: _MAX_CHARS - 1] + "…"
            out.append(f"  {count}x {short}")
        if len(counts) > _MAX_SHOWN:
            out.append(f"  ... and {len(counts) - _MAX_SHOWN} more")
        return out


class _Records(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.WARNING)
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith("crossinfer"):
            self._sink.append(f"{record.name}: {record.getMessage()}")


def _swap_console_handlers(
    handler: logging.Handler,
) -> list[tuple[logging.Logger, list[logging.Handler]]]:
    """Libraries that do not propagate to the root (NNCF) print through their own console
    handlers: those are set aside for the block and `handler` takes their records."""
    swapped = []
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger) or logger.propagate:
            continue
        if name.startswith("crossinfer"):
            continue
        console: list[logging.Handler] = [
            h
            for h in logger.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
        ]
        if not console:
            continue
        for console_handler in console:
            logger.removeHandler(console_handler)
        logger.addHandler(handler)
        swapped.append((logger, console))
    return swapped


def _writes_fd2(stream: typing.TextIO) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


@contextlib.contextmanager
def capture_third_party_output(log_path: Path | None = None) -> Iterator[CapturedOutput]:
    """Send fd 2 to a file while the block runs; Python's own `sys.stderr` (our progress lines)
    still reaches the terminal, through a copy of the original descriptor."""
    captured = CapturedOutput(log_path=log_path)
    records: list[str] = []
    with tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved_fd = os.dup(2)
        os.dup2(sink.fileno(), 2)
        original_stderr = sys.stderr
        terminal = io.TextIOWrapper(
            os.fdopen(os.dup(saved_fd), "wb", buffering=0), write_through=True
        )
        if _writes_fd2(sys.stderr):  # else it is someone's buffer (a test runner's): leave it
            sys.stderr = terminal
        handler = _Records(records)
        root = logging.getLogger()
        root.addHandler(handler)
        swapped = _swap_console_handlers(handler)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("default")  # each distinct warning once per place, as usual
                yield captured
        finally:
            root.removeHandler(handler)
            for logger, console_handlers in swapped:
                logger.removeHandler(handler)
                for console_handler in console_handlers:
                    logger.addHandler(console_handler)
            sys.stderr = original_stderr
            terminal.close()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            sink.seek(0)
            native = sink.read().decode("utf-8", "replace")
            python_side = [f"{w.category.__name__}: {w.message}" for w in caught] + records
            for line in native.splitlines():
                text = _TIMESTAMP.sub("", line.strip())
                if text:
                    captured.lines.append(text)
            captured.lines.extend(python_side)
            if log_path is not None and captured.lines:
                log_path.parent.mkdir(parents=True, exist_ok=True)
                log_path.write_text(
                    native + "".join(f"{line}\n" for line in python_side), encoding="utf-8"
                )
