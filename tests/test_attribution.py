"""Closed-form attributions against independent references (autograd, brute force).

The autograd reference follows the authors' recipe: a dense latent vector a (N, d_sae)
with requires_grad, x = a @ W_dec + b + eps (eps = x - x_hat detached), the model's head
through torch's own LayerNorm, a cosine, one backward per prompt, R = a * grad.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipattr_utils.attribution import (METHODS, Attribution, MeanRelevance, Readout, TopAttribution, act_grad,
                                        act_grad_paper, act_logit_lens, energy, integrated_gradients, logit_lens,
                                        mean_relevance, random_scores, readout_act_grad, readout_from_sklearn,
                                        to_frame, top_n)
from clipattr_utils.head import Head
from clipattr_utils.sae.model import TopKSAE

ROOT = Path(__file__).resolve().parents[1]
SANDBOX_WEIGHTS = ROOT / "data" / "sandbox" / "sandbox.safetensors"


# ----------------------------------------------------------------------------- fixtures


def _perturb_head(head: Head, seed: int) -> Head:
    """Nonzero LayerNorm bias and non-unit scale, so every term of the formula matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.beta.copy_(0.5 * torch.randn(head.d_pre, generator=g, dtype=head.beta.dtype))
        head.gamma.mul_(1 + 0.3 * torch.randn(head.d_pre, generator=g, dtype=head.gamma.dtype))
    return head


def _random_sae(d_in: int, d_sae: int, k: int, seed: int, relu: bool = True) -> TopKSAE:
    torch.manual_seed(seed)
    sae = TopKSAE(d_in, d_sae, k=k, relu=relu)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.3)
        sae.b_enc.normal_(0, 0.1)
    return sae


@pytest.fixture(scope="module")
def vitb32_head() -> Head:
    open_clip = pytest.importorskip("open_clip")
    # The random init draws from torch's global stream, whose seed differs in every process:
    # unseeded, some heads give a (sample, prompt) pair with y(x) ~ y(b + eps), which the
    # completeness test's degenerate check refuses (seed 0 is one of them).
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = open_clip.create_model("ViT-B-32")
    head = Head.from_model(model).frozen()  # a copy: the test perturbs it
    assert torch.all(head.beta == 0), "random-init open_clip heads have beta = 0; the test sets its own"
    return _perturb_head(head, seed=1)


@pytest.fixture(scope="module")
def world64(vitb32_head):
    """float64 ViT-B-32 head + random SAE + class-token-like inputs + prompts."""
    head = Head(vitb32_head.gamma, vitb32_head.beta, vitb32_head.proj, vitb32_head.eps).double()
    sae = _random_sae(768, 2000, 24, seed=2).double()
    g = torch.Generator().manual_seed(3)
    # Class tokens have a large common offset and a few outlier dimensions.
    x = 2.0 * torch.randn(6, 768, generator=g, dtype=torch.float64) + torch.randn(768, generator=g, dtype=torch.float64)
    x[:, :5] *= 10
    text = torch.randn(5, 512, generator=g, dtype=torch.float64)
    return head, sae, x, text


def reference_act_grad(x, sae, head, output_fn, n_outputs, alpha: float = 1.0):
    """Authors' way: dense a (N, d_sae), autograd backward per output. With ``alpha`` the
    latents are scaled to alpha * a (b and eps fixed) and dy/da is taken at that point."""
    with torch.no_grad():
        idx, vals = sae.encode(x)
        x_hat = sae.decode(idx, vals)
    eps = (x - x_hat).detach()
    dense = torch.zeros(x.shape[0], sae.d_sae, dtype=x.dtype).scatter(1, idx, vals.to(x.dtype))
    a = (alpha * dense).requires_grad_(True)
    xx = a @ sae.W_dec.detach().to(x.dtype) + sae.b_dec.detach().to(x.dtype) + eps
    y = output_fn(xx)
    out = []
    for t in range(n_outputs):
        (grad,) = torch.autograd.grad(y[:, t].sum(), a, retain_graph=True)
        out.append((dense * grad).gather(1, idx))
    return idx, torch.stack(out, dim=1)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| over the whole array."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


# ------------------------------------------------------------------ exact form vs autograd


