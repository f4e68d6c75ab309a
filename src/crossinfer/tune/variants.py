"""The variants of a tune: the model on each target at each precision, made and proved by the
optimize pipeline, with their accuracy (top-1 on a labelled set, or agreement with FP32) and the
batch-1 latency seen before the search.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crossinfer import __version__
from crossinfer.accuracy import first_output, predictions
from crossinfer.backends.base import (
    BackendEntry,
    Precision,
    SessionOptions,
    Target,
    backend_entry,
    load_backend,
)
from crossinfer.check import CheckReport, random_inputs, run_isolated
from crossinfer.errors import CrossinferError
from crossinfer.model import ModelArtifact, load_model
from crossinfer.passes.base import CalibrationData, LabelledSet
from crossinfer.passes.pipeline import OptimizeReport, backend_presets, optimize
from crossinfer.ran_precision import precision_that_ran
from crossinfer.tensor_specs import batchable
from crossinfer.tune.config import TuneConfig
from crossinfer.tune.constraints import Constraints
from crossinfer.tune.space import Pruned, Variant

AGREEMENT_SAMPLES = 64

Event = Callable[[str], None]


def labelled_set(artifact: ModelArtifact, config: TuneConfig) -> tuple[LabelledSet | None, str]:
    from crossinfer.passes.calibration import load_labelled_set

    labelled = load_labelled_set(config.dataset, artifact)
    if labelled is not None:
        return labelled, f"top-1 on {labelled.description}"
    return (
        None,
        "not measured: no labelled set (give --dataset, or --max-accuracy-drop to compare predictions with FP32)",
    )


def calibration_for(
    artifact: ModelArtifact, config: TuneConfig, say: Event
) -> CalibrationData | None:
    if not any(p == "int8" for p in config.precisions):
        return None
    from crossinfer.passes.calibration import SYNTHETIC, load_calibration

    if config.calibration is not None:
        return load_calibration(config.calibration, artifact)
    try:
        return load_calibration(None, artifact)
    except CrossinferError:
        say(
            f"calibration: {artifact.source} has no data set of its own: INT8 is calibrated on "
            "synthetic inputs (not representative; pass --calibration FILE.npz)"
        )
        return load_calibration(SYNTHETIC, artifact)


def prepare_variants(
    artifact: ModelArtifact,
    targets: Sequence[Target],
    config: TuneConfig,
    work: Path,
    calibration: CalibrationData | None,
    labelled: LabelledSet | None,
    say: Event,
) -> tuple[list[Variant], list[Pruned]]:
    variants: list[Variant] = []
    pruned: list[Pruned] = []
    for target in targets:
        for recipe in config.precisions:
            what = f"{target}/{recipe}"
            if recipe == "fp32":
                variants.append(_fp32_variant(artifact, target, labelled))
                continue
            presets = backend_presets(target.backend)
            if recipe not in presets:
                known = sorted(presets)
                pruned.append(
                    Pruned(
                        what,
                        "optimize",
                        f"no {recipe} recipe for {target.backend}"
                        + (f" (it has {', '.join(known)})" if known else ""),
                    )
                )
                continue
            say(f"optimize: {what}")
            try:
                variant = _optimized_variant(
                    artifact, target, recipe, config, work, calibration, labelled
                )
            except CrossinferError as exc:
                pruned.append(Pruned(what, "optimize", str(exc)))
                continue
            if isinstance(variant, Pruned):
                pruned.append(variant)
            else:
                variants.append(variant)
    return _fp32_accuracy(variants), pruned


def with_priors(variants: list[Variant], report: CheckReport) -> list[Variant]:
    """Each variant's batch-1 latency as seen before the search: optimize's median where it ran
    (the FP32 baseline for FP32), else check's single warm run."""
    rows = {row.target: row for row in report.rows}
    out = []
    for variant in variants:
        latency: float | None = None
        source = ""
        if variant.after.get("latency_ms"):
            latency, source = variant.after["latency_ms"], "optimize's check"
        elif variant.recipe == "fp32":
            sibling = next(
                (v for v in variants if v.target == variant.target and v.before.get("latency_ms")),
                None,
            )
            row = rows.get(str(variant.target))
            if sibling is not None:
                latency, source = sibling.before["latency_ms"], "optimize's FP32 baseline"
            elif row is not None and row.run_s:
                latency, source = row.run_s * 1e3, "check's warm run"
        out.append(dataclasses.replace(variant, prior_latency_ms=latency, prior_source=source))
    return out


def _fp32_accuracy(variants: list[Variant]) -> list[Variant]:
    """The FP32 variants' accuracy is optimize's baseline on the same target."""
    out = []
    for variant in variants:
        if variant.recipe == "fp32" and variant.accuracy is None:
            measured = next(
                (
                    v.before["accuracy"]
                    for v in variants
                    if v.target == variant.target and "accuracy" in v.before
                ),
                None,
            )
            if measured is not None:
                variant = dataclasses.replace(variant, accuracy=measured)
        out.append(variant)
    return out


