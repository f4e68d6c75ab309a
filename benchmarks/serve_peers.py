"""crossinfer serve against KServe's Python ModelServer and Ray Serve: same ORT model, same client.

Every server answers the same KServe v2 JSON request (`POST /v2/models/{m}/infer`) for the same
ONNX model on ONNX Runtime CPU with one intra-op thread; one wrk command (`-t1 -c16 --latency`,
a Lua script POSTing one fixed body, bounded duration) measures each. All servers run at once
and wrk visits them in turn for a few rounds, so load drift on a shared machine hits them alike;
each server's median round is reported. KServe runs from its own throwaway venv (never the project's); Ray Serve from the project's
`ray` extra.

Loopback only: the script re-runs itself in a private network namespace holding nothing but `lo`
(`unshare -n`, root), so no server it starts can be reached from outside whatever it binds.
That is needed for Ray 2.60, which binds its GCS, raylet, workers and agents to all interfaces
(or the host's address) even with `--node-ip-address=127.0.0.1`; KServe's hard-coded 0.0.0.0 is
overridden to 127.0.0.1 and crossinfer binds 127.0.0.1. Each server's listeners (ss -ltnp) are
recorded in the JSON.

    uv venv /tmp/kserve-venv && uv pip install -p /tmp/kserve-venv kserve onnxruntime
    uv run --all-extras python benchmarks/serve_peers.py [--seconds 15] [--kserve-python /tmp/kserve-venv/bin/python]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from serve_common import (  # a sibling script, not a package
    RESULTS,
    WrkResult,
    assert_loopback,
    crossinfer_serve,
    free_port,
    listeners,
    machine,
    near_zero_model,
    v2_json_body,
    wait_http_ok,
    wrk,
)

from crossinfer import load_model

KSERVE_SERVER = r"""
import sys
import numpy as np
import onnxruntime as ort
import uvicorn

# KServe 0.21's RESTServer hard-codes host="0.0.0.0"; the benchmark keeps every listener on loopback
class _LoopbackConfig(uvicorn.Config):
    def __init__(self, *args, **kwargs):
        kwargs["host"] = "127.0.0.1"
        super().__init__(*args, **kwargs)

uvicorn.Config = _LoopbackConfig

from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

name, path, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.argv = sys.argv[:1]  # ModelServer reads its own flags from argv


class OrtModel(Model):
    def load(self):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.ready = True
        return True

    async def predict(self, payload: InferRequest, headers=None, response_headers=None):
        x = payload.inputs[0].as_numpy()
        y = self.session.run(None, {self.input_name: x})[0]
        out = InferOutput(name=self.output_name, shape=list(y.shape), datatype="FP32")
        out.set_data_from_numpy(y, binary_data=False)
        return InferResponse(model_name=self.name, infer_outputs=[out], response_id=payload.id or "")


model = OrtModel(name)
model.load()
ModelServer(http_port=port, enable_grpc=False, enable_latency_logging=False).start([model])
"""

RAY_SERVER = r"""
import shutil
import signal
import sys
import threading

import numpy as np
import onnxruntime as ort
import ray
from ray import serve

name, path, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=2, log_to_driver=False)
serve.start(http_options={"host": "127.0.0.1", "port": port})


@serve.deployment(max_ongoing_requests=64)
class OrtModel:
    def __init__(self):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    async def __call__(self, request):
        doc = await request.json()
        tensor = doc["inputs"][0]
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        y = self.session.run(None, {self.input_name: x})[0]
        return {
            "model_name": name,
            "outputs": [
                {"name": self.output_name, "shape": list(y.shape), "datatype": "FP32",
                 "data": y.ravel().tolist()}
            ],
        }


