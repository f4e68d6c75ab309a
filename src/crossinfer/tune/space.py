"""The search space of `crossinfer tune`: variants (a model on a target at a precision, proved by
optimize) x batch size x runtime knobs, each point a Candidate; what cannot run is Pruned with why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossinfer.backends.base import Precision, SessionOptions, Target, find_backend_entry
from crossinfer.errors import UsageError


@dataclass(frozen=True)
class Knobs:
    """Runtime settings that do not change the model: threads, instances, hint, streams, and the
    backend's own options (torch's mode...), passed as SessionOptions.extra."""

    threads: int | None = None  # intra-op threads; None: the runtime's default
    instances: int = 1  # worker threads issuing batches to one session at once
    performance_hint: str | None = None  # OpenVINO LATENCY / THROUGHPUT
    streams: int | None = None  # OpenVINO inference streams
    # backend options as (key, value) pairs in a fixed order: hashable, and the label reads them
    options: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        parts = [f"{key}={value}" for key, value in self.options]
        if self.performance_hint:
            parts.append(self.performance_hint.lower())
        if self.streams is not None:
            parts.append(f"{self.streams} streams")
        parts.append(f"{self.threads} threads" if self.threads else "default threads")
        if self.instances > 1:
            parts.append(f"x{self.instances} instances")
        return ", ".join(parts)

    @property
    def extra(self) -> dict[str, str]:
        return dict(self.options)

    @property
    def compiles(self) -> bool:
        """Whether the session compiles or captures before it runs (a cost worth saying)."""
        mode = self.extra.get("mode", "")
        return bool(mode) and mode != "eager"

    def to_dict(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "instances": self.instances,
            "performance_hint": self.performance_hint,
            "streams": self.streams,
            "options": self.extra,
        }


def knob_grid(
    backend: str, cores: int, device: str = "cpu", *, exhaustive: bool = False
) -> tuple[Knobs, ...]:
    """The knob settings tune tries for a backend on a device, from its registry entry: its knob
    grid (threads, instances...) x its option grid (runtime modes); a backend whose entry has
    neither gets its defaults only (a new runtime joins the search with no code here).
    """
    entry = find_backend_entry(backend)
    if entry is None:
        return (Knobs(),)
    settings = entry.knob_grid(max(1, cores)) if entry.knob_grid is not None else ({},)
    option_sets = entry.option_grid(device, exhaustive) if entry.option_grid is not None else ({},)
    grid = []
    # options outside: a quick search screens the first option set (the cheapest) first
    for options in option_sets:
        pairs = tuple((str(k), str(v)) for k, v in options.items())
        for setting in settings:
            try:
                knobs = Knobs(**setting)
            except TypeError as exc:
                raise UsageError(
                    f"backend '{backend}': its knob grid has a setting tune does not know "
                    f"({dict(setting)}): {exc}; use the fields of Knobs"
                ) from exc
            grid.append(dataclasses.replace(knobs, options=pairs) if pairs else knobs)
    return tuple(grid)


@dataclass(frozen=True)
class Variant:
    """One model artefact on one target, run at one precision, proved by the optimize pipeline."""

    target: Target
    recipe: str  # "fp32", "int8", "bf16", ...: what `optimize --precision` calls it
    precision: Precision  # what the session is asked to run at
    model_path: Path
    model_sha256: str
    passes: tuple[str, ...] = ()
    accuracy: float | None = None  # top-1 (or agreement with FP32) on the accuracy set
    accuracy_drop: float | None = None  # against the FP32 model on the same set
    accuracy_method: str = "not measured"
    notes: tuple[str, ...] = ()  # what optimize said: slower here, and its likely cause
    # optimize's verdict on this variant against FP32, measured in turns: "faster", "slower",
    # "within noise", or "" (not measured in turns: the FP32 variant, an old cache)
    speed_verdict: str = ""
    before: Mapping[str, float] = field(default_factory=dict)  # optimize's FP32 baseline
    after: Mapping[str, float] = field(default_factory=dict)  # the same figures for this one
    # batch-1 latency seen before the search (optimize's check, or check's warm run): what the
    # quick strategy screens by
    prior_latency_ms: float | None = None
    prior_source: str = ""

    @property
    def key(self) -> str:
        return f"{self.target}/{self.recipe}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "target": str(self.target),
            "recipe": self.recipe,
            "precision": self.precision.value,
            "model": str(self.model_path),
            "model_sha256": self.model_sha256,
            "passes": list(self.passes),
            "accuracy": self.accuracy,
            "accuracy_drop": self.accuracy_drop,
            "accuracy_method": self.accuracy_method,
            "notes": list(self.notes),
            "speed_verdict": self.speed_verdict,
            "before": dict(self.before),
            "after": dict(self.after),
            "prior_latency_ms": self.prior_latency_ms,
            "prior_source": self.prior_source,
        }


@dataclass(frozen=True)
class Candidate:
    """One point of the space: a variant at one batch size with one knob setting."""

    variant: Variant
    batch_size: int
    knobs: Knobs

    @property
    def key(self) -> str:
        return f"{self.variant.key}/batch {self.batch_size}/{self.knobs.label}"

    @property
    def options(self) -> SessionOptions:
        return SessionOptions(
            precision=self.variant.precision,
            threads=self.knobs.threads,
            performance_hint=self.knobs.performance_hint,
            streams=self.knobs.streams,
            extra=self.knobs.extra,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "variant": self.variant.key,
            "target": str(self.variant.target),
            "recipe": self.variant.recipe,
            "batch_size": self.batch_size,
            "knobs": self.knobs.to_dict(),
        }


@dataclass(frozen=True)
class Pruned:
    """Part of the space left out before measuring, and why (check, optimize or the space)."""

    what: str  # "iree:cpu", "onnxruntime:cpu/fp16", "batch 8"
    stage: str  # "check", "optimize", "space"
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"what": self.what, "stage": self.stage, "reason": self.reason}


@dataclass(frozen=True)
class Space:
    """Every candidate, in a fixed order, with the axes a search strategy moves along."""

    candidates: tuple[Candidate, ...]
    pruned: tuple[Pruned, ...]
    batch_sizes: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.candidates)

    def variants(self) -> list[Variant]:
        seen: dict[str, Variant] = {}
        for candidate in self.candidates:
            seen.setdefault(candidate.variant.key, candidate.variant)
        return list(seen.values())

    def of_variant(self, variant: Variant) -> list[Candidate]:
        return [c for c in self.candidates if c.variant.key == variant.key]

    def find(self, variant: Variant, batch_size: int, knobs: Knobs) -> Candidate | None:
        for candidate in self.candidates:
            if (
                candidate.variant.key == variant.key
                and candidate.batch_size == batch_size
                and candidate.knobs == knobs
            ):
                return candidate
        return None

    def knobs_of(self, variant: Variant) -> list[Knobs]:
        found: list[Knobs] = []
        for candidate in self.of_variant(variant):
            if candidate.knobs not in found:
                found.append(candidate.knobs)
        return found


def build_space(
    variants: Sequence[Variant],
    batch_sizes: Sequence[int],
    *,
    batchable: bool,
    cores: int,
    pruned: Sequence[Pruned] = (),
    knobs: Mapping[str, Sequence[Knobs]] | None = None,
    exhaustive: bool = False,
) -> Space:
    """Every variant x batch size x knob setting of its backend on its device.

    A model with a fixed batch dimension keeps batch 1 only; the other sizes are pruned with the
    reason. `knobs` replaces the default grid of a backend (tests, or a user's narrower search);
    `exhaustive` adds the option settings a backend keeps for an exhaustive search.
    """
    sizes = tuple(sorted(set(batch_sizes)))
    left_out = list(pruned)
    if not batchable and any(b > 1 for b in sizes):
        dropped = [b for b in sizes if b > 1]
        left_out.append(
            Pruned(
                f"batch {','.join(map(str, dropped))}",
                "space",
                "the model's inputs have a fixed batch dimension: only batch 1 can run",
            )
        )
        sizes = (1,)
    candidates = []
    for variant in variants:
        grid = (knobs or {}).get(variant.target.backend) or knob_grid(
            variant.target.backend, cores, variant.target.device, exhaustive=exhaustive
        )
        for batch in sizes:
            for setting in grid:
                candidates.append(Candidate(variant, batch, setting))
    return Space(tuple(candidates), tuple(left_out), sizes)
