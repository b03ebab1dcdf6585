"""Scoring maps against where the renderer drew things (the sandbox's planted pixel masks).

For a map h on the patch grid and a mask's coverage c (the share of each patch's pixels the
element covers, `patch_coverage`):

- **energy share** = sum_p max(h_p, 0) c_p / sum_p max(h_p, 0): how much of the positive heat
  falls on the element;
- **pointing game**: whether the hottest patch lies on the element (coverage >= `POINT_COVER`);
- **random baseline**: a map of independent random values has expected energy share
  mean_p(c_p), the element's area, for any distribution of the values; a method's share divided
  by it is how many times better than chance it points.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

POINT_COVER = 0.25
"""A patch counts as on the element when the element covers at least this share of it (the
sandbox's word signs and flames often straddle two patch rows)."""


def patch_coverage(mask: np.ndarray | torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(H, W) or (N, H, W) pixel coverage in [0, 1] -> the mean over each patch of ``grid``."""
    m = torch.as_tensor(np.asarray(mask), dtype=torch.float32)
    single = m.ndim == 2
    m = m[None] if single else m
    if m.ndim != 3:
        raise ValueError(f"patch_coverage: expected an (H, W) or (N, H, W) mask, got shape {tuple(m.shape)}")
    rows, cols = grid
    if m.shape[1] % rows or m.shape[2] % cols:
        raise ValueError(f"patch_coverage: a {m.shape[1]}x{m.shape[2]} mask does not split into a {rows}x{cols} grid")
    out = F.avg_pool2d(m[:, None], (m.shape[1] // rows, m.shape[2] // cols))[:, 0]
    return out[0] if single else out


def energy_share(heat: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
    """(N,) share of each map's positive heat on the element; NaN where a map has none."""
    pos = heat.clamp_min(0).flatten(1).double()
    cov = coverage.flatten(1).double()
    total = pos.sum(1)
    return torch.where(total > 0, (pos * cov).sum(1) / total.clamp_min(1e-300), torch.full_like(total, float("nan")))


def pointing_hits(heat: torch.Tensor, coverage: torch.Tensor, min_cover: float = POINT_COVER) -> torch.Tensor:
    """(N,) whether each map's hottest patch lies on the element."""
    top = heat.flatten(1).argmax(1)
    return coverage.flatten(1).gather(1, top[:, None])[:, 0] >= float(min_cover)


def random_share(coverage: torch.Tensor) -> torch.Tensor:
    """(N,) the expected energy share of a random map: the element's mean coverage."""
    return coverage.flatten(1).double().mean(1)


__all__ = ["POINT_COVER", "patch_coverage", "energy_share", "pointing_hits", "random_share"]
