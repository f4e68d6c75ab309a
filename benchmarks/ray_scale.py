"""`crossinfer serve --ray` on a 2-node Ray cluster (two raylets of 1 CPU each, this machine).

Measures, in alternating rounds (load drift on a shared machine hits every configuration alike):
  ray1   ResNet-50, 1 replica (1 intra-op thread, no batching), 2 clients
  ray2   ResNet-50, 2 replicas (one per node), 4 clients: the same 2 in flight per replica
         (both deployed side by side from the start: rounds switch URLs, never redeploy)
  plain  ResNet-50 on plain `crossinfer serve` (1 instance, 1 thread, no batching), 2 clients
  mlp    zoo:mlp, one client, Ray ingress against plain serve: the per-request overhead
then `crossinfer plan`'s prediction from ray1 (2 replicas -> 2 x ray1) against ray2, and one
replica SIGKILLed under the ray2 load: failures, latency around it, time until Ray replaced it.

The client is closed-loop: N threads, each one keep-alive HTTP connection POSTing the same
KServe v2 binary-tensor request (as tritonclient sends it) and waiting for the answer.
Everything runs in a loopback-only network namespace (Ray binds every interface).

    uv run --all-extras python benchmarks/ray_scale.py [--rounds 3] [--seconds 15]
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from serve_common import RESULTS, assert_loopback, crossinfer_serve, listeners, machine
from serve_peers import enter_loopback_namespace

from crossinfer import load_model
from crossinfer.backends.base import SessionOptions
from crossinfer.plan import ReplicaCapacity, predicted_throughput, replicas_for
from crossinfer.serve.ray_serve import RayServer, ray_serve_env
from crossinfer.spec import BatchingSpec, DeploymentSpec, ScaleSpec, write_spec


def binary_request(name: str, x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A v2 request with its tensor in the binary extension, outputs asked binary too."""
    header = {
        "inputs": [
            {
                "name": name,
                "shape": list(x.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": x.nbytes},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    head = json.dumps(header).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }
    return head + x.tobytes(), headers


def closed_loop(
    url: str,
    model: str,
    body: bytes,
    headers: dict[str, str],
    *,
    clients: int,
    seconds: float,
    on_tick: Any = None,
) -> dict[str, Any]:
    """`clients` threads sending back to back for `seconds`: rps, latency percentiles, errors."""
    host, port = url.split(":")
    path = f"/v2/models/{model}/infer"
    latencies: list[float] = []
    stamps: list[tuple[float, float, bool]] = []  # (start, latency, ok)
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        while time.monotonic() < stop:
            start = time.monotonic()
            try:
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
                reason = f"HTTP {response.status}"
            except (OSError, http.client.HTTPException) as exc:
                ok, reason = False, repr(exc)
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=120)
            took = time.monotonic() - start
            with lock:
                stamps.append((start, took, ok))
                if ok:
                    latencies.append(took)
                else:
                    errors.append(reason)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    if on_tick is not None:
        on_tick()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    lat = np.asarray(latencies) * 1e3 if latencies else np.asarray([np.nan])
    return {
        "clients": clients,
        "requests": len(latencies),
        "failed": len(errors),
        "errors": sorted(set(errors))[:5],
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "mean_ms": float(np.mean(lat)),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(np.max(lat)),
        "stamps": stamps,
    }


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def write_specs(repo: Path, resnet: Path, mlp: Path) -> None:
    """resnet50_1 (one replica), resnet50_2 (two) and mlp, side by side: no redeploy between
    rounds (a redeploy under load stalls requests for tens of seconds on this machine)."""
    one_thread = SessionOptions(threads=1)
    unbatched = BatchingSpec(max_batch_size=0)
    for name, replicas in (("resnet50_1", 1), ("resnet50_2", 2)):
        write_spec(
            DeploymentSpec(
                name=name,
                model=resnet,
                backend="onnxruntime",
                device="cpu",
                options=one_thread,
                batching=unbatched,
                scale=ScaleSpec(replicas=replicas, num_cpus=1),
            ),
            repo / f"{name}.toml",
        )
    write_spec(
        DeploymentSpec(
            name="mlp",
            model=mlp,
            backend="onnxruntime",
            device="cpu",
            options=one_thread,
            batching=unbatched,
            scale=ScaleSpec(replicas=1, num_cpus=0),
        ),
        repo / "mlp.toml",
    )


def start_cluster(cluster_class: Any) -> Any:
    """Ray gives a raylet 30 s to register, which a loaded 2-core machine can miss: retry."""
    for attempt in range(3):
        cluster = cluster_class(shutdown_at_exit=False)
        try:
            cluster.add_node(num_cpus=2, include_dashboard=False, node_ip_address="127.0.0.1")
            cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
            return cluster
        except Exception:
            cluster.shutdown()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rps = [r["rps"] for r in runs]
    return {
        "rps_median": statistics.median(rps),
        "rps_min": min(rps),
        "rps_max": max(rps),
        "p99_ms_median": statistics.median(r["p99_ms"] for r in runs),
        "mean_ms_median": statistics.median(r["mean_ms"] for r in runs),
        "failed": sum(r["failed"] for r in runs),
        "rounds": len(runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0, help="per ResNet-50 window")
    parser.add_argument("--mlp-seconds", type=float, default=8.0)
    parser.add_argument(
        "--routing",
        choices=("direct", "ingress"),
        default="direct",
        help="direct: Ray's proxy hands requests to the model's replicas; ingress: through the "
        "ingress deployment (two hops)",
    )
    parser.add_argument(
        "--proxy",
        choices=("haproxy", "python"),
        default="haproxy",
        help="Ray Serve's HTTP front: HAProxy with its throughput settings, or its Python proxy",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "ray_scale.json")
    args = parser.parse_args()
    enter_loopback_namespace()
    os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # the cluster's daemons (started below, from this process) inherit Ray Serve's settings
    os.environ.update(ray_serve_env(args.proxy))

    import ray
    from ray.cluster_utils import Cluster

    from crossinfer.serve.repository import open_repository

    resnet = load_model("zoo:resnet50").path
    mlp = load_model("zoo:mlp").path
    rng = np.random.default_rng(0)
    mlp_input = load_model(str(mlp)).inputs[0]
    mlp_body = binary_request(mlp_input.name, rng.standard_normal((1, 784), np.float32))
    resnet_input = load_model(str(resnet)).inputs[0].name
    resnet_body = binary_request(resnet_input, rng.standard_normal((1, 3, 224, 224), np.float32))

    runs: dict[str, list[dict[str, Any]]] = {"ray1": [], "ray2": [], "plain": []}
    mlp_runs: dict[str, list[dict[str, Any]]] = {"ray": [], "plain": []}
    doc: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_start": load_average(),
        "ray": ray.__version__,
        "routing": args.routing,
        "proxy": args.proxy,
    }
    with tempfile.TemporaryDirectory(prefix="ray-scale-") as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        write_specs(repo, resnet, mlp)
        # two nodes of 2 logical CPUs: room for resnet50_1's replica and resnet50_2's two, which
        # Ray Serve spreads over the nodes (checked below); idle replicas cost no CPU
        cluster = start_cluster(Cluster)
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        server = RayServer(
            open_repository(str(repo)),
            http_port=18300,
            start_timeout_s=600,
            routing=args.routing,
        )
        began = time.monotonic()
        server.start()
        doc["ray_deploy_s"] = time.monotonic() - began
        ray_url = server.http_url
        doc["placements"] = {m: server.placements(m) for m in ("resnet50_1", "resnet50_2")}
        nodes = {p["node"] for p in doc["placements"]["resnet50_2"] if p["loaded"]}
        doc["resnet50_2_on_two_nodes"] = len(nodes) == 2
        with (
            crossinfer_serve(str(repo / "resnet50_1.toml"), "resnet50") as plain_resnet,
            crossinfer_serve(str(repo / "mlp.toml"), "mlp") as plain_mlp,
        ):
            # the namespace holds only `lo`: whatever Ray binds is reachable from here alone
            doc["listeners"] = sorted(set(listeners()))
            assert_loopback(listeners(plain_resnet.proc.pid), "crossinfer serve")
            for url, model, body in (
                (ray_url, "resnet50_1", resnet_body),
                (ray_url, "resnet50_2", resnet_body),
                (plain_resnet.http, "resnet50", resnet_body),
                (ray_url, "mlp", mlp_body),
                (plain_mlp.http, "mlp", mlp_body),
            ):
                closed_loop(url, model, *body, clients=1, seconds=3)  # warm-up
            for round_ in range(args.rounds):
                order = ["ray1", "ray2", "plain"] if round_ % 2 == 0 else ["plain", "ray2", "ray1"]
                for what in order:
                    url, model = {
                        "ray1": (ray_url, "resnet50_1"),
                        "ray2": (ray_url, "resnet50_2"),
                        "plain": (plain_resnet.http, "resnet50"),
                    }[what]
                    clients = 4 if what == "ray2" else 2
                    run = closed_loop(
                        url, model, *resnet_body, clients=clients, seconds=args.seconds
                    )
                    run.pop("stamps")
                    run["load_average"] = load_average()
                    runs[what].append(run)
                    print(
                        f"round {round_} {what}: {run['rps']:.2f} req/s, p99 "
                        f"{run['p99_ms']:.0f} ms, load {run['load_average']}",
                        flush=True,
                    )
                for what in ["ray", "plain"] if round_ % 2 == 0 else ["plain", "ray"]:
                    url = ray_url if what == "ray" else plain_mlp.http
                    run = closed_loop(url, "mlp", *mlp_body, clients=1, seconds=args.mlp_seconds)
                    run.pop("stamps")
                    run["load_average"] = load_average()
                    mlp_runs[what].append(run)
                    print(f"round {round_} mlp {what}: mean {run['mean_ms']:.2f} ms", flush=True)

        # a replica killed under the ray2 load
        victim = [p for p in server.placements("resnet50_2") if p["loaded"]][-1]
        kill: dict[str, Any] = {}

        def killer() -> None:
            time.sleep(5.0)
            kill["at"] = time.monotonic()
            os.kill(victim["pid"], signal.SIGKILL)
            while server.running_replicas("resnet50_2") == 2:
                time.sleep(0.1)  # Ray notices the death
            while server.running_replicas("resnet50_2") < 2:
                time.sleep(0.2)
            kill["replaced_after_s"] = time.monotonic() - kill["at"]

        watcher = threading.Thread(target=killer)
        run = closed_loop(
            ray_url, "resnet50_2", *resnet_body, clients=4, seconds=60, on_tick=watcher.start
        )
        watcher.join()
        stamps = run.pop("stamps")
        around = [t for s, t, ok in stamps if kill["at"] - 1 <= s <= kill["at"] + 10]
        before = [t for s, t, ok in stamps if s < kill["at"] - 1]
        kill.update(
            # when each failed request was sent, in s after the kill (negative: before it)
            failed_sent_after_kill_s=[round(s - kill["at"], 3) for s, _, ok in stamps if not ok],
            failed=run["failed"],
            requests=run["requests"],
            errors=run["errors"],
            max_ms_within_10s=max(around) * 1e3 if around else None,
            p50_ms_before=float(np.percentile(before, 50) * 1e3) if before else None,
            rps_overall=run["rps"],
        )
        kill.pop("at")
        doc["kill"] = kill
        server.stop()
        ray.shutdown()
        cluster.shutdown()

    doc["resnet50"] = {k: {"summary": summarise(v), "runs": v} for k, v in runs.items()}
    doc["mlp"] = {k: {"summary": summarise(v), "runs": v} for k, v in mlp_runs.items()}
    r1 = doc["resnet50"]["ray1"]["summary"]
    r2 = doc["resnet50"]["ray2"]["summary"]
    plain = doc["resnet50"]["plain"]["summary"]
    capacity = ReplicaCapacity(throughput=r1["rps_median"], p99_ms=r1["p99_ms_median"])
    predicted = predicted_throughput(capacity, 2)
    doc["figures"] = {
        "two_over_one_replica": r2["rps_median"] / r1["rps_median"],
        "ray1_over_plain": r1["rps_median"] / plain["rps_median"],
        "mlp_overhead_us": (
            doc["mlp"]["ray"]["summary"]["mean_ms_median"]
            - doc["mlp"]["plain"]["summary"]["mean_ms_median"]
        )
        * 1e3,
        "plan_predicted_2_replicas_rps": predicted,
        "measured_2_replicas_rps": r2["rps_median"],
        "plan_error": (predicted - r2["rps_median"]) / r2["rps_median"],
        "plan_replicas_for_measured_2_replica_load": replicas_for(capacity, r2["rps_median"]),
    }
    doc["load_average_end"] = load_average()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    print(json.dumps({"figures": doc["figures"], "kill": doc["kill"]}, indent=1))
    for name, group in (("resnet50", doc["resnet50"]), ("mlp", doc["mlp"])):
        for what, entry in group.items():
            print(name, what, json.dumps(entry["summary"]))


if __name__ == "__main__":
    main()