def test_act_grad_matches_autograd_float64_vitb32(world64):
    head, sae, x, text = world64
    idx, ref = reference_act_grad(x, sae, head, lambda xx: head.cosine(xx, text), text.shape[0])
    attr = act_grad(x, sae, head, text)
    assert isinstance(attr, Attribution)
    assert attr.indices.shape == (6, 24) and attr.values.shape == (6, 5, 24)
    assert torch.equal(attr.indices, idx)
    assert rel_err(attr.values, ref) <= 1e-10
    # The LayerNorm bias matters for the scores: it is not a no-op in this test.
    flat = Head(head.gamma, torch.zeros_like(head.beta), head.proj, head.eps).double()
    assert rel_err(act_grad(x, sae, flat, text).values, ref) > 1e-3


def test_act_grad_float32_within_1e5(vitb32_head, world64):
    _, sae64, x64, text64 = world64
    head64 = Head(vitb32_head.gamma, vitb32_head.beta, vitb32_head.proj, vitb32_head.eps).double()
    _, ref64 = reference_act_grad(x64, sae64, head64, lambda xx: head64.cosine(xx, text64), 5)
    sae32, x32, text32 = copy.deepcopy(sae64).float(), x64.float(), text64.float()
    attr = act_grad(x32, sae32, vitb32_head, text32)
    assert attr.values.dtype == torch.float32
    _, ref32 = reference_act_grad(x32, sae32, vitb32_head, lambda xx: vitb32_head.cosine(xx, text32), 5)
    # Same latents as the float64 code (the SAE weights are exactly representable).
    assert torch.equal(attr.indices, sae64.encode(x64).indices)
    assert rel_err(attr.values, ref64) <= 1e-5
    assert rel_err(attr.values, ref32) <= 1e-5


@pytest.mark.parametrize("normalize", [False, True])
def test_readout_matches_autograd(world64, normalize):
    head, sae, x, _ = world64
    g = torch.Generator().manual_seed(5)
    w = torch.randn(3, 512, generator=g, dtype=torch.float64)
    c = torch.randn(3, generator=g, dtype=torch.float64)

    def out(xx):
        z = head(xx)
        return (F.normalize(z, dim=-1) if normalize else z) @ w.T + c

    _, ref = reference_act_grad(x, sae, head, out, 3)
    attr = act_grad(x, sae, head, Readout(w, c, normalize))
    assert attr.values.shape == (6, 3, 24)
    assert rel_err(attr.values, ref) <= 1e-10
    # The convenience form gives the same numbers, and a single weight vector works.
    assert torch.allclose(readout_act_grad(x, sae, head, w, c, normalize).values, attr.values, rtol=0, atol=0)
    single = act_grad(x, sae, head, Readout(w[1], c[1], normalize))
    assert torch.allclose(single.values[:, 0], attr.values[:, 1], rtol=1e-12, atol=1e-15)


def test_readout_from_sklearn(world64):
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression

    head, sae, x, _ = world64
    g = np.random.default_rng(0)
    emb = head(x).detach().numpy()
    clf = LogisticRegression().fit(np.concatenate([emb, emb + g.normal(0, 1, emb.shape)]), [0] * 6 + [1] * 6)
    ro = readout_from_sklearn(clf)
    w, c = torch.as_tensor(clf.coef_), torch.as_tensor(clf.intercept_)
    _, ref = reference_act_grad(x, sae, head, lambda xx: head(xx) @ w.T + c, 1)
    assert rel_err(act_grad(x, sae, head, ro).values, ref) <= 1e-10
    # The readout's y at x is the classifier's decision function.
    logit = head(x).detach() @ w.T + c
    assert np.allclose(logit[:, 0].numpy(), clf.decision_function(emb), atol=1e-8)


def test_act_grad_negative_activations_and_inplace_sae_update(world64):
    """relu=False keeps negative top-k values; an in-place weight update must not reuse
    stale cached constants."""
    head, _, x, text = world64
    sae = _random_sae(768, 500, 16, seed=7, relu=False).double()
    with torch.no_grad():
        sae.b_enc.sub_(6.0)  # pushes part of the top-k below zero
    _, ref = reference_act_grad(x, sae, head, lambda xx: head.cosine(xx, text), 5)
    attr = act_grad(x, sae, head, text)
    assert (sae.encode(x).values < 0).any()
    assert rel_err(attr.values, ref) <= 1e-10
    with torch.no_grad():
        sae.W_dec.mul_(1.5)
        sae.b_dec.add_(0.2)
    _, ref2 = reference_act_grad(x, sae, head, lambda xx: head.cosine(xx, text), 5)
    assert rel_err(ref2, ref) > 1e-3
    assert rel_err(act_grad(x, sae, head, text).values, ref2) <= 1e-10


