"""`crossinfer optimize`: run passes one after another and re-prove each on its target.

After every pass: parity against the original model's reference outputs (at the tolerance of the
precision the pass produces), top-1 accuracy when labels exist, and a short latency/throughput
measurement on the target, each in a child process. A pass that is slower or less accurate than
the budget is a regression with its likely cause, and is dropped unless kept on purpose.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import shutil
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from crossinfer.accuracy import first_output, top1
from crossinfer.backends.base import (
    BackendEntry,
    Precision,
    Preset,
    SessionOptions,
    Target,
    backend_entry,
    find_backend_entry,
    load_backend,
)
from crossinfer.check.isolate import run_isolated
from crossinfer.check.parity import OutputComparison, compare_outputs, default_tolerance
from crossinfer.errors import CrossinferError, InferenceError, UsageError
from crossinfer.hardware.int8 import Int8Recipe, int8_recipe, vnni_missing_note
from crossinfer.model import ModelArtifact, load_model
from crossinfer.passes.base import (
    CalibrationData,
    LabelledSet,
    OptimizationPass,
    PassContext,
    read_provenance,
)
from crossinfer.tensor_specs import batchable
from crossinfer.turns import (
    NOISE_PCT,
    SpeedVerdict,
    TurnsComparison,
    load_average,
    measure_in_turns,
)

# name -> (module, class, the precision its output runs at)
PASSES: dict[str, tuple[str, str, Precision]] = {
    "simplify": ("crossinfer.passes.simplify", "SimplifyPass", Precision.FP32),
    "fp16": ("crossinfer.passes.fp16", "Fp16Pass", Precision.FP16),
    "int8-dynamic": ("crossinfer.passes.int8_dynamic", "Int8DynamicPass", Precision.INT8),
    "int8-static": ("crossinfer.passes.int8_static", "Int8StaticPass", Precision.INT8),
    "int8-nncf": ("crossinfer.passes.int8_nncf", "Int8NncfPass", Precision.INT8),
    "prune": ("crossinfer.passes.prune", "PrunePass", Precision.FP32),
    "int8-nncf-accuracy-aware": (
        "crossinfer.passes.int8_nncf_accuracy",
        "Int8NncfAccuracyAwarePass",
        Precision.INT8,
    ),
    "int8-accuracy-aware": (
        "crossinfer.passes.int8_accuracy_aware",
        "Int8AccuracyAwarePass",
        Precision.INT8,
    ),
}

TURN_ROUNDS = 3  # rounds of baseline/candidate turns behind each step's speed verdict
REPORT_FILE = "report.json"  # what `crossinfer optimize` writes beside the models


def get_pass(name: str) -> OptimizationPass:
    try:
        module, attribute, _ = PASSES[name]
    except KeyError:
        raise UsageError(f"unknown pass '{name}': choose from {', '.join(PASSES)}") from None
    cls = getattr(importlib.import_module(module), attribute)
    instance: OptimizationPass = cls()
    return instance


def backend_presets(backend: str) -> Mapping[str, Preset]:
    """The --precision shortcuts of a backend (its registry entry's): recipe -> (the passes that
    suit it, the runtime precision to ask for); none for a backend not registered."""
    entry = find_backend_entry(backend)
    return entry.presets if entry is not None else {}


def preset(target: Target, precision: str) -> Preset:
    presets = backend_presets(target.backend)
    if precision.lower() not in presets:
        known = ", ".join(sorted(presets)) or "none"
        raise UsageError(
            f"--precision {precision} has no recipe for {target.backend}: available there: {known}"
            + (
                "; BF16 on the CPU: --target openvino:cpu --precision bf16"
                if precision.lower() == "bf16"
                else ""
            )
        )
    return presets[precision.lower()]


@dataclass(frozen=True)
class Measurement:
    """One model measured on the target."""

    latency_ms: float  # median, batch 1
    throughput: float  # samples/s at the measurement batch size
    batch_size: int
    accuracy: float | None  # top-1 on the labelled set, when there is one
    session: Mapping[str, Any] = field(default_factory=dict)
    load_avg: float | None = None  # the machine's 1-minute load average when it was measured


@dataclass(frozen=True)
class StepReport:
    pass_name: str  # "baseline" for the original model
    artifact: ModelArtifact
    precision: Precision
    measurement: Measurement | None
    comparisons: tuple[OutputComparison, ...] = ()
    parity_passed: bool = True
    speedup: float | None = None  # throughput vs the baseline's
    accuracy_drop: float | None = None
    regression: bool = False
    reasons: tuple[str, ...] = ()
    kept: bool = True
    error: str = ""
    divergence: Mapping[str, Any] | None = None  # where a dropped INT8 model first left FP32
    speed: TurnsComparison | None = None  # against the baseline, measured in turns

    @property
    def speed_verdict(self) -> str:
        return self.speed.verdict.value if self.speed is not None else ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "pass": self.pass_name,
            "model": str(self.artifact.path),
            "sha256": self.artifact.sha256,
            "file_size": self.artifact.file_size,
            "precision": self.precision.value,
            "measurement": dataclasses.asdict(self.measurement) if self.measurement else None,
            "parity_passed": self.parity_passed,
            "outputs": [c.to_dict() for c in self.comparisons],
            "speedup": self.speedup,
            "accuracy_drop": self.accuracy_drop,
            "regression": self.regression,
            "reasons": list(self.reasons),
            "kept": self.kept,
            "error": self.error,
            "divergence": self.divergence,
            "speed": self.speed.to_dict() if self.speed else None,
        }


@dataclass(frozen=True)
class OptimizeReport:
    target: str
    steps: tuple[StepReport, ...]
    final: ModelArtifact
    out_dir: Path
    calibration_source: str | None
    dataset: str | None
    int8_recipe: Int8Recipe | None = None  # when a pass quantizes: the ISA's settings and why

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "int8_recipe": self.int8_recipe.to_dict() if self.int8_recipe else None,
            "final_model": str(self.final.path),
            "final_sha256": self.final.sha256,
            "calibration": self.calibration_source,
            "dataset": self.dataset,
            "steps": [s.to_dict() for s in self.steps],
        }

    def write_json(self) -> Path:
        """Write the report as OUT/report.json (what `crossinfer optimize` leaves beside the
        models) and return its path."""
        path = self.out_dir / REPORT_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        return path


def optimize(
    artifact: ModelArtifact,
    *,
    target: Target,
    passes: Sequence[tuple[str, Any]],
    out_dir: Path,
    runtime_precision: Precision = Precision.FP32,
    calibration: CalibrationData | None = None,
    dataset: LabelledSet | None = None,
    max_accuracy_drop: float = 0.01,
    keep_regressions: bool = False,
    options: SessionOptions | None = None,
    measure_batch: int = 8,
    measure_seconds: float = 2.0,
    timeout_s: float = 900.0,
    on_step: Callable[[StepReport], None] | None = None,
) -> OptimizeReport:
    """Apply `passes` (name, config or None) in order, proving each on `target`."""
    entry = backend_entry(target.backend)
    for name, _ in passes:  # refuse a bad plan before minutes of measuring
        if target.backend not in get_pass(name).targets:
            raise UsageError(
                f"pass '{name}' makes models for {', '.join(get_pass(name).targets)}, "
                f"not {target.backend}"
            )
    options = dataclasses.replace(options or SessionOptions(), precision=Precision.FP32)
    out_dir.mkdir(parents=True, exist_ok=True)
    feeds = _parity_feeds(artifact, dataset, calibration)
    reference = _reference_outputs(artifact, feeds, timeout_s)

    baseline_m, _, _ = _measure(
        entry,
        artifact,
        target.device,
        options,
        feeds,
        dataset,
        measure_batch,
        measure_seconds,
        timeout_s,
    )
    baseline = StepReport("baseline", artifact, Precision.FP32, baseline_m)
    steps = [baseline]
    if on_step:
        on_step(baseline)
    current = artifact
    run_options = dataclasses.replace(options, precision=runtime_precision)
    plan = list(passes)
    if runtime_precision is not Precision.FP32 and not plan:
        plan = [("runtime-" + runtime_precision.value, None)]
    for index, (name, config) in enumerate(plan, start=1):
        if name.startswith("runtime-"):
            produced, precision = current, runtime_precision
        else:
            try:
                produced, precision = _apply(
                    name,
                    config,
                    current,
                    target,
                    calibration,
                    out_dir,
                    index,
                    dataset=dataset,
                    max_accuracy_drop=max_accuracy_drop,
                )
            except CrossinferError as exc:
                step = StepReport(
                    name,
                    current,
                    Precision.FP32,
                    None,
                    kept=False,
                    regression=True,
                    reasons=(str(exc),),
                    error=str(exc),
                )
                steps.append(step)
                if on_step:
                    on_step(step)
                continue
            precision = max(precision, runtime_precision, key=_looseness)
        measured, outputs, speed = _measure(
            entry,
            produced,
            target.device,
            run_options,
            feeds,
            dataset,
            measure_batch,
            measure_seconds,
            timeout_s,
            against=(artifact, options),
        )
        step = _judge(
            name,
            produced,
            precision,
            measured,
            outputs,
            reference,
            baseline,
            max_accuracy_drop,
            target,
            speed,
        )
        if step.regression and precision is Precision.INT8 and _accuracy_lost(step):
            step = _locate_divergence(
                step, artifact, target, options, run_options, feeds, out_dir, index, timeout_s
            )
        if step.regression and not keep_regressions:
            step = dataclasses.replace(step, kept=False)
        else:
            current = produced
        steps.append(step)
        if on_step:
            on_step(step)

    # OUT/model.onnx is always the final model, the original when every step was dropped, so a
    # script that runs `optimize -o OUT` can always take OUT/model.onnx
    final_path = out_dir / "model.onnx"
    _write_model(current, final_path)
    final = load_model(final_path)
    return OptimizeReport(
        target=str(target),
        steps=tuple(steps),
        final=final,
        out_dir=out_dir,
        calibration_source=calibration.source if calibration else None,
        dataset=dataset.description if dataset else None,
        int8_recipe=planned_int8_recipe(target, [name for name, _ in passes]),
    )


def planned_int8_recipe(target: Target, pass_names: Sequence[str]) -> Int8Recipe | None:
    """The INT8 settings the target's ISA calls for, when one of the passes quantizes."""
    if not any(name in PASSES and PASSES[name][2] is Precision.INT8 for name in pass_names):
        return None
    return int8_recipe(str(target))


