"""--dim names are checked against the model's symbolic dims, and the sizes chosen are said."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto
from typer.testing import CliRunner

from crossinfer.check.inputs import check_dim_names, dim_choices, random_inputs
from crossinfer.cli import app
from crossinfer.errors import UsageError
from crossinfer.model import TensorSpec

IDS = TensorSpec("input_ids", "int64", ("batch", "seq"), TensorProto.INT64)
MASK = TensorSpec("attention_mask", "int64", ("batch", "seq"), TensorProto.INT64)


def test_a_misspelt_dim_is_refused_with_the_nearest_name() -> None:
    with pytest.raises(UsageError) as info:
        check_dim_names([IDS, MASK], {"sequence": 32})
    assert str(info.value) == (
        "--dim sequence: the model has no symbolic dim 'sequence': its symbolic dims are "
        "batch, seq; did you mean --dim seq=32?"
    )
    check_dim_names([IDS, MASK], {"seq": 32})  # a real name passes


def test_a_model_without_symbolic_dims_says_so() -> None:
    fixed = TensorSpec("x", "float32", (1, 3), TensorProto.FLOAT)
    with pytest.raises(UsageError, match=r"it has none \(every dim is fixed\)$"):
        check_dim_names([fixed], {"seq": 8})


def test_dim_choices_say_where_each_size_came_from() -> None:
    assert dim_choices([IDS, MASK], batch=2) == [
        "batch=2 (--batch)",
        "seq=16 (default; --dim seq=N)",
    ]
    assert dim_choices([IDS], batch=1, dims={"seq": 32}) == ["batch=1 (--batch)", "seq=32 (--dim)"]
    assert random_inputs([IDS], batch=1, dims={"seq": 32})["input_ids"].shape == (1, 32)


def test_cli_refuses_a_misspelt_dim_and_prints_the_defaults(linear_path: Path) -> None:
    result = CliRunner().invoke(app, ["check", str(linear_path), "--dim", "bacth=2"])
    assert result.exit_code == 2
    assert "did you mean --dim batch=2?" in " ".join(result.stderr.split())
    model = onnx.load(linear_path)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    result = CliRunner().invoke(
        app, ["check", str(linear_path), "-t", "onnxruntime:cpu", "--batch", "3"]
    )
    assert result.exit_code == 0, result.output
    assert "symbolic dims: batch=3 (--batch)" in result.stderr
