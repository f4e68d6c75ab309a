"""Exports the conversion corpus: models no one here wrote, from torchvision, timm and transformers.

Random weights, opset 17, the TorchScript exporter (the one whose graphs the issue-13 report was
about: Identity-aliased initializers, ``Gather(Shape(x), scalar)``), batch (and sequence) dims
symbolic. torchvision, timm and transformers are not crossinfer dependencies: run this with a
Python of its own, then `benchmarks/check_corpus.py` with crossinfer's:

    python3.11 -m venv ~/.venvs/export
    ~/.venvs/export/bin/pip install torch==2.14.1 torchvision==0.29.1 timm transformers onnx onnxscript
    ~/.venvs/export/bin/python benchmarks/export_corpus.py [--out ~/.cache/crossinfer/corpus] [--only NAME,...]

Writes NAME.onnx per model and manifest.json (library versions, inputs, parameters) to --out.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

OPSET = 17
DEFAULT_OUT = Path.home() / ".cache" / "crossinfer" / "corpus"

Built = tuple[torch.nn.Module, tuple[torch.Tensor, ...], list[str], dict[str, dict[int, str]]]


def _image(build: Callable[[], torch.nn.Module], size: int = 224) -> Callable[[], Built]:
    def make() -> Built:
        model = build()
        x = torch.randn(1, 3, size, size)
        return model, (x,), ["pixel_values"], {"pixel_values": {0: "batch"}}

    return make


def _torchvision(name: str, **kwargs: Any) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None, **kwargs)

    return build


def _timm(name: str) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        import timm

        return timm.create_model(name, pretrained=False)

    return build


class _Logits(torch.nn.Module):
    """A transformers model as f(input_ids, attention_mask) -> logits (one tensor, no cache)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def _text(
    make_model: Callable[[], torch.nn.Module], vocab: int, seq: int = 32
) -> Callable[[], Built]:
    def make() -> Built:
        model = _Logits(make_model())
        ids = torch.randint(0, vocab, (1, seq))
        mask = torch.ones(1, seq, dtype=torch.int64)
        dims = {0: "batch", 1: "sequence"}
        return (
            model,
            (ids, mask),
            ["input_ids", "attention_mask"],
            {
                "input_ids": dims,
                "attention_mask": dims,
            },
        )

    return make


def _bert() -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=30522,
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def _distilbert() -> torch.nn.Module:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(vocab_size=30522, dim=256, n_layers=4, n_heads=4, hidden_dim=1024)
    return DistilBertForSequenceClassification(config)


def _gpt2() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=8192, n_embd=256, n_layer=4, n_head=4, use_cache=False)
    return GPT2LMHeadModel(config)


def _roberta() -> torch.nn.Module:
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(
        vocab_size=8192,
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        num_labels=3,
    )
    return RobertaForSequenceClassification(config)


def _hf_vit() -> Built:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        hidden_size=192,
        num_hidden_layers=4,
        num_attention_heads=3,
        intermediate_size=768,
        image_size=224,
        patch_size=16,
        num_labels=10,
    )

    class _ImageLogits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = ViTForImageClassification(config)

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.model(pixel_values=pixel_values).logits

    return _image(_ImageLogits)()


