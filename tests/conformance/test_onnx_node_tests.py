"""A fixed subset of ONNX's own backend node tests on the cheap backends, each outcome asserted.

The full run (1,884 cases x every backend) is benchmarks/onnx_node_conformance.py; its counts are
in README.md. Here: the ops exported models need that the converters had wrong or missing
(issue 13), a pass asserted per backend, and every known non-pass declared with its reason.
"""

from __future__ import annotations

import warnings

import pytest

from crossinfer.backends.base import get_backend
from crossinfer.conformance import NodeCase, Outcome, node_cases, run_case, skip_reason
from crossinfer.errors import BackendUnavailableError

GENERATORS = (
    "averagepool",
    "cumsum",
    "flatten",
    "gather",
    "greater_or_equal",
    "hardsigmoid",
    "hardswish",
    "isnan",
    "less_or_equal",
)
CASES = (
    "test_averagepool_2d_ceil",
    "test_averagepool_2d_pads_count_include_pad",
    "test_averagepool_2d_same_upper",
    "test_cumsum_1d",
    "test_cumsum_1d_exclusive",
    "test_cumsum_1d_reverse",
    "test_cumsum_2d_axis_1",
    "test_flatten_axis0",
    "test_flatten_axis3",
    "test_flatten_negative_axis1",
    "test_gather_0",
    "test_gather_negative_indices",
    "test_greater_equal",
    "test_greater_equal_bcast",
    "test_greater_equal_uint16",
    "test_hardsigmoid",
    "test_hardswish",
    "test_isnan",
    "test_less_equal_bcast",
)
BACKENDS = ("onnxruntime", "reference", "torch", "jax")

# (backend, case) -> (outcome, why); every other pair must pass
KNOWN: dict[tuple[str, str], tuple[Outcome, str]] = {
    # torch has no comparison kernels for unsigned 16-bit integers on the CPU
    ("torch", "test_greater_equal_uint16"): (Outcome.ERROR, '"ge_cpu" not implemented'),
    # torch's avg_pool2d takes pads up to half the kernel; this case pads 2 around a 3x3 kernel
    ("torch", "test_averagepool_2d_pads_count_include_pad"): (
        Outcome.ERROR,
        "pad should be at most half of effective kernel size",
    ),
    # onnx2torch converts explicit pads only
    ("torch", "test_averagepool_2d_same_upper"): (
        Outcome.UNSUPPORTED,
        '(op AveragePool, domain ai.onnx): onnx2torch: "SAME_UPPER" auto_pad is not implemented',
    ),
    # the axis is a model input here; under jit it must be known when compiling
    **{
        ("jax", case): (Outcome.UNSUPPORTED, "CumSum's axis is computed from the model's inputs")
        for case in CASES
        if case.startswith("test_cumsum")
    },
    # (the reference passes CumSum since sessions keep a 0-d input 0-d: np.ascontiguousarray had
    # made the axis shape [1], which onnx's evaluator refused as "Axis must be a rank-0 tensor")
}


@pytest.fixture(scope="module")
def cases() -> dict[str, NodeCase]:
    with warnings.catch_warnings():
        # onnx's generators compute expected outputs with numpy, overflow included on purpose
        warnings.simplefilter("ignore")
        found = {c.name: c for c in node_cases(GENERATORS)}
    missing = sorted(set(CASES) - set(found))
    assert not missing, f"onnx {missing} no longer generated: update CASES"
    return found


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_node_subset_outcomes(backend_name: str, cases: dict[str, NodeCase]) -> None:
    try:
        get_backend(backend_name)
    except BackendUnavailableError as exc:
        pytest.skip(str(exc))
    wrong = []
    for name in CASES:
        result = run_case(backend_name, cases[name])
        want, why = KNOWN.get((backend_name, name), (Outcome.PASS, ""))
        if result.outcome is not want or why not in result.detail:
            wrong.append(f"{name}: {result.outcome.value} ({result.detail}), expected {want.value}")
    assert wrong == []


def test_a_declared_skip_says_why(cases: dict[str, NodeCase]) -> None:
    # no case of the subset is skipped; a sequence-typed model is
    assert all(skip_reason(cases[name]) is None for name in CASES)
    from onnx import TensorProto, helper

    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("SequenceLength", ["s"], ["n"])],
            "seq",
            [helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)],
            [helper.make_tensor_value_info("n", TensorProto.INT64, [])],
        )
    )
    case = NodeCase("test_sequence", model, ((),), (), 1e-3, 1e-7)
    result = run_case("onnxruntime", case)
    assert result.outcome is Outcome.SKIPPED
    assert (
        result.detail
        == "sequence/optional/map value: crossinfer's sessions take and return tensors"
    )
