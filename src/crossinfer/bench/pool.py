"""The sample pool: LoadGen's query sample library (QSL), held in memory."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from crossinfer.check.inputs import random_inputs
from crossinfer.errors import InputError, UsageError
from crossinfer.model import TensorSpec

__all__ = ["SamplePool", "check_batchable"]


@dataclass(frozen=True, eq=False)
class SamplePool:
    """Single-sample feeds (leading batch dim 1) held in memory: LoadGen's QSL indexes them."""

    samples: tuple[Mapping[str, np.ndarray], ...]

    def __post_init__(self) -> None:
        if not self.samples:
            raise InputError("a sample pool needs at least one sample")
        names = set(self.samples[0])
        for i, sample in enumerate(self.samples):
            if set(sample) != names:
                raise InputError(
                    f"sample {i} has inputs {sorted(sample)}, sample 0 has {sorted(names)}"
                )

    @classmethod
    def random(
        cls,
        inputs: Sequence[TensorSpec],
        *,
        count: int = 64,
        dims: Mapping[str, int] | None = None,
        seed: int = 0,
    ) -> SamplePool:
        """`count` seeded random samples (seed, seed+1, ...) of batch 1."""
        return cls(
            tuple(random_inputs(inputs, batch=1, dims=dims, seed=seed + i) for i in range(count))
        )

    @classmethod
    def from_feeds(cls, feeds: Mapping[str, np.ndarray]) -> SamplePool:
        """Split batched feeds along axis 0 into single-sample feeds (each keeps its batch dim)."""
        sizes = {name: np.asarray(a).shape[0] if np.ndim(a) else 0 for name, a in feeds.items()}
        if len(set(sizes.values())) != 1 or 0 in sizes.values():
            raise InputError(f"feeds must share a leading batch dimension, got {sizes}")
        n = next(iter(sizes.values()))
        return cls(
            tuple(
                {name: np.ascontiguousarray(np.asarray(a)[i : i + 1]) for name, a in feeds.items()}
                for i in range(n)
            )
        )

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.samples[0])

    def batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """The samples at `indices` concatenated along axis 0 (no padding)."""
        if len(indices) == 1:
            return dict(self.samples[indices[0]])
        return {
            name: np.concatenate([self.samples[i][name] for i in indices], axis=0)
            for name in self.names
        }


def check_batchable(inputs: Sequence[TensorSpec], batch_size: int, *, model: str = "model") -> None:
    """Refuse batch_size > 1 for a model whose inputs have a fixed (or no) batch dimension."""
    if batch_size == 1:
        return
    for spec in inputs:
        if spec.shape is None or len(spec.shape) == 0:
            raise UsageError(
                f"batch_size {batch_size} cannot be used with {model}: input '{spec.name}' has "
                "no batch dimension to concatenate along; use batch_size 1"
            )
        lead = spec.shape[0]
        if isinstance(lead, int):
            raise UsageError(
                f"batch_size {batch_size} cannot be used with {model}: input '{spec.name}' has a "
                f"fixed batch dimension of {lead} (shape {spec.shape_str()}); use batch_size 1, "
                "or re-export the model with a symbolic batch dimension"
            )