serve.run(OrtModel.bind(), name=name, route_prefix=f"/v2/models/{name}/infer")
print("RAY_SERVE_READY", flush=True)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
stop.wait()
serve.shutdown()
ray.shutdown()
"""


@contextmanager
def peer(
    python: str, script: str, name: str, model: Path, port: int, workdir: Path
) -> Iterator[subprocess.Popen[bytes]]:
    path = workdir / f"peer_{abs(hash(script))}.py"
    path.write_text(script)
    logs = Path(tempfile.gettempdir()) / "crossinfer-serve-peers"
    logs.mkdir(exist_ok=True)
    log_path = logs / f"{name}-{Path(python).parent.parent.name}-{port}.log"
    log = open(log_path, "wb")  # noqa: SIM115  # closed in finally
    proc = subprocess.Popen(
        [python, str(path), name, str(model), str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        # Ray notices `uv run` up the process tree and would ship the checkout to its workers
        # as a uv runtime env (which hangs without a network): plain venv workers instead
        env={
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
            "PYTHONUNBUFFERED": "1",
        },
        cwd=workdir,
        start_new_session=True,  # its own process group: SIGTERM reaches ray's children too
    )
    try:
        yield proc
    except Exception:
        print(f"  {python} {path.name} log ({log_path}):", file=sys.stderr)
        print(log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
        raise
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


def warm(url: str, body: dict[str, object], limit_s: float) -> None:
    wait_http_ok(url, limit_s, json.dumps(body).encode())


NETNS_ENV = "CROSSINFER_BENCH_NETNS"


def enter_loopback_namespace() -> None:
    """Re-exec this script inside a new network namespace whose only interface is loopback."""
    if os.environ.get(NETNS_ENV) == "1":
        return
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        sys.exit(
            "serve_peers.py runs its servers in a loopback-only network namespace (Ray binds "
            "every interface): run it as root with util-linux's unshare, or pass --no-netns "
            "and --servers crossinfer,kserve"
        )
    os.environ[NETNS_ENV] = "1"
    lo_up = 'ip link set lo up && exec "$0" "$@"'
    os.execv(unshare, [unshare, "-n", "--", "sh", "-c", lo_up, sys.executable, *sys.argv])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--no-netns", action="store_true", help="stay in the host's network namespace"
    )
    parser.add_argument("--seconds", type=int, default=10, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs per server, alternating")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--kserve-python", default="/tmp/kserve-venv/bin/python")
    parser.add_argument("--models", default="add16,zoo:mlp")
    parser.add_argument("--servers", default="crossinfer,kserve,ray")
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_peers.json")
    args = parser.parse_args()
    if not args.no_netns:
        enter_loopback_namespace()
    elif "ray" in args.servers.split(","):
        parser.error("Ray Serve binds every interface: it runs only inside the namespace")

    servers = args.servers.split(",")
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="serve-peers-") as tmp:
        workdir = Path(tmp)
        for source in args.models.split(","):
            if source == "add16":
                path, name = near_zero_model(workdir / "add16.onnx"), "add16"
            else:
                artifact = load_model(source)
                path, name = artifact.path, source.removeprefix("zoo:")
            spec = load_model(str(path)).inputs[0]
            width = int(spec.shape[1]) if spec.shape and isinstance(spec.shape[1], int) else 16
            x = np.random.default_rng(0).standard_normal((1, width)).astype(np.float32)
            body = v2_json_body({spec.name: x})
            rows.extend(measure_rounds(servers, name, path, body, args, workdir))

    report(rows, args)


@contextmanager
def running(
    server: str,
    name: str,
    path: Path,
    body: dict[str, object],
    args: argparse.Namespace,
    workdir: Path,
) -> Iterator[tuple[str, list[str]]]:
    """One server up and answering: its infer URL and its listening addresses."""
    url_path = f"/v2/models/{name}/infer"
    if server == "crossinfer":
        with crossinfer_serve(str(path), name, "--threads", "1") as s:
            url = f"http://{s.http}{url_path}"
            warm(url, body, 60)
            yield url, listeners(s.proc.pid)
        return
    port = free_port()
    python, script = (
        (args.kserve_python, KSERVE_SERVER) if server == "kserve" else (sys.executable, RAY_SERVER)
    )
    with peer(python, script, name, path, port, workdir) as proc:
        url = f"http://127.0.0.1:{port}{url_path}"
        warm(url, body, 180)
        bound = listeners(proc.pid)
        if os.environ.get(NETNS_ENV) != "1":
            assert_loopback(bound, server)  # stops the run before any load
        yield url, bound


def measure_rounds(
    servers: list[str],
    name: str,
    path: Path,
    body: dict[str, object],
    args: argparse.Namespace,
    workdir: Path,
) -> list[dict[str, object]]:
    """All servers up at once, then wrk on each in turn, round after round.

    The machine's load drifts over minutes; alternating short runs and keeping each server's
    median round compares the servers under the same drift.
    """
    with contextlib.ExitStack() as stack:
        urls = {}
        for server in servers:
            print(f"{name}: starting {server} ...", file=sys.stderr, flush=True)
            urls[server] = stack.enter_context(running(server, name, path, body, args, workdir))
        results: dict[str, list[WrkResult]] = {server: [] for server in servers}
        for round_ in range(args.rounds):
            for server in servers:
                url = urls[server][0]
                result = wrk(
                    url, body, seconds=args.seconds, connections=args.connections, workdir=workdir
                )
                results[server].append(result)
                print(
                    f"  round {round_ + 1} {server}: {result.rps:,.0f} req/s, p99 {result.p99_ms:.1f} ms",
                    file=sys.stderr,
                    flush=True,
                )
    rows = []
    for server in servers:
        ordered = sorted(results[server], key=lambda r: r.rps)
        median = ordered[len(ordered) // 2]
        rows.append(
            {
                "model": name,
                "server": server,
                **asdict(median),
                "rounds_rps": [r.rps for r in results[server]],
                "listeners": urls[server][1],
            }
        )
    return rows


def report(rows: list[dict[str, object]], args: argparse.Namespace) -> None:
    table = Table(
        title=f"KServe v2 JSON infer, wrk -t1 -c{args.connections} -d{args.seconds}s, batch 1"
    )
    for column in ("model", "server", "req/s", "p50 ms", "p99 ms", "errors", "crossinfer ×"):
        table.add_column(column)
    for row in rows:
        ours = next(
            (r for r in rows if r["model"] == row["model"] and r["server"] == "crossinfer"), None
        )
        ratio = float(ours["rps"]) / float(row["rps"]) if ours and row["rps"] else float("nan")  # type: ignore[arg-type]
        row["crossinfer_ratio"] = ratio
        if ours and row is not ours:
            # the ratio within each round (the servers took turns), and its spread
            pairs = zip(ours["rounds_rps"], row["rounds_rps"], strict=True)  # type: ignore[call-overload]
            by_round = sorted(a / b for a, b in pairs if b)
            row["crossinfer_ratio_rounds"] = by_round
            if by_round:
                median = by_round[len(by_round) // 2]
                print(
                    f"{row['model']}: crossinfer / {row['server']} by round {median:.2f}x "
                    f"({by_round[0]:.2f}-{by_round[-1]:.2f})",
                    file=sys.stderr,
                )
        table.add_row(
            str(row["model"]),
            str(row["server"]),
            f"{row['rps']:,.0f}",
            f"{row['p50_ms']:.2f}",
            f"{row['p99_ms']:.2f}",
            str(int(row["non_2xx"]) + int(row["socket_errors"])),  # type: ignore[call-overload]
            "-" if row["server"] == "crossinfer" else f"{ratio:.2f}x",
        )
    Console(width=160).print(table)
    doc = {
        "benchmark": "serve_peers",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "note": "server and wrk share the machine's cores; other work was running on it",
        "client": f"wrk -t1 -c{args.connections} -d{args.seconds}s --latency, one fixed v2 JSON "
        f"body; {args.rounds} rounds alternating between the servers, all up at once; each "
        "row is the server's median round",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
