"""Prediction error of `crossinfer predict` on hardware the project has measured, leave one device out.

Measured runs, each a stored BenchResult as `bench` would write it:
- this CPU: ONNX Runtime FP32, zoo MobileNetV2 / ResNet-50 / BERT-base (seq 128), batch 1 and 8,
  measured now (LoadGen Offline, quick settings);
- an AVX-512 AMD EPYC guest: benchmarks/results/bench_zoo.json (2026-11-22), ONNX Runtime FP32
  and OpenVINO BF16;
- the Zen 4 EPYC guest of ../shared/REFERENCE.md: ResNet-50 on ONNX Runtime FP32 / INT8 and
  OpenVINO BF16 / INT8, batch 1 and 32;
- the lent H100: benchmarks/results/gpu_torch.json (2026-11-22), torch FP16/BF16 batch 256 and
  batch-1 CUDA-graph latency (best configuration per model, input on the device);
- the lent H200: ../shared/REFERENCE.md (2026-12-01), torch.compile FP16 ResNet-50 at batch 256
  (28,606 img/s) and batch 1 (p50 2.20 ms).
Then: per device, the factors fitted without it predict it (leave-one-device-out), beside the
uncalibrated prior; and the published MLPerf figures of devices crossinfer cannot measure.

    uv run --all-extras python benchmarks/predict_error.py [--skip-measure]
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
    "zoo:bert-base?seq=128&layers=12": "zoo:bert-base?seq=128",
}
ZEN4 = {
    "cpu": {
        "model": "AMD EPYC AVX-512 guest (bench_zoo.json)",
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
# REFERENCE.md's table for that machine, ResNet-50, middle of each range: batch-1 median ms and
# batch-32 samples/s
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
        for source in MODELS.values():
            run = run_benchmark(
                load_model(source), Target("onnxruntime", "cpu"), plan=plan, log_root=Path(logs)
            )
            results.extend(run.results)
    return results


def recorded(template: BenchResult) -> list[BenchResult]:
    """Runs this project measured before, as stored results."""
    shas = {source: load_model(source).sha256 for source in MODELS.values()}
    out: list[BenchResult] = []
    zen4 = json.loads((RESULTS / "bench_zoo.json").read_text())
    for row in zen4["rows"]:
        if "error" in row or row["scenario"] != "offline":
            continue
        target = row["target"]
        precision = "bf16" if target.endswith("@bf16") else "fp32"
        if target.startswith("openvino") and precision == "fp32":
            continue  # one FP32 runtime per device is enough: ONNX Runtime's
        source = MODELS[row["model"]]
        out.append(
            _result(
                template,
                model_source=source,
                model_sha256=shas[source],
                backend=target.split(":")[0],
                precision=precision,
                batch_size=row["batch"],
                throughput=row["throughput"],
                hardware=ZEN4,
            )
        )
    for backend, precision, p50_ms, per_s in ZEN4_RESNET50:
        common = {
            "model_source": "zoo:resnet50",
            "model_sha256": shas["zoo:resnet50"],
            "backend": backend,
            "precision": precision,
            "hardware": ZEN4_REFERENCE,
        }
        out.append(_singlestream(template, p50_ms, batch_size=1, **common))
        out.append(_result(template, batch_size=32, throughput=per_s, **common))
    gpu = json.loads((RESULTS / "gpu_torch.json").read_text())
    best: dict[tuple[str, str, int], float] = {}
    for row in gpu["rows"]:
        family, batch, precision = row["family"], row["batch"], row["precision"]
        model = "zoo:resnet50" if family.startswith("resnet50") else "zoo:bert-base?seq=128"
        if batch == 1:
            value = row.get("latency_device", {}).get("p50_ms")
            key = (model, precision, 1)
            if value and (key not in best or value < best[key]):
                best[key] = value
        else:
            value = row["throughput"]["best"]
            key = (model, precision, batch)
            if key not in best or value > best[key]:
                best[key] = value
    for (source, precision, batch), value in best.items():
        common = {
            "model_source": source,
            "model_sha256": shas[source],
            "backend": "torch",
            "device": "cuda",
            "precision": precision,
            "batch_size": batch,
            "hardware": H100,
        }
        if batch == 1:
            out.append(_singlestream(template, value, **common))
        else:
            out.append(_result(template, throughput=value, **common))
    h200 = {
        "model_source": "zoo:resnet50",
        "model_sha256": shas["zoo:resnet50"],
        "backend": "torch",
        "device": "cuda",
        "precision": "fp16",
        "hardware": H200,
    }
    out.append(_result(template, batch_size=256, throughput=28_606.0, **h200))
    out.append(_singlestream(template, 2.20, batch_size=1, **h200))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-measure", action="store_true", help="No runs on this CPU")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "predict_error.json")
    args = parser.parse_args()
    catalog = load_catalog()
    template = _template()
    results = recorded(template)
    if not args.skip_measure:
        here = hardware_fingerprint()
        results += [dataclasses.replace(r, hardware=here) for r in measured_here(args.seconds)]
    costs = {source: model_cost(load_model(source).load_proto()) for source in MODELS.values()}
    by_sha = {load_model(s).sha256: c for s, c in costs.items()}
    calibration = calibrate(results, catalog, lambda _source, sha: by_sha.get(sha))
    rows = []
    for lodo in calibration.lodo:
        prior = None
        for result in results:
            found, _ = observation(catalog, result, costs[result.model_source])
            if (
                found is not None
                and found.device_name == lodo.device_name
                and found.model == lodo.model
                and found.precision == lodo.precision
                and found.batch == lodo.batch
                and abs(found.measured_s - lodo.measured_s) < 1e-12
            ):
                prior = found.predicted(Scales(found.family))
        row = lodo.to_dict()
        row["prior_ms"] = None if prior is None else prior * 1e3
        row["prior_error_pct"] = None if prior is None else (prior / lodo.measured_s - 1) * 100
        rows.append(row)
        print(
            f"{row['device']:34} {row['model'][:22]:22} {row['precision']:5} b{row['batch']:<4}"
            f" measured {row['measured_ms']:10.3f} ms  LODO {row['predicted_ms']:10.3f} "
            f"({row['error_pct']:+6.0f}%)  prior {row['prior_ms'] or 0:10.3f} "
            f"({row['prior_error_pct'] or 0:+6.0f}%)"
        )
    errors = [abs(r["error_pct"]) for r in rows]
    prior_errors = [abs(r["prior_error_pct"]) for r in rows if r["prior_error_pct"] is not None]
    summary = {
        "runs": len(rows),
        "lodo_median_abs_error_pct": statistics.median(errors) if errors else None,
        "lodo_worst_abs_error_pct": max(errors) if errors else None,
        "prior_median_abs_error_pct": statistics.median(prior_errors) if prior_errors else None,
        "prior_worst_abs_error_pct": max(prior_errors) if prior_errors else None,
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
