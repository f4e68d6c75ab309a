"""INT8 and FP8 on an NVIDIA GPU without TensorRT: what torch and XLA offer, measured.

MLPerf's per-GPU ResNet-50 and BERT figures are TensorRT INT8/FP8 engines. Without TensorRT,
torch has cuBLAS(Lt) low-precision GEMMs (`torch._int_mm`: INT8 x INT8 -> INT32;
`torch._scaled_mm`: FP8 e4m3 x e4m3 -> FP16/BF16 with per-tensor scales) and no INT8/FP8
convolution on CUDA (its quantized convolutions are CPU kernels). XLA (jax) lowers int8 and fp8
dots to cuBLASLt as well. This script measures:

1. the GEMMs alone at BERT-base's and ResNet-50's shapes, TFLOP/s per precision (torch, jax);
2. end to end, FP16 against the same network with its matrix products in FP8 or INT8
   (static per-tensor scales calibrated on one batch, as a post-training quantizer would):
   BERT-base's 72 Linear layers, and ResNet-50's 1x1 convolutions as GEMMs in channels-last
   (3x3 and 7x7 convolutions stay in FP16: no low-precision convolution is offered), all under
   torch.compile, device-resident, batch 256; with the cosine of the outputs against FP16.

Every figure is a ratio to FP16 measured in the same process, rounds alternating (A/B/A/B).

    PYTHONPATH=src:/tmp/site python3 benchmarks/gpu_lowp.py --out $OUT/gpu_lowp.json
"""

# ruff: noqa: B023  # each closure runs within the loop iteration that made it
from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from gpu_common import timed_ms  # a sibling script
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


# ------------------------------------------------------------------ GEMMs alone


def gemm_rates(rounds: int) -> list[dict[str, Any]]:
    """TFLOP/s of one [m, k] x [k, n] product per precision, rounds alternating."""
    shapes = {
        "bert qkv/out (32768x768x768)": (32768, 768, 768),
        "bert ffn up (32768x768x3072)": (32768, 768, 3072),
        "bert ffn down (32768x3072x768)": (32768, 3072, 768),
        "resnet 1x1 stage1 (802816x64x256)": (802816, 64, 256),
        "resnet 1x1 stage3 (50176x1024x256)": (50176, 1024, 256),
    }
    out = []
    for label, (m, k, n) in shapes.items():
        a16 = torch.randn(m, k, device="cuda", dtype=torch.float16)
        b16 = torch.randn(k, n, device="cuda", dtype=torch.float16)
        a8 = a16.to(FP8)
        b8 = b16.t().contiguous().to(FP8).t()  # column-major, as _scaled_mm wants it
        ai = torch.randint(-127, 127, (m, k), device="cuda", dtype=torch.int8)
        bi = torch.randint(-127, 127, (k, n), device="cuda", dtype=torch.int8)
        one = torch.ones((), device="cuda")
        steps: dict[str, Callable[[], object]] = {
            "fp16": lambda: a16 @ b16,
            "fp8 (_scaled_mm)": lambda: torch._scaled_mm(
                a8, b8, scale_a=one, scale_b=one, out_dtype=torch.float16
            ),
            "int8 (_int_mm)": lambda: torch._int_mm(ai, bi),
        }
        row: dict[str, Any] = {"shape": label}
        times: dict[str, list[float]] = {name: [] for name in steps}
        for name, step in list(steps.items()):
            try:
                step()
            except Exception as exc:
                row[name] = f"error: {type(exc).__name__}: {str(exc)[:200]}"
                del steps[name]
        for _ in range(rounds):
            for name, step in steps.items():
                times[name].append(timed_ms(step, 20))
        flops = 2 * m * k * n
        for name in steps:
            ms = statistics.median(times[name])
            row[name] = {
                "tflops": round(flops / ms / 1e9, 1),
                "ms": round(ms, 4),
                "spread": round((max(times[name]) - min(times[name])) / ms, 3),
            }
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


