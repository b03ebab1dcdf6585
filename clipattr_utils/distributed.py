"""Passes over a whole feature cache, split across torchrun ranks and merged exactly.

Each pass runs on one contiguous shard of rows per rank and the shards' partial results are
merged (``torch.distributed.all_gather_object`` on a gloo group, folded in rank order), so every
rank ends with what a single process computes:

- `top_activating`: top-n samples per latent — rows, values and ids exactly (`labeling.top.merge`);
  the float64 activation sums up to float64 rounding;
- `expected_relevance`: per-class relevance mean/std for failure mining, via `ClassMoments`
  (counts exactly; moments by Chan et al.'s parallel-variance merge, `merge_moments`);
- `evaluate_sae`: SAE metrics via `sae.metrics.MetricsState` (counts exactly, sums to float64 rounding).

The rank and world size come from an initialised process group, as in `features.extract`, or
from explicit ``rank``/``world_size``; without a process group there is nothing to gather with,
so each call returns its shard's mergeable partial (`TopSamples`, `ClassMoments`,
`MetricsState`) for the caller to merge.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import reduce
from typing import Any, Callable, TypeVar

import numpy as np
import torch

from .features import FeatureCache, _shard_context
from .mining.relevance import ExpectedRelevance, RunningMoments, class_relevance_moments

T = TypeVar("T")


def shard_range(n: int, rank: int, world_size: int, block: int = 1) -> tuple[int, int]:
    """Rows [start, stop) of ``rank``: contiguous, as even as whole ``block``s allow.

    Aligning shards to the pass's chunk size keeps every chunk the same rows a single pass
    reads, so per-row arithmetic sees the same batches.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"shard_range: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    blocks = -(-n // block)
    return min(blocks * rank // world_size * block, n), min(blocks * (rank + 1) // world_size * block, n)


def gather_merge(part: T, merge: Callable[[T, T], T], group: Any) -> T:
    """Every rank's ``part`` merged in rank order (all ranks get the same result)."""
    import torch.distributed as dist

    parts: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, part, group=group)
    return reduce(merge, parts)


def merge_moments(a: RunningMoments, b: RunningMoments) -> RunningMoments:
    """Moments of ``a``'s rows and ``b``'s together (Chan et al.'s parallel update)."""
    return a.merged(b)


# ---------------------------------------------------------------------------- top-n


def top_activating(features: FeatureCache, sae: Any, n: int = 100, *, rank: int | None = None,
                   world_size: int | None = None, chunk_rows: int | None = None, **kwargs: Any):
    """`labeling.top_activating` over a feature cache, one shard per rank, merged.

    Returns the merged `TopSamples` (every rank), or this shard's when there is no process group.
    ``kwargs`` go to `labeling.top.top_activating` (``device``, ``progress``, ...).
    """
    from .labeling.top import auto_chunk_rows, merge
    from .labeling.top import top_activating as top_pass

    if not isinstance(features, FeatureCache):
        raise TypeError(f"distributed.top_activating: features must be a FeatureCache, got {type(features).__name__}")
    rank, world_size, group = _shard_context(rank, world_size)
    chunk_rows = auto_chunk_rows(sae.d_sae) if chunk_rows is None else int(chunk_rows)
    if world_size == 1:
        return top_pass(features, sae, n, chunk_rows=chunk_rows, **kwargs)
    start, stop = shard_range(features.n, rank, world_size, block=chunk_rows)
    with warnings.catch_warnings():
        # The read-only memmap becomes a tensor view that is only ever read.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        rows = torch.from_numpy(features.numpy()[start:stop])
    part = top_pass(rows, sae, n, chunk_rows=chunk_rows, ids=features.ids[start:stop], row_offset=start, **kwargs)
    # Provenance as a pass over the whole cache records it, so merged shards equal a single pass.
    part.meta = {"features": features.path.name, "features_key": features.key, **part.meta}
    return part if group is None else gather_merge(part, merge, group)


# ---------------------------------------------------------------------------- class moments


