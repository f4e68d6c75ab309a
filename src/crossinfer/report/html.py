"""The tune report: one self-contained HTML file (plotly.js inlined, no network needed to open it)
drawn from tune.json: the pick and why, the figures, every candidate's fate, the machine.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

import plotly.io as pio

from crossinfer.errors import ReportError
from crossinfer.report.figures import all_figures

Data = Mapping[str, Any]
SECTIONS = (
    "summary",
    "compatibility",
    "pareto",
    "throughput-vs-batch",
    "latency",
    "optimizations",
    "candidates",
    "pruned",
    "machine",
)
_STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 0 auto;
       max-width: 1180px; padding: 0 24px 48px; color: #222; }
h1 { margin-top: 28px; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 36px; }
table { border-collapse: collapse; font-size: 13px; width: 100%; }
th, td { border-bottom: 1px solid #eee; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f6f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.pick td { background: #fdecea; font-weight: 600; }
.note { color: #555; font-size: 13px; } .cmd { background: #f3f3f3; padding: 8px 12px;
       font-family: ui-monospace, monospace; border-radius: 4px; display: block; }
.kv td:first-child { color: #555; width: 240px; }
"""


def load_result(path: Path) -> dict[str, Any]:
    """Read tune.json (or the folder holding it)."""
    if path.is_dir():
        path = path / "tune.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReportError(
            f"{path} is not a readable tune result ({exc}): give the tune.json that "
            "`crossinfer tune` wrote, or its folder"
        ) from exc
    if "recommendation" not in data or "variants" not in data:
        raise ReportError(f"{path} is JSON but not a tune result (no 'recommendation')")
    return data


def write_report(data: Data, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render_report(data), encoding="utf-8")
    tmp.replace(path)
    return path


