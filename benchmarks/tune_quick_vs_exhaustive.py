"""`tune --strategy quick` against `--strategy exhaustive`: share of the space measured, wall time,
and how close quick's pick comes to exhaustive's best; and the recommended deployment against the
naive default (ONNX Runtime defaults, FP32, batch 1).

Both strategies share one check and one set of optimized variants (prepared once, as a resumed
tune would), and each measures into its own fresh results store; both measure their three best
candidates a second time. Quick's live pick is judged on the same landscape as exhaustive's: the
naive default, exhaustive's pick and quick's pick are measured again in turns (3 s each, --rounds
rounds), and by the exhaustive run's own measurement of quick's pick; quick's own figure is
printed beside them. Load averages are recorded with each phase (the machine is shared). "replayed quick" runs quick's search on the exhaustive
run's measurements: the same landscape for both, so it judges the search apart from run-to-run
noise.

    uv run --extra openvino python benchmarks/tune_quick_vs_exhaustive.py \
        [--models "zoo:resnet50,zoo:bert-base?layers=2"] [--backends onnxruntime,openvino]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from crossinfer import discover, load_model
from crossinfer.backends.base import Precision, SessionOptions, Target
from crossinfer.bench.runner import BenchPlan, run_benchmark
from crossinfer.store import ResultStore
from crossinfer.tune.constraints import Constraints, Metrics, Objective, Scorer
from crossinfer.tune.recommend import rank_for, recommend
from crossinfer.tune.runner import NAIVE_DEFAULT, TuneConfig, tune
from crossinfer.tune.space import Variant, build_space
from crossinfer.tune.strategies import search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="zoo:resnet50,zoo:bert-base?layers=2")
    parser.add_argument("--backends", default="onnxruntime,openvino")
    parser.add_argument("--batch", default="1,4,8,16,32")
    parser.add_argument("--precisions", default="fp32,fp16,bf16,int8")
    parser.add_argument(
        "--max-accuracy-drop",
        default="zoo:resnet50=0.01",
        help="MODEL=FRACTION,...: top-1 budget per model (agreement with FP32 where no labels)",
    )
    parser.add_argument("--measure-ms", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="pick vs naive default, in turns")
    parser.add_argument(
        "--reuse-exhaustive",
        action="store_true",
        help="take the exhaustive results from an earlier run's tune.json in --work",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "crossinfer-tune-bench",
        help="optimized models and stores (hundreds of MB for resnet50): kept out of the repo",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).parent / "results" / "tune_quick_vs_exhaustive.json",
    )
    args = parser.parse_args()
    budgets = dict(item.split("=", 1) for item in args.max_accuracy_drop.split(",") if item)

    system = discover()
    machine = (
        f"{system.cpu.model_name}, {system.cpu.logical_cores} logical cores, {platform.platform()}"
    )
    rows: list[dict[str, Any]] = []
    for source in args.models.split(","):
        rows.append(_compare(source, args, budgets.get(source), args.work))
        _print(rows, machine)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    print(f"written: {args.out}")


def _compare(
    source: str, args: argparse.Namespace, budget: str | None, work: Path
) -> dict[str, Any]:
    artifact = load_model(source)
    slug = source.removeprefix("zoo:").replace("?", "-").replace("=", "").replace("&", "-")
    root = work / slug
    base = TuneConfig(
        backends=tuple(args.backends.split(",")),
        precisions=tuple(args.precisions.split(",")),
        batch_sizes=tuple(int(b) for b in args.batch.split(",")),
        objective=Objective.THROUGHPUT,
        constraints=Constraints(max_accuracy_drop=float(budget) if budget else None),
        measure_ms=args.measure_ms,
        fresh=True,
        variants_dir=root / "variants",  # shared: the second strategy reuses the optimized models
    )
    data: dict[str, dict[str, Any]] = {}
    loads: dict[str, list[float]] = {}
    check = None
    for strategy in ("exhaustive", "quick"):
        loads[f"{strategy}_start"] = _load()
        saved = root / strategy / "tune.json"
        if strategy == "exhaustive" and args.reuse_exhaustive and saved.is_file():
            data[strategy] = json.loads(saved.read_text())
            print(f"{source}: exhaustive results reused from {saved}", flush=True)
            continue
        config = TuneConfig(**{**base.__dict__, "strategy": strategy})
        store_path = root / f"{strategy}.sqlite"
        store_path.unlink(missing_ok=True)
        with ResultStore(store_path) as store:
            result = tune(
                artifact,
                config,
                out_dir=root / strategy,
                store=store,
                check_report=check,
                on_event=lambda text: print(text, flush=True),
            )
        check = result.check
        data[strategy] = result.to_dict()
        loads[f"{strategy}_end"] = _load()
    row = _row(source, budget, data["exhaustive"], data["quick"])
    row.update(_head_to_head(data["exhaustive"], data["quick"], root / "head-to-head", args.rounds))
    loads["head_to_head_end"] = _load()
    row["load_average"] = loads
    return row


def _head_to_head(
    exhaustive: dict[str, Any], quick: dict[str, Any], log_root: Path, rounds: int
) -> dict[str, Any]:
    """The naive default, exhaustive's pick and quick's live pick, measured in turns (A B C A B C
    ...), 3 s each: ratios of the medians, so a load change on the shared machine falls on all
    alike and quick is judged on the same landscape as exhaustive."""
    pick, quick_pick = exhaustive["recommendation"]["pick"], quick["recommendation"]["pick"]
    landscape = _landscape(exhaustive)
    if pick is None or NAIVE_DEFAULT not in landscape:
        return {}
    models = {v["key"]: v for v in exhaustive["variants"]}
    keys = list(dict.fromkeys([NAIVE_DEFAULT, pick, *([quick_pick] if quick_pick else [])]))
    keys = [k for k in keys if k in landscape]
    figures: dict[str, list[float]] = {key: [] for key in keys}
    for _ in range(rounds):
        for key in keys:
            candidate = landscape[key]
            variant = models[candidate["variant"]]
            knobs = candidate["knobs"]
            run = run_benchmark(
                load_model(variant["model"]),
                Target.parse(candidate["target"]),
                plan=BenchPlan(
                    scenarios=("offline",),
                    batch_sizes=(candidate["batch_size"],),
                    quick=True,
                    instances=knobs["instances"],
                    min_duration_ms=3000,
                ),
                options=SessionOptions(
                    precision=Precision(variant["precision"]),
                    threads=knobs["threads"],
                    performance_hint=knobs["performance_hint"],
                    streams=knobs["streams"],
                ),
                log_root=log_root,
            )
            if run.results:
                figures[key].append(run.results[0].throughput)
                print(f"head-to-head {key}: {run.results[0].throughput:,.1f} samples/s", flush=True)
    if not figures[pick] or not figures[NAIVE_DEFAULT]:
        return {}
    median = {key: statistics.median(f) for key, f in figures.items() if f}
    row: dict[str, Any] = {
        "head_to_head_naive": figures[NAIVE_DEFAULT],
        "head_to_head_pick": figures[pick],
        "head_to_head_speedup": median[pick] / median[NAIVE_DEFAULT],
    }
    if quick_pick in median:
        row["head_to_head_quick_pick"] = figures[quick_pick]
        row["quick_vs_best_in_turns"] = median[quick_pick] / median[pick]
    return row


def _load() -> list[float]:
    """The load averages (1, 5, 15 min): this machine is shared, so they go beside each figure."""
    return [round(x, 2) for x in os.getloadavg()]


def _landscape(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["key"]: c for c in data["recommendation"]["candidates"] if c.get("metrics")}


def _row(
    source: str, budget: str | None, exhaustive: dict[str, Any], quick: dict[str, Any]
) -> dict[str, Any]:
    exh = _landscape(exhaustive)
    best_key, picked_key = exhaustive["recommendation"]["pick"], quick["recommendation"]["pick"]
    best = exh.get(best_key) if best_key else None
    picked = _landscape(quick).get(picked_key) if picked_key else None
    row: dict[str, Any] = {
        "model": source,
        "accuracy_budget": budget,
        "accuracy_source": exhaustive["accuracy_source"],
        "space": exhaustive["space_size"],
        "variants": [v["key"] for v in exhaustive["variants"]],
        "pruned": exhaustive["pruned"],
        "exhaustive_measured": exhaustive["measured"],
        "exhaustive_runs": exhaustive.get("runs"),
        "quick_measured": quick["measured"],
        "quick_runs": quick.get("runs"),
        "quick_share": quick["measured"] / exhaustive["space_size"],
        "quick_path": quick["search_path"],
        "exhaustive_search_s": exhaustive["timings_s"]["search"],
        "quick_search_s": quick["timings_s"]["search"],
        "prepare_s": exhaustive["timings_s"]["optimize"] + exhaustive["timings_s"]["check"],
        "exhaustive_started": exhaustive["started_at"],
        "quick_started": quick["started_at"],
        "exhaustive_pick": best_key,
        "exhaustive_best": best["value"] if best else None,
        "exhaustive_best_runs": best["metrics"].get("runs") if best else None,
        # the whole landscape (samples/s, runs), best first: what the replay and any later
        # analysis rest on (the stores under --work are not kept)
        "exhaustive_landscape": {
            key: [round(c["metrics"]["throughput"], 2), c["metrics"].get("runs")]
            for key, c in sorted(exh.items(), key=lambda kv: -kv[1]["metrics"]["throughput"])
        },
        "quick_pick": picked_key,
        "quick_pick_own_value": picked["value"] if picked else None,
    }
    if best and picked and best["value"]:
        again = exh.get(picked["key"])
        row["quick_pick_in_exhaustive_run"] = again["metrics"]["throughput"] if again else None
        row["quick_vs_best"] = again["metrics"]["throughput"] / best["value"] if again else None
        row["quick_own_vs_best"] = picked["value"] / best["value"]
    row.update(_replay(exhaustive))
    naive = exh.get(NAIVE_DEFAULT)
    if best and naive:
        row["naive_default"] = naive["metrics"]["throughput"]
        row["speedup_over_naive"] = best["metrics"]["throughput"] / naive["metrics"]["throughput"]
        row["pick_p99_ms"] = best["metrics"]["p99_ms"]
        row["pick_accuracy_drop"] = best["metrics"]["accuracy_drop"]
    return row


def _replay(exhaustive: dict[str, Any]) -> dict[str, Any]:
    """Quick's search replayed on the exhaustive run's own measurements: the same landscape for
    both, so the comparison tests the search, not the noise between two runs minutes apart."""
    variants = [
        Variant(
            target=Target.parse(v["target"]),
            recipe=v["recipe"],
            precision=Precision(v["precision"]),
            model_path=Path(v["model"]),
            model_sha256=v["model_sha256"],
            accuracy_drop=v["accuracy_drop"],
            prior_latency_ms=v.get("prior_latency_ms"),
            prior_source=v.get("prior_source", ""),
        )
        for v in exhaustive["variants"]
    ]
    space = build_space(
        variants,
        exhaustive["config"]["batch_sizes"],
        batchable=True,
        cores=exhaustive["machine"]["logical_cores"],
    )
    landscape = {
        key: Metrics(**{**c["metrics"], "notes": tuple(c["metrics"]["notes"])})
        for key, c in _landscape(exhaustive).items()
    }
    constraints = Constraints(**exhaustive["recommendation"]["constraints"])
    scorer = Scorer(Objective.THROUGHPUT)
    seed = [c for c in space.candidates if c.key == NAIVE_DEFAULT]
    replayed = search(
        "quick", space, lambda c: landscape.get(c.key), rank_for(constraints, scorer), seed=seed
    )
    rec = recommend(space, replayed, constraints, scorer)
    best = exhaustive["recommendation"]["pick"]
    best_value = landscape[best].throughput if best in landscape else None
    if rec.pick is None or not best_value:
        return {"replay_quick_measured": len(replayed.measured), "replay_quick_pick": None}
    return {
        "replay_quick_measured": len(replayed.measured),
        "replay_quick_share": len(replayed.measured) / len(space),
        "replay_quick_pick": rec.pick.key,
        "replay_quick_path": replayed.path,
        "replay_quick_vs_best": (rec.pick.value or 0.0) / best_value,
    }


def _print(rows: list[dict[str, Any]], machine: str) -> None:
    table = Table(title=f"tune quick vs exhaustive ({machine})", title_justify="left")
    for name in (
        "model",
        "space",
        "quick measured",
        "search s (exh / quick)",
        "exhaustive pick",
        "quick pick",
        "quick / best",
        "replayed quick",
        "pick / naive",
    ):
        table.add_column(name)
    for r in rows:
        table.add_row(
            r["model"],
            str(r["space"]),
            f"{r['quick_measured']} ({r['quick_share']:.0%})",
            f"{r['exhaustive_search_s']:.0f} / {r['quick_search_s']:.0f}",
            f"{r['exhaustive_pick']} ({r['exhaustive_best'] or 0:,.1f}/s)",
            f"{r['quick_pick']} ({r['quick_pick_own_value'] or 0:,.1f}/s own run)",
            _ratio(r.get("quick_vs_best_in_turns"))
            + f" in turns; {_ratio(r.get('quick_vs_best'))} in exhaustive's run"
            + f" (own run {_ratio(r.get('quick_own_vs_best'))})",
            f"{r.get('replay_quick_measured')} measured, {_ratio(r.get('replay_quick_vs_best'))}",
            _ratio(r.get("head_to_head_speedup"))
            + f" in turns; {_ratio(r.get('speedup_over_naive'))} in the search",
        )
    Console(width=200).print(table)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}x"


if __name__ == "__main__":
    main()