@dataclass
class ClassMoments:
    """Per class c and latent j: relevance moments over class c's reference rows seen so far,
    active counts, and the moments of the class's output y(x, t_c). Merge shards with `merge`;
    `result` gives the `mining.ExpectedRelevance` a single pass computes."""

    count: torch.Tensor        # (C,) int64 rows per class
    mean: torch.Tensor         # (C, d_sae) float64
    m2: torch.Tensor           # (C, d_sae) float64 sum of squared deviations
    active: torch.Tensor       # (C, d_sae) int64
    out_mean: torch.Tensor     # (C,) float64
    out_m2: torch.Tensor       # (C,) float64

    def merge(self, other: "ClassMoments") -> "ClassMoments":
        if self.mean.shape != other.mean.shape:
            raise ValueError(f"ClassMoments.merge: shapes differ {tuple(self.mean.shape)} vs {tuple(other.mean.shape)}")
        na, nb = self.count.double(), other.count.double()
        n = na + nb
        w = torch.where(n > 0, nb / n.clamp_min(1), torch.zeros_like(n))
        cross = torch.where(n > 0, na * nb / n.clamp_min(1), torch.zeros_like(n))
        delta, dout = other.mean - self.mean, other.out_mean - self.out_mean
        return ClassMoments(self.count + other.count, self.mean + delta * w[:, None],
                            self.m2 + other.m2 + delta ** 2 * cross[:, None], self.active + other.active,
                            self.out_mean + dout * w, self.out_m2 + other.out_m2 + dout ** 2 * cross)

    def result(self) -> ExpectedRelevance:
        """Mean and std (ddof=1; 0 below two rows) as `mining.expected_relevance` reports them;
        classes without rows get mean 0, std 0 and NaN output statistics."""
        c = self.count
        std = torch.where((c > 1)[:, None], (self.m2 / (c - 1).clamp_min(1).double()[:, None]).clamp_min(0).sqrt(),
                          torch.zeros_like(self.m2))
        out_std = torch.where(c > 1, (self.out_m2 / (c - 1).clamp_min(1).double()).clamp_min(0).sqrt(),
                              torch.zeros_like(self.out_m2))
        empty = (c == 0).numpy()
        out_mean, out_std = self.out_mean.numpy().copy(), out_std.numpy().copy()
        out_mean[empty], out_std[empty] = np.nan, np.nan
        return ExpectedRelevance(self.mean.clone(), std, c.numpy().copy(), out_mean, out_std, self.active.clone())


def class_moments(x: torch.Tensor, labels: np.ndarray, sae: Any, head: Any, text: torch.Tensor, *,
                  start: int = 0, stop: int | None = None, chunk_n: int = 256) -> ClassMoments:
    """`ClassMoments` of rows [start, stop) of ``x`` (one shard): class c's rows are those with
    ``labels == c``, scored against prompt ``text[c]`` (as `mining.expected_relevance`)."""
    labels = np.asarray(labels)
    stop = len(labels) if stop is None else int(stop)
    if len(labels) != x.shape[0]:
        raise ValueError(f"class_moments: {x.shape[0]} feature rows but {len(labels)} labels")
    C, d = int(text.shape[0]), int(sae.d_sae)
    f64 = torch.float64
    out = ClassMoments(torch.zeros(C, dtype=torch.int64), torch.zeros(C, d, dtype=f64), torch.zeros(C, d, dtype=f64),
                       torch.zeros(C, d, dtype=torch.int64), torch.zeros(C, dtype=f64), torch.zeros(C, dtype=f64))
    shard = labels[start:stop]
    for c in np.unique(shard[(shard >= 0) & (shard < C)]):
        rows = start + np.flatnonzero(shard == c)
        xc = x[torch.as_tensor(rows)]
        mom, active = class_relevance_moments(xc, sae, head, text[c:c + 1], chunk_n=chunk_n)
        out.count[c], out.mean[c], out.m2[c], out.active[c] = len(rows), mom.mean, mom.m2, active
        with torch.no_grad():
            y = head.cosine(xc, text[c:c + 1])[:, 0].double().cpu()
        out.out_mean[c] = y.mean()
        out.out_m2[c] = ((y - y.mean()) ** 2).sum()
    return out


def expected_relevance(x: torch.Tensor, labels: np.ndarray, sae: Any, head: Any, text: torch.Tensor, *,
                       rank: int | None = None, world_size: int | None = None, chunk_n: int = 256):
    """`mining.expected_relevance`, one shard of rows per rank, merged: an `ExpectedRelevance`
    on every rank (or this shard's `ClassMoments` when there is no process group)."""
    rank, world_size, group = _shard_context(rank, world_size)
    start, stop = shard_range(len(labels), rank, world_size)
    part = class_moments(x, labels, sae, head, text, start=start, stop=stop, chunk_n=chunk_n)
    if world_size > 1 and group is None:
        return part
    if group is not None:
        part = gather_merge(part, ClassMoments.merge, group)
    return part.result()


# ---------------------------------------------------------------------------- SAE metrics


def evaluate_sae(sae: Any, features: Any, batch_size: int = 4096, min_count: int = 20, *, rank: int | None = None,
                 world_size: int | None = None, device: Any = None, progress: bool = True):
    """`sae.evaluate`, one shard of rows per rank, merged: `SAEMetrics` on every rank (or this
    shard's `sae.metrics.MetricsState` when there is no process group)."""
    from .sae.metrics import MetricsState, accumulate
    from .sae.source import FeatureSource

    rank, world_size, group = _shard_context(rank, world_size)
    n = FeatureSource(features).n
    start, stop = shard_range(n, rank, world_size, block=batch_size)
    part = accumulate(sae, features, batch_size, device, progress, start=start, stop=stop)
    if world_size > 1 and group is None:
        return part
    if group is not None:
        part = gather_merge(part, MetricsState.merge, group)
    return part.result(min_count)


__all__ = ["shard_range", "gather_merge", "merge_moments", "top_activating", "ClassMoments", "class_moments",
           "expected_relevance", "evaluate_sae"]