def jax_gemm_rates() -> list[dict[str, Any]]:
    """The same products through XLA (jax): fp16, fp8 e4m3 and int8 dots."""
    import os

    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch holds memory too
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as exc:
        return [{"error": f"jax: {exc}"}]
    out = []
    for m, k, n in ((32768, 768, 3072), (50176, 1024, 256)):
        row: dict[str, Any] = {"shape": f"{m}x{k}x{n}"}
        key = jax.random.PRNGKey(0)
        a = jax.random.normal(key, (m, k), jnp.float16)
        b = jax.random.normal(key, (k, n), jnp.float16)
        cases = {
            "fp16": (a, b, jnp.float16),
            "fp8 e4m3": (a.astype(jnp.float8_e4m3fn), b.astype(jnp.float8_e4m3fn), jnp.float16),
            "int8": (a.astype(jnp.int8), b.astype(jnp.int8), jnp.int32),
        }
        for name, (x, y, acc) in cases.items():
            try:
                f = jax.jit(lambda x, y, acc=acc: jnp.dot(x, y, preferred_element_type=acc))
                f(x, y).block_until_ready()

                best = []
                for _ in range(3):
                    start = time.perf_counter()
                    for _ in range(20):
                        r = f(x, y)
                    r.block_until_ready()
                    best.append((time.perf_counter() - start) / 20 * 1e3)
                ms = statistics.median(best)
                row[name] = {"tflops": round(2 * m * k * n / ms / 1e9, 1), "ms": round(ms, 4)}
            except Exception as exc:
                row[name] = f"error: {type(exc).__name__}: {str(exc)[:200]}"
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


# ------------------------------------------------------------------ networks


class _LowpMatmul(nn.Module):
    """`x @ w.T + b` with x and w quantized per tensor (static scales), in FP8 or INT8."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kind: str) -> None:
        super().__init__()
        self.kind = kind
        w = weight.detach().float()  # [out, in]
        self.out_features = w.shape[0]
        limit = FP8_MAX if kind == "fp8" else 127.0
        self.register_buffer("w_scale", (w.abs().max() / limit).clamp(min=1e-12))
        q = w / self.w_scale
        if kind == "fp8":
            self.register_buffer("w_q", q.to(FP8).t())  # [in, out], column-major
        else:
            self.register_buffer("w_q", q.round().clamp(-127, 127).to(torch.int8).t().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().half())
        self.register_buffer("x_scale", torch.ones((), device=weight.device))
        self.calibrating = True
        self.fallback = False  # set when cuBLASLt refuses this layer's shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        a = x.reshape(-1, shape[-1])
        if self.calibrating:
            limit = FP8_MAX if self.kind == "fp8" else 127.0
            self.x_scale = (a.abs().amax().float() / limit).clamp(min=1e-12)
            try:
                y = self._lowp(a)
            except RuntimeError:  # a shape cuBLASLt has no kernel for: this layer stays FP16
                self.fallback = True
        if self.fallback:
            w = self.w_q.float() * self.w_scale
            y = a @ w.to(a.dtype)
        else:
            y = self._lowp(a)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def _lowp(self, a: torch.Tensor) -> torch.Tensor:
        if self.kind == "fp8":
            a8 = (a.float() / self.x_scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
            return torch._scaled_mm(
                a8, self.w_q, scale_a=self.x_scale, scale_b=self.w_scale, out_dtype=torch.float16
            )
        ai = (a.float() / self.x_scale).round().clamp(-127, 127).to(torch.int8)
        return (torch._int_mm(ai, self.w_q).float() * (self.x_scale * self.w_scale)).half()


class _LowpConv1x1(nn.Module):
    """A 1x1 convolution (stride 1 or 2) as one low-precision GEMM over channels-last pixels."""

    def __init__(self, conv: nn.Conv2d, kind: str) -> None:
        super().__init__()
        weight = conv.weight.reshape(conv.out_channels, conv.in_channels)
        self.mm = _LowpMatmul(weight, conv.bias, kind)
        self.stride = conv.stride[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        y = self.mm(x.permute(0, 2, 3, 1))  # NHWC: a view of channels-last memory
        return y.permute(0, 3, 1, 2)  # NCHW view of NHWC memory: channels-last again


def _replace(module: nn.Module, kind: str) -> int:
    """Swap Linear and 1x1 Conv2d children for low-precision ones; how many were swapped."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Linear | nn.Conv2d) and kind == "fp8":
            dims = child.weight.shape[:2]
            if dims[0] % 16 or dims[1] % 16:  # _scaled_mm's rule: this layer stays FP16
                continue
        if isinstance(child, nn.Linear):
            setattr(module, name, _LowpMatmul(child.weight, child.bias, kind))
            count += 1
        elif isinstance(child, nn.Conv2d) and child.kernel_size == (1, 1) and child.groups == 1:
            setattr(module, name, _LowpConv1x1(child, kind))
            count += 1
        else:
            count += _replace(child, kind)
    return count


