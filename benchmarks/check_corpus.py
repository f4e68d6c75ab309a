"""`check` over the exported corpus (benchmarks/export_corpus.py): onnxruntime, openvino, torch, jax.

ONNX Runtime is the reference (it ran every corpus model in issue 13; onnx's ReferenceEvaluator
is minutes per CNN on 2 cores). Each target runs in check's child process, as `crossinfer check`
does. Prints a markdown table (the one in docs/benchmarks.md) and writes JSON.

    uv run --all-extras python benchmarks/check_corpus.py [--corpus ~/.cache/crossinfer/corpus] \
        [--only NAME,...] [--out benchmarks/results/check_corpus.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from crossinfer import check_model, load_model, random_inputs
from crossinfer.backends.base import Target

DEFAULT_CORPUS = Path.home() / ".cache" / "crossinfer" / "corpus"
TARGETS = ("openvino:cpu", "torch:cpu", "jax:cpu")
REFERENCE = "onnxruntime:cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--only", default="")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "check_corpus.json"
    )
    args = parser.parse_args()
    manifest = json.loads((args.corpus / "manifest.json").read_text())
    names = [n for n in args.only.split(",") if n] or sorted(manifest["models"])
    previous = json.loads(args.out.read_text()) if args.out.exists() else {"models": {}}
    models: dict[str, Any] = previous["models"]
    for name in names:
        entry = manifest["models"][name]
        if "error" in entry:
            models[name] = {"export_error": entry["error"]}
            continue
        start = time.perf_counter()
        artifact = load_model(args.corpus / entry["file"])
        # batch 2 and sequence 16 where dims are symbolic: symbolic dims are exercised
        feeds = random_inputs(artifact.inputs, batch=2, dims={"sequence": 16}, seed=0)
        report = check_model(
            artifact,
            targets=[Target.parse(t) for t in TARGETS],
            reference=REFERENCE,
            feeds=feeds,
            timeout_s=900,
        )
        rows = {}
        for row in report.rows:
            worst = row.worst()
            rows[row.target] = {
                "verdict": row.verdict.value,
                "reason": row.reason,
                "unsupported_ops": list(row.unsupported_ops),
                "max_abs_error": None if worst is None or row.is_reference else worst.max_abs_error,
                "load_s": row.load_s,
            }
        models[name] = {
            "parameters": artifact.parameter_count,
            "ops": sorted(artifact.op_histogram),
            "rows": rows,
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(name, {t: r["verdict"] for t, r in rows.items()}, flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "versions": manifest.get("versions"),
                    "opset": manifest.get("opset"),
                    "load_average": os.getloadavg(),
                    "models": models,
                },
                indent=1,
            )
            + "\n"
        )
    print(markdown(models))


def markdown(models: dict[str, Any]) -> str:
    columns = (REFERENCE, *TARGETS)
    lines = [
        "| model | params | " + " | ".join(columns) + " |",
        "|---|---:|" + "---|" * len(columns),
    ]
    for name, entry in sorted(models.items()):
        if "export_error" in entry:
            lines.append(f"| {name} | - | export failed: {entry['export_error'][:80]} |")
            continue
        cells = []
        for target in columns:
            row = entry["rows"].get(target)
            if row is None:
                cells.append("-")
            elif row["verdict"] == "pass":
                err = row["max_abs_error"]
                cells.append("pass" if err is None else f"pass ({err:.1e})")
            else:
                ops = ", ".join(row["unsupported_ops"])
                cells.append(f"{row['verdict']}: {ops or row['reason'][:100]}")
        lines.append(f"| {name} | {entry['parameters'] / 1e6:.1f} M | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
