"""A user's ``torch.nn.Module`` with example inputs as a crossinfer model.

The module is exported to ONNX (opset 17, a ``batch`` dim on every input and output) so every
other backend can run it, and kept as-is in ``ModelArtifact.native`` for the torch backend, which
then runs the module itself rather than a conversion of the export.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import inspect
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from crossinfer.errors import ModelError
from crossinfer.model import ModelArtifact, load_model

ExampleInputs = torch.Tensor | Sequence[torch.Tensor] | Mapping[str, torch.Tensor]


def from_torch_module(
    module: torch.nn.Module,
    example_inputs: ExampleInputs,
    *,
    name: str | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_batch: bool = True,
    directory: Path | None = None,
    opset: int = 17,
) -> ModelArtifact:
    """Export `module` called on `example_inputs` and load the export, the module kept native.

    Input names are the mapping's keys, else the names of forward's parameters; outputs are
    `output_names`, else ``output`` (one) or ``output_0``.. (several). The file goes to
    `directory`, else under crossinfer's cache, named by its content hash.
    """
    name = name or type(module).__name__
    names, tensors = _inputs(module, example_inputs)
    model = copy.deepcopy(module).eval().cpu()
    tensors = tuple(t.detach().cpu() for t in tensors)
    with torch.inference_mode():
        produced = model(*tensors)
    count = 1 if isinstance(produced, torch.Tensor) else len(produced)
    outputs = list(
        output_names or (["output"] if count == 1 else [f"output_{i}" for i in range(count)])
    )
    if len(outputs) != count:
        raise ModelError(
            f"{name} returns {count} output(s) but {len(outputs)} output names were given"
        )
    if directory is None:
        from crossinfer.zoo import default_cache_dir

        directory = default_cache_dir() / "torch-export"
    directory.mkdir(parents=True, exist_ok=True)
    dynamic = {n: {0: "batch"} for n in [*names, *outputs]} if dynamic_batch else None
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        exported = Path(scratch) / "model.onnx"
        try:
            with warnings.catch_warnings():
                # the TorchScript exporter is deprecated in favour of the dynamo one, which needs
                # onnxscript (not a crossinfer dependency); both write an opset-17 graph here
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(
                    model,
                    tensors,
                    str(exported),
                    input_names=names,
                    output_names=outputs,
                    dynamic_axes=dynamic,
                    opset_version=opset,
                    dynamo=False,
                )
        except Exception as exc:  # the exporter raises many types (RuntimeError, TypeError, ...)
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
            raise ModelError(f"could not export {name} to ONNX: {first}") from exc
        digest = hashlib.sha256(exported.read_bytes()).hexdigest()[:12]
        path = directory / f"{name}-{digest}.onnx"
        if not path.exists():
            exported.replace(path)
    artifact = load_model(path)
    return dataclasses.replace(artifact, source=f"torch:{name}", native=model)


def _inputs(
    module: torch.nn.Module, example: ExampleInputs
) -> tuple[list[str], tuple[torch.Tensor, ...]]:
    if isinstance(example, torch.Tensor):
        tensors: tuple[torch.Tensor, ...] = (example,)
        names = None
    elif isinstance(example, Mapping):
        names, tensors = list(example), tuple(example.values())
    else:
        tensors, names = tuple(example), None
    bad = [i for i, t in enumerate(tensors) if not isinstance(t, torch.Tensor)]
    if bad:
        raise ModelError(
            f"example input {bad[0]} of {type(module).__name__} is a {type(tensors[bad[0]]).__name__}, "
            "not a torch.Tensor: give tensors (one, a sequence, or a name -> tensor mapping)"
        )
    if names is None:
        params = [
            p.name
            for p in inspect.signature(module.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        names = params[: len(tensors)] if len(params) >= len(tensors) else []
        if len(names) != len(tensors):
            names = [f"input_{i}" for i in range(len(tensors))]
    return names, tensors


__all__ = ["from_torch_module"]
