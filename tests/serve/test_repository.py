"""The model repository: directory entries, states and reasons, load/unload/reload, ServedModel answers."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnx
import pytest
import serve_models
from serve_models import (
    bytes_identity_model,
    digits_spec,
    fixed_shape_model,
    fp16_add_model,
    model_dir,
    reference,
    two_output_model,
)

from crossinfer.backends.base import register_backend, unregister_backend
from crossinfer.errors import ModelNotFoundError, ProtocolError, UsageError
from crossinfer.serve.events import LOGGER_NAME, JsonFormatter
from crossinfer.serve.protocol import InferRequest
from crossinfer.serve.repository import (
    DELAY_SCHEDULER_ENV,
    ModelRepository,
    ModelSource,
    open_repository,
)
from crossinfer.zoo import zoo_model_path

T = TypeVar("T")
LIMIT_S = 60.0  # every test's event loop is bounded by this


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, LIMIT_S))


def request(**inputs: np.ndarray) -> InferRequest:
    return InferRequest(id=None, inputs=inputs)


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    """A repository with every kind of entry, two of them broken."""
    mlp = zoo_model_path("zoo:mlp")
    model_dir(
        tmp_path,
        "mlp",
        mlp,
        "max_batch_size = 4\npreferred_batch_sizes = [2, 4]\nmax_queue_delay_us = 500\n"
        "instances = 2\nthreads = 1\n",
    )
    digits_spec(tmp_path, max_queue_delay_us=1000)
    model_dir(tmp_path, "fixed", fixed_shape_model())
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.onnx").write_bytes(b"this is not an onnx model")
    model_dir(tmp_path, "badkey", fixed_shape_model(), "max_batch_sise = 4\n")
    onnx.save(fixed_shape_model(), tmp_path / "plain.onnx")  # served; the spec's model is not
    (tmp_path / "README.md").write_text("not a model")
    return tmp_path


def states(repo: ModelRepository) -> dict[str, tuple[str, str]]:
    return {row["name"]: (row["state"], row["reason"]) for row in repo.index()}


def test_a_spec_whose_artefact_changed_is_unavailable_with_the_reason(tmp_path: Path) -> None:
    spec = digits_spec(tmp_path)
    shutil.copy(zoo_model_path("zoo:mlp"), tmp_path / "digits.model.onnx")

    async def main() -> None:
        repo = ModelRepository(tmp_path)
        await repo.start()
        state, reason = states(repo)["digits"]
        assert state == "UNAVAILABLE"
        assert str(spec) in reason and "the spec was measured on" in reason
        await repo.stop()

    run(main())


def test_directory_entries_load_and_failures_are_listed_with_their_reason(repo_dir: Path) -> None:
    async def main() -> None:
        repo = ModelRepository(repo_dir)
        await repo.start()
        found = states(repo)
        assert set(found) == {"mlp", "digits", "fixed", "plain", "broken", "badkey"}
        assert found["mlp"] == found["digits"] == found["fixed"] == found["plain"] == ("READY", "")
        assert found["broken"][0] == "UNAVAILABLE" and "model.onnx" in found["broken"][1]
        assert found["badkey"][0] == "UNAVAILABLE"
        assert "max_batch_sise" in found["badkey"][1] and "max_batch_size" in found["badkey"][1]
        ready = [row["name"] for row in repo.index(ready_only=True)]
        assert ready == ["digits", "fixed", "mlp", "plain"]

        with pytest.raises(ProtocolError) as info:
            repo.get("broken")
        assert info.value.status == 503 and "model.onnx" in info.value.message
        with pytest.raises(ProtocolError) as info:
            repo.get("nope")
        assert info.value.status == 404 and "'mlp'" in info.value.message
        with pytest.raises(ProtocolError) as info:
            repo.get("mlp", "2")
        assert info.value.status == 404 and "version 1" in info.value.message
        assert repo.get("mlp", "1") is repo.get("mlp")

        # the ones that loaded serve, and match in-process inference
        x = np.random.default_rng(0).random((3, 784), dtype=np.float32)
        out = await repo.get("mlp").infer(request(features=x))
        np.testing.assert_allclose(out["logits"], reference("zoo:mlp", {"features": x})["logits"])
        pixels = np.random.default_rng(1).random((5, 64), dtype=np.float32) * 16
        out = await repo.get("digits").infer(request(pixels=pixels))
        want = reference("zoo:digits", {"pixels": pixels})["logits"]
        np.testing.assert_allclose(out["logits"], want, rtol=1e-5, atol=1e-5)
        await repo.stop()
        assert all(state == "UNAVAILABLE" for state, _ in states(repo).values())

    run(main())


def test_config_statistics_and_metadata_say_what_is_served(repo_dir: Path) -> None:
    async def main() -> None:
        repo = ModelRepository(repo_dir)
        await repo.start()
        mlp = repo.get("mlp").config()
        assert mlp["max_batch_size"] == 4 and mlp["platform"] == "onnxruntime_onnx"
        assert mlp["input"] == [
            {
                "name": "features",
                "data_type": "TYPE_FP32",
                "dims": [784],
                "format": "FORMAT_NONE",
                "is_shape_tensor": False,
                "optional": False,
            }
        ]
        assert mlp["output"][0]["dims"] == [10]
        batching = mlp["dynamic_batching"]
        assert batching["preferred_batch_size"] == [2, 4]
        assert batching["max_queue_delay_microseconds"] == 500
        assert batching["default_queue_policy"]["max_queue_size"] == 1024
        assert mlp["instance_group"][0]["count"] == 2
        assert mlp["model_transaction_policy"] == {"decoupled": False}
        assert repo.get("mlp").batcher.instances == 2

        digits = repo.get("digits").config()  # the spec's batching reached the batcher
        assert digits["max_batch_size"] == 16
        assert digits["dynamic_batching"]["max_queue_delay_microseconds"] == 1000

        fixed = repo.get("fixed").config()  # no batch dim: no batching, full dims
        assert fixed["max_batch_size"] == 0 and "dynamic_batching" not in fixed
        assert fixed["input"][0]["dims"] == [2, 3]

        meta = repo.get("mlp").metadata()
        assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 784]}]
        assert meta["versions"] == ["1"]

        await repo.get("mlp").infer(request(features=np.zeros((2, 784), np.float32)))
        stats = repo.get("mlp").statistics()
        assert set(stats) == {
            "name",
            "version",
            "last_inference",
            "inference_count",
            "execution_count",
            "inference_stats",
            "batch_stats",
        }
        assert (stats["inference_count"], stats["execution_count"]) == (2, 1)
        assert stats["batch_stats"][0]["batch_size"] == 2
        json.dumps(stats)  # the HTTP and gRPC front ends send it as is
        await repo.stop()

    run(main())


def test_unload_drains_reload_rereads_config_and_a_failed_reload_keeps_the_old(
    repo_dir: Path,
) -> None:
    async def main() -> None:
        repo = ModelRepository(repo_dir)
        await repo.start()
        model = repo.get("mlp")
        model.batcher.hold_until(100)  # the request below stays queued until unload drains it
        x = np.ones((1, 784), np.float32)
        pending = asyncio.ensure_future(model.infer(request(features=x)))
        await asyncio.sleep(0.01)
        assert model.batcher.stats().pending == 1
        await repo.unload("mlp")
        out = await pending  # accepted before the unload: finished, not dropped
        np.testing.assert_allclose(out["logits"], reference("zoo:mlp", {"features": x})["logits"])
        assert states(repo)["mlp"] == ("UNAVAILABLE", "unloaded")
        with pytest.raises(ProtocolError) as info:
            repo.get("mlp")
        assert info.value.status == 503 and "unloaded" in info.value.message

        (repo_dir / "mlp" / "config.toml").write_text("max_batch_size = 2\n")
        await repo.load("mlp")
        assert repo.get("mlp").config()["max_batch_size"] == 2

        (repo_dir / "mlp" / "config.toml").write_text("max_batch_size = 'many'\n")
        with pytest.raises(ProtocolError) as info:
            await repo.load("mlp")
        assert (
            info.value.status == 400 and "max_batch_size must be an integer" in info.value.message
        )
        assert states(repo)["mlp"] == ("READY", "")  # the old one keeps serving
        assert repo.get("mlp").config()["max_batch_size"] == 2

        onnx.save(fixed_shape_model(), repo_dir / "broken" / "model.onnx")  # fixed on disk
        await repo.load("broken")
        assert states(repo)["broken"] == ("READY", "")

        with pytest.raises(ProtocolError) as info:
            await repo.load("nope")
        assert info.value.status == 404
        await repo.unload("fixed")
        await repo.unload("fixed")  # twice is fine
        with pytest.raises(ProtocolError) as info:
            await repo.unload("nope")
        assert info.value.status == 404
        await repo.stop()

    run(main())


def test_served_model_errors_are_protocol_errors(tmp_path: Path) -> None:
    async def main() -> None:
        model_dir(tmp_path, "two", two_output_model(), "max_queue_size = 2\npriority_levels = 2\n")
        repo = ModelRepository(tmp_path)
        await repo.start()
        model = repo.get("two")
        a = np.arange(6, dtype=np.float32).reshape(2, 3)
        b = np.ones((2, 3), np.float32)
        # requested outputs: only those, in the order asked
        picked = InferRequest(id=None, inputs={"a": a, "b": b}, requested_outputs=("summed",))
        out = await model.infer(picked)
        assert list(out) == ["summed"]
        np.testing.assert_array_equal(out["summed"], a + b)

        with pytest.raises(ProtocolError) as info:
            await model.infer(InferRequest(id=None, inputs={"a": a, "b": b}, priority=3))
        assert info.value.status == 400 and "priority must lie in 1..2" in info.value.message
        with pytest.raises(ProtocolError) as info:
            await model.infer(request(a=np.ones((9, 3), np.float32), b=np.ones((9, 3), np.float32)))
        assert info.value.status == 400 and "max_batch_size" in info.value.message

        model.batcher.hold_until(100)
        timed = InferRequest(id=None, inputs={"a": a, "b": b}, timeout_us=1000)
        with pytest.raises(ProtocolError) as info:
            await model.infer(timed)
        assert info.value.status == 503
        assert info.value.message.startswith("Request timeout expired")

        queued = [asyncio.ensure_future(model.infer(request(a=a, b=b))) for _ in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(ProtocolError) as info:
            await model.infer(request(a=a, b=b))
        assert info.value.status == 503
        assert info.value.message.startswith("Exceeds maximum queue size")
        model.batcher.release()
        for result in await asyncio.gather(*queued):
            np.testing.assert_array_equal(result["doubled"], 2 * a)
        failures = model.batcher.stats().failures
        assert failures == {"REJECTED": 1, "TIMEOUT": 1}
        await repo.stop()

    run(main())


def test_bytes_and_fp16_models_are_served(tmp_path: Path) -> None:
    async def main() -> None:
        model_dir(tmp_path, "text", bytes_identity_model())
        model_dir(tmp_path, "half", fp16_add_model())
        repo = ModelRepository(tmp_path)
        await repo.start()
        assert repo.get("text").config()["input"][0]["data_type"] == "TYPE_STRING"
        assert repo.get("half").metadata()["outputs"][0]["datatype"] == "FP16"
        text = np.array([[b"a", "\u00e9t\u00e9".encode()], [b"", b"long" * 10]], dtype=object)
        model = repo.get("text")
        bad = np.array([[b"ok", b"\xff not utf-8"]], dtype=object)
        model.batcher.hold_until(2)  # batched together: the bad request must not fail the good
        out, failed = await asyncio.gather(
            model.infer(request(text=text)), model.infer(request(text=bad)), return_exceptions=True
        )
        assert isinstance(out, dict), out
        same = [[v.encode() if isinstance(v, str) else v for v in row] for row in out["same"]]
        assert same == text.tolist()
        assert isinstance(failed, ProtocolError) and failed.status == 400
        assert "input 'text'" in failed.message and "UTF-8" in failed.message
        x = np.array([[1, 2, 3, 4]], np.float16)
        out = await repo.get("half").infer(request(x=x))
        assert out["y"].dtype == np.float16
        np.testing.assert_array_equal(out["y"], x + np.float16(0.5))
        await repo.stop()

    run(main())


def test_max_batch_size_on_a_model_without_a_batch_dim_names_the_fix(tmp_path: Path) -> None:
    async def main() -> None:
        model_dir(tmp_path, "fixed", fixed_shape_model(), "max_batch_size = 4\n")
        onnx_dir = model_dir(tmp_path, "twice", fixed_shape_model())
        onnx.save(fixed_shape_model(), onnx_dir / "other.onnx")
        model_dir(tmp_path, "empty", fixed_shape_model()).joinpath("model.onnx").unlink()
        repo = ModelRepository(tmp_path)
        await repo.start()
        found = states(repo)
        assert "set max_batch_size = 0" in found["fixed"][1]
        assert "model.onnx, other.onnx" in found["twice"][1]
        assert "holds no .onnx file" in found["empty"][1]
        await repo.stop()

    run(main())


def test_single_model_sources_from_the_command_line(tmp_path: Path) -> None:
    async def main() -> None:
        path = tmp_path / "relu.onnx"
        onnx.save(fixed_shape_model(), path)
        spec = digits_spec(tmp_path, name="digits-tuned")
        cases = {
            "zoo:mlp": "mlp",
            str(path): "relu",
            str(spec): "digits-tuned",
        }
        for source, name in cases.items():
            repo = open_repository(source, overrides={"threads": 1})
            await repo.start()
            assert states(repo) == {name: ("READY", "")}, source
            await repo.stop()

        repo = open_repository("zoo:mlp", name="small", overrides={"max_batch_size": 0})
        await repo.start()
        assert repo.get("small").config()["max_batch_size"] == 0
        await repo.stop()

        one = model_dir(tmp_path / "repo", "alone", fixed_shape_model())
        repo = open_repository(str(one))  # a model directory is one model, named after it
        assert list(repo.sources()) == ["alone"]
        repo = open_repository(str(tmp_path / "repo"))  # its parent is a repository
        assert repo.path == tmp_path / "repo"

        repo = open_repository("zoo:mlp", overrides={"max_batch_size": 2, "bogus": 1})
        await repo.start()
        assert "unknown key 'bogus'" in states(repo)["mlp"][1]

    run(main())
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        open_repository(str(tmp_path / "missing.onnx"))
    with pytest.raises(UsageError, match="--name"):
        open_repository("zoo:mlp", name="has space")
    with pytest.raises(UsageError, match="repository"):
        open_repository(str(tmp_path / "repo"), name="x")


def test_loading_runs_off_the_event_loop(tmp_path: Path) -> None:
    register_backend(serve_models.BLOCKING_ENTRY)
    serve_models.GATE.clear()
    path = tmp_path / "relu.onnx"
    onnx.save(fixed_shape_model(), path)

    async def main() -> None:
        repo = ModelRepository(
            None, models={"slow": ModelSource(str(path), {"backend": "blocking"})}
        )
        loading = asyncio.ensure_future(repo.start())
        for _ in range(200):  # the loop keeps running while prepare blocks in a thread
            await asyncio.sleep(0.01)
            if states(repo).get("slow", ("",))[0] == "LOADING":
                break
        assert states(repo)["slow"] == ("LOADING", "loading")
        serve_models.GATE.set()
        await loading
        assert states(repo)["slow"] == ("READY", "")
        await repo.stop()

    try:
        run(main())
    finally:
        unregister_backend("blocking")


def test_delay_scheduler_hook_batches_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DELAY_SCHEDULER_ENV, "3")

    async def main() -> None:
        repo = open_repository("zoo:mlp")
        await repo.start()
        model = repo.get("mlp")
        feeds = [np.full((1, 784), i, np.float32) for i in range(3)]
        outs = await asyncio.gather(*(model.infer(request(features=f)) for f in feeds))
        assert model.batcher.stats().executions_by_batch_size() == {3: 1}
        for f, out in zip(feeds, outs, strict=True):
            want = reference("zoo:mlp", {"features": f})["logits"]
            np.testing.assert_allclose(out["logits"], want, rtol=1e-5, atol=1e-5)
        await repo.stop()

    run(main())


def test_events_are_json_lines(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        repo = open_repository("zoo:mlp")
        await repo.start()
        await repo.stop()

    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        run(main())
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    ready = next(line for line in lines if line["event"] == "model_ready")
    assert ready["model"] == "mlp" and ready["max_batch_size"] == 8
    assert ready["target"] == "onnxruntime:cpu" and ready["level"] == "info"
    assert [line["event"] for line in lines][-1] == "model_unloaded"
