"""Third-party chatter is caught (native fd 2, Python warnings, library log records), kept in a
file and summarised once, with repeats counted."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from crossinfer.captured_output import capture_third_party_output


def test_repeats_are_counted_and_everything_is_kept_in_the_file(tmp_path: Path) -> None:
    log = tmp_path / "third-party.log"
    with capture_third_party_output(log) as captured:
        for second in range(25):  # ORT's lines differ only in their timestamps
            os.write(
                2,
                f"2026-12-02 00:12:{second:02d}.123 [W:onnxruntime:, graph.cc:1] Axis 1 is "
                "out-of-range\n".encode(),
            )
        warnings.warn("os.fork() was called", RuntimeWarning, stacklevel=1)
        logging.getLogger("nncf").warning("No CUDA runtime is found")
        logging.getLogger("crossinfer.tune").warning("our own: not third-party")
    assert captured.summary() == [
        f"third-party messages: 27 line(s), 3 distinct (all of it in {log}):",
        "  25x [W:onnxruntime:, graph.cc:1] Axis 1 is out-of-range",
        "  1x RuntimeWarning: os.fork() was called",
        "  1x nncf: No CUDA runtime is found",
    ]
    text = log.read_text()
    assert text.count("Axis 1 is out-of-range") == 25 and "nncf: No CUDA" in text
    os.write(2, b"")  # fd 2 is usable again after the block


def test_a_library_logger_that_does_not_propagate_is_caught_too(tmp_path: Path) -> None:
    # as NNCF's: its own console handler, propagation off
    chatty = logging.getLogger("chatty_library")
    own = logging.StreamHandler()
    chatty.addHandler(own)
    chatty.propagate = False
    try:
        with capture_third_party_output(tmp_path / "log") as captured:
            chatty.warning("No CUDA runtime is found")
        assert captured.lines == ["chatty_library: No CUDA runtime is found"]
        assert chatty.handlers == [own]  # put back after the block
    finally:
        chatty.removeHandler(own)
        chatty.propagate = True


def test_nothing_caught_says_nothing(tmp_path: Path) -> None:
    with capture_third_party_output(tmp_path / "log") as captured:
        pass
    assert captured.summary() == [] and not (tmp_path / "log").exists()
