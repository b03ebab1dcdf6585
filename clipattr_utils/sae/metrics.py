"""Reconstruction and sparsity metrics of a top-k SAE on (held-out) features.

FVU (fraction of variance unexplained) compares the residual with the variance around the
per-dimension mean of the evaluated features:

    FVU = sum_n ||x_n - x_hat_n||^2 / sum_n ||x_n - mean(x)||^2,

so predicting the mean gives 1 and a perfect reconstruction 0. Sums are accumulated in
float64; the mean and the centred sum of squares are merged chunk by chunk (Chan et al.'s
parallel update), so the data are read once and never held in memory. The same sums merge
across shards (`MetricsState.merge`), so a torchrun job can split the rows.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ..finite import NonFiniteRows
from .model import TopKSAE
from .source import FeatureSource


class SAEMetrics(NamedTuple):
    """Metrics of an SAE on one feature set."""

    n: int
    """Number of samples evaluated."""

    fvu: float
    """Fraction of variance unexplained, against the per-dimension mean of these features."""

    mse: float
    """Mean over samples of ||x - x_hat||^2."""

    cosine: float
    """Mean cosine similarity between x and x_hat."""

    l0: float
    """Mean number of non-zero activations per sample (<= k; < k when ReLU zeroes some)."""

    dead: int
    """Latents with no non-zero activation on these features."""

    dead_frac: float
    """dead / d_sae."""

    alive: int
    """d_sae - dead."""

    frequent: int
    """Latents with >= ``min_count`` non-zero activations (the paper keeps these: 17,455 of
    30,000 for ViT-L/14)."""

    min_count: int
    """The threshold used for ``frequent``."""

    counts: np.ndarray
    """(d_sae,) int64 number of samples in which each latent is non-zero."""

    def summary(self) -> dict[str, Any]:
        """Everything but ``counts``: one row of a metrics table, JSON-friendly."""
        out = self._asdict()
        out.pop("counts")
        return {key: (float(v) if isinstance(v, float) else int(v)) for key, v in out.items()}


class MetricsState:
    """The sums behind `SAEMetrics`, mergeable: shards of a feature set accumulate their own
    state and `merge` combines them (counts exactly; the float64 sums and the centred sum of
    squares by Chan et al.'s parallel update, equal to a single pass up to float64 rounding)."""

    def __init__(self, d_in: int, d_sae: int):
        f64 = torch.float64
        self.n = 0
        self.mean = torch.zeros(d_in, dtype=f64)
        self.m2 = torch.zeros((), dtype=f64)  # sum over rows and dims of squared deviation from the mean
        self.sse = torch.zeros((), dtype=f64)
        self.cos_sum = torch.zeros((), dtype=f64)
        self.nnz = torch.zeros((), dtype=torch.int64)
        self.counts = torch.zeros(d_sae, dtype=torch.int64)

    def _add_moments(self, b: int, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        # Chan et al.: merge (n, mean, m2) with a block's (b, mean_b, m2_b)
        total = self.n + b
        delta = mean_b - self.mean
        self.m2 = self.m2 + m2_b + delta.pow(2).sum() * (self.n * b / total)
        self.mean = self.mean + delta * (b / total)
        self.n = total

    @torch.no_grad()
    def update(self, sae: TopKSAE, x: torch.Tensor) -> None:
        """Add the rows of ``x`` (on the SAE's device)."""
        f64 = torch.float64
        idx, val = sae.encode(x)
        x_hat = sae.decode(idx, val)
        xd, rd = x.to(f64), (x - x_hat).to(f64)
        self.sse += rd.pow(2).sum().cpu()
        self.cos_sum += torch.nn.functional.cosine_similarity(xd, x_hat.to(f64), dim=1, eps=1e-12).sum().cpu()
        active = val != 0
        self.nnz += active.sum().cpu()
        self.counts += torch.bincount(idx[active].reshape(-1), minlength=self.counts.numel()).cpu()
        mean_b = xd.mean(0).cpu()
        self._add_moments(x.shape[0], mean_b, (xd - mean_b.to(x.device)).pow(2).sum().cpu())

    def merge(self, other: "MetricsState") -> "MetricsState":
        """A new state: ``self``'s rows followed by ``other``'s."""
        if self.mean.shape != other.mean.shape or self.counts.shape != other.counts.shape:
            raise ValueError(f"MetricsState.merge: shapes differ: d_in {self.mean.numel()} vs {other.mean.numel()}, "
                             f"d_sae {self.counts.numel()} vs {other.counts.numel()}")
        out = MetricsState(self.mean.numel(), self.counts.numel())
        out.n, out.mean, out.m2 = self.n, self.mean.clone(), self.m2.clone()
        if other.n:
            out._add_moments(other.n, other.mean, other.m2)
        out.sse, out.cos_sum = self.sse + other.sse, self.cos_sum + other.cos_sum
        out.nnz, out.counts = self.nnz + other.nnz, self.counts + other.counts
        return out

    def result(self, min_count: int = 20) -> SAEMetrics:
        if self.n == 0:
            raise ValueError("MetricsState.result: no rows were added")
        counts_np = self.counts.numpy()
        d_sae = int(counts_np.shape[0])
        dead = int((counts_np == 0).sum())
        fvu = float(self.sse / self.m2) if self.m2 > 0 else float("nan")
        n = self.n
        return SAEMetrics(
            n=n, fvu=fvu, mse=float(self.sse / n), cosine=float(self.cos_sum / n), l0=float(self.nnz) / n,
            dead=dead, dead_frac=dead / d_sae, alive=d_sae - dead,
            frequent=int((counts_np >= min_count).sum()), min_count=int(min_count), counts=counts_np,
        )


@torch.no_grad()
def accumulate(sae: TopKSAE, features: Any, batch_size: int = 4096, device: str | torch.device | None = None,
               progress: bool = True, start: int = 0, stop: int | None = None) -> MetricsState:
    """The `MetricsState` of rows [start, stop) of ``features`` (a shard; default all rows)."""
    src = FeatureSource(features)
    if src.d != sae.d_in:
        raise ValueError(f"evaluate: features have shape (N, {src.d}) but the SAE expects d_in={sae.d_in}")
    if batch_size <= 0:
        raise ValueError(f"evaluate: batch_size must be positive, got {batch_size}")
    stop = src.n if stop is None else int(stop)
    if not 0 <= start <= stop <= src.n:
        raise ValueError(f"evaluate: rows [{start}, {stop}) are not within the {src.n} rows")
    device = torch.device(device) if device is not None else sae.W_dec.device
    state = MetricsState(src.d, sae.d_sae)
    bad = NonFiniteRows()
    bar = tqdm(total=stop - start, unit="row", desc="evaluate SAE", disable=not progress, leave=False)
    for s in range(start, stop, batch_size):
        chunk = src.read(s, min(stop, s + batch_size))
        bad.add(chunk, s)
        if not bad.count:  # after a bad row the metrics are moot; keep counting them
            state.update(sae, chunk.to(device))
        bar.update(chunk.shape[0])
    bar.close()
    bad.raise_if_any("evaluate: features", src.n, "NaN rows would make FVU and cosine NaN")
    return state


@torch.no_grad()
def evaluate(sae: TopKSAE, features: Any, batch_size: int = 4096, min_count: int = 20,
             device: str | torch.device | None = None, progress: bool = True) -> SAEMetrics:
    """FVU, MSE, cosine(x, x_hat), L0, dead / alive / frequent latents of ``sae`` on ``features``.

    Args:
        sae: the SAE.
        features: (N, d_in) tensor or a FeatureCache (streamed in ``batch_size`` chunks).
        batch_size: rows per chunk.
        min_count: activation-count threshold for ``frequent`` (the paper uses 20).
        device: where to run (default: the SAE's device).

    Sharded runs: `accumulate` per shard, `MetricsState.merge`, ``.result(min_count)``
    (`clipattr_utils.distributed.evaluate_sae` does it under torchrun).
    """
    return accumulate(sae, features, batch_size, device, progress).result(min_count)
