"""A tune of torch on the CPU searches eager and torch.compile as knobs: both are measured, the
compile shows as seconds of set-up in tune.json, the report and the store, and the spec runs the
mode that was picked. One compile of zoo:mlp (10-30 s here): kept to one test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crossinfer.backends.base import Target
from crossinfer.model import load_model
from crossinfer.spec import load_spec
from crossinfer.store import ResultStore
from crossinfer.tune.runner import TuneConfig, tune

pytest.importorskip("torch")


def test_a_torch_cpu_tune_measures_eager_and_compile_and_shows_compile_seconds(
    tmp_path: Path,
) -> None:
    config = TuneConfig(
        targets=(Target("torch", "cpu"),),
        precisions=("fp32",),
        batch_sizes=(2,),
        strategy="exhaustive",
        measure_ms=200,
        confirm=0,
        timeout_s=300,
    )
    with ResultStore(tmp_path / "store.sqlite") as store:
        result = tune(load_model("zoo:mlp"), config, out_dir=tmp_path / "out", store=store)
        rows = store.query(backend="torch")
    assert [v.key for v in result.variants] == ["torch:cpu/fp32"]
    eager = result.outcome.measured["torch:cpu/fp32/batch 2/mode=eager, default threads"]
    compiled = result.outcome.measured["torch:cpu/fp32/batch 2/mode=compile, default threads"]
    assert eager is not None and compiled is not None
    assert eager.throughput > 0 and compiled.throughput > 0
    assert compiled.compile_s is not None and compiled.compile_s > 0
    assert eager.compile_s is not None and eager.compile_s > 0

    by_mode = {r.result.settings["options"]["mode"]: r.result for r in rows}
    assert sorted(by_mode) == ["compile", "eager"]
    # the session's own account: torch.compile's time for the first shape it saw
    assert by_mode["compile"].settings["runtime"]["mode"] == "compile"
    assert by_mode["compile"].settings["runtime"]["compile_s"]

    data = json.loads((tmp_path / "out" / "tune.json").read_text())
    shown = {
        c["knobs"]["options"]["mode"]: c["metrics"]["compile_s"]
        for c in data["recommendation"]["candidates"]
    }
    assert shown == {"eager": eager.compile_s, "compile": compiled.compile_s}
    html = (tmp_path / "out" / "report.html").read_text()
    assert "compile s" in html and f"{compiled.compile_s:,.1f}" in html

    pick = result.recommendation.pick
    assert pick is not None and result.spec_path is not None
    spec = load_spec(result.spec_path)
    assert dict(spec.options.extra) == pick.candidate.knobs.extra  # serve runs the same mode
