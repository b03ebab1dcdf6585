"""Reconstruction and sparsity metrics of a top-k SAE on (held-out) features.

FVU (fraction of variance unexplained) compares the residual with the variance around the
per-dimension mean of the evaluated features:

    FVU = sum_n ||x_n - x_hat_n||^2 / sum_n ||x_n - mean(x)||^2,

so predicting the mean gives 1 and a perfect reconstruction 0. Sums are accumulated in
float64; the mean and the centred sum of squares are merged chunk by chunk (Chan et al.'s
parallel update), so the data are read once and never held in memory.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

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
    """
    src = FeatureSource(features)
    if src.d != sae.d_in:
        raise ValueError(f"evaluate: features have shape (N, {src.d}) but the SAE expects d_in={sae.d_in}")
    if batch_size <= 0:
        raise ValueError(f"evaluate: batch_size must be positive, got {batch_size}")
    device = torch.device(device) if device is not None else sae.W_dec.device
    f64 = torch.float64
    n_seen = 0
    mean = torch.zeros(src.d, dtype=f64)
    m2 = torch.zeros((), dtype=f64)  # sum over rows and dims of squared deviation from the running mean
    sse = torch.zeros((), dtype=f64)
    cos_sum = torch.zeros((), dtype=f64)
    nnz = torch.zeros((), dtype=torch.int64)
    counts = torch.zeros(sae.d_sae, dtype=torch.int64, device=device)
    bar = tqdm(total=src.n, unit="row", desc="evaluate SAE", disable=not progress, leave=False)
    for chunk in src.iter_chunks(batch_size):
        x = chunk.to(device)
        idx, val = sae.encode(x)
        x_hat = sae.decode(idx, val)
        xd, rd = x.to(f64), (x - x_hat).to(f64)
        sse += rd.pow(2).sum().cpu()
        cos_sum += torch.nn.functional.cosine_similarity(xd, x_hat.to(f64), dim=1, eps=1e-12).sum().cpu()
        active = val != 0
        nnz += active.sum().cpu()
        counts.index_add_(0, idx[active], torch.ones_like(idx[active]))
        # Chan et al.: merge (n_seen, mean, m2) with this chunk's (b, mean_b, m2_b)
        b = x.shape[0]
        mean_b = xd.mean(0).cpu()
        m2_b = (xd - mean_b.to(device)).pow(2).sum().cpu()
        delta = mean_b - mean
        total = n_seen + b
        m2 = m2 + m2_b + delta.pow(2).sum() * (n_seen * b / total)
        mean = mean + delta * (b / total)
        n_seen = total
        bar.update(b)
    bar.close()
    counts_np = counts.cpu().numpy()
    dead = int((counts_np == 0).sum())
    fvu = float(sse / m2) if m2 > 0 else float("nan")
    return SAEMetrics(
        n=n_seen, fvu=fvu, mse=float(sse / n_seen), cosine=float(cos_sum / n_seen), l0=float(nnz) / n_seen,
        dead=dead, dead_frac=dead / sae.d_sae, alive=sae.d_sae - dead,
        frequent=int((counts_np >= min_count).sum()), min_count=int(min_count), counts=counts_np,
    )