def render_report(data: Data) -> str:
    model = data["model"]["source"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>crossinfer tune: {escape(model)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>crossinfer tune: {escape(model)}</h1>",
        _summary(data),
    ]
    first = True
    for section, heading, figure in all_figures(data):
        html = pio.to_html(
            figure,
            full_html=False,
            include_plotlyjs=first,  # plotly.js once, inlined: the file opens offline
            div_id=f"plot-{section}",
            config={"displaylogo": False, "responsive": True},
        )
        first = False
        parts.append(
            f'<section id="{section}"><h2>{escape(heading)}</h2>{_intro(section, data)}{html}</section>'
        )
    parts.append(_candidates(data))
    parts.append(_pruned(data))
    parts.append(_predicted(data))
    parts.append(_machine(data))
    parts.append("</body></html>")
    return "\n".join(parts)


# --------------------------------------------------------------------------- sections


def _summary(data: Data) -> str:
    rec = data["recommendation"]
    config = data["config"]
    pick_key = rec["pick"]
    pick = next((c for c in rec["candidates"] if c["key"] == pick_key), None)
    rows: list[tuple[str, str]] = [
        ("objective", f"{rec['objective']}"),
        ("constraints", _constraints(rec["constraints"])),
        (
            "strategy",
            f"{config['strategy']}: measured {data['measured']} of {data['space_size']} candidates"
            + (f" ({data['resumed']} read back from the store)" if data.get("resumed") else "")
            + (f", budget {config['budget']}" if config["strategy"] == "quick" else ""),
        ),
        ("accuracy", data["accuracy_source"]),
    ]
    if pick is not None:
        m = pick["metrics"]
        rows[0:0] = [
            ("recommended", pick_key),
            (
                "measured",
                f"{m['throughput']:,.1f} samples/s, p99 {m['p99_ms']:.2f} ms per batch run, "
                f"peak memory {m['peak_rss_mb']:,.0f} MB"
                + (
                    f", set-up (compile) {m['compile_s']:,.1f} s"
                    if m.get("compile_s") is not None
                    else ""
                )
                + (
                    f", cost {pick['value']:.4g} USD per million"
                    if rec["objective"] == "cost"
                    else ""
                ),
            ),
        ]
        energy = m.get("energy_j_per_inference")
        rows.insert(
            2,
            (
                "energy",
                f"{energy:.4g} J per inference ({m['energy_method']})"
                if energy is not None
                else m["energy_method"],
            ),
        )
        speedup = data.get("speedup_over_naive_default")
        if speedup:
            rows.insert(
                2,
                (
                    "against the naive default",
                    f"{speedup:.2f}x the throughput of {data['naive_default']}",
                ),
            )
    body = _kv(rows)
    if pick is None:
        nearest = [c for c in rec["candidates"] if c["key"] in rec["nearest"]]
        body += "<p><b>No candidate meets the constraints.</b> The nearest:</p>" + _table(
            ["candidate", "misses"], [[c["key"], "; ".join(c["violations"])] for c in nearest]
        )
    for note in rec.get("notes", []):
        body += f'<p class="note">{escape(note)}</p>'
    if data.get("spec"):
        body += (
            f"<p>Deployment spec: <code>{escape(data['spec'])}</code>; serve it with</p>"
            f'<code class="cmd">uv run --extra serve crossinfer serve {escape(data["spec"])}</code>'
        )
    return f'<section id="summary"><h2>Recommendation</h2>{body}</section>'


def _intro(section: str, data: Data) -> str:
    text = {
        "compatibility": "Each runtime x device found, at each precision asked for: the best "
        "throughput measured, or why it was left out (hover a cell).",
        "pareto": "Every measured candidate: no point on the front is beaten on both axes by "
        "another. Latency is per batch run (LoadGen Offline); serving adds queueing.",
        "throughput-vs-batch": "Short LoadGen Offline runs (not compliant MLPerf runs).",
        "latency": "Percentiles of the time of one batch run, for the pick, the naive default "
        "and the best setting of each variant.",
        "optimizations": "optimize's own re-proof of each recipe on its target: parity passed, "
        "then throughput at batch 8 before and after.",
    }.get(section, "")
    return f'<p class="note">{escape(text)}</p>' if text else ""


def _candidates(data: Data) -> str:
    rec = data["recommendation"]
    rows = []
    classes = []
    for c in sorted(rec["candidates"], key=_order):
        m = c.get("metrics") or {}
        rows.append(
            [
                c["key"],
                c["status"],
                _num(m.get("throughput"), "{:,.1f}"),
                _num(m.get("p99_ms"), "{:.2f}"),
                _num(m.get("peak_rss_mb"), "{:,.0f}"),
                _num(m.get("accuracy_drop"), "{:.2%}"),
                _num(m.get("compile_s"), "{:,.1f}"),
                "; ".join(c["reasons"]),
            ]
        )
        classes.append("pick" if c["status"] == "pick" else "")
    table = _table(
        ["candidate", "status", "samples/s", "p99 ms", "peak MB", "acc. drop", "compile s", "why"],
        rows,
        numeric={2, 3, 4, 5, 6},
        row_classes=classes,
    )
    note = (
        "compile s: the session's set-up before its first result (load or conversion, then each "
        "input shape's first call: compile or CUDA graph capture), paid again by every process "
        "that serves it"
    )
    total = data.get("compile_s_total")
    if total:
        note += f"; this tune's measurements spent {total:,.0f} s on it"
    return (
        '<section id="candidates"><h2>Every candidate and its reason</h2>'
        f'<p class="note">{escape(note)}</p>{table}</section>'
    )


def _pruned(data: Data) -> str:
    rows = [[p["what"], p["stage"], p["reason"]] for p in data["pruned"]]
    body = _table(["left out", "stage", "reason"], rows) if rows else "<p>Nothing was pruned.</p>"
    return f'<section id="pruned"><h2>Pruned before measuring</h2>{body}</section>'


def _predicted(data: Data) -> str:
    """Hardware not present: predicted rows (crossinfer predict), never mixed with measured ones."""
    predicted = data.get("predicted") or []
    if not predicted:
        return ""
    if "unavailable" in predicted[0]:  # the prediction failed: say why, measured rows stand
        why = escape(predicted[0]["unavailable"])
        return f'<section id="predicted"><h2>Other hardware</h2><p>{why}</p></section>'
    rows = [
        [
            p["hardware"] + (" *" if p["unconfirmed"] else ""),
            "predicted",
            p["precision"],
            _num(p["best_throughput"], "{:,.0f}"),
            str(p["best_batch"]),
            _num(p["batch1_latency_ms"], "{:.3f}"),
            _num(p["cost_per_million"], "{:.3f}"),
            p["throughput_bound"],
            p["error"],
        ]
        for p in predicted
    ]
    table = _table(
        ["hardware", "kind", "precision", "samples/s", "best batch", "batch-1 ms", "$ / M inf.",
         "bound", "expected error"],
        rows,
        numeric={3, 4, 5, 6},
    )  # fmt: skip
    note = (
        "Predicted, not measured: a roofline per fused group at the hardware catalog's peak "
        "figures times efficiency factors fitted from the results store's measured runs "
        "(crossinfer predict). Cost per million inferences at the catalog's on-demand price "
        "and the best batch. * rests on catalog figures marked unconfirmed."
    )
    return (
        '<section id="predicted"><h2>Other hardware (predicted)</h2>'
        f'<p class="note">{escape(note)}</p>{table}</section>'
    )


def _machine(data: Data) -> str:
    machine = data["machine"]
    rows = [
        ("CPU", f"{machine['cpu']} ({machine['logical_cores']} logical cores)"),
        ("memory", f"{machine['memory_bytes'] / 2**30:.1f} GiB"),
        ("ISA features", ", ".join(machine["isa_features"]) or "-"),
        ("GPUs", ", ".join(machine["gpus"]) or "none"),
        ("hardware fingerprint", machine["fingerprint_key"]),
        ("crossinfer", machine["crossinfer"]),
    ]
    rows += [(name, version) for name, version in sorted(machine["runtime_versions"].items())]
    price = data["config"].get("price")
    rows.append(
        (
            "price",
            f"{price['per_hour']:g} USD/hour: {price['source']}"
            if price
            else "unknown: this machine's price was not given (--instance or --price-per-hour)",
        )
    )
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in data.get("timings_s", {}).items())
    rows.append(("time taken", timings))
    rows.append(("tuned at", data.get("started_at", "")))
    return f'<section id="machine"><h2>Machine and versions</h2>{_kv(rows)}</section>'


