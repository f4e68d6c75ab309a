"""Child process of `crossinfer.sources.tensorflow`: convert with tf2onnx, then check parity.

    python -m crossinfer.sources.tensorflow_worker SOURCE OUT.onnx --report REPORT.json

TensorFlow is imported here only, so the parent process never pays its import or its threads.
The report: {"passed": bool, "outputs": [comparison, ...], "tolerance": {...}, ...}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

_BATCH = 2  # a batch of two also checks that the batch dimension stayed free
_SEED = 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args(argv)
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as scratch:
        saved = args.source
        if not args.source.is_dir():
            # a .keras file: Keras 3 exports its serving function as a SavedModel
            import keras

            model = keras.models.load_model(args.source)
            saved = Path(scratch) / "saved_model"
            model.export(str(saved))
        loaded = tf.saved_model.load(str(saved))
        signatures = dict(loaded.signatures)
        if not signatures:
            raise SystemExit(f"error: SavedModel '{args.source}' has no signature to convert")
        key = "serving_default" if "serving_default" in signatures else sorted(signatures)[0]
        function = signatures[key]
        feeds = _random_feeds(function.structured_input_signature[1])
        expected = {
            name: np.asarray(value)
            for name, value in function(**{n: tf.constant(v) for n, v in feeds.items()}).items()
        }
        command = [
            sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved),
            "--signature_def", key, "--output", str(args.out), "--opset", str(args.opset),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0 or not args.out.exists():
            sys.stderr.write(done.stderr)
            raise SystemExit(f"error: tf2onnx failed on '{args.source}' (exit {done.returncode})")
    report = judge(args.out, feeds, expected)
    report.update(
        signature=key,
        tensorflow=tf.__version__,
        tf2onnx=_version("tf2onnx"),
        opset=args.opset,
        batch=_BATCH,
    )
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def judge(
    onnx_path: Path, feeds: dict[str, np.ndarray], expected: dict[str, np.ndarray]
) -> dict[str, Any]:
    """ONNX Runtime on the converted file against TensorFlow's outputs, at `check`'s FP32
    tolerance. tf2onnx keeps the signature's names, at times with a ":0" suffix."""
    import onnxruntime as ort

    from crossinfer.backends.base import Precision
    from crossinfer.check.parity import compare_outputs, default_tolerance

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inputs = {i.name: feeds[_bare(i.name)] for i in session.get_inputs() if _bare(i.name) in feeds}
    missing = [i.name for i in session.get_inputs() if _bare(i.name) not in feeds]
    if missing:
        return {"passed": False, "outputs": [], "error": f"ONNX inputs {missing} not in TF's"}
    names = [o.name for o in session.get_outputs()]
    actual = {_bare(n): v for n, v in zip(names, session.run(None, inputs), strict=True)}
    tolerance = default_tolerance(Precision.FP32)
    comparisons = compare_outputs(
        {n: np.asarray(v, dtype=np.float64) for n, v in actual.items()},
        {n: np.asarray(v, dtype=np.float64) for n, v in expected.items()},
        tolerance,
    )
    return {
        "passed": bool(comparisons) and all(c.passed for c in comparisons),
        "outputs": [c.to_dict() for c in comparisons],
        "tolerance": tolerance.to_dict(),
    }


def _random_feeds(specs: dict[str, Any]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(_SEED)
    feeds = {}
    for name, spec in specs.items():
        dims = list(spec.shape.as_list()) if spec.shape.rank is not None else None
        if dims is None or any(d is None for d in dims[1:]):
            raise SystemExit(
                f"error: input '{name}' has shape {dims}: only the first (batch) dimension may "
                "be unknown for the parity check; export the model with fixed other dimensions"
            )
        shape = [_BATCH if d is None else d for d in dims]
        dtype = spec.dtype.as_numpy_dtype
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[name] = rng.integers(0, 2, shape).astype(np.bool_)
        else:
            feeds[name] = rng.integers(0, 2, shape).astype(dtype)  # ids and masks: 0 and 1
    return feeds


def _bare(name: str) -> str:
    return name[:-2] if name.endswith(":0") else name


def _version(distribution: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
