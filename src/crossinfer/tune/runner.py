"""`crossinfer tune`: check, optimize, build the space, search it, recommend, and write the
deployment spec, the JSON result and the HTML report.

Every measurement is a short LoadGen Offline run in a child process (bench's own machinery), kept
in the results store as it completes: an interrupted tune resumes from what it had measured.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crossinfer import __version__
from crossinfer.backends.base import (
    BackendEntry,
    Precision,
    SessionOptions,
    Target,
    backend_entry,
    load_backend,
)
from crossinfer.bench.fingerprint import fingerprint_key, hardware_fingerprint, runtime_versions
from crossinfer.bench.result import BenchResult
from crossinfer.bench.runner import BenchPlan, run_benchmark
from crossinfer.check import CheckReport, check_model, default_targets, random_inputs, run_isolated
from crossinfer.errors import CrossinferError, UsageError
from crossinfer.hardware.catalog import Price
from crossinfer.model import ModelArtifact, load_model
from crossinfer.passes.base import CalibrationData, LabelledSet
from crossinfer.passes.pipeline import PRESETS, OptimizeReport, optimize
from crossinfer.store import ResultStore
from crossinfer.tune.constraints import Constraints, Metrics, Objective, Scorer
from crossinfer.tune.recommend import CandidateResult, Recommendation, rank_for, recommend
from crossinfer.tune.resume import find_stored
from crossinfer.tune.space import Candidate, Pruned, Space, Variant, build_space
from crossinfer.tune.spec import BatchingSpec, DeploymentSpec, write_spec
from crossinfer.tune.strategies import SearchOutcome, search

DEFAULT_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
DEFAULT_BATCH_SIZES = (1, 8, 32)
AGREEMENT_SAMPLES = 64
NAIVE_DEFAULT = "onnxruntime:cpu/fp32/batch 1/default threads"
RESULT_FILE = "tune.json"

Event = Callable[[str], None]


@dataclass(frozen=True)
class TuneConfig:
    """What to search and how to judge it."""

    backends: tuple[str, ...] = ()  # only these backends; empty: every one available
    targets: tuple[Target, ...] = ()  # only these BACKEND:DEVICE; empty: every one available
    precisions: tuple[str, ...] = DEFAULT_PRECISIONS
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    strategy: str = "quick"
    budget: int | None = None  # quick: at most this many measurements
    objective: Objective = Objective.THROUGHPUT
    constraints: Constraints = field(default_factory=Constraints)
    price: Price | None = None
    measure_ms: int = 1000  # LoadGen min_duration of each measurement
    optimize_seconds: float = 0.6  # optimize's own speed check per step
    calibration: str | None = None  # None: the zoo model's data set, else synthetic (said so)
    dataset: Path | None = None  # labelled .npz; None: the zoo model's, if it has one
    fresh: bool = False  # ignore stored measurements
    variants_dir: Path | None = None  # where optimized models go; None: OUT/variants
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise UsageError(f"batch sizes must be positive integers, got {list(self.batch_sizes)}")
        unknown = [p for p in self.precisions if p not in {"fp32", "fp16", "bf16", "int8"}]
        if unknown:
            raise UsageError(
                f"--precisions: unknown {', '.join(unknown)}; choose from fp32, fp16, bf16, int8"
            )
        if self.objective is Objective.COST and self.price is None:
            raise UsageError(
                "--objective cost needs a price: the price of this machine is unknown unless you "
                "name its instance (--instance c7a.large, see the hardware catalog) or give "
                "--price-per-hour"
            )


@dataclass
class TuneResult:
    """Everything a tune found; `to_dict` is what tune.json and the HTML report are made from."""

    model: ModelArtifact
    config: TuneConfig
    check: CheckReport | None
    variants: list[Variant]
    space: Space
    outcome: SearchOutcome
    recommendation: Recommendation
    failures: dict[str, str]
    machine: dict[str, Any]
    timings: dict[str, float]
    accuracy_source: str
    spec_path: Path | None = None
    report_path: Path | None = None
    json_path: Path | None = None
    stored_ids: list[int] = field(default_factory=list)
    started_at: str = ""

    @property
    def baseline(self) -> CandidateResult | None:
        for result in self.recommendation.results:
            if result.key == NAIVE_DEFAULT and result.metrics is not None:
                return result
        return None

    def speedup_over_baseline(self) -> float | None:
        pick, base = self.recommendation.pick, self.baseline
        if pick is None or base is None or pick.metrics is None or base.metrics is None:
            return None
        return pick.metrics.throughput / base.metrics.throughput

    def to_dict(self) -> dict[str, Any]:
        measured = sum(1 for m in self.outcome.measured.values() if m is not None)
        resumed = sum(1 for m in self.outcome.measured.values() if m is not None and m.resumed)
        return {
            "crossinfer_version": __version__,
            "started_at": self.started_at,
            "model": {
                "source": self.model.source,
                "sha256": self.model.sha256,
                "path": str(self.model.path),
                "parameters": self.model.parameter_count,
                "file_size": self.model.file_size,
            },
            "config": {
                "strategy": self.config.strategy,
                "budget": self.outcome.budget,
                "objective": self.config.objective.value,
                "constraints": self.config.constraints.to_dict(),
                "precisions": list(self.config.precisions),
                "batch_sizes": list(self.config.batch_sizes),
                "backends": list(self.config.backends),
                "measure_ms": self.config.measure_ms,
                "price": dataclasses.asdict(self.config.price) if self.config.price else None,
            },
            "accuracy_source": self.accuracy_source,
            "check": self.check.to_dict() if self.check else None,
            "variants": [v.to_dict() for v in self.variants],
            "pruned": [p.to_dict() for p in self.space.pruned],
            "space_size": len(self.space),
            "measured": measured,
            "resumed": resumed,
            "search_path": list(self.outcome.path),
            "recommendation": self.recommendation.to_dict(),
            "naive_default": NAIVE_DEFAULT if self.baseline else None,
            "speedup_over_naive_default": self.speedup_over_baseline(),
            "machine": self.machine,
            "timings_s": self.timings,
            "spec": str(self.spec_path) if self.spec_path else None,
            "report": str(self.report_path) if self.report_path else None,
            "store_ids": self.stored_ids,
        }


def tune(
    artifact: ModelArtifact,
    config: TuneConfig,
    *,
    out_dir: Path,
    store: ResultStore | None,
    check_report: CheckReport | None = None,
    on_event: Event | None = None,
) -> TuneResult:
    """Run the whole tune and write spec, tune.json and report.html into `out_dir`."""
    say = on_event or (lambda _text: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")

    clock = time.perf_counter()
    if check_report is None:
        say("check: every runtime x device against the reference")
        check_report = _check(artifact, config)
    targets, pruned = _passing_targets(check_report, config)
    timings["check"] = time.perf_counter() - clock
    if not targets:
        reasons = "; ".join(f"{p.what}: {p.reason}" for p in pruned) or "no runtime found"
        raise UsageError(f"no runtime x device can run {artifact.source}: {reasons}")

    clock = time.perf_counter()
    labelled, accuracy_source = _labelled_set(artifact, config)
    calibration = _calibration(artifact, config, say)
    variants, more = _variants(
        artifact,
        targets,
        config,
        config.variants_dir or out_dir / "variants",
        calibration,
        labelled,
        say,
    )
    pruned.extend(more)
    if labelled is None and config.constraints.max_accuracy_drop is not None:
        variants = _agreement(artifact, variants, config, say)
        accuracy_source = (
            f"top-1 agreement with the FP32 model on {AGREEMENT_SAMPLES} seeded random inputs "
            "(no labelled set: the accuracy drop shown is the share of changed predictions, "
            "an upper bound on the top-1 drop)"
        )
    variants, more = _within_accuracy(variants, config.constraints)
    pruned.extend(more)
    variants = _priors(variants, check_report)
    timings["optimize"] = time.perf_counter() - clock

    batchable = all(s.shape and not isinstance(s.shape[0], int) for s in artifact.inputs)
    space = build_space(
        variants, config.batch_sizes, batchable=batchable, cores=os.cpu_count() or 1, pruned=pruned
    )
    say(
        f"space: {len(space)} candidates ({len(variants)} variants x {len(space.batch_sizes)} "
        f"batch sizes x knobs), {len(space.pruned)} parts pruned; strategy {config.strategy}"
    )

    clock = time.perf_counter()
    scorer = Scorer(config.objective, config.price, _scorer_notes(config))
    measurer = _Measurer(
        {
            v.key: load_model(v.model_path) if v.model_path != artifact.path else artifact
            for v in variants
        },
        config,
        store,
        out_dir / "loadgen",
        say,
    )
    seed = [c for c in space.candidates if c.key == NAIVE_DEFAULT]
    outcome = search(
        config.strategy,
        space,
        measurer,
        rank_for(config.constraints, scorer),
        budget=config.budget,
        latency_first=config.objective is Objective.LATENCY,
        seed=seed,
    )
    timings["search"] = time.perf_counter() - clock
    recommendation = recommend(space, outcome, config.constraints, scorer, measurer.failures)

    result = TuneResult(
        model=artifact,
        config=config,
        check=check_report,
        variants=variants,
        space=space,
        outcome=outcome,
        recommendation=recommendation,
        failures=measurer.failures,
        machine=machine_description(),
        timings=timings,
        accuracy_source=accuracy_source,
        stored_ids=measurer.stored_ids,
        started_at=started,
    )
    write_outputs(result, out_dir)
    return result


def write_outputs(result: TuneResult, out_dir: Path) -> None:
    """The deployment spec (with its model beside it), tune.json and report.html."""
    from crossinfer.report.html import write_report

    pick = result.recommendation.pick
    if pick is not None and pick.metrics is not None:
        result.spec_path = _write_spec(result, pick, out_dir)
    result.json_path = out_dir / RESULT_FILE
    result.report_path = out_dir / "report.html"
    data = result.to_dict()
    result.json_path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    write_report(data, result.report_path)
    data["report"] = str(result.report_path)
    result.json_path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- check


def _check(artifact: ModelArtifact, config: TuneConfig) -> CheckReport:
    targets: list[Target] | None = list(config.targets) or None
    if targets is None and config.backends:
        targets = []
        for name in config.backends:  # import only the runtimes asked for
            try:
                backend = load_backend(backend_entry(name))
            except CrossinferError:
                continue  # check's own row for it says why
            targets += [
                Target(name, d.name) for d in backend.devices() if d.available and d.name != "auto"
            ]
    elif targets is None:
        targets, _missing = default_targets()
    return check_model(
        artifact,
        targets=targets,
        feeds=random_inputs(artifact.inputs, batch=1, seed=0),
        input_source="random, seed 0",
        timeout_s=config.timeout_s,
    )


def _passing_targets(report: CheckReport, config: TuneConfig) -> tuple[list[Target], list[Pruned]]:
    targets: list[Target] = []
    pruned: list[Pruned] = []
    for row in report.rows:
        if row.is_reference or row.target.endswith(":*"):
            if row.target.endswith(":*"):
                pruned.append(Pruned(row.target, "check", f"{row.verdict.value}: {row.reason}"))
            continue
        target = Target.parse(row.target)
        if config.backends and target.backend not in config.backends:
            continue
        if config.targets and target not in config.targets:
            continue
        if row.passed:
            targets.append(target)
        else:
            pruned.append(Pruned(row.target, "check", f"{row.verdict.value}: {row.reason}"))
    return targets, pruned


# --------------------------------------------------------------------------- variants


def _labelled_set(artifact: ModelArtifact, config: TuneConfig) -> tuple[LabelledSet | None, str]:
    from crossinfer.passes.calibration import load_labelled_set

    labelled = load_labelled_set(config.dataset, artifact)
    if labelled is not None:
        return labelled, f"top-1 on {labelled.description}"
    return (
        None,
        "not measured: no labelled set (give --dataset, or --max-accuracy-drop to compare predictions with FP32)",
    )


def _calibration(artifact: ModelArtifact, config: TuneConfig, say: Event) -> CalibrationData | None:
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


def _variants(
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
            if (target.backend, recipe) not in PRESETS:
                known = sorted(p for b, p in PRESETS if b == target.backend)
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


def _priors(variants: list[Variant], report: CheckReport) -> list[Variant]:
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
    names, runtime = PRESETS[(target.backend, recipe)]
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
        return Pruned(
            what,
            "optimize",
            f"parity at {failed[0].precision.value} tolerance fails after {failed[0].pass_name}: {why}",
        )
    last = steps[-1] if steps else report.steps[0]
    baseline = report.steps[0].measurement
    measured = last.measurement
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
        accuracy_method="top-1 on the labelled set, against the FP32 model on the same target"
        if last.accuracy_drop is not None
        else "not measured",
        notes=notes,
        before=_figures(baseline),
        after=_figures(measured),
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
            before=raw["before"],
            after=raw["after"],
        )
    except (OSError, ValueError, KeyError, TypeError, CrossinferError):
        return None


def _within_accuracy(
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


def _agreement(
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
        agree = float(np.mean(predicted == truth))
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
        batchable = all(s.shape and not isinstance(s.shape[0], int) for s in artifact.inputs)
        step = 8 if batchable else 1
        total = next(iter(feeds.values())).shape[0]
        parts = []
        for start in range(0, total, step):
            chunk = {k: v[start : start + step] for k, v in feeds.items()}
            parts.append(np.argmax(next(iter(session.run(chunk).values())), axis=-1))
        return np.concatenate(parts)
    finally:
        session.close()


# --------------------------------------------------------------------------- measuring


class _Measurer:
    """Measures one candidate (or reads it back from the store); the strategy calls it."""

    def __init__(
        self,
        artifacts: Mapping[str, ModelArtifact],
        config: TuneConfig,
        store: ResultStore | None,
        log_root: Path,
        say: Event,
    ) -> None:
        self._artifacts = artifacts
        self._config = config
        self._store = store
        self._log_root = log_root
        self._say = say
        self._hardware_key = fingerprint_key(hardware_fingerprint())
        self._versions = runtime_versions()
        self.failures: dict[str, str] = {}
        self.stored_ids: list[int] = []
        self.count = 0

    def __call__(self, candidate: Candidate) -> Metrics | None:
        self.count += 1
        if self._store is not None and not self._config.fresh:
            stored = find_stored(
                self._store, candidate, hardware_key=self._hardware_key, versions=self._versions
            )
            if stored is not None:
                metrics = metrics_from(stored.result, candidate, store_id=stored.id, resumed=True)
                self._say(
                    f"  {self.count:>3} {candidate.key}: {_brief(metrics)} (stored #{stored.id})"
                )
                return metrics
        variant = candidate.variant
        plan = BenchPlan(
            scenarios=("offline",),
            batch_sizes=(candidate.batch_size,),
            quick=True,
            instances=candidate.knobs.instances,
            min_duration_ms=self._config.measure_ms,
        )
        run = run_benchmark(
            self._artifacts[variant.key],
            variant.target,
            plan=plan,
            options=candidate.options,
            log_root=self._log_root / _slug(candidate.key),
            timeout_s=self._config.timeout_s,
        )
        if not run.results:
            reason = run.errors[0].reason if run.errors else "no result"
            self.failures[candidate.key] = reason
            self._say(f"  {self.count:>3} {candidate.key}: failed: {reason}")
            return None
        result = run.results[0]
        store_id = None
        if self._store is not None:
            store_id = self._store.add(result)
            self.stored_ids.append(store_id)
        metrics = metrics_from(result, candidate, store_id=store_id, resumed=False)
        if self._config.objective is Objective.ENERGY and metrics.energy_j_per_inference is None:
            raise UsageError(
                f"--objective energy: energy is not measured on this machine ({metrics.energy_method}); "
                "choose another objective (nothing is estimated from TDP)"
            )
        self._say(f"  {self.count:>3} {candidate.key}: {_brief(metrics)}")
        return metrics


def metrics_from(
    result: BenchResult, candidate: Candidate, *, store_id: int | None, resumed: bool
) -> Metrics:
    latency = result.latency
    return Metrics(
        throughput=result.throughput,
        p50_ms=latency.p50_ms,
        p99_ms=latency.p99_ms,
        percentiles_ms={
            "min": latency.min_ms,
            "p50": latency.p50_ms,
            "p90": latency.p90_ms,
            "p95": latency.p95_ms,
            "p99": latency.p99_ms,
            "p99.9": latency.p999_ms,
            "max": latency.max_ms,
        },
        peak_rss_mb=result.peak_rss_mb,
        energy_j_per_inference=result.energy.joules_per_inference,
        energy_method=result.energy.method,
        accuracy=candidate.variant.accuracy,
        accuracy_drop=candidate.variant.accuracy_drop,
        loadgen_result=result.loadgen_result,
        stable=result.stability.stable,
        store_id=store_id,
        resumed=resumed,
        notes=tuple(result.notes),
    )


def _brief(metrics: Metrics) -> str:
    return f"{metrics.throughput:,.1f} samples/s, p99 {metrics.p99_ms:.2f} ms, {metrics.peak_rss_mb:,.0f} MB"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def _scorer_notes(config: TuneConfig) -> tuple[str, ...]:
    notes = []
    if config.price is None:
        notes.append(
            "cost: the price of this machine is unknown (name --instance or --price-per-hour); "
            "no cost figures"
        )
    else:
        notes.append(f"cost from {config.price.per_hour:g} USD/hour: {config.price.source}")
    return tuple(notes)


# --------------------------------------------------------------------------- outputs


def machine_description() -> dict[str, Any]:
    from crossinfer.hardware import discover_cpu, discover_gpus

    cpu = discover_cpu()
    gpus = discover_gpus()
    return {
        "cpu": cpu.model_name,
        "logical_cores": cpu.logical_cores,
        "physical_cores": cpu.physical_cores,
        "memory_bytes": cpu.total_memory_bytes,
        "isa_features": sorted(k for k, v in cpu.features.items() if v),
        "notes": list(cpu.notes),
        "gpus": [g.name for g in gpus.gpus],
        "fingerprint_key": fingerprint_key(hardware_fingerprint()),
        "runtime_versions": runtime_versions(),
        "crossinfer": __version__,
    }


def spec_name(artifact: ModelArtifact) -> str:
    base = artifact.source.removeprefix("zoo:")
    if not artifact.source.startswith("zoo:"):
        base = Path(base).stem
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-.") or "model"
    return name[:100]


def _write_spec(result: TuneResult, pick: CandidateResult, out_dir: Path) -> Path:
    candidate = pick.candidate
    metrics = pick.metrics
    assert metrics is not None
    name = spec_name(result.model)
    model_src = candidate.variant.model_path
    model_dst = out_dir / f"{name}.{candidate.variant.recipe}.onnx"
    if model_src.resolve() != model_dst.resolve():
        shutil.copyfile(model_src, model_dst)
        for extra in load_model(model_src).external_data:
            source = model_src.parent / extra
            if source.is_file():
                shutil.copyfile(source, out_dir / extra)
    batch = candidate.batch_size
    delay_us = 0
    if batch > 1:
        # wait at most half the batch's own run time to fill it, within what p99 leaves
        delay_us = int(min(metrics.p50_ms * 500, 2000))
        limit = result.config.constraints.max_p99_ms
        if limit is not None:
            delay_us = int(max(0.0, min(delay_us, (limit - metrics.p99_ms) * 1000)))
    spec = DeploymentSpec(
        name=name,
        model=model_dst,
        backend=candidate.variant.target.backend,
        device=candidate.variant.target.device,
        options=candidate.options,
        batching=BatchingSpec(
            max_batch_size=batch if batch > 1 else 0,
            max_queue_delay_us=delay_us,
            preferred_batch_sizes=(batch,) if batch > 1 else (),
            instances=candidate.knobs.instances,
        ),
        model_sha256=candidate.variant.model_sha256,
        measured={
            "throughput": metrics.throughput,
            "p50_ms": metrics.p50_ms,
            "p99_ms": metrics.p99_ms,
            "latency_note": "per batch run (LoadGen Offline, quick length): serving adds queueing",
            "peak_rss_mb": metrics.peak_rss_mb,
            "accuracy": metrics.accuracy,
            "accuracy_drop": metrics.accuracy_drop,
            "accuracy_method": candidate.variant.accuracy_method,
            "energy_j_per_inference": metrics.energy_j_per_inference,
            "energy_method": metrics.energy_method,
            "speedup_over_naive_default": result.speedup_over_baseline(),
            "store_id": metrics.store_id,
        },
        source={
            "tool": f"crossinfer {__version__} tune",
            "model_source": result.model.source,
            "candidate": candidate.key,
            "recipe": candidate.variant.recipe,
            "passes": list(candidate.variant.passes),
            "objective": result.config.objective.value,
            "constraints": result.config.constraints.to_dict(),
            "strategy": result.config.strategy,
            "machine": result.machine["cpu"],
            "hardware_fingerprint": result.machine["fingerprint_key"],
            "runtime_versions": result.machine["runtime_versions"],
            "tuned_at": result.started_at,
        },
    )
    return write_spec(spec, out_dir / f"{name}.deploy.toml")


__all__ = [
    "DEFAULT_BATCH_SIZES",
    "DEFAULT_PRECISIONS",
    "NAIVE_DEFAULT",
    "TuneConfig",
    "TuneResult",
    "machine_description",
    "metrics_from",
    "spec_name",
    "top1_in_child",
    "tune",
    "write_outputs",
]
