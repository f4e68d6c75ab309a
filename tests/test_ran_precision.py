"""The precision that ran: faked read-backs for the logic, then OpenVINO's own on this CPU."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from crossinfer.backends.base import Precision, SessionOptions
from crossinfer.model import load_model
from crossinfer.ran_precision import precision_that_ran


@pytest.mark.parametrize(
    ("asked", "session", "ran", "why"),
    [
        # a CPU without AVX512_BF16/AMX: the hint reads back f32
        (
            Precision.BF16,
            {"inference_precision_hint": "f32", "runtime_precisions": {"f32": 12}},
            Precision.FP32,
            "INFERENCE_PRECISION_HINT reads back f32",
        ),
        # the hint reads back as asked, but not one layer ran at it
        (
            Precision.BF16,
            {"inference_precision_hint": "bf16", "runtime_precisions": {"f32": 9, "i32": 2}},
            Precision.FP32,
            "no layer of the runtime model ran at bf16 (f32: 9, i32: 2)",
        ),
        (
            Precision.FP16,
            {"inference_precision_hint": "f16", "runtime_precisions": {"bf16": 4, "f32": 1}},
            Precision.BF16,
            "no layer of the runtime model ran at fp16",
        ),
        # real BF16: layers at bf16, some at f32 (OpenVINO keeps a few ops in f32)
        (
            Precision.BF16,
            {"inference_precision_hint": "bf16", "runtime_precisions": {"bf16": 30, "f32": 3}},
            Precision.BF16,
            "",
        ),
        # nothing read back (another runtime): what was asked stands
        (Precision.FP16, {}, Precision.FP16, ""),
        (Precision.FP32, {"inference_precision_hint": "bf16"}, Precision.FP32, ""),
        (Precision.INT8, {"runtime_precisions": {"f32": 3}}, Precision.INT8, ""),
    ],
)
def test_precision_that_ran_from_a_faked_read_back(
    asked: Precision, session: dict[str, object], ran: Precision, why: str
) -> None:
    found, reason = precision_that_ran(asked, session)
    assert found is ran
    assert why in reason if why else reason == ""


def _cpu_has_bf16() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


@pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="needs crossinfer[openvino]"
)
def test_openvino_read_back_is_what_the_compiled_model_reports(linear_path: Path) -> None:
    import openvino as ov

    from crossinfer.backends.openvino import OpenVinoBackend

    artifact = load_model(linear_path)
    session = OpenVinoBackend().prepare(artifact, "cpu", SessionOptions(precision=Precision.BF16))
    try:
        info = session.describe()
        compiled = session._compiled  # the object OpenVINO itself reports from
        assert (
            info["inference_precision_hint"]
            == compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        )
        layers: dict[str, int] = {}
        for op in compiled.get_runtime_model().get_ops():
            rt = op.get_rt_info()
            if str(rt["layerType"].astype(str)) not in ("Input", "Output", "Const"):
                name = str(rt["runtimePrecision"].astype(str))
                layers[name] = layers.get(name, 0) + 1
        assert info["runtime_precisions"] == layers
        ran, _ = precision_that_ran(Precision.BF16, info)
        # OpenVINO's own capability list decides: BF16 where the CPU has it, FP32 elsewhere
        capable = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        assert ran is (Precision.BF16 if capable else Precision.FP32)
        assert capable == _cpu_has_bf16()
    finally:
        session.close()


# Run in a child: oneDNN reads ONEDNN_MAX_CPU_ISA once, when OpenVINO's CPU plugin loads
_LIMITED_ISA_CHILD = """
import json, sys
import openvino as ov
from crossinfer.backends.base import Precision, SessionOptions
from crossinfer.backends.openvino import OpenVinoBackend
from crossinfer.model import load_model
from crossinfer.ran_precision import precision_that_ran
caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
session = OpenVinoBackend().prepare(
    load_model(sys.argv[1]), "cpu", SessionOptions(precision=Precision.FP16)
)
ran, why = precision_that_ran(Precision.FP16, session.describe())
session.close()
print(json.dumps({"caps": list(caps), "ran": ran.value, "why": why}))
"""


@pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="needs crossinfer[openvino]"
)
def test_openvino_on_a_cpu_limited_to_avx512_core_runs_an_fp16_hint_at_another_precision(
    linear_path: Path,
) -> None:
    """A real read-back, not a faked one: oneDNN's documented ONEDNN_MAX_CPU_ISA=AVX512_CORE
    makes OpenVINO (2026.4) drop FP16 from the CPU's capabilities, as on a CPU without
    AVX512_FP16/AMX-FP16, and compile an f16 hint as bf16 (or f32 where there is no BF16).

    A CPU without BF16 cannot be made so: OpenVINO keeps BF16 in its capabilities whatever the
    limit (its own CPUID check), and with ONEDNN_MAX_CPU_ISA=AVX2 a bf16 hint fails to compile
    ("could not create a primitive descriptor"); the FP32-only path stays tested with faked
    read-backs above."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}
    child = subprocess.run(
        [sys.executable, "-c", _LIMITED_ISA_CHILD, str(linear_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    found = json.loads(child.stdout.strip().splitlines()[-1])
    assert "FP16" not in found["caps"]  # the limit took: no FP16 kernels on this "CPU"
    expected = Precision.BF16 if "BF16" in found["caps"] else Precision.FP32
    assert found["ran"] == expected.value
    hint = expected.value.replace("fp", "f")  # OpenVINO's element names: bf16, f32
    assert found["why"] == (
        f"the compiled model's INFERENCE_PRECISION_HINT reads back {hint}: the runtime "
        f"compiled the fp16 hint as {hint} on this device"
    )


def test_tune_drops_a_bf16_variant_that_ran_fp32(linear_path: Path, tmp_path: Path) -> None:
    from crossinfer.backends.base import Target
    from crossinfer.passes.pipeline import Measurement, OptimizeReport, StepReport
    from crossinfer.tune.space import Pruned
    from crossinfer.tune.variants import _variant_from_report

    artifact = load_model(linear_path)

    def step(name: str, precision: Precision, session: dict[str, object]) -> StepReport:
        measured = Measurement(1.0, 100.0, 8, None, session=session)
        return StepReport(name, artifact, precision, measured)

    fp32_session = {"inference_precision_hint": "f32", "runtime_precisions": {"f32": 4}}
    report = OptimizeReport(
        target="openvino:cpu",
        steps=(
            step("baseline", Precision.FP32, fp32_session),
            step("runtime-bf16", Precision.BF16, fp32_session),
        ),
        final=artifact,
        out_dir=tmp_path,
        calibration_source=None,
        dataset=None,
    )
    target = Target("openvino", "cpu")
    dropped = _variant_from_report(report, target, "bf16", (), Precision.BF16)
    assert isinstance(dropped, Pruned) and dropped.what == "openvino:cpu/bf16"
    assert dropped.reason.startswith("ran FP32, not BF16: the compiled model's")
    assert dropped.reason.endswith("the same as openvino:cpu/fp32")
    # where the read-back says bf16 ran, the variant stands, labelled bf16
    bf16_session = {"inference_precision_hint": "bf16", "runtime_precisions": {"bf16": 1}}
    real = dataclasses.replace(
        report, steps=(report.steps[0], step("runtime-bf16", Precision.BF16, bf16_session))
    )
    kept = _variant_from_report(real, target, "bf16", (), Precision.BF16)
    assert not isinstance(kept, Pruned) and kept.precision is Precision.BF16
