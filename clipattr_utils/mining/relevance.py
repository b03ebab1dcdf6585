"""Expected relevance per class (Sec. 4.2b): mean and std of every latent's exact Act x Grad
relevance over the class's own reference samples, streamed.

Inactive latents count as relevance 0. Blocks of scores from ``act_grad(on_chunk=...)``
are scattered into a dense (chunk, d_sae) block and merged into running moments with the
parallel-variance update (Chan et al.), so memory is O(d_sae) per class whatever N is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..attribution import act_grad, n_outputs, output_row, target_outputs


class RunningMoments:
    """Streaming count, mean and M2 (sum of squared deviations) over rows of (n, d) blocks."""

    def __init__(self, d: int, dtype: torch.dtype = torch.float64, device: Any = "cpu"):
        self.n = 0
        self.mean = torch.zeros(d, dtype=dtype, device=device)
        self.m2 = torch.zeros(d, dtype=dtype, device=device)

    def update(self, block: torch.Tensor) -> None:
        """Merge the rows of ``block`` (nb, d)."""
        block = block.to(self.mean.dtype)
        nb = block.shape[0]
        if nb == 0:
            return
        bmean = block.mean(0)
        bm2 = ((block - bmean) ** 2).sum(0)
        n = self.n + nb
        delta = bmean - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + bm2 + delta ** 2 * (self.n * nb / n)
        self.n = n

    def merged(self, other: "RunningMoments") -> "RunningMoments":
        """Moments of this object's rows and ``other``'s together (Chan et al.'s pairwise
        update): shards of a pass merge to what one pass over all rows gives."""
        if self.mean.shape != other.mean.shape:
            raise ValueError(f"RunningMoments.merged: widths differ ({self.mean.numel()} vs {other.mean.numel()})")
        out = RunningMoments(self.mean.numel(), dtype=self.mean.dtype, device=self.mean.device)
        n = self.n + other.n
        out.n = n
        if n == 0:
            return out
        delta = other.mean.to(self.mean.dtype) - self.mean
        out.mean = self.mean + delta * (other.n / n)
        out.m2 = self.m2 + other.m2.to(self.m2.dtype) + delta ** 2 * (self.n * other.n / n)
        return out

    def std(self, ddof: int = 1) -> torch.Tensor:
        if self.n - ddof <= 0:
            return torch.zeros_like(self.m2)
        return (self.m2 / (self.n - ddof)).clamp_min(0).sqrt()


def dense_block(indices: torch.Tensor, values: torch.Tensor, d_sae: int) -> torch.Tensor:
    """(n, d_sae) dense relevance from the active latents' (n, k) ids and (n, k) scores."""
    out = torch.zeros(indices.shape[0], d_sae, dtype=values.dtype, device=values.device)
    return out.scatter_add_(1, indices, values)


@dataclass
class ExpectedRelevance:
    """Per class c (rows) and latent j (columns): relevance mean and std over class c's
    reference samples (inactive = 0), and the class's own output statistics."""

    mean: torch.Tensor        # (C, d_sae)
    std: torch.Tensor         # (C, d_sae)
    count: np.ndarray         # (C,) reference samples per class
    output_mean: np.ndarray   # (C,) mean of y(x, t_c) over class c's samples
    output_std: np.ndarray    # (C,) its std
    active: torch.Tensor      # (C, d_sae) how many reference samples had latent j active


def class_relevance_moments(x: torch.Tensor, sae: Any, head: Any, text_c: torch.Tensor,
                            chunk_n: int = 256) -> tuple[RunningMoments, torch.Tensor]:
    """Streamed moments of the dense relevance of x's rows for one prompt (1, d_post);
    returns (moments, active counts (d_sae,))."""
    mom = RunningMoments(sae.d_sae)
    active = torch.zeros(sae.d_sae, dtype=torch.long)

    def take(ns, ts, block):
        vals = block.values[:, 0, :].detach().cpu().double()
        ids = block.indices.detach().cpu()
        mom.update(dense_block(ids, vals, sae.d_sae))
        active.index_add_(0, ids.reshape(-1), torch.ones(ids.numel(), dtype=torch.long))

    act_grad(x, sae, head, text_c, on_chunk=take, chunk_n=chunk_n)
    return mom, active


def expected_relevance(x: torch.Tensor, labels: np.ndarray, sae: Any, head: Any, text: torch.Tensor, *,
                       chunk_n: int = 256, progress: bool = True) -> ExpectedRelevance:
    """Expected relevance of every latent for each class prompt ``text[c]`` on class c's
    reference samples (``labels == c``). Classes without samples get NaN output stats.
    ``text`` may be a :class:`~clipattr_utils.attribution.Readout` (a classifier's logits,
    one output per class) instead of prompts: the same statistics of its output c."""
    labels = np.asarray(labels)
    C = n_outputs(text)
    means, stds, acts = [], [], []
    count = np.zeros(C, dtype=np.int64)
    out_mean = np.full(C, np.nan)
    out_std = np.full(C, np.nan)
    for c in tqdm(range(C), desc="expected relevance", disable=not progress):
        rows = np.flatnonzero(labels == c)
        count[c] = len(rows)
        if len(rows) == 0:
            means.append(torch.zeros(sae.d_sae, dtype=torch.float64))
            stds.append(torch.zeros(sae.d_sae, dtype=torch.float64))
            acts.append(torch.zeros(sae.d_sae, dtype=torch.long))
            continue
        xc = x[torch.as_tensor(rows)]
        mom, active = class_relevance_moments(xc, sae, head, output_row(text, c), chunk_n=chunk_n)
        means.append(mom.mean)
        stds.append(mom.std())
        acts.append(active)
        y = target_outputs(xc, head, output_row(text, c))[:, 0].double().cpu().numpy()
        out_mean[c] = y.mean()
        out_std[c] = y.std(ddof=1) if len(y) > 1 else 0.0
    return ExpectedRelevance(torch.stack(means), torch.stack(stds), count, out_mean, out_std, torch.stack(acts))


__all__ = ["RunningMoments", "dense_block", "ExpectedRelevance", "class_relevance_moments", "expected_relevance"]