def _looseness(precision: Precision) -> int:
    return [Precision.FP32, Precision.TF32, Precision.FP16, Precision.BF16, Precision.INT8].index(
        precision
    )


def _apply(
    name: str,
    config: Any,
    current: ModelArtifact,
    target: Target,
    calibration: CalibrationData | None,
    out_dir: Path,
    index: int,
    dataset: LabelledSet | None = None,
    max_accuracy_drop: float = 0.01,
) -> tuple[ModelArtifact, Precision]:
    optimization = get_pass(name)
    if target.backend not in optimization.targets:
        raise UsageError(
            f"pass '{name}' makes models for {', '.join(optimization.targets)}, not {target.backend}"
        )
    config = config if config is not None else optimization.config_type()
    out_path = out_dir / f"{index:02d}-{name}.onnx"
    context = PassContext(
        target=str(target),
        calibration=calibration,
        work_dir=out_dir / "work",
        dataset=dataset,
        max_accuracy_drop=max_accuracy_drop,
    )
    written = optimization.apply(current, config, out_path, context)
    return load_model(written), PASSES[name][2]


def _write_model(model: ModelArtifact, dst: Path) -> None:
    proto = model.load_proto()
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        # external data may live in any file the proto names: write it again beside dst
        full = onnx.load(str(model.path), load_external_data=True)
        onnx.save(full, str(dst), save_as_external_data=True, location=dst.name + ".data")
        return
    shutil.copyfile(model.path, dst)


