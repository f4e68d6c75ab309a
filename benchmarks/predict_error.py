"""Prediction error of `crossinfer predict` on hardware the project has measured, leave one device out.

The recorded runs (`recorded_runs`, the importer: each figure from a results JSON of this
directory or a table of ../shared/REFERENCE.md, with its source), turned into stored BenchResults
as `bench` would write them, the fastest configuration per device, model, precision and batch:
- an AMD EPYC guest with AVX-512, taken as Zen 5 (bench_zoo.json, 2026-11-22, nothing else
  running): ONNX Runtime / OpenVINO FP32 and OpenVINO BF16, zoo MobileNetV2 / ResNet-50 /
  BERT-base (seq 128), batch 1 (SingleStream p50) and 8;
- REFERENCE.md's Zen 4 guest (ResNet-50 FP32 / BF16 / INT8, batch 1 and 32) and AVX2-only Zen 1
  guest (ResNet-18 FP32): a noisy machine, so marked not quiet;
- the lent H100 (gpu_torch.json, gpu_torch_bert_b1.json, gpu_jax.json; 2026-11-22) and H200
  (gpu_commands_session4.json, gpu_staging_profile_rows.json, gpu_bert_profile*.json;
  2026-12-02, load 0.07): batch 1 with numpy in and out, batch 256 with the inputs resident.
Then: per device, the factors fitted without it predict it (leave-one-device-out), beside the
uncalibrated prior; the issue's rows (ResNet-50, MobileNetV2, BERT-base; FP32 on CPUs, FP16 on
GPUs) are summarised apart; and the published MLPerf figures of devices crossinfer cannot measure.

    uv run --all-extras python benchmarks/predict_error.py [--measure-here]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from crossinfer import Target, load_model
from crossinfer.bench.fingerprint import hardware_fingerprint
from crossinfer.bench.result import BenchResult
from crossinfer.bench.runner import BenchPlan, run_benchmark
from crossinfer.hardware.catalog import load_catalog
from crossinfer.predict import calibrate, model_cost
from crossinfer.predict.calibrate import observation
from crossinfer.predict.roofline import Scales, hardware_targets, predict_target

RESULTS = Path(__file__).parent / "results"
MODELS = {
    "zoo:mobilenetv2": "zoo:mobilenetv2",
    "zoo:resnet50": "zoo:resnet50",
    "zoo:resnet18": "zoo:resnet18",
    "zoo:bert-base?seq=128&layers=12": "zoo:bert-base?seq=128",
    "zoo:bert-base": "zoo:bert-base?seq=128",
    "zoo:bert-base?seq=128": "zoo:bert-base?seq=128",
}
# The bench_zoo.json guest (2026-11-22, "nothing else was running"): an AMD EPYC with AVX-512.
# Its fingerprint was not stored; AMD's AVX-512 cores are Zen 4 and Zen 5, and it ran ResNet-50
# FP32 at 396 GFLOP/s on 2 vCPUs, above 2 Zen 4 cores' peak at any clock (2 x 32 FLOP/cycle x
# 3.7 GHz = 237 GFLOP/s): so it is taken as Zen 5 (full 512-bit FMA), and says so.
EPYC_AVX512 = {
    "cpu": {
        "model": "AMD EPYC guest, Zen 5 (bench_zoo.json, 2026-11-22)",
        "vendor": "AuthenticAMD",
        "logical_cores": 2,
        "isa_flags": ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"],
    },
    "gpus": [],
}
ZEN4_REFERENCE = {
    "cpu": {
        "model": "AMD EPYC Zen 4 guest (REFERENCE.md)",
        "vendor": "AuthenticAMD",
        "logical_cores": 2,
        "isa_flags": ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"],
    },
    "gpus": [],
}
ZEN1_REFERENCE = {
    "cpu": {
        "model": "AMD EPYC Zen 1 guest (REFERENCE.md, family 23 model 1)",
        "vendor": "AuthenticAMD",
        "logical_cores": 2,
        "isa_flags": ["avx2", "fma", "f16c"],
    },
    "gpus": [],
}
# REFERENCE.md's table for the Zen 4 machine ("noisy machine, ranges over 2-3 runs"), ResNet-50,
# middle of each range: batch-1 median ms and batch-32 samples/s
ZEN4_RESNET50 = [
    ("onnxruntime", "fp32", 43.0, 22.0),
    ("onnxruntime", "int8", 15.0, 78.5),
    ("openvino", "bf16", 23.0, 42.5),
    ("openvino", "int8", 13.5, 84.0),
]
H100 = {"cpu": {}, "gpus": [{"name": "NVIDIA H100 80GB HBM3", "driver_version": "580"}]}
H200 = {"cpu": {}, "gpus": [{"name": "NVIDIA H200", "driver_version": "580"}]}
# MLPerf Inference closed, per accelerator (../shared/REFERENCE.md): ResNet-50 Offline INT8
PUBLISHED = [
    ("NVIDIA H100 SXM", "int8", "ResNet-50 Offline, MLPerf v4.0 (TensorRT 9.3)", 87_971),
    ("NVIDIA H200 SXM", "int8", "ResNet-50 Offline, MLPerf v4.1 (TensorRT 10.2)", 94_620),
]


def _result(template: BenchResult, **changes: Any) -> BenchResult:
    return dataclasses.replace(template, **changes)


def _template() -> BenchResult:
    from crossinfer.bench.result import EnergyReading, LatencyStats, Stability

    latency = LatencyStats(1, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    return BenchResult(
        model_source="",
        model_sha256="",
        backend="onnxruntime",
        device="cpu",
        precision="fp32",
        scenario="offline",
        batch_size=1,
        settings={},
        latency=latency,
        throughput=1.0,
        server_qps=None,
        target_latency_ms=None,
        first_inference_ms=0.0,
        load_s=0.0,
        peak_rss_mb=0.0,
        peak_device_mem_mb=None,
        energy=EnergyReading(None, None, "not measured"),
        loadgen_result="VALID",
        loadgen_log_dir="",
        compliant=False,
        stability=Stability(True, (), 0.0, 10.0),
        hardware={},
        runtime_versions={},
        crossinfer_version="",
        created_at="2026-12-02T00:00:00+00:00",
    )


def _singlestream(template: BenchResult, p50_ms: float, **changes: Any) -> BenchResult:
    latency = dataclasses.replace(template.latency, p50_ms=p50_ms)
    return _result(template, scenario="singlestream", latency=latency, **changes)


def measured_here(seconds: float) -> list[BenchResult]:
    plan = BenchPlan(
        scenarios=("offline",), batch_sizes=(1, 8), quick=True, min_duration_ms=int(seconds * 1e3)
    )
    results: list[BenchResult] = []
    with tempfile.TemporaryDirectory() as logs:
        for source in ("zoo:mobilenetv2", "zoo:resnet50", "zoo:bert-base?seq=128"):
            run = run_benchmark(
                load_model(source), Target("onnxruntime", "cpu"), plan=plan, log_root=Path(logs)
            )
            results.extend(run.results)
    return results


@dataclasses.dataclass(frozen=True)
class Run:
    """One recorded measurement: what ran, where, and where the figure comes from."""

    hardware: dict[str, Any]
    device: str  # "cpu" or "cuda"
    backend: str
    model: str  # a MODELS key
    precision: str
    batch: int
    seconds: float  # per batch: batch-1 p50 latency, or batch / throughput
    source: str
    quiet: bool  # the record says the machine was otherwise idle


def _best(runs: list[Run]) -> list[Run]:
    """Per device, model, precision and batch, the fastest configuration measured: predict
    models a tuned runtime, so a configuration known to be slower (eager dispatch where a
    captured graph ran the same model) is not what it is checked against."""
    best: dict[tuple[str, str, str, int], Run] = {}
    for run in runs:
        key = (
            json.dumps(run.hardware, sort_keys=True),
            MODELS[run.model],
            run.precision,
            run.batch,
        )
        if key not in best or run.seconds < best[key].seconds:
            best[key] = run
    return list(best.values())


def recorded_runs() -> list[Run]:
    """Every run the project recorded on a machine crossinfer can measure (the importer).

    CPU: bench_zoo.json (LoadGen, quick settings, 3 s, nothing else running); REFERENCE.md's
    Zen 4 and Zen 1 tables (a noisy machine: not quiet). GPU: gpu_torch.json, gpu_torch_bert_b1
    .json and gpu_jax.json (H100, 2026-11-22, a lent machine of its own), gpu_commands_session4
    .json, gpu_staging_profile_rows.json and gpu_bert_profile*.json (H200, 2026-12-02, load 0.07).
    Batch 1 is a latency with numpy input and output where both were measured (what SingleStream
    measures); larger batches are throughput, the inputs resident on the GPU where measured so.
    """
    runs: list[Run] = []
    zoo = json.loads((RESULTS / "bench_zoo.json").read_text())
    for row in zoo["rows"]:
        if "error" in row:
            continue
        target, batch = row["target"], row["batch"]
        precision = "bf16" if target.endswith("@bf16") else "fp32"
        if row["scenario"] == "singlestream":
            seconds = row["p50_ms"] / 1e3
        elif row["scenario"] == "offline" and batch > 1:
            seconds = batch / row["throughput"]
        else:
            continue  # Offline at batch 1 measures the same as SingleStream, less precisely
        runs.append(
            Run(EPYC_AVX512, "cpu", target.split(":")[0], row["model"], precision, batch,
                seconds, "bench_zoo.json", quiet=True)
        )  # fmt: skip
    for backend, precision, p50_ms, per_s in ZEN4_RESNET50:
        for batch, seconds in ((1, p50_ms / 1e3), (32, 32 / per_s)):
            runs.append(
                Run(ZEN4_REFERENCE, "cpu", backend, "zoo:resnet50", precision, batch, seconds,
                    "REFERENCE.md (Zen 4 table)", quiet=False)
            )  # fmt: skip
    # REFERENCE.md: ResNet-18 FP32 "about 19-20 img/s" at batch 1 and 8, ORT and OpenVINO alike
    for batch in (1, 8):
        runs.append(
            Run(ZEN1_REFERENCE, "cpu", "onnxruntime", "zoo:resnet18", "fp32", batch,
                batch / 19.5, "REFERENCE.md (AVX2-only guest)", quiet=False)
        )  # fmt: skip
    torch_h100 = json.loads((RESULTS / "gpu_torch.json").read_text())["rows"]
    torch_h100 += json.loads((RESULTS / "gpu_torch_bert_b1.json").read_text())["rows"]
    for row in torch_h100:
        if "error" in row or row.get("who") == "baseline":
            continue
        model = "zoo:resnet50" if row["family"].startswith("resnet50") else "zoo:bert-base"
        if row["batch"] == 1:
            seconds = row["latency_numpy"]["p50_ms"] / 1e3
        else:
            seconds = row["batch"] / row["throughput"]["best"]
        runs.append(
            Run(H100, "cuda", "torch", model, row["precision"], row["batch"], seconds,
                f"gpu_torch.json ({row['config']})", quiet=True)
        )  # fmt: skip
    for row in json.loads((RESULTS / "gpu_jax.json").read_text())["rows"]:
        if row["precision"] == "tf32":
            continue  # the catalog's FP32 row is true FP32; TF32 is another precision
        if row["batch"] == 1:
            seconds = row["end_to_end"]["p50_ms"] / 1e3
        else:
            seconds = row["batch"] / row["device_resident"]["best"]
        runs.append(
            Run(H100, "cuda", "jax", row["model"], row["precision"], row["batch"], seconds,
                "gpu_jax.json", quiet=True)
        )  # fmt: skip
    session4 = json.loads((RESULTS / "gpu_commands_session4.json").read_text())
    for row in session4["rows"]:
        for name, bench in row.get("bench", {}).items():
            if "error" in bench:
                continue
            if name.startswith("singlestream"):
                batch, seconds = 1, bench["p50_ms"] / 1e3
            else:
                batch = int(bench["args"][bench["args"].index("--batch") + 1])
                seconds = batch / bench["throughput"]
            runs.append(
                Run(H200, "cuda", "torch", row["model"], "fp16", batch, seconds,
                    f"gpu_commands_session4.json ({name})", quiet=True)
            )  # fmt: skip
    staging = json.loads((RESULTS / "gpu_staging_profile_rows.json").read_text())
    lane = staging["rows"]["device/auto: lane, prefetch, worker thread"]
    runs.append(
        Run(H200, "cuda", "torch", "zoo:resnet50", "fp16", staging["batch"],
            lane / 1e3, "gpu_staging_profile_rows.json (device-resident lane)", quiet=True)
    )  # fmt: skip
    bert = json.loads((RESULTS / "gpu_bert_profile.json").read_text())
    runs.append(
        Run(H200, "cuda", "torch", "zoo:bert-base", "fp16", bert["batch"],
            bert["modes"]["compile"]["device_ms"] / 1e3, "gpu_bert_profile.json (compile)",
            quiet=True)
    )  # fmt: skip
    bert1 = json.loads((RESULTS / "gpu_bert_profile_b1_nopattern.json").read_text())
    runs.append(
        Run(H200, "cuda", "torch", "zoo:bert-base", "fp16", 1,
            bert1["modes"]["compile-cudagraphs"]["host_ms"] / 1e3,
            "gpu_bert_profile_b1_nopattern.json (compile-cudagraphs, numpy in and out)",
            quiet=True)
    )  # fmt: skip
    return _best(runs)


def is_protocol_row(run: Run) -> bool:
    """The issue's rows: ResNet-50, MobileNetV2, BERT-base at FP32 on CPUs and FP16 on GPUs."""
    wanted = "fp32" if run.device == "cpu" else "fp16"
    model = MODELS[run.model]
    return run.precision == wanted and model != "zoo:resnet18"


