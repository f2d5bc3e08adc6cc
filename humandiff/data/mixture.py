"""Mixing several datasets in one training stream, in fixed proportions (docs/data.md).

`Mixture` names the sources and their weights; `ShuffledProportions` is the grain selection map that
`humandiff.data.loader.build_dataset` mixes them with (`grain.MapDataset.select_from_datasets`).

The mixed stream is cut into blocks of `BLOCK` examples. Each block holds every dataset's share of the
block exactly (weights rounded to 1/BLOCK, at least one example each) in a seeded random order, so:

* over every block the proportions are exact, and a batch is a random draw from them (not a fixed
  pattern: a fixed interleave such as grain's `MapDataset.mix` gives every batch the same make-up, but once
  grain worker processes take every n-th example a period that divides n leaves whole batches from one
  dataset);
* element k maps to (dataset, index) from k and the seed alone: random access, so the iterator state is one
  position and resumes exactly, and every process and worker computes the same map.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any, Sequence

import grain
import numpy as np

BLOCK = 1000  # examples per block; proportions are exact per block, at a resolution of 1 / BLOCK


@dataclasses.dataclass(frozen=True)
class Mixture:
    """Several random-access sources sampled in fixed proportions (`loader.build_dataset` mixes them).

    Attributes:
        sources: one random-access source (`sources.RandomAccessSource`) per dataset.
        weights: sampling weight per source (positive, any scale; normalised to proportions).
        names: dataset names, for error messages and logs.
    """

    sources: Sequence[Any]
    weights: Sequence[float]
    names: Sequence[str] = ()

    def __post_init__(self):
        if not self.sources or len(self.weights) != len(self.sources) or min(self.weights) <= 0:
            raise ValueError(f"Mixture of {len(self.sources)} sources {tuple(self.names)} needs one weight > 0 "
                             f"each, got {tuple(self.weights)}")


def block_counts(weights: Sequence[float], block: int = BLOCK) -> tuple[int, ...]:
    """Examples of each dataset per block: the weights' proportions of `block`, largest remainders rounded
    up, every dataset at least one.

    Raises:
        ValueError: a weight <= 0, or more datasets than a block holds.
    """
    w = np.asarray(weights, np.float64)
    if w.ndim != 1 or not len(w) or not np.all(np.isfinite(w)) or np.any(w <= 0) or len(w) > block:
        raise ValueError(f"mixture weights {tuple(weights)}: expected 1 to {block} numbers > 0")
    exact = w / w.sum() * block
    counts = np.maximum(np.floor(exact).astype(np.int64), 1)
    while counts.sum() < block:
        counts[np.argmax(exact - counts)] += 1
    while counts.sum() > block:
        counts[np.argmax(np.where(counts > 1, counts - exact, -np.inf))] -= 1
    return tuple(int(c) for c in counts)


@functools.lru_cache(maxsize=64)
def _block(seed: int, counts: tuple[int, ...], b: int) -> tuple[np.ndarray, np.ndarray]:
    """Block `b`: dataset of each position (a seeded permutation) and its rank among that dataset's positions."""
    order = np.random.default_rng([seed, b]).permutation(np.repeat(np.arange(len(counts)), counts))
    rank = np.empty(len(order), np.int64)
    for d in range(len(counts)):
        at = np.flatnonzero(order == d)
        rank[at] = np.arange(len(at))
    return order, rank


class ShuffledProportions(grain.transforms.DatasetSelectionMap):
    """Element k -> (dataset, index in that dataset): per block of `sum(counts)`, each dataset's count of
    positions in a seeded random order (see the module docstring)."""

    def __init__(self, lengths: Sequence[int], counts: Sequence[int], seed: int):
        """Args: lengths of the datasets (`sys.maxsize` when repeated forever), examples of each per block
        (`block_counts`), seed of the block orders. A finite mixture ends where the first dataset runs out."""
        self._counts = tuple(int(c) for c in counts)
        self._block = sum(self._counts)
        self._seed = int(seed)
        if min(lengths) >= sys.maxsize:  # repeated forever
            self._length = sys.maxsize
            return
        full = min(int(n) // c for n, c in zip(lengths, self._counts))
        order, _ = _block(self._seed, self._counts, full)
        left = np.asarray(lengths, np.int64) - full * np.asarray(self._counts, np.int64)
        used = np.zeros(len(self._counts), np.int64)
        tail = 0
        for d in order:  # the last, partial block stops at the first dataset that has run out
            if used[d] == left[d]:
                break
            used[d] += 1
            tail += 1
        self._length = min(sys.maxsize, full * self._block + tail)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> tuple[int, int]:
        if not 0 <= index < self._length:
            raise IndexError(f"mixture index {index} out of range [0, {self._length})")
        b, j = divmod(int(index), self._block)
        order, rank = _block(self._seed, self._counts, b)
        d = int(order[j])
        return d, b * self._counts[d] + int(rank[j])

    def __repr__(self) -> str:
        return f"ShuffledProportions(counts={self._counts}, seed={self._seed}, length={self._length})"


def mix(datasets: Sequence[grain.MapDataset], weights: Sequence[float], seed: int) -> grain.MapDataset:
    """`datasets` mixed in the proportions of `weights` (see the module docstring)."""
    selection = ShuffledProportions([len(d) for d in datasets], block_counts(weights), seed)
    return grain.MapDataset.select_from_datasets(list(datasets), selection)