def _accuracy_lost(step: StepReport) -> bool:
    return not step.parity_passed or (
        step.accuracy_drop is not None and any("top-1 accuracy drops" in r for r in step.reasons)
    )


def _locate_divergence(
    step: StepReport,
    original: ModelArtifact,
    target: Target,
    fp32_options: SessionOptions,
    run_options: SessionOptions,
    feeds: Mapping[str, np.ndarray],
    out_dir: Path,
    index: int,
    timeout_s: float,
) -> StepReport:
    """Where the quantized model first leaves the FP32 one on the target, tensor by tensor
    (quantizers keep the float tensors' names), with a reproducer for a bug report."""
    from crossinfer.check.bisect import first_divergence

    try:
        found = first_divergence(
            original,
            target,
            step.artifact,
            target,
            feeds=feeds,
            tolerance=default_tolerance(Precision.INT8),
            options_a=fp32_options,
            options_b=run_options,
            repro_dir=out_dir / f"{index:02d}-{step.pass_name}-divergence",
            timeout_s=timeout_s,
        )
    except CrossinferError as exc:
        note = f"where it diverged is unknown: {exc}"
        return dataclasses.replace(step, reasons=(*step.reasons, note))
    return dataclasses.replace(
        step, reasons=(*step.reasons, found.summary()), divergence=found.to_dict()
    )


