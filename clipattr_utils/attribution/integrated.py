"""Integrated Gradients over the latent activations (as in Marks et al. [32], App. B.2).

The path scales every active latent from 0 to its activation with b and eps fixed:

    x(alpha) = b + eps + alpha * sum_j a_j v_j,     alpha in [0, 1],
    IG_j(x, t) = a_j * int_0^1 v_j . dy/dx|_{x(alpha)} d alpha
              ~= a_j * sum_s w_s v_j . dy/dx|_{x(alpha_s)}.

Each step is the exact closed form of :mod:`.exact` evaluated at x(alpha_s); the
prompt-dependent product P_j . u_t does not depend on the point, so all steps share it and
the extra cost per step is only the rank-3 per-sample correction. Completeness:
sum_j IG_j -> y(x) - y(b + eps) as the number of steps grows.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from ..head import Head
from ..sae.model import EncoderOutput, TopKSAE
from .core import ChunkCallback, Prepared, Readout, Target, affine, check_positive_int, run
from .exact import ActGradKernel
from .result import Attribution, TopAttribution

Rule = Literal["midpoint", "left", "right", "trapezoid"]


def quadrature(steps: int, rule: Rule = "midpoint") -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes alpha_s and weights w_s on [0, 1] (float64)."""
    check_positive_int("steps", steps)
    s = torch.arange(steps, dtype=torch.float64)
    if rule == "midpoint":
        return (s + 0.5) / steps, torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    if rule == "left":
        return s / steps, torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    if rule == "right":
        return (s + 1) / steps, torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    if rule == "trapezoid":
        alphas = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
        w = torch.full((steps + 1,), 1.0 / steps, dtype=torch.float64)
        w[0] = w[-1] = 0.5 / steps
        return alphas, w
    raise ValueError(f"rule must be 'midpoint', 'left', 'right' or 'trapezoid', got {rule!r}")


class IntegratedGradientsKernel:
    """Sum over quadrature nodes of the exact kernel; F and G hold all steps side by side."""

    name = "integrated_gradients"

    def __init__(self, steps: int, rule: Rule):
        self.alphas, self.weights = quadrature(steps, rule)
        self.extra_width = 2 * len(self.alphas) + 1
        self.points_per_sample = len(self.alphas)

    def latent_matrix(self, prep: Prepared, target: Target) -> torch.Tensor:
        return prep.P

    def state(self, prep, target, x, idx, a, rows):
        code_part = torch.einsum("nk,nkd->nd", a, prep.V[idx])  # sum_j a_j v_j
        base = x - code_part  # b + eps
        alphas = self.alphas.to(x.device, x.dtype)
        w = self.weights.to(x.device, x.dtype)
        pts = base[:, None, :] + alphas[None, :, None] * code_part[:, None, :]  # (Nc, S, d)
        st = ActGradKernel.point_state(prep, target, pts, idx, a)
        g = st["g"] * w[None, :, None, None]  # (Nc, S, m, k)
        out = {"aq": (st["aq"] * w[None, :, None]).sum(1)}
        if target.normalized:
            # Columns: r_s (S), p1.u (shared by all steps: their G rows are summed), m_s (S).
            out["g"] = torch.cat([g[:, :, 0], g[:, :, 1].sum(1, keepdim=True), g[:, :, 2]], dim=1)
            out["zhat"], out["cbz"] = st["zhat"], st["cbz"]
        else:
            out["g"] = torch.cat([g[:, :, 0].sum(1, keepdim=True), g[:, :, 1]], dim=1)
            out["zb"] = st["zb"]
        return out

    def combine(self, prep, target, t_slice, st, qg, out=None):
        u = target.u[t_slice]
        aq = st["aq"]
        p1u = (u @ prep.p1)[None, :, None].expand(aq.shape[0], -1, 1)
        if target.normalized:
            r = torch.einsum("nsd,td->nts", st["zhat"], u)
            m = -(u @ prep.c_beta)[None, :, None] + r * st["cbz"][:, None, :]
            f = torch.cat([r, p1u, m], dim=-1)
        else:
            f = torch.cat([p1u, torch.einsum("nsd,td->nts", st["zb"], u)], dim=-1)
        return affine(qg, aq, f, st["g"], out)


def integrated_gradients(
    x: Any,
    sae: TopKSAE,
    head: Head,
    text: torch.Tensor | Readout,
    *,
    steps: int = 10,
    rule: Rule = "midpoint",
    code: EncoderOutput | None = None,
    top_n: int | None = None,
    on_chunk: ChunkCallback | None = None,
    chunk_n: int | None = None,
    chunk_t: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Attribution | TopAttribution | None:
    """Integrated Gradients of the active latents from a = 0 (x = b + eps) to a, in closed
    form per step.

    Args:
        steps: quadrature nodes (the paper uses 10).
        rule: 'midpoint' (default), 'left', 'right' or 'trapezoid' (steps + 1 nodes).
        Everything else as :func:`.exact.act_grad`.
    """
    return run(IntegratedGradientsKernel(steps, rule), x, sae, head, text, code=code, top_n=top_n,
               on_chunk=on_chunk, chunk_n=chunk_n, chunk_t=chunk_t, dtype=dtype, device=device, progress=progress)
