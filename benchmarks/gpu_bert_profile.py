"""Where BERT-base's time goes on crossinfer's torch:cuda path, kernel by kernel.

For each torch mode asked (eager, cudagraphs, compile): device-resident batches through
`run_tensors`, the same through `run` (numpy in and out, as bench's host path), and for eager the
CUDA kernels that take the most time (torch.profiler), so that the converted graph can be set
beside a hand-written BERT. A mode that fails says why (the last lines of its traceback). Prints
a table, writes JSON.

    PYTHONPATH=src:/tmp/site python3 benchmarks/gpu_bert_profile.py --out $OUT/bert.json
"""

# ruff: noqa: B023  # each closure is timed within the loop iteration that made it
from __future__ import annotations

import argparse
import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossinfer import Precision, SessionOptions, get_backend, load_model


def _timed(step: Callable[[], object], iters: int) -> float:
    """Milliseconds per call, the device synchronised around the loop."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1e3


def _kernels(step: Callable[[], object], top: int) -> list[dict[str, Any]]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    rows = []
    for event in prof.key_averages():
        cuda_us = getattr(event, "device_time_total", 0) or getattr(event, "cuda_time_total", 0)
        if cuda_us:
            rows.append({"name": event.key[:90], "calls": event.count // 3, "ms": cuda_us / 3e3})
    rows.sort(key=lambda r: -r["ms"])
    return rows[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="zoo:bert-base")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--modes", default="eager,cudagraphs,compile")
    parser.add_argument("--option", "-O", action="append", default=[], help="extra KEY=VALUE")
    parser.add_argument(
        "--inductor", action="append", default=[], help="torch._inductor.config KEY=VALUE (bool)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bert_profile.json"))
    args = parser.parse_args()
    import torch._inductor.config as inductor_config

    for item in args.inductor:
        key, value = item.split("=", 1)
        setattr(inductor_config, key, value.lower() in ("1", "true"))

    artifact = load_model(args.model)
    extra_common = dict(o.split("=", 1) for o in args.option)
    seq = int(artifact.inputs[0].shape[1])  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    feeds = {
        "input_ids": rng.integers(0, 30522, (args.batch, seq)).astype(np.int64),
        "attention_mask": np.ones((args.batch, seq), np.int64),
        "token_type_ids": np.zeros((args.batch, seq), np.int64),
    }
    result: dict[str, Any] = {"model": args.model, "batch": args.batch, "modes": {}}
    for mode in args.modes.split(","):
        row: dict[str, Any] = {}
        result["modes"][mode] = row
        try:
            session = get_backend("torch").prepare(
                artifact,
                "cuda",
                SessionOptions(precision=Precision.FP16, extra={"mode": mode, **extra_common}),
            )
            prepared = session.prepare_inputs(feeds)  # type: ignore[attr-defined]
            start = time.perf_counter()
            session.run_tensors(prepared)  # type: ignore[attr-defined]
            torch.cuda.synchronize()
            row["first_call_s"] = time.perf_counter() - start
            device_ms = _timed(lambda: session.run_tensors(prepared), args.iters)  # type: ignore[attr-defined]
            host_ms = _timed(lambda: session.run(feeds), args.iters)
            row["device_ms"] = device_ms
            row["device_seq_per_s"] = args.batch / device_ms * 1e3
            row["host_ms"] = host_ms
            row["host_seq_per_s"] = args.batch / host_ms * 1e3
            row["describe"] = {
                k: v for k, v in session.describe().items() if not isinstance(v, (list, dict))
            }
            if mode == "eager":
                row["kernels"] = _kernels(lambda: session.run_tensors(prepared), 20)  # type: ignore[attr-defined]
            session.close()
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {str(exc)[:600]}"
            row["traceback_tail"] = traceback.format_exc().splitlines()[-40:]
        print(f"== {mode}")
        for key, value in row.items():
            if key == "kernels":
                for k in value:
                    print(f"   {k['ms']:8.3f} ms {k['calls']:5d}x  {k['name']}")
            elif key == "traceback_tail":
                print("\n".join("   " + line for line in value))
            else:
                print(f"  {key}: {value}")
        torch.cuda.empty_cache()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
