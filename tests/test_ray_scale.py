"""`serve --ray`'s own logic without a Ray cluster: the [scale] table, the command line, the
ingress's routing and retry over stand-in handles, statistics merging, and `crossinfer plan`.

The same code on a real 2-node cluster: tests/test_ray_serve.py (marked ``ray``).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from crossinfer.backends.base import SessionOptions
from crossinfer.cli import _optional_ray_address, app
from crossinfer.errors import SpecError, UsageError
from crossinfer.hardware.catalog import Instance
from crossinfer.model import load_model
from crossinfer.plan import ReplicaCapacity, plan_capacity, predicted_throughput, replicas_for
from crossinfer.serve.app import HttpApp
from crossinfer.serve.ray_serve import (
    RETRY_ATTEMPTS,
    RayServer,
    ScaledModel,
    _IngressApp,
    _ReplicaFront,
    call_asgi,
    merge_statistics,
    parse_scale_overrides,
    plan_models,
    ray_serve_env,
)
from crossinfer.serve.repository import ModelRepository, ModelSource, open_repository
from crossinfer.spec import BatchingSpec, DeploymentSpec, ScaleSpec, load_spec, write_spec

# --- the [scale] table ----------------------------------------------------------------------


def _spec_with_scale(tmp_path: Path, linear_path: Path, scale: str) -> Path:
    artifact = load_model(linear_path)
    path = write_spec(
        DeploymentSpec(name="linear", model=artifact.path, backend="onnxruntime", device="cpu"),
        tmp_path / "linear.toml",
    )
    path.write_text(path.read_text() + "\n[scale]\n" + scale)
    return path


def test_spec_scale_round_trips(tmp_path: Path, linear_path: Path) -> None:
    scale = ScaleSpec(min_replicas=1, max_replicas=4, target_ongoing_requests=3, num_gpus=0.5)
    spec = DeploymentSpec(
        name="linear", model=linear_path, backend="onnxruntime", device="cpu", scale=scale
    )
    loaded = load_spec(write_spec(spec, tmp_path / "s.toml"))
    assert loaded.scale == scale
    assert loaded.scale.autoscaling
    assert "[scale]" in (tmp_path / "s.toml").read_text()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("replicas = 2\nmax_replicas = 4", "give either replicas (a fixed count) or min_replicas"),
        ("replica = 2", "unknown key 'replica': did you mean 'replicas'?"),
        ("num_gpus = 1.5", "num_gpus 1.5: a fraction must be below 1"),
        ("min_replicas = 3\nmax_replicas = 2", "min_replicas (3) must be <= max_replicas (2)"),
        ("min_replicas = 1", "autoscaling needs max_replicas"),
        ("target_ongoing_requests = 2", "target_ongoing_requests applies to autoscaling"),
        ("replicas = 0", "scale.replicas must be a positive integer, got 0"),
        ('num_cpus = "two"', "scale.num_cpus must be a number, got 'two'"),
    ],
)
def test_a_bad_scale_table_gets_one_clear_error(
    tmp_path: Path, linear_path: Path, table: str, message: str
) -> None:
    path = _spec_with_scale(tmp_path, linear_path, table)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    text = str(caught.value)
    assert text.startswith(f"deployment spec {path}: ")
    assert message in text


def test_a_bad_scale_table_in_config_toml_names_the_file(tmp_path: Path, linear_path: Path) -> None:
    model_dir = tmp_path / "repo" / "linear"
    model_dir.mkdir(parents=True)
    (model_dir / "model.onnx").write_bytes(linear_path.read_bytes())
    (model_dir / "config.toml").write_text("threads = 1\n[scale]\nnum_gpus = -1\n")
    with pytest.raises(UsageError, match=r"config.toml: \[scale\] num_gpus must be >= 0, got -1"):
        plan_models(open_repository(str(tmp_path / "repo")))


def test_plan_models_reads_scale_and_reports_a_model_that_cannot_load(
    tmp_path: Path, linear_path: Path
) -> None:
    repo = tmp_path / "repo"
    good = repo / "linear"
    good.mkdir(parents=True)
    (good / "model.onnx").write_bytes(linear_path.read_bytes())
    (good / "config.toml").write_text(
        "max_batch_size = 4\ninstances = 2\n[scale]\nmin_replicas = 1\nmax_replicas = 3\n"
    )
    (repo / "broken").mkdir()
    (repo / "broken" / "model.onnx").write_bytes(b"not onnx")
    models, unavailable = plan_models(open_repository(str(repo)), {"num_cpus": 0.5})
    assert [m.name for m in models] == ["linear"]
    options = models[0].deployment_options()
    assert options["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 3}
    assert "num_replicas" not in options
    assert options["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0.0}
    assert options["max_ongoing_requests"] == 2 * 4 * 2  # fills both instances' batches
    assert set(unavailable) == {"broken"}
    assert "model.onnx" in unavailable["broken"]


def test_command_line_scale_overrides() -> None:
    assert parse_scale_overrides(["num_cpus=0.5", "num_gpus=0.25"], replicas=3) == {
        "num_cpus": 0.5,
        "num_gpus": 0.25,
        "replicas": 3,
    }
    autoscaled = ScaleSpec(min_replicas=1, max_replicas=4)
    fixed = autoscaled.overlaid(parse_scale_overrides([], replicas=2))
    assert (fixed.replicas, fixed.autoscaling) == (2, False)  # --replicas turns autoscaling off
    assert ScaleSpec(replicas=2).overlaid({"max_replicas": 5}).autoscaling
    with pytest.raises(UsageError, match="--scale 'num_cpus' is not KEY=VALUE"):
        parse_scale_overrides(["num_cpus"])
    with pytest.raises(UsageError, match="unknown key 'cpus': did you mean 'num_cpus'"):
        parse_scale_overrides(["cpus=1"])
    with pytest.raises(UsageError, match="--scale: give either replicas"):
        parse_scale_overrides(["max_replicas=4"], replicas=2)


def test_tune_suggests_the_resources_it_measured() -> None:
    cpu = ScaleSpec.suggested(device="cpu", options=SessionOptions(threads=2), instances=2)
    assert (cpu.replicas, cpu.num_cpus, cpu.num_gpus) == (1, 4.0, 0.0)
    gpu = ScaleSpec.suggested(device="cuda", options=SessionOptions(), instances=1)
    assert (gpu.num_cpus, gpu.num_gpus) == (1.0, 1.0)


def test_bare_ray_flag_means_a_local_instance() -> None:
    assert _optional_ray_address(["serve", "m.onnx", "--ray"]) == [
        "serve",
        "m.onnx",
        "--ray",
        "local",
    ]
    assert _optional_ray_address(["serve", "m", "--ray", "--replicas", "2"])[3] == "local"
    assert _optional_ray_address(["serve", "m", "--ray", "auto"]) == ["serve", "m", "--ray", "auto"]


def test_scale_options_without_ray_are_refused(linear_path: Path) -> None:
    for option in (["--replicas", "2"], ["--ray-routing", "ingress"], ["--ray-proxy", "python"]):
        result = CliRunner().invoke(app, ["serve", str(linear_path), *option])
        assert result.exit_code == 2, option
        assert "apply to --ray" in result.output


def test_ray_serve_front_settings() -> None:
    assert ray_serve_env("haproxy") == {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    }
    assert set(ray_serve_env("python").values()) == {"0"}
    with pytest.raises(UsageError, match="choose one of haproxy, python"):
        ray_serve_env("nginx")


def test_a_bad_routing_or_a_proxy_for_a_running_cluster_is_refused_before_any_work(
    tmp_path: Path,
) -> None:
    repository = ModelRepository(None, models={})
    with pytest.raises(UsageError, match="choose one of direct, ingress"):
        RayServer(repository, routing="hops")
    with pytest.raises(UsageError, match="choose one of haproxy, python"):
        RayServer(repository, proxy="nginx")
    # a cluster's front was chosen when it started: say how, instead of silently ignoring it
    with pytest.raises(UsageError, match="RAY_SERVE_ENABLE_HA_PROXY=1"):
        RayServer(repository, address="auto", proxy="haproxy")
    result = CliRunner().invoke(
        app, ["serve", str(tmp_path), "--ray", "auto", "--ray-proxy", "python"]
    )
    assert result.exit_code == 2
    assert "was chosen when it started" in result.output


def test_ray_is_told_not_to_ship_the_checkout_before_it_is_imported() -> None:
    """Under `uv run`, Ray (read at import) would make its workers a uv runtime env, which needs
    the network: `crossinfer serve --ray` hung where there was none."""
    import subprocess
    import sys

    pytest.importorskip("ray")
    code = (
        "import os\n"
        "os.environ.pop('RAY_ENABLE_UV_RUN_RUNTIME_ENV', None)\n"
        "from crossinfer.serve.ray_serve import RayServer\n"
        "from crossinfer.serve.repository import ModelRepository\n"
        "RayServer(ModelRepository(None, models={})).start()  # imports ray, deploys nothing\n"
        "from ray._private import ray_constants\n"
        "print(ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_direct_routing_puts_each_model_in_an_application_of_its_own() -> None:
    repository = ModelRepository(None, models={})
    direct = RayServer(repository)
    assert direct.routing == "direct"
    assert direct.model_app("resnet") == "crossinfer.resnet"
    assert RayServer(repository, routing="ingress").model_app("resnet") == "crossinfer"


# --- the replica's transport and the ingress, without Ray ------------------------------------


class _Remote:
    """A stand-in for a DeploymentHandle method: `.remote(...)` returns an awaitable."""

    def __init__(self, app: HttpApp, failures: int) -> None:
        self.app = app
        self.failures = failures
        self.calls = 0

    def remote(self, method: str, path: str, headers: Any, body: bytes) -> Any:
        import ray.exceptions

        self.calls += 1

        async def answer() -> Any:
            if self.calls <= self.failures:
                raise ray.exceptions.ActorDiedError()
            return await call_asgi(self.app, method, path, headers, body)

        return answer()


class _Handle:
    def __init__(self, app: HttpApp, failures: int = 0) -> None:
        self.http = _Remote(app, failures)


def _infer_body(x: np.ndarray) -> bytes:
    tensor = {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


async def _ingress_call(
    ingress: _IngressApp, method: str, path: str, body: bytes = b""
) -> tuple[int, Any]:
    status, _, payload = await call_asgi(ingress, method, path, [], body)
    return status, json.loads(payload) if payload else None


def _replica_app(linear_path: Path) -> tuple[ModelRepository, HttpApp]:
    repository = ModelRepository(
        None, models={"linear": ModelSource(str(linear_path), {"threads": 1})}
    )
    http = HttpApp(repository)
    http.ready = True
    return repository, http


def test_ingress_forwards_to_a_replica_and_retries_a_dead_one(linear_path: Path) -> None:
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    want = ort.InferenceSession(str(linear_path)).run(None, {"x": x})[0]

    async def run() -> None:
        repository, http = _replica_app(linear_path)
        await repository.start()
        try:
            flaky = _Handle(http, failures=RETRY_ATTEMPTS - 1)
            ingress = _IngressApp(
                {"linear": flaky}, {"gone": "it broke"}, app_name="t", max_body_bytes=1 << 20
            )
            status, doc = await _ingress_call(
                ingress, "POST", "/v2/models/linear/infer", _infer_body(x)
            )
            assert status == 200, doc
            assert flaky.http.calls == RETRY_ATTEMPTS  # the dead replicas' tries, then this one
            y = np.asarray(doc["outputs"][0]["data"], np.float32).reshape(
                doc["outputs"][0]["shape"]
            )
            np.testing.assert_array_equal(y, want)

            dead = _Handle(http, failures=RETRY_ATTEMPTS)
            ingress = _IngressApp({"linear": dead}, {}, app_name="t", max_body_bytes=1 << 20)
            status, doc = await _ingress_call(
                ingress, "POST", "/v2/models/linear/infer", _infer_body(x)
            )
            assert status == 503
            assert f"{RETRY_ATTEMPTS} replicas died while serving this request" in doc["error"]
        finally:
            await repository.stop()

    asyncio.run(run())


def test_ingress_answers_what_spans_replicas_itself(linear_path: Path) -> None:
    async def run() -> None:
        _, http = _replica_app(linear_path)
        ingress = _IngressApp(
            {"linear": _Handle(http)}, {"gone": "it broke"}, app_name="t", max_body_bytes=16
        )
        status, doc = await _ingress_call(ingress, "GET", "/v2")
        assert status == 200
        assert "binary_tensor_data" in doc["extensions"]
        assert "system_shared_memory" not in doc["extensions"]  # one process's memory
        status, doc = await _ingress_call(ingress, "GET", "/v2/models/nothere")
        assert (status, doc["error"]) == (
            404,
            "unknown model 'nothere': this server has 'linear'",
        )
        status, doc = await _ingress_call(ingress, "POST", "/v2/models/gone/infer", b"{}")
        assert (status, doc["error"]) == (503, "model 'gone' is not ready (unavailable): it broke")
        status, doc = await _ingress_call(ingress, "POST", "/v2/systemsharedmemory/status")
        assert status == 501
        assert "shared memory is not available under --ray" in doc["error"]
        status, doc = await _ingress_call(ingress, "POST", "/v2/repository/models/linear/load")
        assert status == 501
        status, doc = await _ingress_call(ingress, "POST", "/v2/models/linear/infer", b"x" * 17)
        assert status == 413
        status, _ = await _ingress_call(ingress, "GET", "/v2/health/live")
        assert status == 200

    asyncio.run(run())


def test_statistics_add_up_over_replicas() -> None:
    def entry(count: int, ns: int, last: int, sizes: dict[int, int]) -> dict[str, Any]:
        stat = {"count": count, "ns": ns}
        return {
            "name": "m",
            "version": "1",
            "last_inference": last,
            "inference_count": count,
            "execution_count": sum(sizes.values()),
            "inference_stats": {"success": stat, "fail": {"count": 0, "ns": 0}},
            "batch_stats": [
                {"batch_size": s, "compute_infer": {"count": n, "ns": 10 * n}}
                for s, n in sizes.items()
            ],
        }

    merged = merge_statistics([entry(3, 30, 5, {1: 3}), entry(4, 40, 9, {1: 2, 2: 1})])
    assert merged["inference_count"] == 7
    assert merged["execution_count"] == 6
    assert merged["last_inference"] == 9
    assert merged["inference_stats"]["success"] == {"count": 7, "ns": 70}
    assert merged["batch_stats"] == [
        {"batch_size": 1, "compute_infer": {"count": 5, "ns": 50}},
        {"batch_size": 2, "compute_infer": {"count": 1, "ns": 10}},
    ]


class _Board:
    """A stand-in for the statistics board actor: two replicas' batcher snapshots."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.model_stats = self
        self._entries = entries

    def remote(self, model: str) -> Any:
        async def answer() -> Any:
            return merge_statistics(self._entries) if model == "m" else None

        return answer()