def _network(name: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    if name == "resnet50":
        import torchvision

        model = torchvision.models.resnet50(weights=None).eval().half().cuda()
        model = model.to(memory_format=torch.channels_last)
        x = torch.randn(256, 3, 224, 224, device="cuda", dtype=torch.float16)
        return model, {"x": x.contiguous(memory_format=torch.channels_last)}
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(attn_implementation="sdpa")).eval().half().cuda()
    ids = torch.randint(0, 30522, (256, 128), device="cuda")
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _call(model: nn.Module, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(feeds["x"]) if "x" in feeds else model(**feeds).last_hidden_state
    return out


def network_rates(name: str, rounds: int) -> dict[str, Any]:
    """FP16 against FP8 and INT8 matrix products in the same network, compiled, rounds alternating."""
    import copy

    base, feeds = _network(name)
    row: dict[str, Any] = {"network": name, "batch": 256}
    variants: dict[str, Callable[[], torch.Tensor]] = {}
    with torch.inference_mode():
        reference = _call(base, feeds).float()
        variants["fp16"] = torch.compile(lambda: _call(base, feeds))
        for kind in ("fp8", "int8"):
            try:
                model = copy.deepcopy(base)
                row[f"{kind}_layers"] = _replace(model, kind)
                _call(model, feeds)  # calibration: one batch sets each activation scale
                lowp = [m for m in model.modules() if isinstance(m, _LowpMatmul)]
                for m in lowp:
                    m.calibrating = False
                row[f"{kind}_layers_fp16_fallback"] = sum(m.fallback for m in lowp)
                out = _call(model, feeds).float()
                row[f"{kind}_cosine_eager"] = float(
                    torch.nn.functional.cosine_similarity(out.flatten(), reference.flatten(), dim=0)
                )
                variants[kind] = torch.compile(lambda model=model: _call(model, feeds))
            except Exception as exc:
                row[kind] = f"error: {type(exc).__name__}: {str(exc)[:300]}"
                row[f"{kind}_traceback"] = traceback.format_exc().splitlines()[-6:]
        for key, step in list(variants.items()):
            try:
                out = step().float()
                step()
                row[f"{key}_cosine"] = float(
                    torch.nn.functional.cosine_similarity(out.flatten(), reference.flatten(), dim=0)
                )
            except Exception as exc:
                row[key] = f"compile error: {type(exc).__name__}: {str(exc)[:300]}"
                del variants[key]
        times: dict[str, list[float]] = {key: [] for key in variants}
        for _ in range(rounds):
            for key, step in variants.items():
                times[key].append(timed_ms(step, 10))
    fp16 = statistics.median(times["fp16"]) if times.get("fp16") else None
    for key, values in times.items():
        ms = statistics.median(values)
        row[key] = {
            "ms_per_batch": round(ms, 3),
            "samples_per_s": round(256 / ms * 1e3, 1),
            "vs_fp16": round(fp16 / ms, 3) if fp16 else None,
            "spread": round((max(values) - min(values)) / ms, 3),
        }
    print(json.dumps(row, default=str), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--networks", default="resnet50,bert")
    parser.add_argument("--skip-gemm", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_lowp.json"))
    args = parser.parse_args()
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
    }
    if not args.skip_gemm:
        result["gemm_torch"] = gemm_rates(args.rounds)
    result["networks"] = []
    for name in filter(None, args.networks.split(",")):
        try:
            result["networks"].append(network_rates(name, args.rounds))
        except Exception as exc:
            result["networks"].append({"network": name, "error": f"{type(exc).__name__}: {exc}"})
        torch.cuda.empty_cache()
    if not args.skip_gemm:
        result["gemm_jax"] = jax_gemm_rates()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
