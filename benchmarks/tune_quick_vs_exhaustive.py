"""`tune --strategy quick` against `--strategy exhaustive`: share of the space measured, wall time,
and how close quick's pick comes to exhaustive's best; and the recommended deployment against the
naive default (ONNX Runtime defaults, FP32, batch 1).

Both strategies share one check and one set of optimized variants (prepared once, as a resumed
tune would), and each measures into its own fresh results store; both measure their three best
candidates a second time. Quick's pick is judged by the exhaustive run's own measurement of the
same candidate, so the ratio compares figures from one run (the machine is noisy and shared);
quick's own figure is printed beside it. "replayed quick" runs quick's search on the exhaustive
run's measurements: the same landscape for both, so it judges the search apart from run-to-run
noise.

    uv run --extra openvino python benchmarks/tune_quick_vs_exhaustive.py \
        [--models "zoo:resnet50,zoo:bert-base?layers=2"] [--backends onnxruntime,openvino]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from crossinfer import discover, load_model
from crossinfer.store import ResultStore
from crossinfer.tune.constraints import Constraints, Objective
from crossinfer.tune.recommend import rank_for, recommend
from crossinfer.tune.runner import NAIVE_DEFAULT, TuneConfig, TuneResult, tune
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
    results: dict[str, TuneResult] = {}
    wall: dict[str, float] = {}
    check = None
    for strategy in ("exhaustive", "quick"):
        config = TuneConfig(**{**base.__dict__, "strategy": strategy})
        store_path = root / f"{strategy}.sqlite"
        store_path.unlink(missing_ok=True)
        start = time.perf_counter()
        with ResultStore(store_path) as store:
            result = tune(
                artifact,
                config,
                out_dir=root / strategy,
                store=store,
                check_report=check,
                on_event=lambda text: print(text, flush=True),
            )
        wall[strategy] = time.perf_counter() - start
        check = result.check
        results[strategy] = result
    exhaustive, quick = results["exhaustive"], results["quick"]
    best = exhaustive.recommendation.pick
    picked = quick.recommendation.pick
    measured_exh = {k: m for k, m in exhaustive.outcome.measured.items() if m is not None}
    row: dict[str, Any] = {
        "model": source,
        "accuracy_budget": budget,
        "accuracy_source": exhaustive.accuracy_source,
        "space": len(exhaustive.space),
        "variants": [v.key for v in exhaustive.variants],
        "pruned": [p.to_dict() for p in exhaustive.space.pruned],
        "exhaustive_measured": len(exhaustive.outcome.measured),
        "quick_measured": len(quick.outcome.measured),
        "quick_share": len(quick.outcome.measured) / len(exhaustive.space),
        "exhaustive_search_s": exhaustive.timings["search"],
        "quick_search_s": quick.timings["search"],
        "exhaustive_wall_s": wall["exhaustive"],
        "quick_wall_s": wall["quick"],
        "prepare_s": exhaustive.timings["optimize"] + exhaustive.timings["check"],
        "exhaustive_pick": best.key if best else None,
        "exhaustive_best": best.value if best else None,
        "quick_pick": picked.key if picked else None,
        "quick_pick_own_value": picked.value if picked else None,
    }
    if best and picked and best.value:
        again = measured_exh.get(picked.key)
        row["quick_pick_in_exhaustive_run"] = again.throughput if again else None
        row["quick_vs_best"] = (again.throughput / best.value) if again else None
        row["quick_own_vs_best"] = (picked.value or 0.0) / best.value
    row.update(_replay(exhaustive))
    naive = measured_exh.get(NAIVE_DEFAULT)
    if best and naive and best.metrics:
        row["naive_default"] = naive.throughput
        row["speedup_over_naive"] = best.metrics.throughput / naive.throughput
        row["pick_p99_ms"] = best.metrics.p99_ms
        row["pick_accuracy_drop"] = best.metrics.accuracy_drop
    return row


def _replay(exhaustive: TuneResult) -> dict[str, Any]:
    """Quick's search replayed on the exhaustive run's own measurements: the same landscape for
    both, so the comparison tests the search, not the noise between two runs minutes apart."""
    landscape = exhaustive.outcome.measured
    space = exhaustive.space
    seed = [c for c in space.candidates if c.key == NAIVE_DEFAULT]
    constraints = exhaustive.recommendation.constraints
    scorer = exhaustive.recommendation.scorer
    replayed = search(
        "quick", space, lambda c: landscape.get(c.key), rank_for(constraints, scorer), seed=seed
    )
    rec = recommend(space, replayed, constraints, scorer)
    best = exhaustive.recommendation.pick
    if rec.pick is None or best is None or not best.value:
        return {"replay_quick_measured": len(replayed.measured), "replay_quick_pick": None}
    return {
        "replay_quick_measured": len(replayed.measured),
        "replay_quick_share": len(replayed.measured) / len(space),
        "replay_quick_pick": rec.pick.key,
        "replay_quick_vs_best": (rec.pick.value or 0.0) / best.value,
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
            _ratio(r.get("quick_vs_best")) + f" (own run {_ratio(r.get('quick_own_vs_best'))})",
            f"{r.get('replay_quick_measured')} measured, {_ratio(r.get('replay_quick_vs_best'))}",
            _ratio(r.get("speedup_over_naive")) + f" ({r.get('naive_default') or 0:,.1f}/s)",
        )
    Console(width=200).print(table)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}x"


if __name__ == "__main__":
    main()