MODELS: dict[str, Callable[[], Built]] = {
    "tv_resnet18": _image(_torchvision("resnet18")),
    "tv_mobilenet_v3_small": _image(_torchvision("mobilenet_v3_small")),  # HardSwish, HardSigmoid
    "tv_googlenet": _image(_torchvision("googlenet", aux_logits=False, init_weights=True)),
    "tv_squeezenet1_0": _image(_torchvision("squeezenet1_0")),  # MaxPool ceil_mode
    "tv_efficientnet_b0": _image(_torchvision("efficientnet_b0")),  # SiLU, squeeze-excite
    "tv_shufflenet_v2_x0_5": _image(_torchvision("shufflenet_v2_x0_5")),  # channel shuffle
    "tv_convnext_tiny": _image(_torchvision("convnext_tiny")),
    "tv_vit_b_16": _image(_torchvision("vit_b_16")),
    "timm_vit_tiny_patch16_224": _image(_timm("vit_tiny_patch16_224")),
    "timm_convnext_atto": _image(_timm("convnext_atto")),
    "timm_mobilenetv3_large_100": _image(_timm("mobilenetv3_large_100")),
    "timm_inception_v3": _image(_timm("inception_v3"), size=299),  # AveragePool, ceil-free
    "hf_bert": _text(_bert, vocab=30522),
    "hf_distilbert": _text(_distilbert, vocab=30522),
    "hf_gpt2": _text(_gpt2, vocab=8192),
    "hf_roberta": _text(_roberta, vocab=8192),
    "hf_vit": _hf_vit,
}


def _versions() -> dict[str, str]:
    found = {"torch": torch.__version__}
    for name in ("torchvision", "timm", "transformers", "onnx"):
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            found[name] = "not installed"
    return found


def _perturb_constant_parameters(model: torch.nn.Module) -> int:
    """Noise on parameters initialised to one value (zero heads, zero biases, unit norms).

    torchvision zero-initialises ViT's head: its logits would be all zeros, and every backend
    would "pass" on a model whose output says nothing. Returns how many tensors got noise.
    """
    count = 0
    with torch.no_grad():
        for parameter in model.parameters():
            flat = parameter.flatten()
            if flat.numel() and bool((flat == flat[0]).all()):
                parameter.add_(torch.randn_like(parameter) * 0.02)
                count += 1
    return count


# models whose BatchNorm statistics are set from random batches before export: with the
# initial statistics (mean 0, variance 1) random-weight Inception-v3's activations grow layer by
# layer to logits of 2.6e12, where every runtime's FP32 summation order differs by 1e6 and a
# logit that cancels to near zero fails any relative tolerance: a model no trained network is
CALIBRATE_BATCHNORM = ("timm_inception_v3",)


def _calibrate_batchnorm(model: torch.nn.Module, example: torch.Tensor, batches: int = 4) -> int:
    """BatchNorm running statistics from `batches` random batches shaped like `example` (the
    cumulative mean, as a pass over training data leaves them); how many layers were set."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(8, *example.shape[1:]))
    model.eval()
    return len(norms)


def export(name: str, out: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    model, args, input_names, dynamic_axes = MODELS[name]()
    calibrated = _calibrate_batchnorm(model, args[0]) if name in CALIBRATE_BATCHNORM else 0
    model.eval()
    perturbed = _perturb_constant_parameters(model)
    path = out / f"{name}.onnx"
    start = time.perf_counter()
    # not under no_grad: torch.nn.MultiheadAttention would take its fused fast path
    # (aten::_native_multi_head_attention), which the TorchScript exporter cannot export
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about Python control flow, by the dozen
        torch.onnx.export(
            model,
            args,
            str(path),
            input_names=input_names,
            output_names=["logits"],
            dynamic_axes={**dynamic_axes, "logits": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    return {
        "name": name,
        "file": path.name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "perturbed_parameters": perturbed,
        "batchnorm_statistics_from_random_batches": calibrated,
        "inputs": {n: list(a.shape) for n, a in zip(input_names, args, strict=True)},
        "export_s": round(time.perf_counter() - start, 1),
        "bytes": path.stat().st_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--only", default="", help="comma-separated names (default: all)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    names = [n for n in args.only.split(",") if n] or list(MODELS)
    manifest_path = args.out / "manifest.json"
    manifest: dict[str, Any] = (
        json.loads(manifest_path.read_text()) if manifest_path.exists() else {"models": {}}
    )
    manifest["opset"] = OPSET
    manifest["versions"] = _versions()
    for name in names:
        try:
            entry = export(name, args.out)
        except Exception as exc:  # one model's exporter failure is a row, not the end of the run
            entry = {"name": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        manifest["models"][name] = entry
        print(json.dumps(entry), flush=True)
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
