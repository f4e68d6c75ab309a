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
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossinfer import __version__
from crossinfer.backends.base import (
    Target,
    backend_entry,
    load_backend,
)
from crossinfer.bench.fingerprint import fingerprint_key, hardware_fingerprint, runtime_versions
from crossinfer.bench.result import BenchResult
from crossinfer.bench.runner import BenchPlan, run_benchmark
from crossinfer.check import CheckReport, check_model, default_targets, random_inputs
from crossinfer.errors import CrossinferError, UsageError
from crossinfer.model import ModelArtifact, load_model
from crossinfer.spec import BatchingSpec, DeploymentSpec, ScaleSpec, write_spec
from crossinfer.store import ResultStore
from crossinfer.tensor_specs import batchable as inputs_batchable
from crossinfer.tune.config import DEFAULT_BATCH_SIZES, DEFAULT_PRECISIONS, TuneConfig, wanted
from crossinfer.tune.constraints import Metrics, Objective, Scorer, cost_per_million
from crossinfer.tune.in_turns import decide_in_turns, turn_group
from crossinfer.tune.recommend import CandidateResult, Recommendation, rank_for, recommend
from crossinfer.tune.resume import find_stored
from crossinfer.tune.space import Candidate, Pruned, Space, Variant, build_space
from crossinfer.tune.strategies import SearchOutcome, confirm_best, search
from crossinfer.tune.variants import (
    AGREEMENT_SAMPLES,
    calibration_for,
    labelled_set,
    prepare_variants,
    top1_in_child,
    with_agreement,
    with_priors,
    within_accuracy,
)
from crossinfer.turns import load_average

NAIVE_DEFAULT = "onnxruntime:cpu/fp32/batch 1/default threads"
RESULT_FILE = "tune.json"

Event = Callable[[str], None]


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
    runs: int = 0  # measurements taken or read back, confirmations and turns included
    # set-up seconds (compiles, captures) of every measurement this tune took, confirmations too
    compile_s_total: float = 0.0
    # hardware not present, predicted (crossinfer.predict): one row per catalog device
    predicted: list[dict[str, Any]] = field(default_factory=list)

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
                "targets": [str(t) for t in self.config.targets],
                "devices": list(self.config.devices),
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
            "compile_s_total": self.compile_s_total,
            "search_path": list(self.outcome.path),
            "confirmed": list(self.outcome.confirmed),
            "turns": self.outcome.turns.to_dict() if self.outcome.turns else None,
            "runs": self.runs,
            "recommendation": self.recommendation.to_dict(),
            "naive_default": NAIVE_DEFAULT if self.baseline else None,
            "speedup_over_naive_default": self.speedup_over_baseline(),
            "machine": self.machine,
            "timings_s": self.timings,
            "spec": str(self.spec_path) if self.spec_path else None,
            "report": str(self.report_path) if self.report_path else None,
            "store_ids": self.stored_ids,
            "predicted": self.predicted,
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
    labelled, accuracy_source = labelled_set(artifact, config)
    calibration = calibration_for(artifact, config, say)
    variants, more = prepare_variants(
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
        variants = with_agreement(artifact, variants, config, say)
        accuracy_source = (
            f"top-1 agreement with the FP32 model on {AGREEMENT_SAMPLES} seeded random inputs "
            "(no labelled set: the accuracy drop shown is the share of changed predictions, "
            "an upper bound on the top-1 drop)"
        )
    variants, more = within_accuracy(variants, config.constraints)
    pruned.extend(more)
    variants = with_priors(variants, check_report)
    timings["optimize"] = time.perf_counter() - clock

    batchable = inputs_batchable(artifact.inputs)
    space = build_space(
        variants,
        config.batch_sizes,
        batchable=batchable,
        cores=os.cpu_count() or 1,
        pruned=pruned,
        exhaustive=config.strategy == "exhaustive",
    )
    say(
        f"space: {len(space)} candidates ({len(variants)} variants x {len(space.batch_sizes)} "
        f"batch sizes x knobs), {len(space.pruned)} parts pruned; strategy {config.strategy}"
    )

    clock = time.perf_counter()
    scorer = Scorer(config.objective, config.price, _scorer_notes(config) + _int8_notes(variants))
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
    rank = rank_for(config.constraints, scorer)
    in_turns = config.turn_rounds > 0 and config.confirm > 1
    outcome = search(
        config.strategy,
        space,
        measurer,
        rank,
        budget=config.budget,
        latency_first=config.objective is Objective.LATENCY,
        seed=seed,
        confirm=0 if in_turns else config.confirm,
    )
    if in_turns:
        _final_ranking(outcome, space, measurer, rank, scorer, config, say)
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
        runs=measurer.count,
        compile_s_total=measurer.compile_s_total,
        predicted=_predicted(artifact, config, store),
    )
    write_outputs(result, out_dir)
    return result