def _sandbox_head() -> Head:
    if not SANDBOX_WEIGHTS.is_file():
        pytest.skip(f"sandbox model weights {SANDBOX_WEIGHTS.relative_to(ROOT)} do not exist yet")
    from clipattr_utils.models import load_clip

    return load_clip("sandbox").head.frozen()  # a copy: the test perturbs it


def test_act_grad_matches_autograd_sandbox_head():
    head = _perturb_head(_sandbox_head(), seed=11).double()
    assert head.beta.abs().max() > 0
    sae = _random_sae(head.d_pre, 800, 16, seed=12).double()
    g = torch.Generator().manual_seed(13)
    x = 3 * torch.randn(7, head.d_pre, generator=g, dtype=torch.float64) + 1
    text = torch.randn(4, head.d_post, generator=g, dtype=torch.float64)
    _, ref = reference_act_grad(x, sae, head, lambda xx: head.cosine(xx, text), 4)
    assert rel_err(act_grad(x, sae, head, text).values, ref) <= 1e-10
    attr32 = act_grad(x.float(), sae.float(), head.float(), text.float())
    assert rel_err(attr32.values, ref) <= 1e-5


def test_act_grad_matches_autograd_sandbox_head_as_shipped():
    """The shipped head as is (its own trained beta and gamma)."""
    head = _sandbox_head()
    sae = _random_sae(head.d_pre, 600, 16, seed=14)
    g = torch.Generator().manual_seed(15)
    x = 2 * torch.randn(5, head.d_pre, generator=g)
    text = torch.randn(3, head.d_post, generator=g)
    h64, s64 = Head(head.gamma, head.beta, head.proj, head.eps).double(), _random_sae(head.d_pre, 600, 16, seed=14).double()
    _, ref = reference_act_grad(x.double(), s64, h64, lambda xx: h64.cosine(xx, text.double()), 3)
    assert rel_err(act_grad(x, sae, head, text).values, ref) <= 1e-5
    assert rel_err(act_grad(x.double(), s64, h64, text.double()).values, ref) <= 1e-10


# ----------------------------------------------------------------- the paper's Eq. 31 form


def test_paper_form_exact_iff_beta_and_ln_eps_vanish(world64):
    """Eq. 29-31 drop beta (Eq. 19) and normalise by |x - mu| where torch's LayerNorm uses
    sqrt(var + eps). With beta = 0 AND LayerNorm eps = 0 the form is exact; with beta = 0
    and eps > 0 it is off by exactly sqrt(var_j/(var_j+eps)) / sqrt(var_x/(var_x+eps))
    per (sample, latent) (var_j, var_x: biased variances of v_j and x)."""
    head, sae, x, text = world64
    exact0 = Head(head.gamma, torch.zeros_like(head.beta), head.proj, 0.0).double()
    _, ref = reference_act_grad(x, sae, exact0, lambda xx: exact0.cosine(xx, text), 5)
    assert rel_err(act_grad_paper(x, sae, exact0, text).values, ref) <= 1e-10

    with_eps = Head(head.gamma, torch.zeros_like(head.beta), head.proj, 1e-2).double()
    _, ref_eps = reference_act_grad(x, sae, with_eps, lambda xx: with_eps.cosine(xx, text), 5)
    paper = act_grad_paper(x, sae, with_eps, text)
    var_j = sae.W_dec.detach()[paper.indices].var(dim=-1, unbiased=False)  # (N, k)
    var_x = x.var(dim=1, unbiased=False)[:, None]
    ratio = torch.sqrt(var_j / (var_j + 1e-2)) / torch.sqrt(var_x / (var_x + 1e-2))
    assert rel_err(paper.values, ref_eps * ratio[:, None, :]) <= 1e-10
    assert rel_err(paper.values, ref_eps) > 1e-3

    # With the (nonzero) beta of the fixture the approximation is visibly off.
    _, ref_beta = reference_act_grad(x, sae, head, lambda xx: head.cosine(xx, text), 5)
    assert rel_err(act_grad_paper(x, sae, head, text).values, ref_beta) > 1e-2


