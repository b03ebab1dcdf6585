"""The paper's baselines (Sec. 3.3, Sec. 5.1, App. B.2), with the same call shape as
:func:`act_grad`: ``method(x, sae, head, text, **opts) -> Attribution``.

* Logit Lens (Eq. 3): LogitLens_j(t) = cos(v~_j, t), v~_j = LayerNorm_{gamma,beta}[v_j] W_proj
  (the latent's vector alone through the model's LayerNorm and projection).
* Act x Logit Lens: a_j * LogitLens_j(t).
* Energy [48]: a_j * |v_j|.
* Random: uniform scores on the active latents (a uniformly random ranking of them),
  drawn from a seed or from a caller's generator (one stream per experiment).

For a :class:`Readout` target the Logit Lens is the readout applied to v~_j
(w . v~_j/|v~_j| + c when the readout normalises, w . v~_j + c otherwise).
"""

from __future__ import annotations

from typing import Any

import torch

from ..head import Head
from ..sae.model import EncoderOutput, TopKSAE
from .core import (ChunkCallback, Prepared, Readout, Target, affine, constant_over_outputs, resolve_inputs,
                   run)
from .result import Attribution, TopAttribution


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


def logit_lens(
    x: Any,
    sae: TopKSAE,
    head: Head,
    text: torch.Tensor | Readout,
    *,
    code: EncoderOutput | None = None,
    top_n: int | None = None,
    on_chunk: ChunkCallback | None = None,
    chunk_n: int | None = None,
    chunk_t: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Attribution | TopAttribution | None:
    """Logit Lens (Eq. 3) cos(v~_j, t) for each sample's active latents.

    Options (code, top_n, on_chunk, chunk_n, chunk_t, dtype, device, progress) as
    :func:`.exact.act_grad`.
    """
    return run(LogitLensKernel(False), x, sae, head, text, code=code, top_n=top_n, on_chunk=on_chunk,
               chunk_n=chunk_n, chunk_t=chunk_t, dtype=dtype, device=device, progress=progress)


def act_logit_lens(
    x: Any,
    sae: TopKSAE,
    head: Head,
    text: torch.Tensor | Readout,
    *,
    code: EncoderOutput | None = None,
    top_n: int | None = None,
    on_chunk: ChunkCallback | None = None,
    chunk_n: int | None = None,
    chunk_t: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Attribution | TopAttribution | None:
    """a_j * LogitLens_j(t) (App. B.2: Eq. 29 without the local correction term).

    Options as :func:`.exact.act_grad`.
    """
    return run(LogitLensKernel(True), x, sae, head, text, code=code, top_n=top_n, on_chunk=on_chunk,
               chunk_n=chunk_n, chunk_t=chunk_t, dtype=dtype, device=device, progress=progress)


def _constant(x, sae, head, text, score_fn, code, top_n, on_chunk, chunk_n, dtype, device):
    prep, target, idx, a, _, _ = resolve_inputs(x, sae, head, text, code, dtype, device)
    with torch.no_grad():
        scores = score_fn(prep, idx, a)
    return constant_over_outputs(scores, idx, target.n_outputs, top_n=top_n, on_chunk=on_chunk, chunk_n=chunk_n)


def energy(
    x: Any,
    sae: TopKSAE,
    head: Head,
    text: torch.Tensor | Readout,
    *,
    code: EncoderOutput | None = None,
    top_n: int | None = None,
    on_chunk: ChunkCallback | None = None,
    chunk_n: int | None = None,
    chunk_t: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Attribution | TopAttribution | None:
    """Energy: a_j * |v_j| (prompt-independent; ``values`` is a broadcast view over T).

    ``text`` only sets T. Options as :func:`.exact.act_grad` (``chunk_t`` and ``progress``
    have nothing to do here).
    """
    return _constant(x, sae, head, text, lambda prep, idx, a: a * prep.vnorm[idx], code, top_n, on_chunk,
                     chunk_n, dtype, device)


def random_scores(
    x: Any,
    sae: TopKSAE,
    head: Head,
    text: torch.Tensor | Readout,
    *,
    seed: int = 0,
    generator: torch.Generator | None = None,
    code: EncoderOutput | None = None,
    top_n: int | None = None,
    on_chunk: ChunkCallback | None = None,
    chunk_n: int | None = None,
    chunk_t: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Attribution | TopAttribution | None:
    """Uniform random scores in [0, 1) on each sample's active latents: a uniformly random
    order of them, independent across samples (the same for every prompt; a broadcast view
    over T).

    Args:
        seed: seeds a fresh generator for this call (reproducible on its own).
        generator: draw from this CPU generator instead (``seed`` is then ignored), so that
            successive calls — the classes of one faithfulness evaluation — continue one
            stream instead of repeating the same draws.
        Other options as :func:`.exact.act_grad`.
    """
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    gen = generator if generator is not None else torch.Generator().manual_seed(int(seed))

    def draw(prep, idx, a):
        return torch.rand(idx.shape, generator=gen, dtype=torch.float64).to(a.device, a.dtype)

    return _constant(x, sae, head, text, draw, code, top_n, on_chunk, chunk_n, dtype, device)
