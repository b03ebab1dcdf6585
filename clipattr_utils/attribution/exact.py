"""Activation x Gradient in closed form (paper Eq. 5, App. B Eq. 11) — exact, no autograd —
and the paper's beta -> 0 approximation (Eq. 6 = Eq. 29-31).

Exact form (DESIGN.md). With eps (the SAE error) and b held constant, dx/da_j = v_j, so

    R_j(x, t) = a_j v_j . dy/dx.

Forward: mu = mean(x), sigma = sqrt(var(x) + ln_eps) (biased variance, as torch LayerNorm),
x_hat = (x - mu)/sigma, z = (gamma * x_hat + beta) W_proj, y = t_hat . z/|z|. Backward:

    g_z   = dy/dz = (t_hat - y z_hat) / |z|
    h     = dy/dx_hat = gamma * (W_proj g_z)
    dy/dx = (1/sigma) (h - mean(h) - x_hat mean(h * x_hat))

Dotting with v_j and using P = (gamma * V) W_proj, p1 = gamma W_proj, c_beta = beta W_proj:

    v_j . h          = P_j . g_z
    sum(v_j) mean(h) = (s_j/d) p1 . g_z,                     s_j = sum_i v_ji
    mean(h * x_hat)  = (1/d) (z - c_beta) . g_z = -(1/d) c_beta . g_z   (z . g_z = 0)

    R_j = a_j / (sigma |z|) * [ P_j.t_hat - y P_j.z_hat
                                - (s_j/d) (p1.t_hat - y p1.z_hat)
                                + (v_j.x_hat / d) (c_beta.t_hat - y c_beta.z_hat) ]

The only latent x prompt term is P_j . t_hat; the rest are per-sample scalars, so a batch
costs one (U x d_post) @ (d_post x T) product over the U distinct active latents plus
O(N T k). beta enters through z (and so y, z_hat, |z|) and through the c_beta term, both
kept: the result is exact for any beta and any LayerNorm eps.

A linear readout y = w . z + c (``Readout``) has g_z = w and no |z| normalisation; then
mean(h * x_hat) = (1/d) (z - c_beta) . w does not vanish and is kept as is. A readout on
the unit embedding, y = w . z/|z| + c, is the cosine algebra with t_hat -> w and y -> w . z_hat.
"""

from __future__ import annotations

from typing import Any

import torch

from ..head import Head
from ..sae.model import EncoderOutput, TopKSAE
from .core import ChunkCallback, Prepared, Readout, Target, affine, ln_state, run
from .result import Attribution, TopAttribution