def test_paper_form_rejects_unnormalised_readout(world64):
    head, sae, x, _ = world64
    with pytest.raises(ValueError, match="cosine"):
        act_grad_paper(x, sae, head, Readout(torch.randn(512, dtype=torch.float64)))


# ------------------------------------------------------------------- integrated gradients


def test_integrated_gradients_matches_autograd_path(world64):
    head, sae, x, text = world64
    steps = 8
    ref = 0
    for s in range(steps):
        alpha = (s + 0.5) / steps
        # d y / d(alpha a) at the scaled point = (d y / d a) / alpha for the scaled graph.
        _, r = reference_act_grad(x, sae, head, lambda xx: head.cosine(xx, text), 5, alpha=alpha)
        ref = ref + r / steps
    ig = integrated_gradients(x, sae, head, text, steps=steps)
    assert rel_err(ig.values, ref) <= 1e-10


@pytest.mark.parametrize("target", ["cosine", "readout"])
def test_integrated_gradients_completeness(world64, target):
    head, sae, x, text = world64
    if target == "readout":
        g = torch.Generator().manual_seed(9)
        out = Readout(torch.randn(4, 512, generator=g, dtype=torch.float64), torch.zeros(4, dtype=torch.float64))
        y_fn = lambda xx: head(xx) @ out.weight.T  # noqa: E731
    else:
        out, y_fn = text, (lambda xx: head.cosine(xx, text))
    with torch.no_grad():
        idx, vals = sae.encode(x)
        base = x - (sae.decode(idx, vals) - sae.b_dec)  # b + eps
        delta = y_fn(x) - y_fn(base)
    errors = {}
    for steps in (2, 256):
        for rule in ("midpoint", "trapezoid"):
            total = integrated_gradients(x, sae, head, out, steps=steps, rule=rule).values.sum(-1)
            errors[steps, rule] = ((total - delta).abs() / delta.abs()).max().item()
    assert delta.abs().min() > 1e-4, "degenerate check: y(x) ~ y(b + eps)"
    assert errors[256, "midpoint"] <= 0.01 and errors[256, "trapezoid"] <= 0.01
    assert errors[256, "midpoint"] < errors[2, "midpoint"]


# ------------------------------------------------------------------------------ baselines


def test_logit_lens_and_energy_brute_force(world64):
    head, sae, x, text = world64
    idx, vals = sae.encode(x)
    V = sae.W_dec.detach()
    # Eq. 3: the latent vector alone through the model's own LayerNorm (beta included) + projection.
    lens = torch.stack([torch.stack([F.cosine_similarity(head(V[j][None])[0], t, dim=0) for t in text])
                        for j in idx.reshape(-1)]).reshape(6, 24, 5).permute(0, 2, 1)
    ll = logit_lens(x, sae, head, text)
    assert torch.equal(ll.indices, idx)
    assert rel_err(ll.values, lens) <= 1e-12
    assert rel_err(act_logit_lens(x, sae, head, text).values, vals.detach()[:, None, :] * lens) <= 1e-12
    en = energy(x, sae, head, text)
    expect = vals.detach() * V[idx].norm(dim=-1)
    assert en.values.shape == (6, 5, 24)
    assert torch.allclose(en.values, expect[:, None, :].expand(-1, 5, -1), rtol=1e-12, atol=0)


def test_logit_lens_readout_includes_intercept(world64):
    head, sae, x, _ = world64
    w, c = torch.randn(2, 512, dtype=torch.float64), torch.tensor([0.5, -1.0], dtype=torch.float64)
    idx, _ = sae.encode(x)
    emb = head(sae.W_dec.detach()[idx].reshape(-1, 768)).detach()
    for normalize in (False, True):
        e = F.normalize(emb, dim=-1) if normalize else emb
        expect = (e @ w.T + c).reshape(6, 24, 2).permute(0, 2, 1)
        assert rel_err(logit_lens(x, sae, head, Readout(w, c, normalize)).values, expect) <= 1e-12


def test_random_scores_seeded_and_on_active_latents(world64):
    head, sae, x, text = world64
    a, b, c = (random_scores(x, sae, head, text, seed=s) for s in (3, 3, 4))
    assert torch.equal(a.values, b.values) and not torch.equal(a.values, c.values)
    assert torch.equal(a.indices, sae.encode(x).indices)
    assert a.values.min() >= 0 and a.values.max() < 1
    # One random order per sample: the same for every prompt, different across samples.
    assert torch.equal(a.values[:, 0], a.values[:, 3])
    assert not torch.equal(a.values[0, 0].argsort(), a.values[1, 0].argsort())