def _snapshot(success: int, rejected: int, pending: int) -> dict[str, Any]:
    stat = {"count": success, "ns": 1000 * success}
    zero = {"count": 0, "ns": 0}
    return {
        "name": "m",
        "version": "1",
        "last_inference": 1,
        "inference_count": success,
        "execution_count": success,
        "pending": pending,
        "failures": {"REJECTED": rejected},
        "inference_stats": {
            "success": stat,
            "fail": {"count": rejected, "ns": 0},
            **{k: stat for k in ("queue", "compute_input", "compute_infer", "compute_output")},
            "cache_hit": zero,
            "cache_miss": zero,
        },
        "batch_stats": [
            {
                "batch_size": 1,
                **{k: stat for k in ("compute_input", "compute_infer", "compute_output")},
            }
        ],
    }


def test_a_replica_under_direct_routing_answers_stats_for_every_replica(
    linear_path: Path,
) -> None:
    """Under direct routing a model's routes reach one replica: its `stats` are the sum."""

    async def run() -> None:
        repository, http = _replica_app(linear_path)
        await repository.start()
        try:
            front = _ReplicaFront(http, "m", _Board([_snapshot(3, 1, 2), _snapshot(4, 0, 1)]))
            for path in ("/v2/models/m/stats", "/v2/models/m/versions/1/stats"):
                status, doc = await _ingress_call(front, "GET", path)  # type: ignore[arg-type]
                assert status == 200
                (entry,) = doc["model_stats"]
                assert entry["inference_stats"]["success"] == {"count": 7, "ns": 7000}
                assert "pending" not in entry  # Triton's fields only
            status, doc = await _ingress_call(front, "POST", "/v2/models/m/stats")  # type: ignore[arg-type]
            assert status == 405
            # every other route is the replica's own HttpApp
            front = _ReplicaFront(http, "linear", _Board([]))
            x = np.ones((1, 8), np.float32)
            status, doc = await _ingress_call(
                front,  # type: ignore[arg-type]
                "POST",
                "/v2/models/linear/infer",
                _infer_body(x),
            )
            assert status == 200, doc
            assert doc["outputs"][0]["shape"] == [1, 4]
        finally:
            await repository.stop()

    asyncio.run(run())


