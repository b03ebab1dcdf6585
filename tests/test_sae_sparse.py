"""The sparse-aware encode/decode against a dense, autograd-only reference (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clipattr_utils.sae import TopKSAE
from clipattr_utils.sae.sparse import csr_plan, decode, gather_dot, rows_scatter, topk_encode


def dense_reference(x, W_enc, b_enc, b_dec, W_dec, k, relu, dead_mask=None, k_aux=0):
    """The textbook top-k SAE: dense (N, d_sae) activations, ReLU *before* top-k, plain autograd."""
    pre = (x - b_dec) @ W_enc + b_enc
    act = F.relu(pre) if relu else pre
    val, idx = act.topk(k, dim=1)
    dense = torch.zeros_like(pre).scatter(1, idx, val)
    x_hat = dense @ W_dec + b_dec
    e_hat = None
    if dead_mask is not None:
        ka = min(k_aux, int(dead_mask.sum()))
        masked = pre.masked_fill(~dead_mask, float("-inf"))
        aval, aidx = masked.topk(ka, dim=1)
        if relu:
            aval = F.relu(aval)
        e_hat = torch.zeros_like(pre).scatter(1, aidx, aval) @ W_dec
    return x_hat, e_hat


def _problem(seed=0, n=40, d=12, s=50, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    sae = TopKSAE(d, s, k=5, generator=g).to(dtype)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3, generator=g)
        sae.b_dec.normal_(0, 0.5, generator=g)
        sae.W_enc.add_(0.2 * torch.randn(d, s, generator=g, dtype=dtype))
    x = torch.randn(n, d, generator=g, dtype=dtype) * 1.5 + 0.3
    return sae, x


def _loss(x, x_hat, e_hat, w):
    # an arbitrary smooth function of both outputs, so every gradient path is exercised
    loss = ((x_hat - x) ** 2 * w).sum() + (x_hat.norm(dim=1) ** 1.5).sum()
    if e_hat is not None:
        loss = loss + ((e_hat - (x - x_hat).detach()) ** 2).sum() * 0.7
    return loss


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("with_aux", [False, True])
@pytest.mark.parametrize("shift", [0.0, -3.0])
def test_gradients_match_dense_autograd(relu, with_aux, shift):
    """shift=-3 leaves most samples with fewer than k positive pre-activations (zero slots)."""
    sae, x = _problem()
    sae.relu = relu
    with torch.no_grad():
        sae.b_enc.add_(shift)
    g = torch.Generator().manual_seed(1)
    w = torch.rand(x.shape, generator=g, dtype=x.dtype)
    dead = torch.rand(sae.d_sae, generator=g) < 0.4 if with_aux else None
    k_aux = 6

    x1 = x.clone().requires_grad_(True)
    code = topk_encode(x1, sae.W_enc, sae.b_enc, sae.b_dec, sae.k, relu, dead, k_aux)
    x_hat = decode(code.indices, code.values, sae.W_dec, sae.b_dec)
    e_hat = decode(code.aux_indices, code.aux_values, sae.W_dec) if with_aux else None
    params = [x1, sae.W_enc, sae.b_enc, sae.b_dec, sae.W_dec]
    ours = torch.autograd.grad(_loss(x1, x_hat, e_hat, w), params)

    ref_params = [p.detach().clone().requires_grad_(True) for p in params]
    xr, We, be, bd, Wd = ref_params
    xr_hat, er_hat = dense_reference(xr, We, be, bd, Wd, sae.k, relu, dead, k_aux)
    ref = torch.autograd.grad(_loss(xr, xr_hat, er_hat, w), ref_params)

    torch.testing.assert_close(x_hat, xr_hat, rtol=1e-12, atol=1e-12)
    if with_aux:
        assert code.aux_indices.shape == (x.shape[0], k_aux)
        assert bool(dead[code.aux_indices].all()), "AuxK must pick dead latents only"
        torch.testing.assert_close(e_hat, er_hat, rtol=1e-12, atol=1e-12)
    for name, a, b in zip(["x", "W_enc", "b_enc", "b_dec", "W_dec"], ours, ref):
        assert b.abs().max() > 0, f"reference gradient of {name} is zero: the test would be vacuous"
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"gradient of {name}")


def test_aux_with_fewer_dead_than_k_aux_and_with_none_dead():
    sae, x = _problem(seed=3)
    dead = torch.zeros(sae.d_sae, dtype=torch.bool)
    dead[[3, 7]] = True
    code = topk_encode(x, sae.W_enc, sae.b_enc, sae.b_dec, sae.k, True, dead, k_aux=10)
    assert code.aux_indices.shape == (x.shape[0], 2)
    assert set(code.aux_indices.unique().tolist()) <= {3, 7}
    none = topk_encode(x, sae.W_enc, sae.b_enc, sae.b_dec, sae.k, True, torch.zeros_like(dead), k_aux=10)
    assert none.aux_indices.shape == (x.shape[0], 0)


def test_encoder_gradient_layout_needs_no_copy():
    """W_enc is stored latent-major, and its sparse gradient arrives in the same layout."""
    sae, x = _problem(dtype=torch.float32)
    assert sae.W_enc.stride() == (1, sae.d_in)
    code = sae.encode_train(x)
    sae.decode(code.indices, code.values).square().sum().backward()
    assert sae.W_enc.grad.stride() == sae.W_enc.stride()


def test_scatter_and_gather_kernels_match_brute_force():
    g = torch.Generator().manual_seed(5)
    idx = torch.stack([torch.randperm(30, generator=g)[:4] for _ in range(9)])
    w = torch.randn(9, 4, generator=g, dtype=torch.float64)
    dense = torch.randn(9, 6, generator=g, dtype=torch.float64)
    want = torch.zeros(30, 6, dtype=torch.float64)
    for n in range(9):
        for i in range(4):
            want[idx[n, i]] += w[n, i] * dense[n]
    torch.testing.assert_close(rows_scatter(csr_plan(idx, 30), w, dense), want)
    rows = torch.randn(30, 6, generator=g, dtype=torch.float64)
    dots = torch.tensor([[float(rows[idx[n, i]] @ dense[n]) for i in range(4)] for n in range(9)], dtype=torch.float64)
    torch.testing.assert_close(gather_dot(idx, rows, dense), dots)
    torch.testing.assert_close(gather_dot(idx, rows, dense, method="bmm"), dots)  # the GPU path


def test_encode_matches_dense_and_is_sorted():
    sae, x = _problem(seed=2)
    idx, val = sae.encode(x)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    want_val, _ = F.relu(pre).topk(sae.k, dim=1)
    torch.testing.assert_close(val, want_val)
    assert bool((val[:, :-1] >= val[:, 1:]).all())
    # each reported (index, value) pair is the ReLU'd pre-activation at that index (where non-zero)
    got = F.relu(pre.gather(1, idx))
    torch.testing.assert_close(got, val)
    with torch.no_grad():
        sae.b_enc.sub_(100.0)  # every pre-activation negative
    _, clamped = sae.encode(x)
    assert bool((clamped == 0).all()), "relu=True: no positive pre-activation -> all-zero code"
    sae.relu = False
    idx_raw, raw = sae.encode(x)
    assert bool((raw < 0).all()), "relu=False keeps the raw (negative) top-k values, the authors' variant"
    torch.testing.assert_close(raw, ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).gather(1, idx_raw))


def test_encode_chunks_agree_with_one_pass():
    sae, x = _problem(seed=4, n=100)
    a = sae.encode(x)
    b = sae.encode(x, chunk_rows=7)
    assert torch.equal(a.indices, b.indices)
    torch.testing.assert_close(a.values, b.values)  # GEMM blocking may differ in the last bit


def test_error_is_exact_residual_and_width_checked():
    sae, x = _problem()
    torch.testing.assert_close(sae.error(x) + sae(x), x)
    with pytest.raises(ValueError, match=r"d_in=12.*\(3, 7\)"):
        sae.encode(torch.zeros(3, 7, dtype=torch.float64))


def test_decoder_constraint_helpers():
    sae, x = _problem()
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(sae.d_sae, 1, dtype=x.dtype) + 0.5)
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    sae.normalize_decoder_()
    torch.testing.assert_close(sae.decoder_norms(), torch.ones(sae.d_sae, dtype=x.dtype))
    before = sae.W_dec.grad.clone()
    sae.project_decoder_grad_()
    dots = (sae.W_dec.grad * sae.W_dec).sum(1)
    torch.testing.assert_close(dots, torch.zeros_like(dots), atol=1e-12, rtol=0)
    # only the parallel part was removed
    v = sae.W_dec.detach()
    torch.testing.assert_close(before - sae.W_dec.grad, (before * v).sum(1, keepdim=True) * v)


def test_constructor_errors():
    with pytest.raises(ValueError, match="k"):
        TopKSAE(8, 4, k=5)
    with pytest.raises(ValueError, match="d_sae"):
        TopKSAE(8, 0, k=1)
    with pytest.raises(ValueError, match=r"\(8,\)"):
        TopKSAE(8, 16, k=2).init_bias_(torch.zeros(7))