def test_all_methods_share_call_shape(world64):
    head, sae, x, text = world64
    for name, method in METHODS.items():
        attr = method(x, sae, head, text)
        assert isinstance(attr, Attribution), name
        assert attr.indices.shape == (6, 24) and attr.values.shape == (6, 5, 24), name
        assert torch.isfinite(attr.values).all(), name


# ---------------------------------------------------------------- chunking and output modes


@pytest.mark.parametrize("method", [act_grad, act_grad_paper, logit_lens, integrated_gradients])
def test_chunking_does_not_change_results(world64, method):
    head, sae, x, text = world64
    full = method(x, sae, head, text)
    small = method(x, sae, head, text, chunk_n=4, chunk_t=2)
    assert torch.allclose(small.values, full.values, rtol=0, atol=1e-15)


def test_top_n_and_on_chunk_modes(world64):
    head, sae, x, text = world64
    full = act_grad(x, sae, head, text)
    top = act_grad(x, sae, head, text, top_n=3, chunk_n=4, chunk_t=2)
    assert isinstance(top, TopAttribution) and top.values.shape == (6, 5, 3)
    # Brute force: sort each (sample, prompt) row.
    for n in range(6):
        for t in range(5):
            order = full.values[n, t].argsort(descending=True)[:3]
            assert torch.equal(top.indices[n, t], full.indices[n, order])
            assert torch.allclose(top.values[n, t], full.values[n, t, order], atol=1e-15, rtol=0)
    assert torch.equal(full.top(3).indices, top.indices)

    seen = torch.zeros(6, 5, 24, dtype=torch.float64)
    hits = torch.zeros(6, 5)
    calls = []

    def collect(ns, ts, chunk):
        calls.append((ns, ts))
        assert torch.equal(chunk.indices, full.indices[ns])
        seen[ns, ts] = chunk.values
        hits[ns, ts] += 1

    assert act_grad(x, sae, head, text, on_chunk=collect, chunk_n=4, chunk_t=2) is None
    assert len(calls) == 2 * 3 and torch.all(hits == 1)
    assert torch.allclose(seen, full.values, atol=1e-15, rtol=0)
    with pytest.raises(ValueError, match="top_n"):
        act_grad(x, sae, head, text, top_n=25)
    with pytest.raises(ValueError, match="either"):
        act_grad(x, sae, head, text, top_n=2, on_chunk=collect)


def test_constant_methods_output_modes(world64):
    head, sae, x, text = world64
    full = energy(x, sae, head, text)
    top = energy(x, sae, head, text, top_n=2)
    assert top.values.shape == (6, 5, 2)
    assert torch.equal(top.indices, full.top(2).indices)
    parts = []
    energy(x, sae, head, text, on_chunk=lambda ns, ts, c: parts.append(c.values), chunk_n=4)
    assert torch.equal(torch.cat(parts), full.values)


def test_feature_cache_input_and_precomputed_code(world64, tmp_path):
    features = pytest.importorskip("clipattr_utils.features")
    head, sae, x, text = world64
    x32 = x.float()
    cache = features.write_cache(tmp_path / "cache", x32)
    s32 = _random_sae(768, 2000, 24, seed=2)
    from_tensor = act_grad(x32, s32, head.float(), text.float())
    from_cache = act_grad(cache, s32, head.float(), text.float())
    assert torch.equal(from_cache.indices, from_tensor.indices)
    assert torch.allclose(from_cache.values, from_tensor.values, rtol=0, atol=0)
    code = s32.encode(x32)
    again = act_grad(x32, s32, head.float(), text.float(), code=code)
    assert torch.equal(again.values, from_tensor.values)


def test_nonfinite_rows_are_refused_naming_them():
    """A NaN row used to give NaN scores on arbitrary latent ids (top-k over NaN) silently."""
    g = torch.Generator().manual_seed(0)
    head = Head(torch.ones(16), torch.zeros(16), torch.randn(16, 8, generator=g), 1e-5)
    sae = _random_sae(16, 64, 4, seed=1)
    x, text = torch.randn(10, 16, generator=g), torch.randn(3, 8, generator=g)
    code = sae.encode(x)
    x[[2, 9], 5] = float("nan")
    for method in (act_grad, energy):
        with pytest.raises(ValueError, match=r"^x: 2 of 10 rows hold NaN or inf \(rows 2, 9\)"):
            method(x, sae, head, text)
    with pytest.raises(ValueError, match=r"^x: 2 of 10 rows hold NaN or inf \(rows 2, 9\)"):
        act_grad(x, sae, head, text, code=code)  # x itself is read only for the per-sample state
    values = code.values.clone()
    values[4, 0] = float("inf")
    with pytest.raises(ValueError, match=r"^code.values: 1 of 10 rows hold NaN or inf \(rows 4\)"):
        energy(x.nan_to_num(), sae, head, text, code=(code.indices, values))