def test_ingress_says_a_directly_routed_model_is_starting() -> None:
    async def run() -> None:
        ingress = _IngressApp({}, {}, app_name="t", max_body_bytes=1 << 20, routed=["linear"])
        status, doc = await _ingress_call(ingress, "POST", "/v2/models/linear/infer", b"{}")
        assert (status, doc["error"]) == (503, "model 'linear' is starting: retry in a few seconds")
        status, doc = await _ingress_call(ingress, "GET", "/v2/models/linear/ready")
        assert (status, doc) == (400, None)
        status, doc = await _ingress_call(ingress, "GET", "/v2/models/other")
        assert (status, doc["error"]) == (404, "unknown model 'other': this server has 'linear'")

    asyncio.run(run())


def test_ingress_statistics_and_metrics_add_up_replicas(linear_path: Path) -> None:
    async def run() -> None:
        _, http = _replica_app(linear_path)
        ingress = _IngressApp({"m": _Handle(http)}, {}, app_name="t", max_body_bytes=1 << 20)
        ingress._board = _Board([_snapshot(3, 1, 2), _snapshot(4, 0, 1)])
        status, doc = await _ingress_call(ingress, "GET", "/v2/models/m/stats")
        assert status == 200
        (entry,) = doc["model_stats"]
        # exactly Triton's fields: perf_analyzer reads the whole object
        assert set(entry) == {
            "name",
            "version",
            "last_inference",
            "inference_count",
            "execution_count",
            "inference_stats",
            "batch_stats",
        }
        assert entry["inference_stats"]["success"] == {"count": 7, "ns": 7000}
        status, _, body = await call_asgi(ingress, "GET", "/metrics", [], b"")
        assert status == 200
        text = body.decode()
        assert 'nv_inference_request_success{model="m",version="1"} 7' in text
        assert 'nv_inference_request_failure{model="m",version="1",reason="REJECTED"} 1' in text
        assert 'nv_inference_pending_request_count{model="m",version="1"} 3' in text

    asyncio.run(run())


