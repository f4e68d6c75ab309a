"""Run Triton's `perf_analyzer` (shipped in the tritonclient wheel) against a KServe v2 server.

The binary needs two shared libraries Python packaging does not put on its path: libb64.so.0d
(Debian's libb64-0d) and libcudart.so.12 (the nvidia-cuda-runtime-cu12 wheel), even on a CPU.
`locate_perf_analyzer` finds the binary, builds that environment and names what is missing.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from crossinfer.errors import PerfAnalyzerError, PerfAnalyzerUnavailableError

__all__ = [
    "PerfAnalyzer",
    "PerfRow",
    "locate_perf_analyzer",
]

# what to install for each library the binary may miss
_REMEDIES = {
    "libb64.so.0d": "install Debian's libb64-0d (apt-get install -y libb64-0d)",
    "libcudart.so.12": "install the nvidia-cuda-runtime-cu12 wheel (uv pip install nvidia-cuda-runtime-cu12)",
}


@dataclass(frozen=True)
class PerfRow:
    """One concurrency level of perf_analyzer's CSV (latencies in microseconds)."""

    concurrency: int
    throughput: float  # inferences/s (requests/s times the batch size)
    p50_us: int
    p90_us: int
    p95_us: int
    p99_us: int
    server_queue_us: int
    server_compute_us: int  # input + infer + output, from the server's statistics
    client_send_us: int
    network_server_us: int  # "Network+Server Send/Recv": transport plus the server's own work


@dataclass(frozen=True)
class PerfAnalyzer:
    """The binary and the environment it starts in."""

    path: Path
    env: Mapping[str, str]

    def command(self, model: str, url: str, protocol: str, extra: Sequence[str] = ()) -> list[str]:
        """perf_analyzer's argument list for ``model`` at ``url`` ("http" or "grpc")."""
        if protocol not in ("http", "grpc"):
            raise ValueError(f"protocol must be 'http' or 'grpc', got {protocol!r}")
        return [str(self.path), "-m", model, "-u", url, "-i", protocol, *extra]

    def run(
        self,
        model: str,
        url: str,
        protocol: str,
        extra: Sequence[str],
        *,
        timeout_s: float,
    ) -> tuple[list[PerfRow], str]:
        """Run to completion (killed after ``timeout_s``); the CSV rows and the text output.

        Raises PerfAnalyzerError on a non-zero exit or a timeout, with the output's tail.
        """
        with tempfile.TemporaryDirectory(prefix="crossinfer-perf-") as tmp:
            report = Path(tmp) / "perf.csv"
            cmd = self.command(model, url, protocol, [*extra, "-f", str(report)])
            try:
                done = subprocess.run(
                    cmd,
                    env=dict(self.env),
                    capture_output=True,
                    text=True,
                    timeout=timeout_s,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                out = _text(exc.stdout) + _text(exc.stderr)
                raise PerfAnalyzerError(
                    f"perf_analyzer did not finish within {timeout_s:g} s: {_tail(out)}"
                ) from exc
            output = done.stdout + done.stderr
            if done.returncode != 0:
                raise PerfAnalyzerError(
                    f"perf_analyzer exited with {done.returncode}: {_tail(output)}"
                )
            if not report.exists():
                raise PerfAnalyzerError(f"perf_analyzer wrote no CSV report: {_tail(output)}")
            return parse_csv(report.read_text()), output


def parse_csv(text: str) -> list[PerfRow]:
    """The rows of perf_analyzer's ``-f`` CSV, one per concurrency level, sorted by it."""
    rows = []
    for row in csv.DictReader(text.splitlines()):
        if not row.get("Concurrency"):
            continue
        rows.append(
            PerfRow(
                concurrency=int(row["Concurrency"]),
                throughput=float(row["Inferences/Second"]),
                p50_us=int(row["p50 latency"]),
                p90_us=int(row["p90 latency"]),
                p95_us=int(row["p95 latency"]),
                p99_us=int(row["p99 latency"]),
                server_queue_us=int(row["Server Queue"]),
                server_compute_us=sum(
                    int(row[f"Server Compute {phase}"]) for phase in ("Input", "Infer", "Output")
                ),
                client_send_us=int(row["Client Send"]),
                network_server_us=int(row["Network+Server Send/Recv"]),
            )
        )
    return sorted(rows, key=lambda r: r.concurrency)


def _cuda_runtime_lib() -> Path | None:
    """The lib folder of the nvidia-cuda-runtime-cu12 wheel, if installed."""
    try:
        spec = importlib.util.find_spec("nvidia.cuda_runtime")
    except ModuleNotFoundError:
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        lib = Path(location) / "lib"
        if (lib / "libcudart.so.12").exists():
            return lib
    return None


def _missing_libraries(binary: Path, env: Mapping[str, str]) -> list[str]:
    """Shared libraries the dynamic loader cannot find for ``binary`` (via ldd)."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return []  # cannot tell; the version check below still catches a failed start
    done = subprocess.run(
        [ldd, str(binary)], env=dict(env), capture_output=True, text=True, timeout=30, check=False
    )
    return [
        line.split("=>")[0].strip()
        for line in done.stdout.splitlines()
        if "not found" in line and "=>" in line
    ]


def locate_perf_analyzer(binary: str | os.PathLike[str] | None = None) -> PerfAnalyzer:
    """Find perf_analyzer (``binary``, else next to this Python, else on PATH) and its libraries.

    Raises PerfAnalyzerUnavailableError naming what is missing and how to install it.
    """
    path = _find_binary(binary)
    env = dict(os.environ)
    cuda_lib = _cuda_runtime_lib()
    if cuda_lib is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(cuda_lib), env.get("LD_LIBRARY_PATH", "")) if p
        )
    missing = _missing_libraries(path, env)
    if missing:
        raise PerfAnalyzerUnavailableError(
            f"perf_analyzer ({path}) cannot start: "
            + "; ".join(
                f"{lib} is missing: {_REMEDIES.get(lib, 'install the package providing it')}"
                for lib in missing
            )
        )
    try:
        done = subprocess.run(
            [str(path), "--version"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError as exc:
        raise PerfAnalyzerUnavailableError(f"perf_analyzer ({path}) cannot start: {exc}") from exc
    if done.returncode != 0:
        raise PerfAnalyzerUnavailableError(
            f"perf_analyzer ({path}) cannot start (exit {done.returncode}): "
            f"{_tail(done.stdout + done.stderr)}"
        )
    return PerfAnalyzer(path=path, env=env)


def _find_binary(binary: str | os.PathLike[str] | None) -> Path:
    if binary is not None:
        path = Path(binary)
        if not path.is_file():
            raise PerfAnalyzerUnavailableError(f"perf_analyzer binary {path} does not exist")
        return path
    beside = Path(sys.executable).parent / "perf_analyzer"
    if beside.is_file():
        return beside
    found = shutil.which("perf_analyzer")
    if found is None:
        raise PerfAnalyzerUnavailableError(
            "perf_analyzer is not installed: it ships in the tritonclient wheel "
            "(uv pip install 'tritonclient[all]==2.41.0' puts it in the environment's bin/)"
        )
    return Path(found)


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def _tail(text: str, lines: int = 8) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept) or "(no output)"