# ------------------------------------------------------------------------ result helpers


def test_mean_relevance_dense_sparse_and_streaming(world64):
    head, sae, x, text = world64
    attr = act_grad(x, sae, head, text)
    brute = torch.zeros(5, sae.d_sae, dtype=torch.float64)
    for n in range(6):
        for i, j in enumerate(attr.indices[n].tolist()):
            brute[:, j] += attr.values[n, :, i]
    brute /= 6
    dense = mean_relevance(attr, sae.d_sae)
    assert torch.allclose(dense, brute, atol=1e-15, rtol=0)
    sparse = mean_relevance(attr, sae.d_sae, sparse=True)
    assert sparse.is_sparse and torch.allclose(sparse.to_dense(), brute, atol=1e-15, rtol=0)
    acc = MeanRelevance(5, sae.d_sae, dtype=torch.float64)
    act_grad(x, sae, head, text, on_chunk=acc, chunk_n=4, chunk_t=2)
    assert torch.allclose(acc.result(), brute, atol=1e-15, rtol=0)
    with pytest.raises(ValueError, match="d_sae"):
        mean_relevance(attr, 10)


def test_top_n_and_to_frame(world64):
    head, sae, x, text = world64
    attr = act_grad(x, sae, head, text)
    top = top_n(attr, 4, largest=False)
    assert torch.all(top.values[..., :-1] <= top.values[..., 1:])
    assert torch.allclose(top.values[..., 0], attr.values.min(-1).values)
    df = to_frame(attr, prompts=[f"p{i}" for i in range(5)], sample_ids=[f"s{i}" for i in range(6)],
                  latent_names=[f"L{j}" for j in range(sae.d_sae)], top=2)
    assert len(df) == 6 * 5 * 2
    row = df[(df["sample"] == "s2") & (df["prompt"] == "p3") & (df["rank"] == 0)].iloc[0]
    best = int(attr.values[2, 3].argmax())
    assert row["latent"] == int(attr.indices[2, best]) and row["latent_name"] == f"L{row['latent']}"
    assert row["score"] == pytest.approx(float(attr.values[2, 3, best]))
    with pytest.raises(ValueError, match="prompts"):
        to_frame(attr, prompts=["a"])


# ------------------------------------------------------------------------------ bad input


def test_bad_input_errors_name_the_problem(world64):
    head, sae, x, text = world64
    with pytest.raises(ValueError, match="d_pre=768"):
        act_grad(x[:, :100], sae, head, text)
    with pytest.raises(ValueError, match="d_post=512"):
        act_grad(x, sae, head, text[:, :10])
    with pytest.raises(ValueError, match=r"text\[None\]"):
        act_grad(x, sae, head, text[0])
    with pytest.raises(ValueError, match="all zeros"):
        act_grad(x, sae, head, torch.zeros(2, 512, dtype=torch.float64))
    with pytest.raises(ValueError, match="Readout.weight"):
        act_grad(x, sae, head, Readout(torch.randn(2, 7)))
    with pytest.raises(ValueError, match="Readout.bias"):
        act_grad(x, sae, head, Readout(torch.randn(2, 512), torch.zeros(3)))
    with pytest.raises(ValueError, match="d_in=300"):
        act_grad(x, TopKSAE(300, 50, 4), head, text)
    with pytest.raises(ValueError, match="code"):
        act_grad(x, sae, head, text, code=(torch.zeros(2, 24, dtype=torch.long), torch.zeros(2, 24)))
    with pytest.raises(ValueError, match="steps"):
        integrated_gradients(x, sae, head, text, steps=0)
    with pytest.raises(ValueError, match="rule"):
        integrated_gradients(x, sae, head, text, rule="simpson")
    with pytest.raises(TypeError, match="TopKSAE"):
        act_grad(x, object(), head, text)
