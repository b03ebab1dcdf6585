"""Sparse-aware forward/backward of the top-k SAE (the training hot path).

A top-k SAE touches k of d_sae latents per sample, so after the encoder GEMM everything
should cost O(N * k * d_in), not O(N * d_sae * d_in):

* **encode** (:class:`TopKEncode`): one GEMM for the pre-activations, top-k, and, when
  AuxK is on, a second top-k over the dead latents' columns only. Its backward never
  forms the dense (N, d_sae) gradient: dL/dW_enc is a sparse (d_sae, N) x dense (N, d_in)
  product (CSR, one row per latent), dL/db_enc a scatter-add, and dL/db_dec a single
  matrix-vector product.
* **decode** (:func:`decode`): ``F.embedding_bag`` gathers the k active decoder rows and
  weighs them by the activations; its backward scatters into the active rows only.

A dense masked implementation (scatter the top-k into an (N, d_sae) matrix, multiply by
W_dec) costs about five GEMMs of the encoder's size per step; this one costs one. The
gradients are exactly those of that dense formulation (tests compare against autograd).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F


class SparseCode(NamedTuple):
    """Top-k code of a batch plus, optionally, the AuxK code over dead latents."""

    indices: torch.Tensor
    """(N, k) int64 active latent ids, sorted by decreasing pre-activation."""

    values: torch.Tensor
    """(N, k) activations (float32; ReLU-clamped when the SAE uses ReLU)."""

    aux_indices: torch.Tensor
    """(N, k_aux') int64 ids of the largest pre-activations among dead latents
    (k_aux' = min(k_aux, #dead); zero columns when AuxK is off or nothing is dead)."""

    aux_values: torch.Tensor
    """(N, k_aux') their activations."""


def _rows_scatter(indices: torch.Tensor, weights: torch.Tensor, dense: torch.Tensor, n_rows: int) -> torch.Tensor:
    """G = S @ dense with S (n_rows, N) sparse, S[indices[n, i], n] += weights[n, i].

    Row j of the result is sum over (n, i) with indices[n, i] == j of weights[n, i] * dense[n]:
    the weight gradient of an embedding bag. Built as CSR (one row per latent) so the
    product runs as a sparse-dense kernel without an (N, k, d) intermediate.
    """
    n, k = indices.shape
    flat = indices.reshape(-1)
    order = torch.argsort(flat, stable=True)  # stable: a fixed summation order -> deterministic
    cols = torch.div(order, k, rounding_mode="floor")
    vals = weights.reshape(-1)[order].to(dense.dtype)
    crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=indices.device)
    crow[1:] = torch.bincount(flat, minlength=n_rows).cumsum(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
        mat = torch.sparse_csr_tensor(crow, cols, vals, (n_rows, n), check_invariants=False)
        return mat @ dense


class TopKEncode(torch.autograd.Function):
    """(x, W_enc, b_enc, b_dec) -> top-k (and AuxK) indices and values; sparse backward.

    pre = (x - b_dec) @ W_enc + b_enc; values = [ReLU](TopK(pre)). The gradient w.r.t.
    ``pre`` is non-zero only at the selected entries, so every parameter gradient is a
    gather or scatter over those entries.
    """

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, b_dec, k, relu, dead_mask, k_aux, compute_dtype, workspace):  # type: ignore[override]
        xc = x.to(W_enc.dtype) - b_dec
        cd = compute_dtype if compute_dtype is not None else W_enc.dtype
        out = None
        if workspace is not None and workspace.dtype == cd and workspace.device == x.device \
                and workspace.shape[1] == W_enc.shape[1] and workspace.shape[0] >= x.shape[0]:
            # A reused (N, d_sae) buffer: a fresh one this size costs more in page faults
            # than the top-k that reads it.
            out = workspace[: x.shape[0]]
        if cd != W_enc.dtype:
            pre = torch.addmm(b_enc.to(cd), xc.to(cd), W_enc.to(cd), out=out)
        else:
            pre = torch.addmm(b_enc, xc, W_enc, out=out)
        # top-k before ReLU: ReLU is monotone, so the kept values are the same and we save
        # a full pass over the (N, d_sae) matrix.
        values, indices = pre.topk(k, dim=1, sorted=True)
        values = values.to(W_enc.dtype)
        n = x.shape[0]
        aux_indices = torch.zeros(n, 0, dtype=torch.int64, device=x.device)
        aux_values = torch.zeros(n, 0, dtype=W_enc.dtype, device=x.device)
        if dead_mask is not None and k_aux > 0:
            dead = dead_mask.nonzero().squeeze(1)
            if dead.numel():
                ka = min(int(k_aux), int(dead.numel()))
                sub = pre.index_select(1, dead)  # only the dead columns: cheap when few are dead
                aux_values, pos = sub.topk(ka, dim=1, sorted=True)
                aux_values = aux_values.to(W_enc.dtype)
                aux_indices = dead[pos]
        del pre
        if relu:
            values = values.clamp_min(0)
            aux_values = aux_values.clamp_min(0)
        ctx.relu = bool(relu)
        ctx.d_sae = W_enc.shape[1]
        ctx.save_for_backward(xc, W_enc, indices, values, aux_indices, aux_values)
        ctx.mark_non_differentiable(indices, aux_indices)
        return indices, values, aux_indices, aux_values

    @staticmethod
    def backward(ctx, _gi, g_values, _gai, g_aux):  # type: ignore[override]
        xc, W_enc, indices, values, aux_indices, aux_values = ctx.saved_tensors
        parts_i, parts_g = [], []
        for idx, val, g in ((indices, values, g_values), (aux_indices, aux_values, g_aux)):
            if g is None or idx.shape[1] == 0:
                continue
            if ctx.relu:
                g = g * (val > 0)  # ReLU'(pre) = 1 only where the kept value is positive
            parts_i.append(idx)
            parts_g.append(g)
        need_x, need_W, need_be, need_bd = ctx.needs_input_grad[:4]
        grad_x = grad_W = grad_be = grad_bd = None
        if not parts_i:
            return (None,) * 10
        idx = torch.cat(parts_i, dim=1)
        g = torch.cat(parts_g, dim=1).to(W_enc.dtype)
        d_sae = ctx.d_sae
        if need_be or need_bd:
            # dL/db_enc[j] = sum of dL/dpre[n, j] over the batch
            grad_be = torch.zeros(d_sae, dtype=W_enc.dtype, device=g.device).index_add_(0, idx.reshape(-1), g.reshape(-1))
        if need_W:
            # dL/dW_enc[:, j] = sum_n dL/dpre[n, j] xc[n]; computed as (d_sae, d_in), then
            # transposed: W_enc is stored latent-major, so the strides match without a copy.
            grad_W = _rows_scatter(idx, g, xc, d_sae).t()
        if need_bd:
            # dL/dxc[n] = sum_i g[n, i] W_enc[:, idx[n, i]], and xc = x - b_dec, so
            # dL/db_dec = -sum_n dL/dxc[n] = -W_enc @ (dL/db_enc)
            grad_bd = -(W_enc @ grad_be)
        if need_x:
            grad_x = F.embedding_bag(idx, W_enc.t(), per_sample_weights=g, mode="sum")
        return grad_x, grad_W, (grad_be if need_be else None), grad_bd, None, None, None, None, None, None


def topk_encode(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    b_dec: torch.Tensor,
    k: int,
    relu: bool = True,
    dead_mask: torch.Tensor | None = None,
    k_aux: int = 0,
    compute_dtype: torch.dtype | None = None,
    workspace: torch.Tensor | None = None,
) -> SparseCode:
    """Top-k encode with a sparse backward (see :class:`TopKEncode`).

    Args:
        x: (N, d_in) features.
        W_enc, b_enc, b_dec: the SAE's encoder weight (d_in, d_sae), encoder bias and b.
        k: active latents per sample.
        relu: clamp the kept values at 0.
        dead_mask: (d_sae,) bool, latents eligible for the AuxK code; None disables it.
        k_aux: size of the AuxK code.
        compute_dtype: dtype of the encoder GEMM (e.g. bfloat16 on GPU); gradients are
            accumulated in the parameters' dtype.
        workspace: optional (>= N, d_sae) buffer of ``compute_dtype`` for the
            pre-activations (overwritten; nothing refers to it after the call).
    """
    return SparseCode(*TopKEncode.apply(x, W_enc, b_enc, b_dec, int(k), bool(relu), dead_mask, int(k_aux),
                                        compute_dtype, workspace))


def decode(indices: torch.Tensor, values: torch.Tensor, W_dec: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """sum_i values[n, i] W_dec[indices[n, i]] (+ bias) by gathering only the active rows (Eq. 1).

    ``F.embedding_bag`` does the gather-and-weigh in one kernel; its backward returns the
    gradient of the activations (one dot product per active latent) and scatters the
    decoder gradient into the active rows.
    """
    if indices.shape[1] == 0:
        out = torch.zeros(indices.shape[0], W_dec.shape[1], dtype=W_dec.dtype, device=W_dec.device)
    else:
        out = F.embedding_bag(indices, W_dec, per_sample_weights=values.to(W_dec.dtype), mode="sum")
    return out if bias is None else out + bias