def _parity_feeds(
    artifact: ModelArtifact, dataset: LabelledSet | None, calibration: CalibrationData | None
) -> dict[str, np.ndarray]:
    """Real inputs when there are some: N(0,1) noise lies outside what a calibrated INT8 model
    was calibrated for (digits' pixels are 0..16), and parity on it says nothing."""
    from crossinfer.check.inputs import random_inputs

    if dataset is not None:
        return {name: np.asarray(a)[:16] for name, a in dataset.inputs.items()}
    if calibration is not None and not calibration.synthetic and len(calibration):
        picked = calibration.samples[:8]
        return {name: np.concatenate([s[name] for s in picked]) for name in picked[0]}
    return random_inputs(artifact.inputs, batch=2, seed=0)


def _reference_outputs(
    artifact: ModelArtifact, feeds: Mapping[str, np.ndarray], timeout_s: float
) -> dict[str, np.ndarray]:
    light = dataclasses.replace(artifact, proto=None)
    outcome = run_isolated(_run_reference, light, dict(feeds), timeout_s=timeout_s)
    if outcome.ok:
        outputs: dict[str, np.ndarray] = outcome.value
        return outputs
    # as `check` does: ONNX Runtime's CPU provider is the next trusted reference
    from crossinfer.check.runner import run_target_in_child

    fallback = run_isolated(
        run_target_in_child,
        backend_entry("onnxruntime"),
        light,
        "cpu",
        SessionOptions(),
        dict(feeds),
        timeout_s=timeout_s,
    )
    if fallback.ok and fallback.value.outputs is not None:
        fallback_outputs: dict[str, np.ndarray] = fallback.value.outputs
        return fallback_outputs
    why = fallback.message if not fallback.ok else (fallback.value.error or ("", "no outputs"))[1]
    raise InferenceError(
        f"no reference outputs for {artifact.source}: the reference evaluator failed "
        f"({outcome.status}: {outcome.message}) and so did onnxruntime:cpu ({why})"
    )


