"""The paper's baselines (Sec. 3.3, Sec. 5.1, App. B.2), with the same call shape as
:func:`act_grad`: ``method(x, sae, head, text, **opts) -> Attribution``.

* Logit Lens (Eq. 3): LogitLens_j(t) = cos(v~_j, t), v~_j = LayerNorm_{gamma,beta}[v_j] W_proj
  (the latent's vector alone through the model's LayerNorm and projection).
* Act x Logit Lens: a_j * LogitLens_j(t).
* Energy [48]: a_j * |v_j|.
* Random: seeded uniform scores on the active latents (a random ranking of them).

For a :class:`Readout` target the Logit Lens is the readout applied to v~_j
(w . v~_j/|v~_j| + c when the readout normalises, w . v~_j + c otherwise).
"""

from __future__ import annotations

from typing import Any

import torch

from ..head import Head
from ..sae.model import TopKSAE
from .core import Prepared, Readout, Target, affine, constant_over_outputs, resolve_inputs, run
from .result import Attribution


class LogitLensKernel:
    """LogitLens_j(t) (optionally times a_j) in the form (*) of ``core``."""

    extra_width = 0

    def __init__(self, times_activation: bool):
        self.times_activation = times_activation
        self.name = "act_logit_lens" if times_activation else "logit_lens"

    def latent_matrix(self, prep: Prepared, target: Target) -> torch.Tensor:
        return prep.lens_unit if target.normalized else prep.lens

    def state(self, prep, target, x, idx, a, rows):
        return {"aq": a if self.times_activation else torch.ones_like(a)}

    def combine(self, prep, target, t_slice, st, qg, out=None):
        aq = st["aq"]
        bias = target.bias[t_slice]
        # The readout intercept c_t is part of y(v~_j); zero for text prompts.
        f = bias[None, :, None].expand(aq.shape[0], -1, 1)
        return affine(qg, aq, f, aq[:, None, :], out)


def logit_lens(x: Any, sae: TopKSAE, head: Head, text: torch.Tensor | Readout, **opts: Any) -> Attribution:
    """Logit Lens (Eq. 3) for each sample's active latents; options as :func:`act_grad`."""
    return run(LogitLensKernel(False), x, sae, head, text, **opts)


def act_logit_lens(x: Any, sae: TopKSAE, head: Head, text: torch.Tensor | Readout, **opts: Any) -> Attribution:
    """a_j * LogitLens_j(t) (App. B.2: Eq. 29 without the local correction term)."""
    return run(LogitLensKernel(True), x, sae, head, text, **opts)


def _constant(x, sae, head, text, opts, score_fn):
    allowed = {"code", "top_n", "on_chunk", "chunk_n", "dtype", "device", "progress", "chunk_t"}
    unknown = set(opts) - allowed
    if unknown:
        raise TypeError(f"unexpected options {sorted(unknown)}")
    prep, target, idx, a, _, _ = resolve_inputs(x, sae, head, text, opts.get("code"), opts.get("dtype"), opts.get("device"))
    with torch.no_grad():
        scores = score_fn(prep, idx, a)
    return constant_over_outputs(scores, idx, target.n_outputs, top_n=opts.get("top_n"),
                                 on_chunk=opts.get("on_chunk"), chunk_n=opts.get("chunk_n"))


def energy(x: Any, sae: TopKSAE, head: Head, text: torch.Tensor | Readout, **opts: Any) -> Attribution:
    """Energy: a_j * |v_j| (prompt-independent; ``values`` is a broadcast view over T)."""
    return _constant(x, sae, head, text, opts, lambda prep, idx, a: a * prep.vnorm[idx])


def random_scores(x: Any, sae: TopKSAE, head: Head, text: torch.Tensor | Readout, *, seed: int = 0,
                  **opts: Any) -> Attribution:
    """Uniform random scores in [0, 1) on each sample's active latents, drawn from a generator
    seeded with ``seed`` (same for every prompt; a broadcast view over T)."""
    def draw(prep, idx, a):
        gen = torch.Generator().manual_seed(int(seed))
        return torch.rand(idx.shape, generator=gen, dtype=torch.float64).to(a.device, a.dtype)
    return _constant(x, sae, head, text, opts, draw)
