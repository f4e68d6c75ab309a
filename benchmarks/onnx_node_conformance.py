"""ONNX's backend node tests through every crossinfer backend: counts per backend, each case's verdict.

Each backend runs in a child process of its own (a runtime that crashes or hangs on one case
costs that case, recorded as "crashed", not the run); results are appended as JSON lines, so a
run stopped half-way resumes where it was. Prints a table and writes JSON.

    uv run --all-extras python benchmarks/onnx_node_conformance.py [--backends torch,jax] \
        [--cases REGEX] [--every K] [--timeout 120] [--out benchmarks/results/onnx_node_conformance.json]

`--every K` runs a deterministic sample, every K-th case in onnx's own order (the first, the
K+1-th, ...), for a backend too slow to run them all (IREE compiles each case: ~3 s here);
`--offsets 0,1` with it takes the cases whose index modulo K is 0 or 1 (two thirds for K=3).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

BACKENDS = ("onnxruntime", "openvino", "torch", "jax", "iree", "reference")
# run only when named (--backends litert): each case is converted by onnx2tf, which needs
# TensorFlow (the litert-convert group) and seconds per case
OPTIONAL_BACKENDS = ("litert",)
RESULTS = Path(__file__).parent / "results"


def worker(backend: str, names: list[str]) -> None:
    """Child: run the named cases in order; print START before and a JSON line after each."""
    warnings.simplefilter("ignore")  # runtimes warn per case (dtype narrowing, experimental ops)
    from crossinfer.conformance import node_cases, run_case

    wanted = set(names)
    cases = {c.name: c for c in node_cases() if c.name in wanted}
    for name in names:
        print(f"START {name}", flush=True)
        start = time.perf_counter()
        result = run_case(backend, cases[name]).as_dict()
        result["seconds"] = round(time.perf_counter() - start, 3)
        print("RESULT " + json.dumps(result), flush=True)


def run_backend(backend: str, names: list[str], log: Path, timeout: float) -> None:
    """Parent: run `names` on `backend` in a child, restarting it after a crash or a hang."""
    remaining = list(names)
    while remaining:
        command = [sys.executable, __file__, "--worker", backend, "--names", ",".join(remaining)]
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
        )
        assert proc.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
        current: str | None = None
        deadline = time.monotonic() + timeout * 4  # the first case also pays the imports
        while True:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                proc.kill()  # this case hung
                proc.wait()
                break
            if line is None:  # the child's stdout closed: it finished or died
                proc.wait()
                break
            if line.startswith("START "):
                current = line[6:].strip()
                deadline = time.monotonic() + timeout
            elif line.startswith("RESULT "):
                result = json.loads(line[7:])
                with log.open("a") as out:
                    out.write(json.dumps(result) + "\n")
                remaining.remove(result["case"])
                current = None
        if current is not None:
            why = "timed out" if proc.returncode in (-9, None) else f"exit code {proc.returncode}"
            with log.open("a") as out:
                out.write(
                    json.dumps(
                        {
                            "case": current,
                            "backend": backend,
                            "outcome": "crashed",
                            "detail": f"the child process died on this case ({why})",
                            "unsupported_ops": [],
                        }
                    )
                    + "\n"
                )
            remaining.remove(current)
        elif proc.returncode not in (0, None) and remaining:
            raise SystemExit(f"{backend}: worker failed before its first case ({proc.returncode})")


def _pump(stream: Any, lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def summarize(results: list[dict[str, Any]], total: int) -> dict[str, Any]:
    by_backend: dict[str, Any] = {}
    for backend in sorted(
        {r["backend"] for r in results}, key=(*BACKENDS, *OPTIONAL_BACKENDS).index
    ):
        rows = [r for r in results if r["backend"] == backend]
        counts = Counter(r["outcome"] for r in rows)
        ops: Counter[str] = Counter()
        for r in rows:
            if r["outcome"] == "unsupported":
                ops.update(r["unsupported_ops"] or [_node_op(r["detail"])])
        skips = Counter(r["detail"] for r in rows if r["outcome"] == "skipped")
        by_backend[backend] = {
            "cases": total,
            "ran": len(rows),
            "runnable": len(rows) - counts.get("skipped", 0),
            **{
                k: counts.get(k, 0)
                for k in ("pass", "fail", "unsupported", "error", "crashed", "skipped")
            },
            "unsupported_ops": dict(ops.most_common()),
            "skip_reasons": dict(skips.most_common()),
        }
    return by_backend


def _node_op(detail: str) -> str:
    match = re.search(r"\(op (\S+), domain (\S+)\)", detail)
    return f"{match.group(1)} (converter refused a case)" if match else "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--cases", default="", help="regex on case names (default: all)")
    parser.add_argument("--every", type=int, default=1, help="run every K-th case only")
    parser.add_argument(
        "--offsets", default="0", help="with --every K: the indices modulo K to run (0,1)"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per case")
    parser.add_argument("--out", type=Path, default=RESULTS / "onnx_node_conformance.json")
    parser.add_argument("--fresh", action="store_true", help="forget earlier results in the log")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--names", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.names.split(","))
        return

    warnings.simplefilter("ignore")
    import onnx

    from crossinfer.conformance import node_cases

    offsets = {int(o) for o in args.offsets.split(",")}
    found = [c.name for c in node_cases() if re.search(args.cases, c.name)]
    names = [n for i, n in enumerate(found) if i % args.every in offsets]
    # the resume log stays out of the repository: one line per case and backend
    log = Path.home() / ".cache" / "crossinfer" / f"{args.out.stem}.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    if args.fresh and log.exists():
        log.unlink()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for backend in args.backends.split(","):
        done = _done(log, backend)
        todo = [n for n in names if n not in done]
        start = time.perf_counter()
        print(f"{backend}: {len(todo)} of {len(names)} cases to run", flush=True)
        if todo:
            run_backend(backend, todo, log, args.timeout)
        print(f"{backend}: {time.perf_counter() - start:.0f} s", flush=True)
    wanted = set(names)
    results = [r for r in _read(log) if r["case"] in wanted]
    summary = summarize(results, len(names))
    report = {
        "onnx": onnx.__version__,
        "cases": len(names),
        "filter": args.cases,
        "sample": "all"
        if args.every == 1
        else f"the cases whose index in onnx's order modulo {args.every} is "
        + " or ".join(map(str, sorted(offsets))),
        "load_average": os.getloadavg(),
        "machine": os.uname().machine,
        "backends": summary,
        # passes are counted above; every other verdict of the converters crossinfer owns is
        # listed with its reason (the runtimes' own are counted; the resume log has them all)
        "not_passed": sorted(
            (r for r in results if r["outcome"] != "pass" and r["backend"] in ("torch", "jax")),
            key=lambda r: (r["backend"], r["case"]),
        ),
    }
    _write(args.out, report)
    print(
        f"\n{'backend':<12} {'pass':>5} {'of runnable':>11} {'fail':>5} {'unsup.':>6} {'error':>5} {'crash':>5} {'skip':>5}"
    )
    for backend, row in summary.items():
        print(
            f"{backend:<12} {row['pass']:>5} {row['runnable']:>11} {row['fail']:>5} "
            f"{row['unsupported']:>6} {row['error']:>5} {row['crashed']:>5} {row['skipped']:>5}"
        )
    print(f"\n{len(names)} cases (onnx {onnx.__version__}); JSON in {args.out}")


def _write(path: Path, report: dict[str, Any]) -> None:
    """Indented summary; one compact line per non-pass (details cut to 200 characters): 2,000+
    verdicts stay a file a diff can show."""
    rows = report.pop("not_passed")
    head = json.dumps(report, indent=1)[:-2]
    lines = [json.dumps({**r, "detail": r["detail"][:200]}, separators=(",", ":")) for r in rows]
    path.write_text(head + ',\n "not_passed": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n")


def _read(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for line in log.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            latest[(r["backend"], r["case"])] = r
    return list(latest.values())


def _done(log: Path, backend: str) -> set[str]:
    return {r["case"] for r in _read(log) if r["backend"] == backend}


if __name__ == "__main__":
    main()