def _fp32_variant(artifact: ModelArtifact, target: Target, labelled: LabelledSet | None) -> Variant:
    return Variant(
        target=target,
        recipe="fp32",
        precision=Precision.FP32,
        model_path=artifact.path,
        model_sha256=artifact.sha256,
        accuracy=None,
        accuracy_drop=0.0,
        accuracy_method="the model itself at FP32 (check proved parity with the reference)",
    )


def _optimized_variant(
    artifact: ModelArtifact,
    target: Target,
    recipe: str,
    config: TuneConfig,
    work: Path,
    calibration: CalibrationData | None,
    labelled: LabelledSet | None,
) -> Variant | Pruned:
    names, runtime = backend_presets(target.backend)[recipe]
    out = work / f"{target.backend}-{target.device}-{recipe}"
    cached = _cached_variant(out, artifact, names, runtime, calibration, labelled)
    if cached is not None:
        return cached
    report = optimize(
        artifact,
        target=target,
        passes=[(n, None) for n in names],
        out_dir=out,
        runtime_precision=runtime,
        calibration=calibration,
        dataset=labelled,
        max_accuracy_drop=config.constraints.max_accuracy_drop or 0.01,
        keep_regressions=True,
        measure_seconds=config.optimize_seconds,
        timeout_s=config.timeout_s,
    )
    variant = _variant_from_report(report, target, recipe, names, runtime)
    if not isinstance(variant, Pruned):
        (out / "variant.json").write_text(
            json.dumps(
                {
                    "source_sha256": artifact.sha256,
                    "key": _cache_key(names, runtime, calibration, labelled),
                    "variant": variant.to_dict(),
                },
                indent=2,
            ),
            encoding="utf-8",
        )
    return variant


def _variant_from_report(
    report: OptimizeReport,
    target: Target,
    recipe: str,
    names: tuple[str, ...],
    runtime: Precision,
) -> Variant | Pruned:
    what = f"{target}/{recipe}"
    steps = [s for s in report.steps if s.pass_name != "baseline"]
    broken = [s for s in steps if s.error]
    if broken:
        return Pruned(what, "optimize", f"{broken[0].pass_name}: {broken[0].error}")
    failed = [s for s in steps if not s.parity_passed]
    if failed:
        detail = next((c for c in failed[0].comparisons if not c.passed), None)
        why = f"{detail.name}: {detail.reason}" if detail else "outputs differ"
        if failed[0].divergence:  # where the quantized model left FP32, as optimize found it
            why += f"; {failed[0].divergence['summary']}"
        return Pruned(
            what,
            "optimize",
            f"parity at {failed[0].precision.value} tolerance fails after {failed[0].pass_name}: {why}",
        )
    last = steps[-1] if steps else report.steps[0]
    baseline = report.steps[0].measurement
    measured = last.measurement
    ran, why = precision_that_ran(runtime, measured.session if measured else {})
    if ran is not runtime:
        # the runtime silently ran another precision: the variant is that precision's (the
        # FP32 variant, measured on its own), never a spec that says bf16/fp16
        return Pruned(
            what,
            "optimize",
            f"ran {ran.value.upper()}, not {runtime.value.upper()}: {why}; the same as "
            f"{target}/{ran.value}",
        )
    notes = tuple(r for r in last.reasons if "throughput" in r)
    return Variant(
        target=target,
        recipe=recipe,
        precision=max(runtime, last.precision, key=_precision_order) if steps else runtime,
        model_path=report.final.path,
        model_sha256=report.final.sha256,
        passes=names,
        accuracy=measured.accuracy if measured else None,
        accuracy_drop=last.accuracy_drop,
        accuracy_method=_accuracy_method(last),
        notes=notes,
        speed_verdict=last.speed_verdict if steps else "",
        before=_figures(baseline),
        after=_figures(measured),
    )


def _accuracy_method(step: Any) -> str:
    """What optimize measured: top-1 when it had labels, else the outputs' parity it proved."""
    if step.accuracy_drop is not None:
        return "top-1 on the labelled set, against the FP32 model on the same target"
    measured = [c for c in step.comparisons if c.total]
    if not measured:
        return "not measured"
    cosine = min(c.cosine for c in measured)
    return (
        f"outputs within {step.precision.value} tolerance of the FP32 reference on "
        f"{measured[0].shape[0] if measured[0].shape else 1} input(s) (lowest cosine "
        f"{cosine:.4f}); top-1 not measured: no labelled set"
    )


def _precision_order(precision: Precision) -> int:
    # the session is asked for the runtime precision; INT8 models run as the model says
    return 1 if precision in (Precision.BF16, Precision.FP16) else 0


def _figures(measurement: Any) -> dict[str, float]:
    if measurement is None:
        return {}
    out = {
        "latency_ms": float(measurement.latency_ms),
        "throughput": float(measurement.throughput),
        "batch_size": float(measurement.batch_size),
    }
    if measurement.accuracy is not None:
        out["accuracy"] = float(measurement.accuracy)
    return out