# --------------------------------------------------------------------------- html helpers


def _order(c: Data) -> tuple[int, float]:
    rank = {"pick": 0, "meets constraints": 1, "rejected": 2, "failed": 3, "not measured": 4}
    m = c.get("metrics") or {}
    return rank.get(c["status"], 5), -(m.get("throughput") or 0.0)


def _constraints(constraints: Mapping[str, Any]) -> str:
    parts = []
    if constraints.get("max_p99_ms") is not None:
        parts.append(f"p99 <= {constraints['max_p99_ms']:g} ms")
    if constraints.get("max_accuracy_drop") is not None:
        parts.append(f"accuracy drop <= {constraints['max_accuracy_drop'] * 100:g} points")
    if constraints.get("max_memory_mb") is not None:
        parts.append(f"peak memory <= {constraints['max_memory_mb']:g} MB")
    return ", ".join(parts) or "none"


def _num(value: Any, pattern: str) -> str:
    return "" if value is None else pattern.format(value)


def _kv(rows: Iterable[tuple[str, str]]) -> str:
    body = "".join(f"<tr><td>{escape(k)}</td><td>{escape(str(v))}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    numeric: set[int] | None = None,
    row_classes: Sequence[str] | None = None,
) -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = row_classes[i] if row_classes else ""
        cells = "".join(
            f'<td class="num">{escape(str(v))}</td>'
            if j in numeric
            else f"<td>{escape(str(v))}</td>"
            for j, v in enumerate(row)
        )
        body.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
