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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gpu_common import timed_ms as _timed  # a sibling script
from gpu_common import top_kernels

from crossinfer import Precision, SessionOptions, get_backend, load_model


def _baseline(feeds: dict[str, np.ndarray], iters: int, kernels: bool) -> dict[str, Any]:
    """Hugging Face BertModel (bert-base config, SDPA), FP16, torch.compile default mode,
    device-resident: the hand-written program crossinfer's rows are set beside."""
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(attn_implementation="sdpa")).eval().half().cuda()
    compiled = torch.compile(model)
    tensors = {k: torch.from_numpy(v).cuda() for k, v in feeds.items()}
    batch = next(iter(feeds.values())).shape[0]
    row: dict[str, Any] = {}
    with torch.inference_mode():
        start = time.perf_counter()
        compiled(**tensors)
        torch.cuda.synchronize()
        row["first_call_s"] = time.perf_counter() - start
        for _ in range(3):
            compiled(**tensors)
        row["device_ms"] = _timed(lambda: compiled(**tensors), iters)
        row["device_seq_per_s"] = batch / row["device_ms"] * 1e3
        if kernels:
            row["kernels"] = top_kernels(lambda: compiled(**tensors), 20)
    return row


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
    parser.add_argument(
        "--kernels", action="store_true", help="the top CUDA kernels of every mode, not only eager"
    )
    parser.add_argument(
        "--baseline", action="store_true", help="also the hand-written HF BertModel, compiled"
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
    if args.baseline:
        try:
            result["baseline"] = _baseline(feeds, args.iters, args.kernels)
        except Exception as exc:
            result["baseline"] = {"error": f"{type(exc).__name__}: {str(exc)[:600]}"}
        print("== baseline (HF BertModel, compile FP16)")
        for key, value in result["baseline"].items():
            if key == "kernels":
                for k in value:
                    print(f"   {k['ms']:8.3f} ms {k['calls']:5d}x  {k['name']}")
            else:
                print(f"  {key}: {value}")
        torch.cuda.empty_cache()
    for mode in [m for m in args.modes.split(",") if m]:
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
            if mode == "eager" or args.kernels:
                row["kernels"] = top_kernels(lambda: session.run_tensors(prepared), 20)  # type: ignore[attr-defined]
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