def _cache_key(
    names: Sequence[str],
    runtime: Precision,
    calibration: CalibrationData | None,
    labelled: LabelledSet | None,
) -> str:
    return "|".join(
        [
            ",".join(names),
            runtime.value,
            calibration.source if calibration else "-",
            labelled.description if labelled else "-",
            __version__,
        ]
    )


def _cached_variant(
    out: Path,
    artifact: ModelArtifact,
    names: Sequence[str],
    runtime: Precision,
    calibration: CalibrationData | None,
    labelled: LabelledSet | None,
) -> Variant | None:
    """The variant an earlier (maybe interrupted) tune made here, if its model is still intact."""
    path = out / "variant.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data["source_sha256"] != artifact.sha256 or data["key"] != _cache_key(
            names, runtime, calibration, labelled
        ):
            return None
        raw = data["variant"]
        model = Path(raw["model"])
        if not model.is_file() or load_model(model).sha256 != raw["model_sha256"]:
            return None
        return Variant(
            target=Target.parse(raw["target"]),
            recipe=raw["recipe"],
            precision=Precision(raw["precision"]),
            model_path=model,
            model_sha256=raw["model_sha256"],
            passes=tuple(raw["passes"]),
            accuracy=raw["accuracy"],
            accuracy_drop=raw["accuracy_drop"],
            accuracy_method=raw["accuracy_method"],
            notes=tuple(raw["notes"]),
            speed_verdict=raw.get("speed_verdict", ""),
            before=raw["before"],
            after=raw["after"],
        )
    except (OSError, ValueError, KeyError, TypeError, CrossinferError):
        return None


def within_accuracy(
    variants: list[Variant], constraints: Constraints
) -> tuple[list[Variant], list[Pruned]]:
    """Variants that lose more accuracy than allowed are not worth measuring: pruned, with by how much."""
    budget = constraints.max_accuracy_drop
    if budget is None:
        return variants, []
    kept: list[Variant] = []
    pruned: list[Pruned] = []
    for variant in variants:
        drop = variant.accuracy_drop
        if drop is not None and drop > budget + 1e-12:
            pruned.append(
                Pruned(
                    variant.key,
                    "accuracy",
                    f"accuracy drops {drop * 100:.2f} points > {budget * 100:.2f} allowed "
                    f"({variant.accuracy_method})",
                )
            )
        else:
            kept.append(variant)
    return kept, pruned


# --------------------------------------------------------------------------- agreement


def with_agreement(
    artifact: ModelArtifact, variants: list[Variant], config: TuneConfig, say: Event
) -> list[Variant]:
    """No labelled set: each variant's top-1 predictions against the FP32 model's, on seeded
    random inputs. Where they differ bounds how much top-1 accuracy can drop."""
    say(f"accuracy: predictions of each variant against FP32 on {AGREEMENT_SAMPLES} random inputs")
    feeds = random_inputs(artifact.inputs, batch=AGREEMENT_SAMPLES, seed=7)
    reference = next((v for v in variants if v.recipe == "fp32"), None)
    if reference is None:
        return variants
    truth = _top1(reference, feeds, config.timeout_s)
    if truth is None:
        return variants
    out = []
    for variant in variants:
        if variant.recipe == "fp32":
            out.append(dataclasses.replace(variant, accuracy=1.0))
            continue
        predicted = _top1(variant, feeds, config.timeout_s)
        if predicted is None:
            out.append(variant)
            continue
        agree = float(np.mean(predicted == truth))  # agreement: top-1 with FP32's as labels
        out.append(
            dataclasses.replace(
                variant,
                accuracy=agree,
                accuracy_drop=1.0 - agree,
                accuracy_method=f"top-1 agreement with FP32 on {AGREEMENT_SAMPLES} random inputs",
            )
        )
    return out


def _top1(variant: Variant, feeds: dict[str, np.ndarray], timeout_s: float) -> np.ndarray | None:
    model = load_model(variant.model_path)
    outcome = run_isolated(
        top1_in_child,
        backend_entry(variant.target.backend),
        dataclasses.replace(model, proto=None),
        variant.target.device,
        SessionOptions(precision=variant.precision),
        feeds,
        timeout_s=timeout_s,
    )
    if not outcome.ok:
        return None
    predicted: np.ndarray = outcome.value
    return predicted


def top1_in_child(
    entry: BackendEntry,
    artifact: ModelArtifact,
    device: str,
    options: SessionOptions,
    feeds: dict[str, np.ndarray],
) -> np.ndarray:
    """Runs in a child: argmax over the last axis of the first output, 8 samples at a time."""
    session = load_backend(entry).prepare(artifact, device, options)
    try:
        step = 8 if batchable(artifact.inputs) else 1
        total = next(iter(feeds.values())).shape[0]
        parts = []
        for start in range(0, total, step):
            chunk = {k: v[start : start + step] for k, v in feeds.items()}
            parts.append(predictions(first_output(session.run(chunk))))
        return np.concatenate(parts)
    finally:
        session.close()