class ActGradKernel:
    """Exact a_j v_j . dy/dx in the form R = Aq * (P_j . u_t) + F @ G (see ``core``)."""

    name = "act_grad"
    extra_width = 0

    def latent_matrix(self, prep: Prepared, target: Target) -> torch.Tensor:
        return prep.P

    @staticmethod
    def point_state(prep: Prepared, target: Target, x: torch.Tensor, idx: torch.Tensor,
                    a: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample factors at S points per sample, x (Nc, S, d), for the latents ``idx``
        (Nc, k) scaled by ``a`` (Nc, k). Returned tensors carry the step axis after Nc."""
        nc, steps, d = x.shape
        ln = ln_state(prep, x.reshape(nc * steps, d))
        xhat, zhat = ln.xhat.reshape(nc, steps, d), ln.zhat.reshape(nc, steps, -1)
        Vg = prep.V.index_select(0, idx.reshape(-1)).view(nc, -1, d)  # (Nc, k, d), shared by all points
        s_d = (prep.vsum[idx] / d)[:, None, :]
        if target.normalized:
            aq = a[:, None, :] / (ln.sigma * ln.znorm).reshape(nc, steps, 1)
            # P_j . z_hat = v_j . (gamma * (W_proj z_hat)) avoids gathering P's rows; one pass
            # over the gathered v_j serves both dot products.
            both = torch.bmm(Vg, torch.cat([xhat, (zhat @ prep.proj.T) * prep.gamma], dim=1).transpose(1, 2))
            vx_d, Pz = both[..., :steps].transpose(1, 2) / d, both[..., steps:].transpose(1, 2)
            p1z = (zhat @ prep.p1)[..., None]
            g = torch.stack([(-Pz + s_d * p1z) * aq, -s_d * aq, -vx_d * aq], dim=2)
            return {"aq": aq, "g": g, "zhat": zhat, "cbz": zhat @ prep.c_beta}
        vx_d = torch.bmm(Vg, xhat.transpose(1, 2)).transpose(1, 2) / d
        aq = a[:, None, :] / ln.sigma.reshape(nc, steps, 1)
        g = torch.stack([-s_d * aq.expand_as(vx_d), -vx_d * aq], dim=2)
        return {"aq": aq, "g": g, "zb": ln.zb.reshape(nc, steps, -1)}

    def state(self, prep, target, x, idx, a, rows):
        return {key: v[:, 0] for key, v in self.point_state(prep, target, x[:, None, :], idx, a).items()}

    @staticmethod
    def features(prep: Prepared, target: Target, t_slice: slice, st: dict[str, torch.Tensor]) -> torch.Tensor:
        """F (Nc, Tc, m) matching the rows of ``g``."""
        u = target.u[t_slice]
        nc = next(iter(st.values())).shape[0]
        p1u = (u @ prep.p1)[None, :].expand(nc, -1)
        if target.normalized:
            r = st["zhat"] @ u.T  # y without bias, (Nc, Tc)
            m = -(u @ prep.c_beta)[None, :] + r * st["cbz"][:, None]
            return torch.stack([r, p1u, m], dim=-1)
        return torch.stack([p1u, st["zb"] @ u.T], dim=-1)

    def combine(self, prep, target, t_slice, st, qg, out=None):
        return affine(qg, st["aq"], self.features(prep, target, t_slice, st), st["g"], out)


class PaperKernel:
    """Eq. 31: a_j |v_j - mu_vj| / |x - mu_x| * |v~_j| / |z| * (LogitLens_j(t) - cos(z, v~_j) y).

    v~_j = LayerNorm_{gamma,beta}[v_j] W_proj with the model's own LayerNorm (beta and eps
    included, as Eq. 3 and Eq. 20 define it); z = head(x) exactly. The derivation drops beta
    (Eq. 19) and uses |x - mu| where LayerNorm divides by sqrt(var + eps) (Eq. 15), so this
    equals the exact form only when beta = 0 and the LayerNorm eps is 0.
    """

    name = "act_grad_paper"
    extra_width = 0

    def latent_matrix(self, prep: Prepared, target: Target) -> torch.Tensor:
        if not target.normalized:
            raise ValueError("act_grad_paper (Eq. 31) is derived for a cosine output; use act_grad for an "
                             "unnormalised Readout")
        return prep.lens_unit

    def state(self, prep, target, x, idx, a, rows):
        ln = ln_state(prep, x)
        xc_norm = (x - x.mean(dim=1, keepdim=True)).norm(dim=1)
        aq = a * prep.vcentered_norm[idx] * prep.lens_norm[idx] / (xc_norm * ln.znorm)[:, None]
        cos_zv = torch.einsum("nkd,nd->nk", prep.lens_unit[idx], ln.zhat)
        return {"aq": aq, "g": (-aq * cos_zv)[:, None, :], "zhat": ln.zhat}

    def combine(self, prep, target, t_slice, st, qg, out=None):
        r = st["zhat"] @ target.u[t_slice].T
        return affine(qg, st["aq"], r[..., None], st["g"], out)


def act_grad(
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
    """Exact Activation x Gradient R_j = a_j dy/da_j (Eq. 5/11), eps and b held constant.

    Args:
        x: (N, d_pre) cached class tokens (pre-LayerNorm), or a FeatureCache.
        sae: the top-k SAE (its decoder rows are the v_j, ``b_dec`` is b).
        head: the model's LayerNorm + projection.
        text: (T, d_post) text embeddings (y = cosine, Eq. 4), or a :class:`Readout`.
        code: ``sae.encode(x)`` when already computed (saves the encoder pass).
        top_n: keep only the n best latents per (sample, output): returns a TopAttribution.
        on_chunk: ``on_chunk(n_slice, t_slice, Attribution)`` receives each block instead
            of one big result (returns None); for N x T too large to hold.
        chunk_n, chunk_t: block sizes over samples and outputs (default: ~256 MB blocks).
        dtype: compute dtype (default x's; float32 for a FeatureCache).
        device: compute device (default the SAE's).
        progress: show a progress bar over blocks.

    Returns:
        Attribution with ``indices`` (N, k) and ``values`` (N, T, k).
    """
    return run(ActGradKernel(), x, sae, head, text, code=code, top_n=top_n, on_chunk=on_chunk, chunk_n=chunk_n,
               chunk_t=chunk_t, dtype=dtype, device=device, progress=progress)


def act_grad_paper(
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
    """The paper's beta -> 0 form of Activation x Gradient (Eq. 6 = Eq. 31), for reproducing
    the paper and measuring its error against :func:`act_grad`. Same call shape and options.

    Exact when beta = 0 and the LayerNorm eps = 0 (the derivation normalises by |x - mu|
    while torch's LayerNorm uses sqrt(var + eps)); otherwise an approximation.
    """
    return run(PaperKernel(), x, sae, head, text, code=code, top_n=top_n, on_chunk=on_chunk, chunk_n=chunk_n,
               chunk_t=chunk_t, dtype=dtype, device=device, progress=progress)