def recorded(template: BenchResult) -> list[tuple[BenchResult, Run]]:
    """The recorded runs as stored results, as `bench` would have written them."""
    shas = {source: load_model(source).sha256 for source in set(MODELS.values())}
    out = []
    for run in recorded_runs():
        source = MODELS[run.model]
        common = {
            "model_source": source,
            "model_sha256": shas[source],
            "backend": run.backend,
            "device": run.device,
            "precision": run.precision,
            "batch_size": run.batch,
            "hardware": run.hardware,
            "settings": {"source": run.source, "quiet": run.quiet},
        }
        if run.batch == 1:
            result = _singlestream(template, run.seconds * 1e3, **common)
        else:
            result = _result(template, throughput=run.batch / run.seconds, **common)
        out.append((result, run))
    return out


def _summary(rows: list[dict[str, Any]], key: str = "error_pct") -> dict[str, Any]:
    errors = [abs(r[key]) for r in rows if r.get(key) is not None]
    return {
        "runs": len(errors),
        "median_abs_error_pct": statistics.median(errors) if errors else None,
        "worst_abs_error_pct": max(errors) if errors else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--measure-here",
        action="store_true",
        help="Also run the three models on this CPU (kept only if the machine was quiet)",
    )
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "predict_error.json")
    args = parser.parse_args()
    catalog = load_catalog()
    template = _template()
    pairs = recorded(template)
    results = [result for result, _ in pairs]
    if args.measure_here:
        here = hardware_fingerprint()
        results += [dataclasses.replace(r, hardware=here) for r in measured_here(args.seconds)]
    sources = sorted(set(MODELS.values()))
    costs = {source: model_cost(load_model(source).load_proto()) for source in sources}
    by_sha = {load_model(s).sha256: c for s, c in costs.items()}
    calibration = calibrate(results, catalog, lambda _source, sha: by_sha.get(sha))
    observed = []
    for result in results:
        found, _ = observation(catalog, result, costs[result.model_source])
        if found is not None:
            run = next((run for r, run in pairs if r is result), None)
            observed.append((found, run))
    rows = []
    for lodo in calibration.lodo:
        found, run = next(
            (o, run)
            for o, run in observed
            if o.device_name == lodo.device_name
            and o.model == lodo.model
            and o.precision == lodo.precision
            and o.batch == lodo.batch
            and abs(o.measured_s - lodo.measured_s) < 1e-12
        )
        prior = found.predicted(Scales(found.family))
        row = lodo.to_dict()
        row["prior_ms"] = prior * 1e3
        row["prior_error_pct"] = (prior / lodo.measured_s - 1) * 100
        row["source"] = run.source if run else "measured here (--measure-here)"
        row["quiet"] = run.quiet if run else None
        row["protocol"] = is_protocol_row(run) if run else False
        rows.append(row)
        print(
            f"{'*' if row['protocol'] else ' '} {row['device']:22} {row['model'][:22]:22} "
            f"{row['precision']:5} b{row['batch']:<4} measured {row['measured_ms']:9.3f} ms  "
            f"LODO {row['predicted_ms']:9.3f} ({row['error_pct']:+5.0f}%)  "
            f"prior {row['prior_ms']:9.3f} ({row['prior_error_pct']:+5.0f}%)  {row['source']}"
        )
    protocol = [r for r in rows if r["protocol"]]
    summary = {
        "protocol": {
            "what": "the issue's rows: ResNet-50, MobileNetV2, BERT-base, batch 1 and the "
            "largest batch measured, FP32 on CPUs and FP16 on GPUs",
            "lodo": _summary(protocol),
            "prior": _summary(protocol, "prior_error_pct"),
        },
        "all": {"lodo": _summary(rows), "prior": _summary(rows, "prior_error_pct")},
        "quiet_only": {"lodo": _summary([r for r in rows if r["quiet"]])},
    }
    print(json.dumps(summary, indent=2))
    published = []
    cost = costs["zoo:resnet50"]
    for name, precision, what, figure in PUBLISHED:
        target = hardware_targets(catalog, [name])[0]
        scales = calibration.scales_for(target.family, precision)
        predicted = predict_target(cost, target, precision, scales)
        published.append(
            {
                "device": name,
                "what": what,
                "published_per_s": figure,
                "predicted_per_s": predicted.best_throughput,
                "predicted_batch": predicted.best_batch,
                "ratio": predicted.best_throughput / figure,
                "calibration": scales.source,
            }
        )
        print(published[-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "summary": summary,
                "rows": rows,
                "published": published,
                "calibration": calibration.to_dict(),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