def _run_reference(artifact: ModelArtifact, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from crossinfer.backends.base import get_backend

    return get_backend("reference").prepare(artifact, "cpu").run(feeds)


def _measure(
    entry: BackendEntry,
    artifact: ModelArtifact,
    device: str,
    options: SessionOptions,
    feeds: Mapping[str, np.ndarray],
    dataset: LabelledSet | None,
    batch: int,
    seconds: float,
    timeout_s: float,
    against: tuple[ModelArtifact, SessionOptions] | None = None,
) -> tuple[Measurement, dict[str, np.ndarray], TurnsComparison | None]:
    """Measure `artifact` in a child; with `against` (the baseline), its throughput is measured
    in turns with the baseline's, in the same child, so that both see the same machine."""
    light_against = None
    if against is not None:
        light_against = (dataclasses.replace(against[0], proto=None), against[1])
    outcome = run_isolated(
        measure_in_child,
        entry,
        dataclasses.replace(artifact, proto=None),
        device,
        options,
        dict(feeds),
        dataset,
        batch,
        seconds,
        light_against,
        timeout_s=timeout_s,
    )
    if not outcome.ok:
        raise InferenceError(
            f"measuring {artifact.path.name} on {entry.name}:{device} failed ({outcome.status}): "
            f"{outcome.message or outcome.error_type}"
        )
    measured: tuple[Measurement, dict[str, np.ndarray], TurnsComparison | None] = outcome.value
    return measured


def measure_in_child(
    entry: BackendEntry,
    artifact: ModelArtifact,
    device: str,
    options: SessionOptions,
    feeds: dict[str, np.ndarray],
    dataset: LabelledSet | None,
    batch: int,
    seconds: float,
    against: tuple[ModelArtifact, SessionOptions] | None = None,
) -> tuple[Measurement, dict[str, np.ndarray], TurnsComparison | None]:
    """Runs in a child: parity outputs, accuracy, median batch-1 latency, batch throughput; with
    `against`, the throughput in turns with that model's (A/B/B/A, several rounds)."""
    from crossinfer.check.inputs import random_inputs

    backend = load_backend(entry)
    session = backend.prepare(artifact, device, options)
    other = None
    try:
        outputs = session.run(feeds)
        accuracy = None
        if dataset is not None:
            accuracy = top1(first_output(session.run(dict(dataset.inputs))), dataset.labels)
        size = batch if batchable(artifact.inputs) else 1
        one = random_inputs(artifact.inputs, batch=1, seed=1)
        many = random_inputs(artifact.inputs, batch=size, seed=2)
        session.run(one)
        session.run(many)
        latencies = _timed(lambda: session.run(one), seconds / 2)
        speed = None
        if against is None:
            batch_times = _timed(lambda: session.run(many), seconds / 2)
            throughput = size / statistics.median(batch_times)
        else:
            base_artifact, base_options = against
            other = backend.prepare(base_artifact, device, base_options)
            base_size = batch if batchable(base_artifact.inputs) else 1
            base_many = random_inputs(base_artifact.inputs, batch=base_size, seed=2)
            other.run(base_many)
            baseline_session = other
            speed = measure_in_turns(
                lambda: baseline_session.run(base_many),
                lambda: session.run(many),
                samples_a=base_size,
                samples_b=size,
                seconds_per_turn=seconds / (2 * TURN_ROUNDS),
                rounds=TURN_ROUNDS,
            )
            throughput = speed.b_throughput
        return (
            Measurement(
                latency_ms=statistics.median(latencies) * 1e3,
                throughput=throughput,
                batch_size=size,
                accuracy=accuracy,
                session=session.describe(),
                load_avg=load_average(),
            ),
            outputs,
            speed,
        )
    finally:
        session.close()
        if other is not None:
            other.close()


def _timed(fn: Callable[[], object], seconds: float) -> list[float]:
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 1000):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _judge(
    name: str,
    artifact: ModelArtifact,
    precision: Precision,
    measured: Measurement | None,
    outputs: dict[str, np.ndarray] | None,
    reference: Mapping[str, np.ndarray],
    baseline: StepReport,
    max_accuracy_drop: float,
    target: Target,
    speed: TurnsComparison | None = None,
) -> StepReport:
    assert measured is not None and outputs is not None and baseline.measurement is not None
    comparisons = tuple(compare_outputs(outputs, reference, default_tolerance(precision)))
    parity = all(c.passed for c in comparisons)
    drop = None
    if measured.accuracy is not None and baseline.measurement.accuracy is not None:
        drop = baseline.measurement.accuracy - measured.accuracy
    reasons: list[str] = []
    if speed is not None:
        # judged on rounds in turns: only "slower" in every round is a regression
        speedup = speed.ratio
        slower = speed.verdict is SpeedVerdict.SLOWER
        spread = f" ({speed.spread()})"
    else:
        speedup = measured.throughput / baseline.measurement.throughput
        slower = speedup < 1 - NOISE_PCT / 100
        spread = ""
    if slower:
        reasons.append(
            f"{speedup:.2f}x the baseline's throughput on {target}{spread}: "
            f"{_likely_cause(name, precision, artifact, target)}"
        )
    if drop is not None and drop > max_accuracy_drop:
        reasons.append(
            f"top-1 accuracy drops {drop * 100:.2f} points, more than the {max_accuracy_drop * 100:.2f} allowed"
        )
    if not parity and name != "prune":
        failed = [c for c in comparisons if not c.passed]
        reason = (
            f"parity at {precision.value} tolerance fails: {failed[0].name}: {failed[0].reason}"
        )
        note = (
            vnni_missing_note(str(target), provenance=read_provenance(artifact.path))
            if precision is Precision.INT8
            else None
        )
        reasons.append(reason + (f"; {note}" if note else ""))
    return StepReport(
        pass_name=name,
        artifact=artifact,
        precision=precision,
        measurement=measured,
        comparisons=comparisons,
        parity_passed=parity,
        speedup=speedup,
        accuracy_drop=drop,
        regression=bool(reasons),
        reasons=tuple(reasons),
        speed=speed,
    )


def _likely_cause(name: str, precision: Precision, artifact: ModelArtifact, target: Target) -> str:
    if precision is Precision.INT8 and target.device == "cpu":
        recipe = int8_recipe(str(target))
        if not recipe.fast_int8:
            return (
                f"this CPU has no AVX512-VNNI, AVX-VNNI or AMX-INT8 ({recipe.int8_path}): "
                "INT8 runs on slower paths"
            )
        ops = artifact.op_histogram
        if name == "int8-dynamic" and ops.get("ConvInteger"):
            return f"{ops['ConvInteger']} ConvInteger nodes: ORT's dynamic INT8 convolution is slow; use int8-static"
        qdq = ops.get("QuantizeLinear", 0)
        if qdq:
            return f"{qdq} QuantizeLinear nodes: QDQ pairs the runtime does not fuse run as float with extra work"
        return "the runtime ran this model's INT8 ops on slower kernels"
    if precision is Precision.FP16 and target.device == "cpu":
        return "onnxruntime's CPU provider has few FP16 kernels: it casts back to FP32 around them"
    return "the rewritten graph runs slower on this runtime"
