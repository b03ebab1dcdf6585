"""Deletion / insertion curves and AUCs against brute force (dense activations, decode)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipattr_utils import faithfulness as fa
from clipattr_utils.attribution import act_grad, energy, random_scores
from clipattr_utils.head import Head
from clipattr_utils.sae.model import EncoderOutput, TopKSAE

D, DP, D_SAE, K, C, PER = 48, 24, 200, 12, 4, 9


@pytest.fixture(scope="module")
def world():
    """Small head with nonzero beta; samples of C classes built from class-specific latents,
    so the class prompt depends on a few latents a good attribution should find."""
    g = torch.Generator().manual_seed(0)
    head = Head(1 + 0.2 * torch.randn(D, generator=g), 0.3 * torch.randn(D, generator=g),
                torch.randn(D, DP, generator=g) / 6, 1e-5)
    torch.manual_seed(1)
    sae = TopKSAE(D, D_SAE, k=K)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.2)
    centers = 3 * torch.randn(C, D, generator=g)
    labels = torch.arange(C).repeat_interleave(PER)
    x = centers[labels] + torch.randn(C * PER, D, generator=g)
    text = head(centers).detach() + 0.3 * torch.randn(C, DP, generator=g)
    return head, sae, x, labels, text


def brute_curve(x_n, sae, head, t, latents, mode):
    """Recompute y after each step from a dense activation vector and sae.decode-style sums."""
    with torch.no_grad():
        idx, vals = sae.encode(x_n[None])
        dense = torch.zeros(sae.d_sae).scatter(0, idx[0], vals[0])
        eps = x_n - (dense @ sae.W_dec + sae.b_dec)
        keep = dense.clone() if mode == "deletion" else torch.zeros_like(dense)
        ys = []
        for s in range(len(latents) + 1):
            if s:
                j = latents[s - 1]
                keep[j] = 0.0 if mode == "deletion" else dense[j]
            xs = keep @ sae.W_dec + sae.b_dec + eps
            ys.append(float(head.cosine(xs[None], t[None])[0, 0]))
    return np.array(ys)


def test_curves_match_brute_force_and_endpoints(world):
    head, sae, x, labels, text = world
    code = sae.encode(x)
    code = EncoderOutput(code.indices, code.values.detach())
    prompts = text[labels]
    attr = act_grad(x, sae, head, text)
    # own-class scores (N, 1, k) for the local order
    own = type(attr)(attr.indices, attr.values[torch.arange(len(x)), labels][:, None, :])
    order = fa.local_order(own, code, K)
    dele = fa.ablation_curves(x, code, sae, head, prompts, order, "deletion")
    ins = fa.ablation_curves(x, code, sae, head, prompts, order, "insertion")
    y0 = head.cosine(x, text).detach()[torch.arange(len(x)), labels].double().numpy()
    assert dele.shape == (len(x), K + 1)
    np.testing.assert_allclose(dele[:, 0], y0, atol=1e-6)     # deletion step 0 = original output
    np.testing.assert_allclose(ins[:, -1], y0, atol=1e-6)     # insertion with all k restored = original
    np.testing.assert_allclose(dele[:, -1], ins[:, 0], atol=1e-6)  # both = y(b + eps)
    for n in (0, 13, 30):
        lat = order[n].tolist()
        np.testing.assert_allclose(dele[n], brute_curve(x[n], sae, head, prompts[n], lat, "deletion"), atol=1e-5)
        np.testing.assert_allclose(ins[n], brute_curve(x[n], sae, head, prompts[n], lat, "insertion"), atol=1e-5)


def test_local_order_brute_force_and_inactive_last(world):
    head, sae, x, labels, text = world
    code = sae.encode(x)
    vals = code.values.detach().clone()
    vals[0, -3:] = 0.0  # pretend the last three latents of sample 0 are inactive
    code = EncoderOutput(code.indices, vals)
    scores = torch.randn(len(x), 1, K, generator=torch.Generator().manual_seed(3))
    scores[0, 0, -3:] = 100.0  # highest scores, but inactive: must come last
    attr = type(act_grad(x[:1], sae, head, text[:1]))(code.indices, scores)
    order = fa.local_order(attr, code, K)
    for n in range(len(x)):
        ranked = sorted(range(K), key=lambda i: (vals[n, i] <= 0, -float(scores[n, 0, i])))
        assert order[n].tolist() == [int(code.indices[n, i]) for i in ranked]
    assert set(order[0, -3:].tolist()) == set(code.indices[0, -3:].tolist())


def test_activations_of_global_latents(world):
    _, sae, x, _, _ = world
    code = sae.encode(x)
    lat = torch.stack([code.indices[:, 0], torch.full((len(x),), D_SAE - 1)], dim=1)
    got = fa.activations_of(EncoderOutput(code.indices, code.values.detach()), lat)
    assert torch.allclose(got[:, 0], code.values.detach()[:, 0])
    dense = torch.zeros(len(x), D_SAE).scatter(1, code.indices, code.values.detach())
    assert torch.allclose(got[:, 1], dense[:, D_SAE - 1])


def test_auc_and_subset_sem_by_hand():
    curves = np.tile(np.array([[1.0, 0.5, 0.0]]), (18, 1)) * np.arange(1, 19)[:, None]
    per = fa.auc_per_sample(curves)
    np.testing.assert_allclose(per, 0.5 * np.arange(1, 19))  # trapezoid on [0, 1]: (1+.5)/4 + (.5+0)/4
    auc, sem, m = fa.subset_auc(curves, n_subsets=9, seed=4)
    perm = np.random.default_rng(4).permutation(18)[:18].reshape(9, 2)
    subs = per[perm].mean(1)
    assert m == 2
    assert auc == pytest.approx(subs.mean()) and sem == pytest.approx(subs.std(ddof=1) / 3)
    # 20 samples: two are left out so the subsets stay equal.
    _, _, m = fa.subset_auc(np.ones((20, 3)), n_subsets=9)
    assert m == 2
    with pytest.raises(ValueError, match="n_subsets"):
        fa.subset_auc(np.ones((5, 3)), n_subsets=9)


def test_evaluate_global_and_random_orders_brute_force(world):
    head, sae, x, labels, text = world
    cfg = fa.FaithfulnessConfig(steps=5, n_random_ref=20, seed=7)
    res = fa.evaluate(x, labels, sae, head, text, methods={"Energy": energy}, config=cfg, progress=False)
    code = sae.encode(x)
    dense = torch.zeros(len(x), D_SAE).scatter(1, code.indices, code.values.detach())  # energy = a * |v| = a
    norms = sae.W_dec.detach().norm(dim=1)
    prompts = text[labels]
    ce = EncoderOutput(code.indices, code.values.detach())
    # Global: class mean of a_j |v_j| over the class's samples.
    for c in range(C):
        rows = (labels == c).nonzero()[:, 0]
        top = (dense[rows] * norms).mean(0).topk(5).indices
        expect = fa.ablation_curves(x[rows], EncoderOutput(ce.indices[rows], ce.values[rows]), sae, head,
                                    prompts[rows], top[None].expand(len(rows), -1), "deletion")
        np.testing.assert_allclose(res.curves["deletion_global"]["Energy"][rows.numpy()], expect, atol=1e-6)
    # Random reference: the same 20 samples for every class (energy ignores the prompt).
    pick = np.sort(np.random.default_rng(7).choice(len(x), 20, replace=False))
    top = (dense[pick] * norms).mean(0).topk(5).indices
    expect = fa.ablation_curves(x, ce, sae, head, prompts, top[None].expand(len(x), -1), "deletion")
    np.testing.assert_allclose(res.curves["deletion_random"]["Energy"], expect, atol=1e-6)


def test_evaluate_end_to_end_orders_methods(world):
    head, sae, x, labels, text = world
    res = fa.evaluate(x, labels, sae, head, text, config=fa.FaithfulnessConfig(steps=6, n_random_ref=30),
                      progress=False)
    assert set(res.curves) == set(fa.EXPERIMENTS)
    assert set(res.curves["deletion_local"]) == set(fa.DEFAULT_METHODS)
    assert len(res.auc) == len(fa.EXPERIMENTS) * len(fa.DEFAULT_METHODS)
    assert (res.auc["subset_size"] == len(x) // 9).all() and (res.auc["sem"] > 0).all()
    y0 = head.cosine(x, text).detach()[torch.arange(len(x)), labels].numpy()
    for e, per_method in res.curves.items():
        for name, cur in per_method.items():
            assert cur.shape == (len(x), 7)
            if e.startswith("deletion"):
                np.testing.assert_allclose(cur[:, 0], y0, atol=1e-6)
    # The planted structure must be found: exact Act x Grad beats a random order.
    auc = res.auc.set_index(["experiment", "method"])["auc"]
    assert auc["deletion_local", "Act x Grad"] < auc["deletion_local", "Random"]
    assert auc["insertion_local", "Act x Grad"] > auc["insertion_local", "Random"]
    assert fa.ranking(res, "deletion_local")[-1] in ("Random", "Energy")
    table = res.table()
    assert table.shape == (len(fa.DEFAULT_METHODS), 4) and "±" in table.iloc[0, 0]
    fig = fa.plot_faithfulness(res)
    assert len(fig.axes) == 4
    labels_in_legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(t.startswith("Act x Grad (") and "±" in t for t in labels_in_legend)
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_random_method_is_seeded_through_evaluate(world):
    head, sae, x, labels, text = world
    cfg = fa.FaithfulnessConfig(steps=4, experiments=("deletion_local",))
    a = fa.evaluate(x, labels, sae, head, text, methods={"R": random_scores}, config=cfg, progress=False)
    b = fa.evaluate(x, labels, sae, head, text, methods={"R": random_scores}, config=cfg, progress=False)
    np.testing.assert_array_equal(a.curves["deletion_local"]["R"], b.curves["deletion_local"]["R"])


def test_bad_input(world):
    head, sae, x, labels, text = world
    with pytest.raises(ValueError, match="labels"):
        fa.evaluate(x, labels[:-1], sae, head, text, progress=False)
    bad = labels.clone()
    bad[0] = -1
    with pytest.raises(ValueError, match="unlabeled"):
        fa.evaluate(x, bad, sae, head, text, progress=False)
    with pytest.raises(ValueError, match="steps"):
        fa.FaithfulnessConfig(steps=0)
    with pytest.raises(ValueError, match="experiments"):
        fa.FaithfulnessConfig(experiments=("deletion_sideways",))
    with pytest.raises(ValueError, match="exceeds"):
        fa.evaluate(x, labels, sae, head, text, config=fa.FaithfulnessConfig(steps=K + 1), progress=False)
    with pytest.raises(ValueError, match="unknown methods"):
        fa.evaluate(x, labels, sae, head, text, methods=["Act x Magic"], progress=False)
    with pytest.raises(ValueError, match="d_post"):
        fa.evaluate(x, labels, sae, head, text[:, :3], progress=False)
    with pytest.raises(ValueError, match="mode"):
        fa.ablation_curves(x, sae.encode(x), sae, head, text[labels], torch.zeros(len(x), 2, dtype=torch.long), "swap")


def test_balanced_indices():
    labels = np.array([2, 0, 1, 0, 2, 2, 1, 0, -1, 1])
    idx = fa.balanced_indices(labels, 2)
    assert idx.tolist() == [1, 3, 2, 6, 0, 4]
    assert fa.balanced_indices(labels, 1, classes=[2, 1]).tolist() == [0, 2]
    with pytest.raises(ValueError, match="class 0 has only 3"):
        fa.balanced_indices(labels, 4)
    with pytest.raises(ValueError, match="n_per_class"):
        fa.balanced_indices(labels, 0)


def test_own_prompt_scores_select_the_class_prompt(world):
    head, sae, x, labels, text = world
    full = act_grad(x, sae, head, text)
    own = fa.own_prompt_scores(act_grad, x, labels, sae, head, text)
    assert own.values.shape == (len(x), 1, K)
    assert torch.equal(own.indices, full.indices)
    assert torch.allclose(own.values[:, 0], full.values[torch.arange(len(x)), labels], atol=1e-7, rtol=0)


def test_approximation_error_against_scipy(world):
    stats = pytest.importorskip("scipy.stats")
    head, sae, x, labels, text = world
    exact = act_grad(x, sae, head, text)
    same = fa.approximation_error(exact, exact)
    assert (same["rel_error"] == 0).all() and (same["top_overlap"] == 1).all()
    assert np.allclose(same["rank_corr"], 1) and (same["sign_flips"] == 0).all()
    g = torch.Generator().manual_seed(5)
    noisy = type(exact)(exact.indices, exact.values + 0.3 * exact.values.std() * torch.randn(exact.values.shape, generator=g))
    df = fa.approximation_error(exact, noisy, top=5)
    e, a = exact.values.double().numpy(), noisy.values.double().numpy()
    for row in df.sample(6, random_state=0).itertuples():
        ev, av = e[row.sample, row.prompt], a[row.sample, row.prompt]
        assert row.rel_error == pytest.approx(np.abs(av - ev).max() / np.abs(ev).max())
        assert row.rank_corr == pytest.approx(stats.spearmanr(ev, av).statistic)
        assert row.top_overlap == pytest.approx(len(set(np.argsort(-ev)[:5]) & set(np.argsort(-av)[:5])) / 5)
        assert row.sign_flips == int(((ev > 0) != (av > 0)).sum())
        assert row.same_top1 == (ev.argmax() == av.argmax())
    with pytest.raises(ValueError, match="same samples"):
        fa.approximation_error(exact, type(exact)(exact.indices[:3], exact.values[:3]))


def test_save_load_and_ordering_check(world, tmp_path):
    head, sae, x, labels, text = world
    cfg = fa.FaithfulnessConfig(steps=4, n_random_ref=20)
    res = fa.evaluate(x, labels, sae, head, text, config=cfg, progress=False,
                      methods=["Act x Grad", "Integrated Gradients", "Logit Lens", "Random"])
    back = fa.load_result(fa.save_result(res, tmp_path / "faith"))
    assert back.config == res.config and back.seconds == res.seconds
    pd_equal = back.auc.reset_index(drop=True).equals(res.auc.reset_index(drop=True))
    assert pd_equal
    for e in res.curves:
        for m in res.curves[e]:
            np.testing.assert_array_equal(back.curves[e][m], res.curves[e][m])
    check = fa.check_paper_ordering(res)
    assert list(check["experiment"]) == ["deletion_local", "insertion_local"]
    for row in check.itertuples():
        order = fa.ranking(res, row.experiment)
        assert row.best == order[0] and row.worst == order[-1]
        assert row.gradient_best == (order[0] in fa.GRADIENT_METHODS)
        assert row.random_worst == (order[-1] == "Random")
        assert row.best_other == "Logit Lens"
    with pytest.raises(FileNotFoundError):
        fa.load_result(tmp_path / "nothing")
