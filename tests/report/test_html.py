"""The report renders from a constructed tune: every section is there, the figures carry the
measured figures, the pick is highlighted, and plotly.js is inlined (no network to open it)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from crossinfer.backends.base import Precision, Target
from crossinfer.model import load_model
from crossinfer.report.html import SECTIONS, load_result, render_report
from crossinfer.spec import load_spec
from crossinfer.tune.constraints import Constraints, Metrics, Objective, Scorer
from crossinfer.tune.recommend import recommend
from crossinfer.tune.runner import TuneConfig, TuneResult, machine_description, write_outputs
from crossinfer.tune.space import Knobs, Pruned, Variant, build_space
from crossinfer.tune.strategies import SearchOutcome


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.scripts: list[str] = []
        self.script_sources: list[str] = []
        self.pick_rows = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids.append(str(found["id"]))
        if tag == "script":
            self._in_script = True
            self.scripts.append("")
            if found.get("src"):
                self.script_sources.append(str(found["src"]))
        if tag == "tr" and found.get("class") == "pick":
            self.pick_rows += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data


def _metrics(throughput: float, p99: float) -> Metrics:
    return Metrics(
        throughput=throughput,
        p50_ms=p99 / 2,
        p99_ms=p99,
        percentiles_ms={
            "min": p99 / 3,
            "p50": p99 / 2,
            "p90": p99 * 0.8,
            "p99": p99,
            "max": p99 * 2,
        },
        peak_rss_mb=150.0,
        energy_j_per_inference=None,
        energy_method="not measured: no RAPL counter readable",
    )


@pytest.fixture
def result(tmp_path: Path) -> TuneResult:
    artifact = load_model("zoo:mlp")
    target = Target("onnxruntime", "cpu")
    fp32 = Variant(
        target, "fp32", Precision.FP32, artifact.path, artifact.sha256, accuracy_drop=0.0
    )
    int8 = Variant(
        target,
        "int8",
        Precision.FP32,
        tmp_path / "int8.onnx",
        "f" * 64,
        passes=("simplify", "int8-static"),
        accuracy_drop=0.004,
        notes=("0.90x the baseline's throughput: this CPU has no AVX512-VNNI",),
        before={"latency_ms": 1.0, "throughput": 9000.0, "batch_size": 8.0},
        after={"latency_ms": 1.2, "throughput": 8100.0, "batch_size": 8.0},
    )
    space = build_space(
        [fp32, int8],
        (1, 8),
        batchable=True,
        cores=2,
        knobs={"onnxruntime": [Knobs(), Knobs(threads=1, instances=2)]},
        pruned=[Pruned("onnxruntime:cpu/fp16", "optimize", "parity at fp16 tolerance fails")],
    )
    outcome = SearchOutcome("quick", budget=4)
    figures = {
        "onnxruntime:cpu/fp32/batch 1/default threads": _metrics(4000.0, 0.4),
        "onnxruntime:cpu/fp32/batch 8/default threads": _metrics(12345.6, 1.1),
        "onnxruntime:cpu/int8/batch 8/default threads": _metrics(11000.0, 1.3),
        "onnxruntime:cpu/fp32/batch 8/1 threads, x2 instances": _metrics(9000.0, 3.5),
    }
    for candidate in space.candidates:
        if candidate.key in figures:
            outcome.measured[candidate.key] = figures[candidate.key]
        else:
            outcome.skipped[candidate.key] = "not measured: off the hill-climb's path"
    constraints = Constraints(max_p99_ms=3.0)
    rec = recommend(space, outcome, constraints, Scorer(Objective.THROUGHPUT))
    return TuneResult(
        model=artifact,
        config=TuneConfig(constraints=constraints),
        check=None,
        variants=[fp32, int8],
        space=space,
        outcome=outcome,
        recommendation=rec,
        failures={},
        machine=machine_description(),
        timings={"check": 1.0, "optimize": 2.0, "search": 3.0},
        accuracy_source="top-1 on a test set",
    )


def test_report_has_every_section_and_the_figures_carry_the_data(
    result: TuneResult, tmp_path: Path
) -> None:
    write_outputs(result, tmp_path)
    assert result.report_path is not None
    page = _Page()
    page.feed(result.report_path.read_text(encoding="utf-8"))
    for section in SECTIONS:
        assert section in page.ids, section
    plots = [i for i in page.ids if i.startswith("plot-")]
    assert plots == [
        "plot-compatibility",
        "plot-pareto",
        "plot-throughput-vs-batch",
        "plot-latency",
        "plot-optimizations",
    ]
    assert page.script_sources == []  # nothing fetched: plotly.js is inlined
    assert any("plotly.js" in s.lower() and len(s) > 1_000_000 for s in page.scripts)
    pareto = next(s for s in page.scripts if '"plot-pareto"' in s)
    payload = json.loads(re.search(r'"plot-pareto",\s*(\[.*?\]),\s*\{', pareto, re.S).group(1))  # type: ignore[union-attr]
    by_name = {trace["name"]: trace for trace in payload}
    assert by_name["pick"]["y"] == [12345.6]
    assert by_name["pick"]["marker"]["symbol"] == "star"
    assert "onnxruntime:cpu/fp32/batch 8/default threads" in by_name["pick"]["text"]
    assert "Pareto front" in by_name
    optimizations = next(s for s in page.scripts if '"plot-optimizations"' in s)
    assert "9000" in optimizations and "8100" in optimizations
    assert page.pick_rows == 1


def test_summary_names_the_spec_and_the_command_to_serve_it(
    result: TuneResult, tmp_path: Path
) -> None:
    write_outputs(result, tmp_path)
    html = result.report_path.read_text(encoding="utf-8")  # type: ignore[union-attr]
    assert result.spec_path is not None
    assert f"uv run --extra serve crossinfer serve {result.spec_path}" in html
    assert "p99 &lt;= 3 ms" in html
    assert "this machine&#x27;s price was not given" in html
    spec = load_spec(result.spec_path)
    assert spec.batching.max_batch_size == 8 and spec.measured["throughput"] == 12345.6
    # the report can be drawn again from tune.json alone
    data = load_result(tmp_path)
    assert render_report(data).count('class="pick"') == 1


def test_no_feasible_candidate_shows_the_nearest(result: TuneResult, tmp_path: Path) -> None:
    strict = Constraints(max_p99_ms=0.1)
    result.recommendation = recommend(
        result.space, result.outcome, strict, Scorer(Objective.THROUGHPUT)
    )
    write_outputs(result, tmp_path)
    html = result.report_path.read_text(encoding="utf-8")  # type: ignore[union-attr]
    assert "No candidate meets the constraints" in html
    assert "p99 0.40 ms &gt; 0.1 ms allowed (+300%)" in html
    assert result.spec_path is None


def test_report_data_is_plain_json(result: TuneResult, tmp_path: Path) -> None:
    data: dict[str, Any] = json.loads(json.dumps(result.to_dict(), default=str))
    assert data["recommendation"]["pick"] == "onnxruntime:cpu/fp32/batch 8/default threads"
    assert data["measured"] == 4 and data["space_size"] == 8
    assert data["pruned"][0]["what"] == "onnxruntime:cpu/fp16"


def test_hardware_not_present_appears_as_predicted_rows(result: TuneResult, tmp_path: Path) -> None:
    from crossinfer.hardware.catalog import load_catalog
    from crossinfer.predict import predicted_rows

    result.predicted = predicted_rows(
        result.model, catalog=load_catalog(), precisions=("fp32", "int8")
    )
    write_outputs(result, tmp_path)
    html = result.report_path.read_text(encoding="utf-8")  # type: ignore[union-attr]
    assert "Other hardware (predicted)" in html
    assert "<td>NVIDIA H100 SXM *</td><td>predicted</td>" in html
    data = load_result(tmp_path)
    rows = {row["hardware"]: row for row in data["predicted"]}
    assert rows["c7a.large"]["predicted"] is True
    assert rows["c7a.large"]["precision"] == "int8"  # the faster of the two asked for
    assert rows["c7a.large"]["cost_per_million"] > 0
    # cheapest per million first; devices without a price last
    priced = [r["cost_per_million"] for r in data["predicted"] if r["cost_per_million"]]
    assert priced == sorted(priced)
    assert data["predicted"][-1]["cost_per_million"] is None