def _final_ranking(
    outcome: SearchOutcome,
    space: Space,
    measurer: _Measurer,
    rank: Callable[[Metrics], tuple[float, float]],
    scorer: Scorer,
    config: TuneConfig,
    say: Event,
) -> None:
    """The best few that meet the constraints measured in turns, fresh (never read back from the
    store), and the pick read from the rounds; with fewer than two of them, the best are
    measured once more instead (confirm_best: the nearest misses, when nothing meets them)."""

    def goodness(metrics: Metrics) -> float | None:
        value = scorer.value(metrics)
        if value is None or value <= 0:
            return None
        return value if config.objective.higher_is_better else 1.0 / value

    group = turn_group(outcome, space, rank, goodness, config.confirm, config.turn_within)
    if len(group) < 2:
        confirm_best(outcome, space, measurer, rank, count=config.confirm)
        return
    decide_in_turns(
        outcome,
        space,
        lambda candidate: measurer(candidate, fresh=True),
        goodness,
        group,
        objective=config.objective.value,
        rounds=config.turn_rounds,
        say=say,
    )


def _predicted(
    artifact: ModelArtifact, config: TuneConfig, store: ResultStore | None
) -> list[dict[str, Any]]:
    """Predicted rows for the hardware that is not here, calibrated by the store's runs."""
    from crossinfer.hardware.catalog import load_catalog
    from crossinfer.predict import predicted_rows

    try:
        results = [stored.result for stored in store.query()] if store is not None else []
        return predicted_rows(
            artifact, catalog=load_catalog(), results=results, precisions=config.precisions
        )
    except CrossinferError as exc:  # a prediction never fails the measured tune
        return [{"unavailable": f"no predictions: {exc}"}]


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
    """Check only the targets the filters keep: a GPU tune must not spend minutes on CPUs."""
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
    kept = [t for t in targets if wanted(t, config)]
    if targets and not kept:
        raise UsageError(
            f"no target found here is kept by {_filters(config)}: found "
            f"{', '.join(map(str, targets))}; widen the filter (crossinfer doctor lists devices)"
        )
    return check_model(
        artifact,
        targets=kept,
        feeds=random_inputs(artifact.inputs, batch=1, seed=0),
        input_source="random, seed 0",
        timeout_s=config.timeout_s,
    )


def _passing_targets(report: CheckReport, config: TuneConfig) -> tuple[list[Target], list[Pruned]]:
    targets: list[Target] = []
    pruned: list[Pruned] = []
    for row in report.rows:
        if row.target.endswith(":*"):
            pruned.append(Pruned(row.target, "check", f"{row.verdict.value}: {row.reason}"))
            continue
        target = Target.parse(row.target)
        # onnx's evaluator is only ever the truth; a runtime that stood in for it (check's
        # fallback) is still a candidate
        if target.backend == "reference":
            continue
        if not wanted(target, config):
            continue
        if row.passed:
            targets.append(target)
        else:
            pruned.append(Pruned(row.target, "check", f"{row.verdict.value}: {row.reason}"))
    return targets, pruned


def _filters(config: TuneConfig) -> str:
    parts = []
    if config.backends:
        parts.append(f"--backends {','.join(config.backends)}")
    parts += [f"--target {t}" for t in config.targets]
    if config.devices:
        parts.append(f"--device {','.join(config.devices)}")
    return " ".join(parts)


# --------------------------------------------------------------------------- measuring

# how often a long measurement (a compile, mostly) says it is still going
PROGRESS_EVERY_S = 15.0


