"""Overload: a full queue answers 503 at once, health keeps answering, no accepted request is lost."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import numpy as np
import pytest
from serve_models import model_dir, reference

from crossinfer.serve.repository import ModelRepository
from crossinfer.serve.server import BackgroundServer, ServerConfig
from crossinfer.zoo import zoo_model_path

QUEUE = 4
LIMIT_S = 120.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    root = tmp_path_factory.mktemp("repository")
    model_dir(root, "small", zoo_model_path("zoo:mlp"), f"max_queue_size = {QUEUE}\nthreads = 1\n")
    model_dir(root, "resnet", zoo_model_path("zoo:resnet18"), "max_batch_size = 4\n")
    config = ServerConfig(http_port=0, grpc_port=None, metrics_port=None)
    with BackgroundServer(ModelRepository(root), config) as background:
        yield background
    gc.collect()


def body(name: str, array: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": "FP32",
                "data": array.ravel().tolist(),
            }
        ]
    }


def binary_body(name: str, array: np.ndarray) -> tuple[bytes, dict[str, str]]:
    tensor = {
        "name": name,
        "shape": list(array.shape),
        "datatype": "FP32",
        "parameters": {"binary_data_size": array.nbytes},
    }
    header = json.dumps({"inputs": [tensor]}).encode()
    return header + array.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def stats(server: BackgroundServer, model: str) -> Any:
    found = server.server.repository.get(model)
    return server.call_soon(found.batcher.stats)


def test_full_queue_answers_503_at_once_and_finishes_every_accepted_request(
    server: BackgroundServer,
) -> None:
    model = server.server.repository.get("small")
    before = stats(server, "small")
    server.call_soon(lambda: model.batcher.hold_until(1000))  # nothing runs until release()
    url = f"http://{server.http_url}"
    feeds = [np.full((1, 784), i / 10, np.float32) for i in range(QUEUE)]

    async def main() -> None:
        async with aiohttp.ClientSession(url) as http:

            async def infer(x: np.ndarray) -> tuple[int, Any]:
                async with http.post("/v2/models/small/infer", json=body("features", x)) as r:
                    return r.status, await r.json()

            accepted = [asyncio.ensure_future(infer(x)) for x in feeds]
            for _ in range(500):  # bounded wait until all four sit in the queue
                if stats(server, "small").pending == QUEUE:
                    break
                await asyncio.sleep(0.01)
            assert stats(server, "small").pending == QUEUE

            # overloaded: more requests are refused at once, health and metadata still answer
            for _ in range(3):
                status, doc = await infer(feeds[0])
                assert status == 503 and doc["error"].startswith("Exceeds maximum queue size")
            for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/small/ready"):
                async with http.get(path) as r:
                    assert r.status == 200, path
            async with http.get("/v2/models/small/stats") as r:
                assert r.status == 200
            assert not any(task.done() for task in accepted)

            server.call_soon(model.batcher.release)
            results = await asyncio.wait_for(asyncio.gather(*accepted), LIMIT_S)
            for x, (status, doc) in zip(feeds, results, strict=True):
                assert status == 200
                want = reference("zoo:mlp", {"features": x})["logits"]
                np.testing.assert_allclose(
                    np.asarray(doc["outputs"][0]["data"]).reshape(1, 10), want, rtol=1e-5, atol=1e-5
                )

    asyncio.run(asyncio.wait_for(main(), LIMIT_S))
    after = stats(server, "small")
    assert after.success.count - before.success.count == QUEUE
    assert after.failures.get("REJECTED", 0) - before.failures.get("REJECTED", 0) == 3
    assert after.pending == 0


def test_health_answers_while_the_model_computes(server: BackgroundServer) -> None:
    """16 ResNet-18 requests keep the runtime busy; health probes answer between batches."""
    url = f"http://{server.http_url}"
    rng = np.random.default_rng(0)
    images = [rng.random((1, 3, 224, 224), dtype=np.float32) for _ in range(16)]

    async def main() -> tuple[list[tuple[int, Any]], list[tuple[float, int]], float]:
        async with aiohttp.ClientSession(url) as http:

            async def infer(x: np.ndarray) -> tuple[int, Any]:
                data, headers = binary_body("pixel_values", x)  # 0.6 MB instead of 3 MB of JSON
                async with http.post("/v2/models/resnet/infer", data=data, headers=headers) as r:
                    return r.status, await r.json()

            load = asyncio.gather(*(infer(x) for x in images))
            probes: list[tuple[float, int]] = []
            for _ in range(400):  # bounded: about 8 s of probing at most
                if load.done():
                    break
                async with http.get("/v2/health/ready") as r:
                    probes.append((time.monotonic(), r.status))
                await asyncio.sleep(0.02)
            results = await asyncio.wait_for(load, LIMIT_S)
            return results, probes, time.monotonic()

    results, probes, finished = asyncio.run(asyncio.wait_for(main(), LIMIT_S))
    assert all(status == 200 for status, _ in results)
    assert probes and all(status == 200 for _, status in probes)
    # every probe was sent while inference was still running, and answered
    assert len(probes) >= 3 and probes[-1][0] <= finished
    assert stats(server, "resnet").success.count == 16
    want = reference("zoo:resnet18", {"pixel_values": images[0]})["logits"]
    got = np.asarray(results[0][1]["outputs"][0]["data"], np.float32).reshape(want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
