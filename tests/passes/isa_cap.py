"""Run a model on OpenVINO's CPU plugin with oneDNN capped at an older ISA, in a child process.

oneDNN reads ONEDNN_MAX_CPU_ISA once per process, so the cap needs a fresh interpreter. With
`AVX2` on a VNNI machine, OpenVINO takes the same vpmaddubsw INT8 path as an AVX2-only CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from crossinfer.hardware import discover_cpu

_CHILD = """
import sys
import numpy as np
from crossinfer.backends.base import Precision, SessionOptions, get_backend
from crossinfer.model import load_model

model, feeds_path, out_path = sys.argv[1:4]
feeds = dict(np.load(feeds_path))
session = get_backend("openvino").prepare(
    load_model(model), "cpu", SessionOptions(precision=Precision.FP32)
)
np.savez(out_path, **session.run(feeds))
"""


def host_has_vnni() -> bool:
    features = discover_cpu().features
    return any(features.get(name) for name in ("avx512_vnni", "avx_vnni", "amx_int8"))


def run_openvino(
    model: Path, feeds: Mapping[str, np.ndarray], tmp: Path, *, cap: str | None
) -> dict[str, np.ndarray]:
    """Outputs of `model` on openvino:cpu in a child process, oneDNN capped at `cap` (None: not)."""
    tag = cap or "native"
    feeds_path, out_path = tmp / f"feeds-{tag}.npz", tmp / f"out-{tag}.npz"
    np.savez(feeds_path, **feeds)
    env = {
        k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
    }
    if cap:
        env["ONEDNN_MAX_CPU_ISA"] = cap
    subprocess.run(
        [sys.executable, "-c", _CHILD, str(model), str(feeds_path), str(out_path)],
        env=env,
        check=True,
        timeout=600,
        capture_output=True,
    )
    with np.load(out_path) as data:
        return {name: data[name] for name in data.files}
