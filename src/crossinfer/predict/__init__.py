"""Predicted latency and throughput on hardware that is not here: costs, roofline, calibration.

`predict_model` counts a model's FLOPs and bytes per node and runs them through each catalog
device's roofline, scaled by the efficiency factors `calibrate` fits from the results store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossinfer.bench.result import BenchResult
from crossinfer.errors import CrossinferError
from crossinfer.hardware.catalog import Catalog
from crossinfer.model import ModelArtifact, load_model
from crossinfer.predict.calibrate import Calibration, calibrate
from crossinfer.predict.cost import ModelCost, model_cost
from crossinfer.predict.roofline import Prediction, hardware_targets, predict_target

__all__ = [
    "Calibration",
    "ModelCost",
    "ModelPrediction",
    "Prediction",
    "calibrate",
    "calibrate_from_store",
    "model_cost",
    "predict_model",
    "predicted_rows",
]


@dataclass(frozen=True)
class ModelPrediction:
    """A model's cost and its predicted figures on each target and precision."""

    model: str
    cost: ModelCost
    predictions: tuple[Prediction, ...]
    calibration: Calibration | None
    catalog: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "cost": self.cost.to_dict(),
            "catalog": self.catalog,
            "predictions": [p.to_dict() for p in self.predictions],
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "notes": [
                "predicted, not measured: a roofline per fused group at catalog peak figures "
                "times efficiency factors",
                "16-bit and INT8 rows assume the runtime converts or quantizes the model",
            ],
        }


def predict_model(
    artifact: ModelArtifact,
    catalog: Catalog,
    *,
    hardware: Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    calibration: Calibration | None = None,
) -> ModelPrediction:
    """Predict `artifact` on the catalog's devices and CPU instances (or those `hardware` names)."""
    cost = model_cost(artifact.load_proto())
    rows: list[Prediction] = []
    for target in hardware_targets(catalog, hardware):
        chosen = target.precisions()
        if precisions:
            chosen = tuple(p for p in precisions if target.peak_flops(p) is not None)
        for precision in chosen:
            scales = calibration.scales_for(target.family, precision) if calibration else None
            rows.append(predict_target(cost, target, precision, scales))
    return ModelPrediction(artifact.source, cost, tuple(rows), calibration, catalog.path)


def predicted_rows(
    artifact: ModelArtifact,
    *,
    catalog: Catalog,
    results: Sequence[BenchResult] = (),
    precisions: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per catalog device and CPU instance, at its fastest predicted precision among
    `precisions`, cheapest per million inferences first: tune.json's and the report's rows."""
    calibration = calibrate(results, catalog, _cost_loader()) if results else None
    predicted = predict_model(artifact, catalog, precisions=precisions, calibration=calibration)
    best: dict[str, Prediction] = {}
    for row in predicted.predictions:
        held = best.get(row.hardware)
        if held is None or row.best_throughput > held.best_throughput:
            best[row.hardware] = row
    rows = [row.to_dict() for row in best.values()]
    rows.sort(key=lambda r: (r["cost_per_million"] is None, r["cost_per_million"] or 0.0))
    return rows


def _cost_loader() -> Callable[[str, str], ModelCost | None]:
    """Model costs by source, cached by hash; None when the file is gone or changed."""
    costs: dict[str, ModelCost | None] = {}

    def load(source: str, sha256: str) -> ModelCost | None:
        if sha256 not in costs:
            try:
                artifact = load_model(source)
            except CrossinferError:
                costs[sha256] = None
            else:
                same = artifact.sha256 == sha256
                costs[sha256] = model_cost(artifact.load_proto()) if same else None
        return costs[sha256]

    return load


def calibrate_from_store(store_path: str | Path | None, catalog: Catalog) -> Calibration:
    """Fit the factors from every Offline and SingleStream run in the results store."""
    from crossinfer.store import ResultStore

    with ResultStore(store_path) as store:
        results = [stored.result for stored in store.query()]
    return calibrate(results, catalog, _cost_loader())
