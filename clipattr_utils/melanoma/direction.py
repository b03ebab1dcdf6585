"""The latent red-hue direction (paper App. E, Eq. 33) and the latent augmentation (Eq. 34).

    u = mean(x | a_r >= t_high) - mean(x | a_r <= t_low)           (Eq. 33, benign samples)
    x' = x + alpha (p - 0.5) u,        p ~ U(0, 1) once per sample  (Eq. 34)

``x`` are the cached class tokens (the SAE's input, before the head), ``a_r`` the SAE
activation of the red latent (0 where it is not among a sample's top k).

Thresholds. The paper takes non-melanoma samples with a < 1.0 (low) and a > 2.5 (high) for
a latent with mean 1.17 and standard deviation 0.65, i.e. mean - 0.26 std and mean + 2.05 std.
Absolute numbers do not carry over to another SAE, so :func:`thresholds` states them
relative to the latent's activation distribution over the samples used:

* ``"std"``: t = mean + c * std, with (c_low, c_high) (the paper's relative values by default);
* ``"quantile"``: t = the q-quantile, with (q_low, q_high);
* ``"absolute"``: the two numbers as given (the paper's 1.0 and 2.5 for its SAE).

The paper's strict inequalities (a < 1.0, a > 2.5) become a <= t_low and a >= t_high here,
which differs only on ties — but a top-k latent is exactly 0 on every sample where it is not
active, and with a strict inequality a low threshold at 0 would select nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

PAPER_STD = (round((1.0 - 1.17) / 0.65, 2), round((2.5 - 1.17) / 0.65, 2))
"""(c_low, c_high) of the paper's thresholds: (1.0 - 1.17) / 0.65 and (2.5 - 1.17) / 0.65."""


@dataclass(frozen=True)
class Direction:
    """Eq. 33's u with what made it (JSON-able through :meth:`info`)."""

    u: torch.Tensor
    """(d,) the direction, mean high-set token minus mean low-set token."""
    latent: int
    t_low: float
    t_high: float
    n_low: int
    n_high: int
    mode: str
    params: tuple[float, float]
    act_mean: float
    act_std: float

    def info(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("u")
        d["params"] = list(self.params)
        d["u_norm"] = float(self.u.norm())
        return d


def dense_activation(code: Any, latent: int) -> torch.Tensor:
    """(N,) activation of one latent from a sparse code (indices, values); 0 where inactive."""
    indices, values = code
    hit = indices == int(latent)
    return (values * hit).sum(dim=1)


def thresholds(acts: Any, mode: str = "std", params: tuple[float, float] = PAPER_STD) -> tuple[float, float]:
    """(t_low, t_high) for the activations ``acts`` (see the module docstring)."""
    a = np.asarray(acts.detach().cpu() if isinstance(acts, torch.Tensor) else acts, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError("thresholds: no activations given")
    lo, hi = (float(v) for v in params)
    if mode == "std":
        t = (a.mean() + lo * a.std(), a.mean() + hi * a.std())
    elif mode == "quantile":
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"thresholds: quantiles must satisfy 0 <= q_low < q_high <= 1, got {params}")
        t = tuple(np.quantile(a, [lo, hi]))
    elif mode == "absolute":
        t = (lo, hi)
    else:
        raise ValueError(f"thresholds: mode must be 'std', 'quantile' or 'absolute', got {mode!r}")
    if not t[0] < t[1]:
        raise ValueError(f"thresholds: t_low={t[0]:.4g} is not below t_high={t[1]:.4g} "
                         f"(mode={mode!r}, params={params})")
    return float(t[0]), float(t[1])


def red_direction(x: torch.Tensor, acts: torch.Tensor, latent: int, mode: str = "std",
                  params: tuple[float, float] = PAPER_STD) -> Direction:
    """Eq. 33 from class tokens ``x`` (N, d) and the red latent's activations ``acts`` (N,)
    over the same samples (the paper: the non-melanoma training samples)."""
    x = torch.as_tensor(x)
    acts = torch.as_tensor(acts).reshape(-1).to(torch.float64)
    if x.ndim != 2 or x.shape[0] != acts.shape[0]:
        raise ValueError(f"red_direction: x {tuple(x.shape)} and acts {tuple(acts.shape)} must be (N, d) and (N,)")
    t_low, t_high = thresholds(acts, mode, params)
    low, high = acts <= t_low, acts >= t_high
    if not low.any() or not high.any():
        raise ValueError(f"red_direction: empty set (low {int(low.sum())}, high {int(high.sum())} samples) for "
                         f"thresholds ({t_low:.4g}, {t_high:.4g}); choose other thresholds")
    xd = x.to(torch.float64)
    u = (xd[high].mean(0) - xd[low].mean(0)).to(x.dtype)
    return Direction(u, int(latent), t_low, t_high, int(low.sum()), int(high.sum()), mode,
                     (float(params[0]), float(params[1])), float(acts.mean()), float(acts.std(unbiased=False)))


def latent_augment(x: torch.Tensor, u: torch.Tensor, alpha: float = 0.5,
                   rng: np.random.Generator | int | None = None, p: Any = None) -> torch.Tensor:
    """Eq. 34: x' = x + alpha (p - 0.5) u with one p ~ U(0, 1) per row of ``x``.

    ``rng`` draws p (a Generator or a seed); ``p`` gives the draws explicitly (N,) instead.
    """
    x = torch.as_tensor(x)
    u = torch.as_tensor(u).to(x.dtype).reshape(-1)
    if x.ndim != 2 or u.shape[0] != x.shape[1]:
        raise ValueError(f"latent_augment: x {tuple(x.shape)} and u {tuple(u.shape)} must be (N, d) and (d,)")
    if p is None:
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        p = gen.random(x.shape[0])
    p = torch.as_tensor(np.asarray(p, dtype=np.float64)).to(x.dtype).reshape(-1)
    if p.shape[0] != x.shape[0]:
        raise ValueError(f"latent_augment: {p.shape[0]} draws p for {x.shape[0]} rows")
    return x + float(alpha) * (p - 0.5)[:, None] * u[None, :]


__all__ = ["Direction", "PAPER_STD", "dense_activation", "thresholds", "red_direction", "latent_augment"]
