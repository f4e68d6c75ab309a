"""A user's nn.Module as a model: exported to ONNX for every backend, run as-is by torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from crossinfer.backends.base import Target, get_backend
from crossinfer.check import Verdict, check_model, random_inputs
from crossinfer.errors import ModelError
from crossinfer.sources.torch import from_torch_module


class TinyConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 5)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(pixels)))
        return self.head(x.mean(dim=(2, 3)))


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.proj = nn.Linear(6, 3)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.proj(a + b)
        return h, torch.softmax(h, dim=-1)


def test_module_is_exported_for_onnx_backends_and_kept_for_torch(tmp_path: Path) -> None:
    module = TinyConvNet()
    artifact = from_torch_module(module, torch.randn(2, 3, 8, 8), directory=tmp_path)
    assert artifact.source == "torch:TinyConvNet"
    assert [(s.name, s.shape) for s in artifact.inputs] == [("pixels", ("batch", 3, 8, 8))]
    assert [s.name for s in artifact.outputs] == ["output"]
    assert artifact.native is not module and isinstance(artifact.native, TinyConvNet)
    assert artifact.path.parent == tmp_path and artifact.path.name.startswith("TinyConvNet-")

    feeds = random_inputs(artifact.inputs, batch=3, seed=0)
    session = get_backend("torch").prepare(artifact, "cpu")
    assert session.describe()["source"] == "nn.Module TinyConvNet (as given)"
    with torch.inference_mode():
        expected = module.eval()(torch.from_numpy(feeds["pixels"])).numpy()
    np.testing.assert_allclose(session.run(feeds)["output"], expected, rtol=1e-6, atol=1e-6)
    onnx_out = get_backend("onnxruntime").prepare(artifact, "cpu").run(feeds)["output"]
    np.testing.assert_allclose(onnx_out, expected, rtol=1e-4, atol=1e-5)
    placement = session.placement()
    assert placement.primary == "cpu" and set(placement.node_devices) >= {"conv", "bn", "head"}


def test_check_runs_the_module_and_its_export_side_by_side(tmp_path: Path) -> None:
    artifact = from_torch_module(TinyConvNet(), torch.randn(1, 3, 8, 8), directory=tmp_path)
    report = check_model(
        artifact,
        targets=[Target("torch", "cpu"), Target("onnxruntime", "cpu")],
        feeds=random_inputs(artifact.inputs, batch=2, seed=4),
    )
    for target in ("torch:cpu", "onnxruntime:cpu"):
        assert report.row(target).verdict is Verdict.PASS, report.row(target).reason
    assert report.row("torch:cpu").session["source"] == "nn.Module TinyConvNet (as given)"


def test_named_inputs_and_several_outputs(tmp_path: Path) -> None:
    example = {"left": torch.randn(2, 6), "right": torch.randn(2, 6)}
    artifact = from_torch_module(
        TwoHeads(), example, output_names=["logits", "probs"], directory=tmp_path
    )
    assert [s.name for s in artifact.inputs] == ["left", "right"]
    assert [s.name for s in artifact.outputs] == ["logits", "probs"]
    feeds = random_inputs(artifact.inputs, batch=4, seed=1)
    native = get_backend("torch").prepare(artifact, "cpu").run(feeds)
    exported = get_backend("onnxruntime").prepare(artifact, "cpu").run(feeds)
    for name in ("logits", "probs"):
        np.testing.assert_allclose(native[name], exported[name], rtol=1e-4, atol=1e-6)


def test_bad_example_inputs_and_output_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="example input 0 of TinyConvNet is a list"):
        from_torch_module(TinyConvNet(), [[1.0, 2.0]], directory=tmp_path)  # type: ignore[list-item]
    with pytest.raises(ModelError, match="returns 2 output\\(s\\) but 1 output names"):
        from_torch_module(
            TwoHeads(),
            (torch.randn(1, 6), torch.randn(1, 6)),
            output_names=["x"],
            directory=tmp_path,
        )