def test_scaled_model_maps_a_fixed_count() -> None:
    model = ScaledModel(
        name="m",
        source=ModelSource("zoo:mlp"),
        scale=ScaleSpec(replicas=2, num_cpus=1, num_gpus=0.5),
        max_ongoing_requests=ScaleSpec().effective_max_ongoing(BatchingSpec(max_batch_size=0)),
    )
    options = model.deployment_options()
    assert options["num_replicas"] == 2
    assert options["max_ongoing_requests"] == 8
    assert options["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 0.5}
    assert "autoscaling_config" not in options


# --- crossinfer plan ------------------------------------------------------------------------


def _instance(name: str, vcpus: int, price: float, gpus: int = 0) -> Instance:
    return Instance(
        name=name,
        provider="test",
        price_per_hour=price,
        price_date="2026-12",
        source="test",
        vcpus=vcpus,
        gpus=gpus,
    )


def test_plan_turns_replica_throughput_into_machines_and_cost() -> None:
    capacity = ReplicaCapacity(throughput=10.0, p99_ms=100.0, num_cpus=1.0, efficiency=0.9)
    assert replicas_for(capacity, 10.0) == 1
    assert replicas_for(capacity, 19.0) == 2  # 10 + 9
    assert replicas_for(capacity, 19.5) == 3
    assert predicted_throughput(capacity, 2) == pytest.approx(19.0)
    plans = plan_capacity(
        capacity,
        target_qps=50.0,
        target_p99_ms=150.0,
        instances=[
            _instance("two", 2, 0.10),
            _instance("eight", 8, 0.36),
            _instance("gpu-only", 0, 1.0, gpus=1),
        ],
    )
    assert [p.instance for p in plans] == ["two", "eight", "gpu-only"]  # cheapest first
    two, eight, gpu_only = plans
    assert eight.replicas == 6  # 10 + 5 * 9 = 55 >= 50
    assert (eight.replicas_per_machine, eight.machines) == (8, 1)
    assert eight.cost_per_hour == pytest.approx(0.36)
    assert (two.replicas_per_machine, two.machines) == (2, 3)
    assert two.cost_per_hour == pytest.approx(0.30)
    assert not gpu_only.fits  # 0 vCPUs: no room for a 1-CPU replica
    assert "needs 1 CPUs" in gpu_only.reason


def test_plan_refuses_a_tighter_p99_than_measured() -> None:
    capacity = ReplicaCapacity(throughput=10.0, p99_ms=100.0)
    with pytest.raises(UsageError, match="tighter than the 100 ms"):
        plan_capacity(capacity, target_qps=5, target_p99_ms=50, instances=[])


def test_plan_command(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(
        app,
        ["plan", "--qps", "30", "--throughput", "10", "--p99-ms", "80", "--json", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "3 replicas of 10 req/s each" in result.output
    doc = json.loads(out.read_text())
    assert doc["plans"][0]["replicas"] == 3
    assert doc["plans"][0]["fits"] is True
    result = CliRunner().invoke(app, ["plan", "--qps", "30"])
    assert result.exit_code == 2
    assert "plan needs one replica's throughput" in result.output


def test_help_keeps_the_table_names_rich_would_read_as_markup() -> None:
    """`[scale]` in a help text is rich markup unless escaped: it vanished from serve --help."""
    for command in ("serve", "plan"):
        result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0
        assert "[scale]" in result.output, command


def test_sigterm_stops_cleanly_after_ray_installed_its_own_handler() -> None:
    """ray.init installs a SIGTERM handler that aborts the process (exit 134) with nothing
    deleted; `serve --ray` must take its applications down and exit 0 instead."""
    import subprocess
    import sys

    code = """
import os, signal, threading
from types import SimpleNamespace
from crossinfer.serve.ray_serve import run_ray

class Server:
    models = [SimpleNamespace(name="m")]
    unavailable = {}
    def start(self):
        signal.signal(signal.SIGTERM, lambda *_: os._exit(134))  # as Ray's handler does
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
    def stop(self):
        print("stopped", flush=True)

run_ray(Server())
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout.strip()) == (0, "stopped"), done.stderr[-2000:]
