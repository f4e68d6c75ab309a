"""crossinfer serve before and after a change, and its gRPC against its HTTP, in alternating rounds.

Two `crossinfer serve zoo:mlp --threads 1` processes run at once: "base" from a source tree given
with --base-src (e.g. `git archive <commit> src | tar -x -C /tmp/base`), "new" from this checkout.
Each round visits both: wrk (KServe v2 JSON, 1 and 16 connections, bounded seconds) and
perf_analyzer (binary tensors, HTTP then gRPC, concurrency 1,2,4,8, bounded windows). Rounds
alternate so load drift on a shared machine hits both alike; the load average is recorded with
every measurement, and the report gives each figure's median and its min-max over the rounds.

    git archive <commit> src | tar -x -C /tmp/base
    uv run --all-extras python benchmarks/serve_edges_ab.py --base-src /tmp/base/src
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import urllib.request
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from serve_common import RESULTS, crossinfer_serve, machine, v2_json_body, wrk  # a sibling script

from crossinfer.errors import PerfAnalyzerError
from crossinfer.serve.perf import locate_perf_analyzer

PERF_ARGS = [
    "--concurrency-range",
    "1:8:1",
    "--measurement-interval",
    "1000",
    "--max-trials",
    "4",
    # a loaded 2-core machine does not hold even a 100% band for 3 windows; the rounds and
    # their spread are the measure of noise here, so any 3 windows are taken
    "--stability-percentage",
    "999",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-src", type=Path, required=True, help="the baseline's src/ folder")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run")
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_edges_ab.json")
    args = parser.parse_args()
    perf = locate_perf_analyzer()
    body = v2_json_body({"features": np.full((1, 784), 0.5, np.float32)})
    samples: dict[str, dict[int, float]] = defaultdict(dict)  # figure -> round -> value
    loads: list[float] = []
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        servers = {}
        for label, src in (("base", str(args.base_src.resolve())), ("new", None)):
            saved = os.environ.get("PYTHONPATH")
            if src is not None:
                os.environ["PYTHONPATH"] = src  # ahead of the editable install of this checkout
            try:
                servers[label] = stack.enter_context(
                    crossinfer_serve("zoo:mlp", "mlp", "--threads", "1")
                )
            finally:
                if saved is None:
                    os.environ.pop("PYTHONPATH", None)
                else:
                    os.environ["PYTHONPATH"] = saved
        for rnd in range(args.rounds):
            order = list(servers.items()) if rnd % 2 == 0 else list(reversed(servers.items()))
            for label, serve in order:
                for connections in (1, 16):
                    loads.append(os.getloadavg()[0])
                    before = _served(serve)
                    result = wrk(
                        f"http://{serve.http}/v2/models/mlp/infer",
                        body,
                        seconds=args.seconds,
                        connections=connections,
                        workdir=Path(tmp),
                    )
                    samples[f"{label} wrk c{connections} req/s"][rnd] = result.rps
                    samples[f"{label} wrk c{connections} server cpu us/req"][rnd] = _cost(
                        serve, before
                    )
                    print(rnd, label, f"wrk c{connections}", f"{result.rps:.0f} req/s", flush=True)
                for protocol in ("http", "grpc"):
                    loads.append(os.getloadavg()[0])
                    url = serve.http if protocol == "http" else serve.grpc
                    before = _served(serve)
                    try:
                        rows, _ = perf.run("mlp", url, protocol, PERF_ARGS, timeout_s=240)
                    except PerfAnalyzerError as exc:
                        print(rnd, label, protocol, "failed:", str(exc)[-200:], flush=True)
                        continue
                    for row in rows:
                        key = f"{label} perf {protocol} c{row.concurrency} req/s"
                        samples[key][rnd] = row.throughput
                    samples[f"{label} perf {protocol} server cpu us/req"][rnd] = _cost(
                        serve, before
                    )
                    print(
                        rnd,
                        label,
                        protocol,
                        {r.concurrency: round(r.throughput) for r in rows},
                        flush=True,
                    )
    report: dict[str, Any] = {
        "machine": machine(),
        "load_average_1min": {"min": min(loads), "max": max(loads)},
        "rounds": args.rounds,
        "figures": {
            key: {**_spread(list(v.values())), "by_round": v} for key, v in sorted(samples.items())
        },
    }
    ratios: dict[str, Any] = {}
    for key in sorted(samples):
        if key.startswith("new ") and f"base {key[4:]}" in samples:
            ratios[f"new/base {key[4:]}"] = _ratio(samples[key], samples[f"base {key[4:]}"])
        if " perf grpc " in key:
            http = key.replace(" perf grpc ", " perf http ")
            if http in samples:
                ratios[key.replace("perf grpc", "grpc/http")] = _ratio(samples[key], samples[http])
    report["ratios"] = ratios
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    for key, value in [*ratios.items(), *report["figures"].items()]:
        if key in ratios or "cpu" in key:
            print(f"{key}: {value['median']:.2f} ({value['min']:.2f}-{value['max']:.2f})")
    print(f"load average {min(loads):.1f}-{max(loads):.1f}; written {args.out}")


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _ratio(top: dict[int, float], bottom: dict[int, float]) -> dict[str, float]:
    """top / bottom of the same round (rounds where either failed are left out)."""
    values = [top[r] / bottom[r] for r in top if bottom.get(r)]
    return _spread(values) if values else {"median": float("nan"), "min": 0.0, "max": 0.0}


def _served(serve: Any) -> tuple[float, int]:
    """The server process's CPU seconds so far and the requests it has answered."""
    with urllib.request.urlopen(f"http://{serve.http}/v2/models/mlp/stats", timeout=30) as r:
        stats = json.loads(r.read())["model_stats"][0]["inference_stats"]
    answered = int(stats["success"]["count"]) + int(stats["fail"]["count"])
    fields = Path(f"/proc/{serve.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return cpu, answered


def _cost(serve: Any, before: tuple[float, int]) -> float:
    """Server CPU microseconds per request since `before` (less sensitive to load than req/s)."""
    cpu, answered = _served(serve)
    return 1e6 * (cpu - before[0]) / max(answered - before[1], 1)


if __name__ == "__main__":
    main()