@contextmanager
def _progress(say: Event, what: str, every: float = PROGRESS_EVERY_S) -> Iterator[None]:
    """Say `what` with the time elapsed every `every` seconds until the block ends: a compile
    can take minutes with nothing else to show."""
    done = threading.Event()
    start = time.perf_counter()

    def tick() -> None:
        while not done.wait(every):
            try:
                say(f"      ... {what}: {time.perf_counter() - start:.0f} s")
            except BaseException:  # a caller's callback must not kill a measurement
                return

    ticker = threading.Thread(target=tick, name="tune-progress", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()


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
        self._used: set[int] = set()  # store rows this tune has read back or written
        self.count = 0
        self.compile_s_total = 0.0  # set-up seconds of the measurements taken (not read back)

    def __call__(self, candidate: Candidate, *, fresh: bool = False) -> Metrics | None:
        """`fresh`: measure even when the store has a figure (the runs in turns)."""
        self.count += 1
        if self._store is not None and not self._config.fresh and not fresh:
            stored = find_stored(
                self._store,
                candidate,
                hardware_key=self._hardware_key,
                versions=self._versions,
                exclude=self._used,
            )
            if stored is not None:
                self._used.add(stored.id)
                metrics = metrics_from(stored.result, candidate, store_id=stored.id, resumed=True)
                self._say(
                    f"  {self.count:>3} {candidate.key}: {_brief(metrics)} (stored #{stored.id})"
                )
                return metrics
        variant = candidate.variant
        knobs = candidate.knobs
        options = " ".join(f"{k}={v}" for k, v in knobs.options)
        doing = (
            f"compiling {variant.key} {options} batch {candidate.batch_size}, then measuring"
            if knobs.compiles
            else f"measuring {candidate.key}"
        )
        if knobs.compiles:
            self._say(f"  {self.count:>3} {doing} ...")
        plan = BenchPlan(
            scenarios=("offline",),
            batch_sizes=(candidate.batch_size,),
            quick=True,
            instances=candidate.knobs.instances,
            min_duration_ms=self._config.measure_ms,
        )
        with _progress(self._say, doing):
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
            self._used.add(store_id)
        metrics = metrics_from(result, candidate, store_id=store_id, resumed=False)
        self.compile_s_total += metrics.compile_s or 0.0
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
        compile_s=compile_seconds(result),
        # read as the measurement ends: the load it ran under, give or take a minute's decay
        load_avg=None if resumed else load_average(),
    )


def compile_seconds(result: BenchResult) -> float:
    """Session set-up before results: load (conversion, or the runtime's own compile) plus each
    input shape's first call as the session recorded it (torch: compile or CUDA graph capture),
    else the first inference bench timed."""
    runtime = result.settings.get("runtime")
    shapes = runtime.get("compile_s") if isinstance(runtime, Mapping) else None
    if isinstance(shapes, Mapping) and shapes:
        return float(result.load_s) + sum(float(v) for v in shapes.values())
    return float(result.load_s) + float(result.first_inference_ms) / 1e3


def _brief(metrics: Metrics) -> str:
    text = (
        f"{metrics.throughput:,.1f} samples/s, p99 {metrics.p99_ms:.2f} ms, "
        f"{metrics.peak_rss_mb:,.0f} MB"
    )
    if metrics.compile_s is not None:
        text += f", set-up {metrics.compile_s:.1f} s"
    return text


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


def _int8_notes(variants: Sequence[Variant]) -> tuple[str, ...]:
    """Why INT8 is (or is not) fast here: the recipe each INT8 variant's target got."""
    from crossinfer.hardware.int8 import int8_recipe

    targets = sorted({str(v.target) for v in variants if v.recipe.startswith("int8")})
    return tuple(int8_recipe(target).headline() for target in targets)


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


def default_out_dir(artifact: ModelArtifact) -> Path:
    """Where a tune writes when not told: crossinfer-tune/<model name> in the working folder."""
    return Path("crossinfer-tune") / spec_name(artifact)


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
    price = result.config.price
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
        recipe=candidate.variant.recipe,
        scale=ScaleSpec.suggested(
            device=candidate.variant.target.device,
            options=candidate.options,
            instances=candidate.knobs.instances,
        ),
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
            "cost_usd_per_million": cost_per_million(price.per_hour, metrics.throughput)
            if price and metrics.throughput > 0
            else None,
            "price_source": price.source if price else None,
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
