"""Sparse-aware forward/backward of the top-k SAE (the training hot path).

A top-k SAE touches k of d_sae latents per sample, so after the encoder GEMM everything
should cost O(N * k * d_in), not O(N * d_sae * d_in):

* **encode** (:class:`TopKEncode`): one GEMM for the pre-activations, top-k, and, when
  AuxK is on, a second top-k over the dead latents' columns only. Its backward never
  forms the dense (N, d_sae) gradient: dL/dW_enc is a sparse (d_sae, N) x dense (N, d_in)
  product (one bag of samples per latent, :func:`rows_scatter`), dL/db_enc a scatter-add,
  and dL/db_dec a single matrix-vector product.
* **decode** (:class:`SparseDecode`): ``F.embedding_bag`` gathers the k active decoder rows
  and weighs them by the activations. Backward: dL/dW_dec is the same kind of sparse x
  dense product, dL/dvalues one dot product per active latent (a sampled matrix product).

Both backward passes group the N*k active entries by latent; that grouping (a
:class:`CSRPlan`, one stable sort) is computed once per batch and shared. A dense masked
implementation (scatter the top-k into an (N, d_sae) matrix, multiply by W_dec) costs about
five GEMMs of the encoder's size per step; this one costs one. The gradients are exactly
those of that dense formulation (tests compare against autograd).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F


class CSRPlan(NamedTuple):
    """The (N, k) active entries grouped by latent: the structure of a (d_sae, N) CSR matrix."""

    order: torch.Tensor
    """(N*k,) positions into the flattened (N, k) code, stably sorted by latent id."""
    cols: torch.Tensor
    """(N*k,) sample index of each sorted entry."""
    crow: torch.Tensor
    """(d_sae + 1,) row pointers: latent j owns sorted entries crow[j]:crow[j+1]."""
    n_rows: int
    n_samples: int


def csr_plan(indices: torch.Tensor, n_rows: int) -> CSRPlan:
    """Group the entries of an (N, k) index matrix by latent (one stable sort)."""
    n, k = indices.shape
    flat = indices.reshape(-1)
    if flat.device.type == "cpu":
        # numpy's stable sort: torch's multi-threaded CPU sort is 10-30x slower than a
        # single-threaded one on small core counts; int16 keys get a radix sort.
        keys = flat.numpy().astype(np.int16 if n_rows <= np.iinfo(np.int16).max else np.int32)
        order = torch.from_numpy(np.argsort(keys, kind="stable"))
    else:
        order = torch.argsort(flat, stable=True)
    crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=indices.device)
    crow[1:] = torch.bincount(flat, minlength=n_rows).cumsum(0)
    return CSRPlan(order, torch.div(order, k, rounding_mode="floor"), crow, n_rows, n)


def _csr(crow: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
        return torch.sparse_csr_tensor(crow, cols, vals, shape, check_invariants=False)


def rows_scatter(plan: CSRPlan, weights: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """G (d_sae, d) with G[j] = sum over entries (n, i) of latent j of weights[n, i] * dense[n].

    The weight gradient of an embedding bag: a sparse (d_sae, N) x dense (N, d) product with
    no (N, k, d) intermediate. It runs as an embedding bag *forward* with one bag per latent
    (the plan's rows) over the rows of ``dense``, which is faster on CPU than a CSR matmul.
    The stable sort fixes the summation order (deterministic).
    """
    vals = weights.reshape(-1)[plan.order].to(dense.dtype)
    return F.embedding_bag(plan.cols, dense, plan.crow, per_sample_weights=vals, mode="sum", include_last_offset=True)


def gather_dot(indices: torch.Tensor, rows: torch.Tensor, dense: torch.Tensor,
               method: str | None = None) -> torch.Tensor:
    """out[n, i] = rows[indices[n, i]] . dense[n]  ((N, k) from (d_sae, d) rows and (N, d)).

    On CPU a sampled matrix product (dense @ rows^T evaluated only at the active entries);
    elsewhere batched dot products over gathered rows, in chunks that bound the (chunk, k, d)
    gather to ~256 MB. ``method`` ("sampled" or "bmm") overrides that choice.
    """
    n, k = indices.shape
    method = method or ("sampled" if indices.device.type == "cpu" else "bmm")
    if method not in ("sampled", "bmm"):
        raise ValueError(f"gather_dot: method must be 'sampled' or 'bmm', got {method!r}")
    if method == "bmm":
        out = torch.empty(n, k, dtype=dense.dtype, device=dense.device)
        step = max(1, (64 << 20) // max(1, k * rows.shape[1]))
        for s in range(0, n, step):
            out[s:s + step] = torch.bmm(rows[indices[s:s + step]], dense[s:s + step, :, None]).squeeze(2)
        return out
    crow = torch.arange(0, n * k + 1, k, device=indices.device)
    pattern = _csr(crow, indices.reshape(-1), torch.zeros(n * k, dtype=dense.dtype, device=dense.device),
                   (n, rows.shape[0]))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
        out = torch.sparse.sampled_addmm(pattern, dense, rows.t(), beta=0.0)
    return out.values().reshape(n, k)


class _PlanSlot:
    """Carries the CSR plan of the top-k code from encode's forward to both backward passes
    (and, for BatchTopK, the batch's threshold out of the forward)."""

    def __init__(self) -> None:
        self.plan: CSRPlan | None = None
        self.batch_threshold: float | None = None


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

    plan: CSRPlan | None = None
    """``indices`` grouped by latent; pass it to :func:`decode` to share the sort."""

    batch_threshold: float | None = None
    """BatchTopK only: the smallest selected (positive) activation of the batch, the quantity
    whose running mean becomes the inference threshold."""


class TopKEncode(torch.autograd.Function):
    """(x, W_enc, b_enc, b_dec) -> top-k (and AuxK) indices and values; sparse backward.

    pre = (x - b_dec) @ W_enc + b_enc; values = [ReLU](TopK(pre)). The gradient w.r.t.
    ``pre`` is non-zero only at the selected entries, so every parameter gradient is a
    gather or scatter over those entries.
    """

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, b_dec, k, relu, dead_mask, k_aux, compute_dtype,  # type: ignore[override]
                workspace, slot, batch_topk=False):
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
        if batch_topk:
            # BatchTopK (Bussmann et al. 2024): the N*k largest pre-activations of the whole batch,
            # a sample keeping however many of them it holds. As a padded (N, width) code: the
            # per-row top-`width` (width = the most any row holds), entries below the batch's
            # cut zeroed -- zero values are inactive and get no gradient (the ReLU rule below).
            # The batch's cut is found among each row's top 4k candidates (a selection over N*4k
            # values, not N*d_sae); it is exact unless some row has all its candidates kept,
            # and then the whole matrix is searched.
            n_keep = min(int(k) * pre.shape[0], pre.numel())
            values, indices = pre.topk(min(4 * int(k), pre.shape[1]), dim=1, sorted=True)
            cut = values.reshape(-1).topk(n_keep, sorted=False).values.min()
            if values.shape[1] < pre.shape[1] and bool((values[:, -1] >= cut).any()):
                cut = pre.reshape(-1).topk(n_keep, sorted=False).values.min()
                values, indices = pre.topk(max(1, int((pre >= cut).sum(1).max())), dim=1, sorted=True)
            width = max(1, int((values >= cut).sum(1).max()))
            values, indices = values[:, :width], indices[:, :width]
            values = torch.where(values >= cut, values, torch.zeros_like(values))
            positive = values[values > 0]
            slot.batch_threshold = float(positive.min()) if positive.numel() else None
        else:
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
        # the grouping by latent serves both backward passes; inference never needs it
        slot.plan = csr_plan(indices, W_enc.shape[1]) if any(ctx.needs_input_grad[:4]) else None
        ctx.relu = bool(relu)
        ctx.slot = slot
        ctx.save_for_backward(xc, W_enc, indices, values, aux_indices, aux_values)
        ctx.mark_non_differentiable(indices, aux_indices)
        return indices, values, aux_indices, aux_values

    @staticmethod
    def backward(ctx, _gi, g_values, _gai, g_aux):  # type: ignore[override]
        xc, W_enc, indices, values, aux_indices, aux_values = ctx.saved_tensors
        d_sae = W_enc.shape[1]
        parts = []
        for idx, val, g in ((indices, values, g_values), (aux_indices, aux_values, g_aux)):
            if g is None or idx.shape[1] == 0:
                continue
            if ctx.relu:
                g = g * (val > 0)  # ReLU'(pre) = 1 only where the kept value is positive
            parts.append((idx, g.to(W_enc.dtype)))
        none = (None,) * 12
        if not parts:
            return none
        need_x, need_W, need_be, need_bd = ctx.needs_input_grad[:4]
        grad_x = grad_W = grad_be = grad_bd = None
        if need_be or need_bd:
            # dL/db_enc[j] = sum of dL/dpre[n, j] over the batch
            grad_be = torch.zeros(d_sae, dtype=W_enc.dtype, device=xc.device)
            for idx, g in parts:
                grad_be.index_add_(0, idx.reshape(-1), g.reshape(-1))
        if need_W:
            # dL/dW_enc[:, j] = sum_n dL/dpre[n, j] xc[n]; computed as (d_sae, d_in), then
            # transposed: W_enc is stored latent-major, so the strides match without a copy.
            grad_T = None
            for idx, g in parts:
                plan = ctx.slot.plan if (idx is indices and ctx.slot.plan is not None) else csr_plan(idx, d_sae)
                term = rows_scatter(plan, g, xc)
                grad_T = term if grad_T is None else grad_T.add_(term)
            grad_W = grad_T.t()
        if need_bd:
            # dL/dxc[n] = sum_i g[n, i] W_enc[:, idx[n, i]], and xc = x - b_dec, so
            # dL/db_dec = -sum_n dL/dxc[n] = -W_enc @ (dL/db_enc)
            grad_bd = -(W_enc @ grad_be)
        if need_x:
            grad_x = sum(F.embedding_bag(idx, W_enc.t(), per_sample_weights=g, mode="sum") for idx, g in parts)
        return grad_x, grad_W, (grad_be if need_be else None), grad_bd, *none[4:]


class SparseDecode(torch.autograd.Function):
    """(indices, values, W_dec, bias) -> sum_i values[n, i] W_dec[indices[n, i]] + bias."""

    @staticmethod
    def forward(ctx, indices, values, W_dec, bias, plan):  # type: ignore[override]
        out = F.embedding_bag(indices, W_dec, per_sample_weights=values.to(W_dec.dtype), mode="sum")
        if bias is not None:
            out.add_(bias)  # our own fresh tensor: no copy needed
        ctx.plan = plan
        ctx.has_bias = bias is not None
        ctx.save_for_backward(indices, values, W_dec)
        return out

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        indices, values, W_dec = ctx.saved_tensors
        _, need_v, need_W, need_b, _ = ctx.needs_input_grad
        g = g.contiguous()
        grad_v = gather_dot(indices, W_dec, g).to(values.dtype) if need_v else None  # dL/da = v_j . dL/dx_hat
        grad_W = None
        if need_W:
            plan = ctx.plan if ctx.plan is not None else csr_plan(indices, W_dec.shape[0])
            grad_W = rows_scatter(plan, values, g)  # dL/dv_j = sum over samples of a_j dL/dx_hat
        grad_b = g.sum(0) if (need_b and ctx.has_bias) else None
        return None, grad_v, grad_W, grad_b, None


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
    batch_topk: bool = False,
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
        batch_topk: keep the N*k largest pre-activations of the batch instead of k per sample
            (BatchTopK; needs ``relu``). The code is then (N, width), width = the most any
            sample keeps, zero-padded; ``batch_threshold`` reports the batch's smallest kept value.
    """
    if batch_topk and not relu:
        raise ValueError("topk_encode: batch_topk needs relu=True (its zero padding marks inactive slots)")
    slot = _PlanSlot()
    out = TopKEncode.apply(x, W_enc, b_enc, b_dec, int(k), bool(relu), dead_mask, int(k_aux), compute_dtype,
                           workspace, slot, bool(batch_topk))
    return SparseCode(*out, plan=slot.plan, batch_threshold=slot.batch_threshold)


def decode(indices: torch.Tensor, values: torch.Tensor, W_dec: torch.Tensor, bias: torch.Tensor | None = None,
           plan: CSRPlan | None = None) -> torch.Tensor:
    """sum_i values[n, i] W_dec[indices[n, i]] (+ bias), gathering only the active rows (Eq. 1).

    ``plan`` (from :func:`topk_encode`) saves the backward its own sort of ``indices``.
    """
    if indices.shape[1] == 0:
        out = torch.zeros(indices.shape[0], W_dec.shape[1], dtype=W_dec.dtype, device=W_dec.device)
        return out if bias is None else out + bias
    if plan is not None and (plan.n_samples != indices.shape[0] or plan.n_rows != W_dec.shape[0]):
        raise ValueError(f"decode: plan is for ({plan.n_samples}, {plan.n_rows}), got indices {tuple(indices.shape)} "
                         f"and W_dec {tuple(W_dec.shape)}")
    return SparseDecode.apply(indices, values, W_dec, bias, plan)
