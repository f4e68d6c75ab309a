"""The pass interface: a typed config in, a new ONNX file plus its provenance out.

A pass never judges itself: `passes/pipeline.py` re-proves parity, accuracy and speed afterwards.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from crossinfer.hardware.int8 import Int8Recipe
from crossinfer.model import ModelArtifact

PROVENANCE_SUFFIX = ".provenance.json"


@dataclass(frozen=True)
class CalibrationData:
    """Inputs for calibration (and labels when the data set has them), with where they came from."""

    samples: tuple[Mapping[str, np.ndarray], ...]  # each a feed with a leading batch dim
    source: str  # "zoo:digits held-out split (450 images)", "synthetic: seeded random inputs"
    synthetic: bool = False
    labels: np.ndarray | None = None  # one per sample row, in order, when known

    def __len__(self) -> int:
        return len(self.samples)


@dataclass(frozen=True)
class LabelledSet:
    """Inputs (batched, model input names) and one label per row: what top-1 accuracy is measured on."""

    inputs: Mapping[str, np.ndarray]
    labels: np.ndarray
    description: str


@dataclass(frozen=True)
class PassContext:
    """What a pass may need beyond its config: the target, calibration and labelled data."""

    target: str  # "onnxruntime:cpu"
    calibration: CalibrationData | None = None
    work_dir: Path | None = None  # scratch space for intermediate files
    dataset: LabelledSet | None = None  # for passes that keep accuracy within a budget
    max_accuracy_drop: float = 0.01  # top-1, as a fraction


class OptimizationPass(Protocol):
    """One transformation. `name` is what `--passes` takes; `config_type` its dataclass."""

    name: str
    config_type: type[Any]
    targets: tuple[str, ...]  # backends it produces models for ("onnxruntime", "openvino")

    def apply(
        self, artifact: ModelArtifact, config: Any, out_path: Path, context: PassContext
    ) -> Path:
        """Write the transformed model to `out_path` and return it (external data beside it)."""
        ...


def tool_versions(*packages: str) -> dict[str, str]:
    """Installed versions of the packages a pass used (by distribution name)."""
    versions = {}
    for package in ("onnx", *packages):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def recipe_record(recipe: Int8Recipe, *, chosen: object, **applied: object) -> dict[str, Any]:
    """What the INT8 recipe for the target said, what was applied, and whether a config overrode it."""
    return {
        **recipe.to_dict(),
        "applied": dict(applied),
        "decided_by": "the target's ISA"
        if chosen is None
        else "the pass config (overrides the ISA)",
    }


def write_provenance(
    out_path: Path,
    *,
    parent: ModelArtifact,
    pass_name: str,
    config: Any,
    tools: Mapping[str, str],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """The provenance file next to a pass's output: parent hash, pass, config, tool versions."""
    settings = config
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        settings = dataclasses.asdict(config)
    record = {
        "pass": pass_name,
        "parent": {"source": parent.source, "sha256": parent.sha256},
        "config": _plain(settings),
        "tools": dict(tools),
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **(dict(extra) if extra else {}),
    }
    path = out_path.with_name(out_path.name + PROVENANCE_SUFFIX)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path


def read_provenance(model_path: Path) -> dict[str, Any] | None:
    path = model_path.with_name(model_path.name + PROVENANCE_SUFFIX)
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class PassResult:
    """A pass's output and the figures the pipeline measured on it."""

    pass_name: str
    artifact: ModelArtifact
    provenance: Mapping[str, Any] = field(default_factory=dict)
