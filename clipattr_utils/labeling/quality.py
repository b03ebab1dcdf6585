"""How interpretable a latent looks to the labeler: clarity and polysemanticity (Sec. 5.2, App. C).

Both read the labeler embeddings e_1..e_m of a latent's top ``m`` (default 20) samples:

* **clarity** (SemanticLens [12], the paper's interpretability measure): the mean pairwise
  cosine similarity, diagonal excluded,

      clarity_j = 1/(m(m-1)) * sum_{a != b} cos(e_a, e_b) = (|sum_a e_a|^2 - m) / (m(m-1))

  for unit e_a (computed that way: O(m d) per latent, no m x m matrix).

* **polysemanticity** (our definition; the paper does not fix one): the share of the spread
  of the top samples that a split into two groups explains,

      poly_j = 1 - W_2 / W_1,   W_1 = sum_a |e_a - mean|^2,  W_2 = within-cluster sum of squares
                                 of 2-means on {e_a}

  0 when the samples form one tight group (or are identical), near 1 when they form two
  well separated groups (two concepts sharing a latent). 2-means is Lloyd's algorithm from a
  deterministic farthest-point start (the sample farthest from the mean, then the sample
  farthest from it; ties to the lower rank), at most ``iters`` rounds: deterministic, batched,
  no random restarts. One unstructured group also scores above 0 (many samples of a 1-D
  Gaussian give 2/pi; 20 samples in high dimension find some chance split), so compare
  latents with each other rather than reading the value as a probability.

Latents with fewer than 2 samples (clarity) or 3 (polysemanticity) get NaN.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .labeler import DEFAULT_GATHER_BYTES, iter_top_embeddings
from .top import TopSamples


def clarity_of(E: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, m, d) embeddings (+ (B, m) validity mask) -> (B,) mean pairwise cosine, diagonal excluded."""
    if E.ndim != 3:
        raise ValueError(f"clarity_of: E must be (B, m, d), got shape {tuple(E.shape)}")
    mask = torch.ones(E.shape[:2], dtype=torch.bool) if mask is None else mask
    e = F.normalize(E.double(), dim=2) * mask[..., None]
    k = mask.sum(1).double()
    s = e.sum(1)
    out = ((s * s).sum(1) - k) / (k * (k - 1)).clamp_min(1)
    return torch.where(k >= 2, out, torch.tensor(float("nan"), dtype=torch.float64)).float()


def polysemanticity_of(E: torch.Tensor, mask: torch.Tensor | None = None, iters: int = 50) -> torch.Tensor:
    """(B, m, d) embeddings (+ (B, m) mask) -> (B,) 1 - W_2/W_1 of a deterministic 2-means (module docstring)."""
    if E.ndim != 3:
        raise ValueError(f"polysemanticity_of: E must be (B, m, d), got shape {tuple(E.shape)}")
    B, m, _ = E.shape
    mask = torch.ones(B, m, dtype=torch.bool) if mask is None else mask
    e = F.normalize(E.double(), dim=2) * mask[..., None]
    k = mask.sum(1).double()
    mean = e.sum(1) / k.clamp_min(1)[:, None]
    d_mean = ((e - mean[:, None]) ** 2).sum(2)
    w1 = (d_mean * mask).sum(1)
    neg = torch.tensor(float("-inf"), dtype=torch.float64)
    i1 = torch.where(mask, d_mean, neg).argmax(1)  # first maximum: the lower rank on ties
    c1 = e[torch.arange(B), i1]
    d1 = ((e - c1[:, None]) ** 2).sum(2)
    i2 = torch.where(mask, d1, neg).argmax(1)
    c2 = e[torch.arange(B), i2]
    assign = None
    for _ in range(max(1, iters)):
        d1 = ((e - c1[:, None]) ** 2).sum(2)
        d2 = ((e - c2[:, None]) ** 2).sum(2)
        new = (d2 < d1) & mask  # True: second cluster
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        g2 = assign.double()
        g1 = (mask & ~assign).double()
        n1, n2 = g1.sum(1, keepdim=True), g2.sum(1, keepdim=True)
        c1 = torch.where(n1 > 0, (g1[..., None] * e).sum(1) / n1.clamp_min(1), c1)
        c2 = torch.where(n2 > 0, (g2[..., None] * e).sum(1) / n2.clamp_min(1), c2)
    d1 = ((e - c1[:, None]) ** 2).sum(2)
    d2 = ((e - c2[:, None]) ** 2).sum(2)
    w2 = (torch.where(assign, d2, d1) * mask).sum(1)
    tiny = 1e-12
    score = torch.where(w1 > tiny, 1 - w2 / w1.clamp_min(tiny), torch.zeros_like(w1)).clamp(0, 1)
    return torch.where(k >= 3, score, torch.tensor(float("nan"), dtype=torch.float64)).float()


def clarity(top: TopSamples, labeler_embeddings: Any, n_used: int = 20, *, block_bytes: int = DEFAULT_GATHER_BYTES,
            progress: bool = True) -> torch.Tensor:
    """(d_sae,) clarity of every latent over its top ``n_used`` samples (module docstring)."""
    out = torch.full((top.d_sae,), float("nan"))
    for lat, E, mask in iter_top_embeddings(top, labeler_embeddings, n_used, block_bytes=block_bytes,
                                            progress=progress):
        out[lat] = clarity_of(E, mask)
    return out


def polysemanticity(top: TopSamples, labeler_embeddings: Any, n_used: int = 20, *, iters: int = 50,
                    block_bytes: int = DEFAULT_GATHER_BYTES, progress: bool = True) -> torch.Tensor:
    """(d_sae,) polysemanticity (1 - W_2/W_1 of 2-means) over each latent's top ``n_used`` samples."""
    out = torch.full((top.d_sae,), float("nan"))
    for lat, E, mask in iter_top_embeddings(top, labeler_embeddings, n_used, block_bytes=block_bytes,
                                            progress=progress):
        out[lat] = polysemanticity_of(E, mask, iters=iters)
    return out
