"""A TensorFlow SavedModel directory or a Keras ``.keras`` file as a crossinfer model.

The model is converted to ONNX by tf2onnx (opset 17) in a child process, which also runs
TensorFlow and ONNX Runtime on the same random inputs and compares them at the FP32 tolerance
of `check`: the conversion's parity is checked like any other step, and a conversion whose outputs
differ is refused rather than handed on. The ONNX file is cached under crossinfer's cache, named
by the source's content hash, with the parity report beside it; every backend runs that file.

TensorFlow and tf2onnx are not in the extras (about 1.6 GB): they come with the
``litert-convert`` dependency group, which LiteRT's ONNX -> TFLite converter also needs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from crossinfer.errors import ConverterUnavailableError, ModelError, ModelValidationError
from crossinfer.model import ModelArtifact, load_model

__all__ = [
    "CONVERT_HINT",
    "from_tensorflow",
    "is_tensorflow_source",
    "parity_report",
    "tensorflow_missing",
]

CONVERT_HINT = (
    "TensorFlow models are converted to ONNX with TensorFlow and tf2onnx (about 1.6 GB, not in "
    "the extras): uv sync --all-extras --group litert-convert (or pip install tensorflow tf2onnx)"
)
KERAS_SUFFIXES = (".keras",)
_CONVERSION = 1  # the worker's options: bump when they change, to convert again
_TIMEOUT_S = 900  # TensorFlow's import alone takes a minute on a loaded 2-core machine
REPORT_SUFFIX = ".parity.json"


def is_tensorflow_source(path: Path) -> bool:
    """A SavedModel directory (it holds ``saved_model.pb``) or a Keras ``.keras`` file."""
    if path.is_dir():
        return (path / "saved_model.pb").is_file()
    return path.suffix.lower() in KERAS_SUFFIXES


def tensorflow_missing() -> str | None:
    """Why this environment cannot convert a TensorFlow model, or None when it can."""
    for distribution in ("tensorflow", "tf2onnx"):
        try:
            importlib.metadata.distribution(distribution)
        except importlib.metadata.PackageNotFoundError:
            return f"{distribution} is not installed: {CONVERT_HINT}"
    return None


def cache_root() -> Path:
    from crossinfer.zoo import default_cache_dir

    return default_cache_dir() / "tf-export"


def from_tensorflow(
    path: str | os.PathLike[str],
    *,
    source: str | None = None,
    opset: int = 17,
    directory: Path | None = None,
    keep_proto: bool = False,
) -> ModelArtifact:
    """Convert the SavedModel or ``.keras`` file at `path` to ONNX (once) and load the result.

    The artifact's ``source`` stays what the user gave (`source`, else the path), so the model is
    found again from it; the ONNX file is cached by the source's content and `opset`.
    """
    path = Path(path)
    if not path.exists():
        from crossinfer.errors import ModelNotFoundError

        raise ModelNotFoundError(f"TensorFlow model '{path}' does not exist: check the path")
    directory = directory or cache_root()
    digest = _source_digest(path, opset)
    target = directory / f"{path.stem or 'model'}-{digest[:12]}.onnx"
    report_path = target.with_name(target.stem + REPORT_SUFFIX)
    if not (target.exists() and report_path.exists()):
        missing = tensorflow_missing()
        if missing is not None:
            raise ConverterUnavailableError(f"cannot load TensorFlow model '{path}': {missing}")
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory) as scratch:
            onnx_path = Path(scratch) / "model.onnx"
            report = Path(scratch) / "report.json"
            _convert(path, onnx_path, report, opset)
            judged = json.loads(report.read_text())
            if not judged.get("passed"):
                raise ModelValidationError(_parity_failure(path, judged))
            onnx_path.replace(target)
            report.replace(report_path)
    artifact = load_model(target, keep_proto=keep_proto)
    return dataclasses.replace(artifact, source=source or str(path))


def parity_report(artifact: ModelArtifact) -> dict[str, Any] | None:
    """The conversion's parity report of a TensorFlow source's ONNX file (None for others)."""
    report = artifact.path.with_name(artifact.path.stem + REPORT_SUFFIX)
    return json.loads(report.read_text()) if report.exists() else None


def _convert(path: Path, onnx_path: Path, report: Path, opset: int) -> None:
    command = [
        sys.executable,
        "-m",
        "crossinfer.sources.tensorflow_worker",
        str(path),
        str(onnx_path),
        "--report",
        str(report),
        "--opset",
        str(opset),
    ]
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=_TIMEOUT_S, env=environment
        )
    except subprocess.TimeoutExpired as exc:
        raise ModelError(
            f"converting TensorFlow model '{path}' to ONNX took over {_TIMEOUT_S} s: "
            "convert it by hand (python -m tf2onnx.convert --saved-model DIR --output "
            "model.onnx) and give the .onnx file"
        ) from exc
    if done.returncode != 0 or not onnx_path.exists() or not report.exists():
        raise ModelError(
            f"could not convert TensorFlow model '{path}' to ONNX with tf2onnx: "
            f"{_last_error(done.stderr)}"
        )


def _parity_failure(path: Path, judged: dict[str, Any]) -> str:
    failed = [o for o in judged.get("outputs", []) if not o.get("passed")]
    details = "; ".join(
        f"output '{o['name']}': {o.get('reason') or 'differs'} "
        f"(max abs err {o.get('max_abs_error', float('nan')):.3g}, "
        f"cosine {o.get('cosine', float('nan')):.6f})"
        for o in failed[:3]
    )
    return (
        f"tf2onnx's ONNX of TensorFlow model '{path}' does not match TensorFlow on random inputs "
        f"at the FP32 tolerance ({details or judged.get('error', 'no outputs compared')}): the "
        "conversion is wrong for this model; convert it another way (torch, a newer opset with "
        "--opset) or report it to tf2onnx"
    )


def _source_digest(path: Path, opset: int) -> str:
    """Content hash of the file, or of every file of the SavedModel directory, in a fixed order."""
    digest = hashlib.sha256(f"tf2onnx conversion {_CONVERSION} opset {opset}".encode())
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _last_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    # TensorFlow logs warnings by the screenful: the error is the last line that says so
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[:400]
    return (lines[-1] if lines else "no message")[:400]
