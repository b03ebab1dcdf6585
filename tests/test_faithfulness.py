"""Deletion / insertion curves and AUCs against brute force (dense activations, decode)."""

from __future__ import annotations

import numpy as np
import pandas as pd
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
    order = fa.local_order(own, sae.active_mask(code), K)
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
    order = fa.local_order(attr, sae.active_mask(code), K)
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


def test_auc_is_the_trapezoid_rule_on_curved_curves():
    # Straight lines cannot tell the trapezoid rule from the plain mean of the points; curves can.
    square = np.array([[0.0, 0.25, 1.0], [0.0, 0.5, 2.0]])  # y = s^2 and 2 s^2 at s = 0, 1/2, 1
    np.testing.assert_allclose(fa.auc_per_sample(square), [0.375, 0.75])  # (0 + .25)/4 + (.25 + 1)/4
    dip = np.array([[1.0, 0.25, 0.0, 0.0, 1.0]])  # steps of 1/4: (1.25 + .25 + 0 + 1) / 8
    np.testing.assert_allclose(fa.auc_per_sample(dip), [0.3125])
    auc, sem, m = fa.subset_auc(np.tile(dip, (9, 1)), n_subsets=9)
    assert (auc, sem, m) == (pytest.approx(0.3125), pytest.approx(0.0), 1)


def test_evaluate_global_and_random_orders_brute_force(world):
    # Expected orders from dense activation vectors, expected curves from brute_curve (dense
    # vector -> decode -> head), not from ablation_curves.
    head, sae, x, labels, text = world
    cfg = fa.FaithfulnessConfig(steps=5, n_random_ref=20, seed=7)
    res = fa.evaluate(x, labels, sae, head, text, methods={"Energy": energy}, config=cfg, progress=False)
    code = sae.encode(x)
    dense = torch.zeros(len(x), D_SAE).scatter(1, code.indices, code.values.detach())
    norms = sae.W_dec.detach().norm(dim=1)
    prompts = text[labels]
    # Global: class mean of a_j |v_j| over the class's samples.
    for c in range(C):
        rows = (labels == c).nonzero()[:, 0]
        top = (dense[rows] * norms).mean(0).topk(5).indices.tolist()
        for n in rows[:3].tolist():
            assert res.orders["deletion_global"]["Energy"][n].tolist() == top
            np.testing.assert_allclose(res.curves["deletion_global"]["Energy"][n],
                                       brute_curve(x[n], sae, head, prompts[n], top, "deletion"), atol=1e-5)
    # Random reference: the same 20 samples for every class (energy ignores the prompt).
    pick = np.sort(np.random.default_rng(7).choice(len(x), 20, replace=False))
    top = (dense[pick] * norms).mean(0).topk(5).indices.tolist()
    for n in (0, 10, 35):
        np.testing.assert_allclose(res.curves["deletion_random"]["Energy"][n],
                                   brute_curve(x[n], sae, head, prompts[n], top, "deletion"), atol=1e-5)


def test_local_experiments_brute_force_order_and_curve(world):
    # Local deletion / insertion for exact Act x Grad: the order from autograd-free brute
    # force (the derivative of y along each active v_j by finite differences), the curve from
    # brute_curve.
    head, sae, x, labels, text = world
    res = fa.evaluate(x, labels, sae, head, text, methods={"Act x Grad": act_grad},
                      config=fa.FaithfulnessConfig(steps=4, experiments=("deletion_local", "insertion_local")),
                      progress=False)
    code = sae.encode(x)
    code = EncoderOutput(code.indices, code.values.detach())
    h = 1e-3
    for n in (2, 17, 33):
        t = text[labels[n]].double()
        xn = x[n].double()
        head64 = Head(head.gamma.double(), head.beta.double(), head.proj.double(), head.eps)
        scores = []
        for i in range(K):
            j, a = int(code.indices[n, i]), float(code.values[n, i])
            v = sae.W_dec.detach()[j].double()
            dy = (head64.cosine((xn + h * v)[None], t[None]) - head64.cosine((xn - h * v)[None], t[None])) / (2 * h)
            scores.append(a * float(dy))
        expect = [int(code.indices[n, i]) for i in np.argsort(-np.array(scores), kind="stable")[:4]]
        assert res.orders["deletion_local"]["Act x Grad"][n].tolist() == expect
        np.testing.assert_allclose(res.curves["deletion_local"]["Act x Grad"][n],
                                   brute_curve(x[n], sae, head, text[labels[n]], expect, "deletion"), atol=1e-5)
        np.testing.assert_allclose(res.curves["insertion_local"]["Act x Grad"][n],
                                   brute_curve(x[n], sae, head, text[labels[n]], expect, "insertion"), atol=1e-5)


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


# ------------------------------------------------------------------ the random and frequency baselines


def _toy_code(n=6, k=5, d_sae=40, inactive_last=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(d_sae, generator=g)[:k] for _ in range(n)])
    vals = torch.rand(n, k, generator=g).sort(dim=1, descending=True).values + 0.1
    if inactive_last:
        vals[:, -inactive_last:] = 0.0
    return EncoderOutput(idx, vals), vals > 0


def test_random_local_order_is_uniform_over_the_active_latents():
    stats = pytest.importorskip("scipy.stats")
    code, active = _toy_code(n=1, k=6, inactive_last=2)
    rng = np.random.default_rng(0)
    firsts, lasts_inactive = [], True
    for _ in range(4000):
        order = fa.RandomOrder().local_order(code, active, 6, 40, rng)[0].tolist()
        firsts.append(order[0])
        lasts_inactive &= set(order[4:]) == set(code.indices[0, 4:].tolist())
    counts = np.array([firsts.count(int(j)) for j in code.indices[0, :4]])
    assert counts.sum() == 4000 and lasts_inactive  # inactive slots never come before active ones
    assert stats.chisquare(counts).pvalue > 1e-3, counts  # each active latent first 1/4 of the time


def test_random_reference_order_is_uniform_over_the_reference_union():
    stats = pytest.importorskip("scipy.stats")
    code, active = _toy_code(n=4, k=5, d_sae=40, inactive_last=1)
    union = sorted(set(code.indices[active].tolist()))
    rng = np.random.default_rng(1)
    firsts = []
    for _ in range(4000):
        order = fa.RandomOrder().reference_order(code, active, 3, 40, rng).tolist()
        assert set(order) <= set(union) and len(set(order)) == 3
        firsts.append(order[0])
    counts = np.array([firsts.count(j) for j in union])
    assert stats.chisquare(counts).pvalue > 1e-3, counts
    # Fewer active latents than steps: padded with latents inactive in the whole set.
    long = fa.RandomOrder().reference_order(code, active, len(union) + 3, 40, rng).tolist()
    assert set(long[:len(union)]) == set(union) and not set(long[len(union):]) & set(union)


def test_random_orders_through_evaluate_differ_across_classes_and_samples_and_follow_the_seed(world):
    head, sae, x, labels, text = world
    run = lambda seed: fa.evaluate(x, labels, sae, head, text, methods=["Random"], progress=False,  # noqa: E731
                                   config=fa.FaithfulnessConfig(steps=4, n_random_ref=20, seed=seed))
    a, b, c = run(3), run(3), run(4)
    for e in fa.EXPERIMENTS:
        np.testing.assert_array_equal(a.orders[e]["Random"], b.orders[e]["Random"])
        np.testing.assert_array_equal(a.curves[e]["Random"], b.curves[e]["Random"])
        assert not np.array_equal(a.orders[e]["Random"], c.orders[e]["Random"])
    # Global and random-reference orders: one per class, different between classes.
    for e in ("deletion_global", "deletion_random"):
        per_class = {tuple(a.orders[e]["Random"][(labels == k).numpy()][0]) for k in range(C)}
        assert len(per_class) == C
        for k in range(C):
            rows = a.orders[e]["Random"][(labels == k).numpy()]
            assert (rows == rows[0]).all()
    # Local orders: the position pattern differs between samples (no shared draws).
    code = sae.encode(x)
    pos = [[code.indices[n].tolist().index(j) for j in a.orders["deletion_local"]["Random"][n]] for n in range(len(x))]
    assert len({tuple(p) for p in pos}) > len(x) // 2
    # The global random order only uses latents active somewhere in the class.
    for k in range(C):
        rows = (labels == k).nonzero()[:, 0]
        union = set(code.indices[rows].reshape(-1).tolist())
        assert set(a.orders["deletion_global"]["Random"][int(rows[0])]) <= union


def test_random_scores_in_evaluate_draw_one_stream_not_one_seed_per_class(world):
    # An attribution function with a ``generator`` keyword gets the evaluation's stream:
    # sample i of each class must not repeat the draws of sample i of the other classes.
    from clipattr_utils.attribution import random_scores

    head, sae, x, labels, text = world
    cfg = fa.FaithfulnessConfig(steps=K, experiments=("deletion_local",), seed=5)
    res = fa.evaluate(x, labels, sae, head, text, methods={"R": random_scores}, config=cfg, progress=False)
    code = sae.encode(x)
    order = res.orders["deletion_local"]["R"]
    patterns = []
    for k in range(C):
        n = int((labels == k).nonzero()[0, 0])  # the first sample of each class
        patterns.append(tuple(code.indices[n].tolist().index(j) for j in order[n]))
    assert len(set(patterns)) == C
    again = fa.evaluate(x, labels, sae, head, text, methods={"R": random_scores}, config=cfg, progress=False)
    np.testing.assert_array_equal(order, again.orders["deletion_local"]["R"])


def test_firing_frequency_orders_brute_force(world):
    head, sae, x, labels, text = world
    res = fa.evaluate(x, labels, sae, head, text, methods=["Firing frequency"], progress=False,
                      config=fa.FaithfulnessConfig(steps=4, n_random_ref=20, seed=2))
    code = sae.encode(x)
    vals = code.values.detach()
    for k in range(C):
        rows = (labels == k).nonzero()[:, 0].tolist()
        counts = np.zeros(D_SAE)
        for n in rows:
            for i in range(K):
                if vals[n, i] > 0:
                    counts[int(code.indices[n, i])] += 1
        expect = np.argsort(-counts, kind="stable")[:4].tolist()
        assert res.orders["deletion_global"]["Firing frequency"][rows[0]].tolist() == expect
        n = rows[1]
        local = sorted(range(K), key=lambda i: (-counts[int(code.indices[n, i])], -float(vals[n, i])))[:4]
        assert res.orders["deletion_local"]["Firing frequency"][n].tolist() == [int(code.indices[n, i]) for i in local]


def test_order_coverage_brute_force(world):
    head, sae, x, labels, text = world
    code = sae.encode(x)
    code = EncoderOutput(code.indices, code.values.detach())
    active = sae.active_mask(code)
    order = torch.stack([code.indices[:, 0], code.indices[:, 3], torch.full((len(x),), D_SAE - 1)], dim=1)
    act_share, mass_share = fa.order_coverage(order, code, active)
    for n in (0, 5, 20):
        dense = dict(zip(code.indices[n].tolist(), code.values[n].tolist()))
        hits = [dense.get(int(j), 0.0) for j in order[n]]
        assert act_share[n] == pytest.approx(sum(h > 0 for h in hits) / 3)
        assert mass_share[n] == pytest.approx(sum(hits) / sum(dense.values()))


def test_relu_false_negative_activations_are_active(world):
    # With relu=False every top-k latent is active, negative ones included: a local order of
    # all k steps removes all of them and ends at y(b + eps), like the brute force.
    head, _, x, labels, text = world
    torch.manual_seed(4)
    sae = TopKSAE(D, D_SAE, k=K, relu=False)
    with torch.no_grad():
        sae.b_enc.fill_(-float(sae.encode(x).values[:, K // 2].median()))  # about half the top-k below zero
    code = sae.encode(x)
    code = EncoderOutput(code.indices, code.values.detach())
    assert (code.values < 0).any()
    assert sae.active_mask(code).all()
    res = fa.evaluate(x, labels, sae, head, text, methods=["Act x Grad", "Random"], progress=False,
                      config=fa.FaithfulnessConfig(steps=K, experiments=("deletion_local",)))
    for name in ("Act x Grad", "Random"):
        order = res.orders["deletion_local"][name]
        for n in (0, 9):
            assert sorted(order[n].tolist()) == sorted(code.indices[n].tolist())
            np.testing.assert_allclose(res.curves["deletion_local"][name][n],
                                       brute_curve(x[n], sae, head, text[labels[n]], order[n].tolist(), "deletion"),
                                       atol=1e-5)
    # With fewer steps the order is by score over all k: latents with negative activation
    # come first when their score is highest (treating them as inactive would push them last).
    half = K // 2
    res = fa.evaluate(x, labels, sae, head, text, methods=["Act x Grad"], progress=False,
                      config=fa.FaithfulnessConfig(steps=half, experiments=("deletion_local",)))
    own = fa.own_prompt_scores(act_grad, x, labels, sae, head, text).values[:, 0].detach()
    expect = code.indices.gather(1, own.argsort(dim=1, descending=True, stable=True)[:, :half])
    np.testing.assert_array_equal(res.orders["deletion_local"]["Act x Grad"], expect.numpy())
    negative = {(int(n), int(code.indices[n, i])) for n, i in torch.nonzero(code.values < 0).tolist()}
    assert any((n, int(j)) in negative for n in range(len(x)) for j in expect[n])


def _synthetic_result(aucs, steps=10):
    rows = [{"experiment": e, "method": m, "auc": a, "sem": s, "n_subsets": 9, "subset_size": 4}
            for (e, m), (a, s) in aucs.items()]
    cov = [{"experiment": e, "method": m, "active_share": 0.5 if m != "Firing frequency" else 0.8,
            "mass_share": 0.2} for (e, m) in aucs]
    return fa.FaithfulnessResult({}, pd.DataFrame(rows), np.zeros(1, dtype=np.int64),
                                 fa.FaithfulnessConfig(steps=steps), {}, {}, pd.DataFrame(cov))


def test_compare_with_signs_and_threshold_by_hand():
    aucs = {("deletion_local", "Act x Grad"): (0.60, 0.01), ("deletion_local", "Random"): (0.70, 0.01),
            ("deletion_global", "Act x Grad"): (0.69, 0.01), ("deletion_global", "Random"): (0.70, 0.01),
            ("deletion_random", "Act x Grad"): (0.75, 0.01), ("deletion_random", "Random"): (0.70, 0.01),
            ("insertion_local", "Act x Grad"): (0.80, 0.01), ("insertion_local", "Random"): (0.70, 0.01)}
    df = fa.compare_with(_synthetic_result(aucs)).set_index("experiment")
    root2 = np.sqrt(2) * 0.01
    assert df.loc["deletion_local", "gap_in_sem"] == pytest.approx(0.10 / root2)
    assert df.loc["deletion_global", "gap_in_sem"] == pytest.approx(0.01 / root2)
    assert df.loc["deletion_random", "gap_in_sem"] == pytest.approx(-0.05 / root2)
    assert df.loc["insertion_local", "gap_in_sem"] == pytest.approx(0.10 / root2)
    assert list(df["beats"]) == [True, False, False, True]
    with pytest.raises(ValueError, match="baseline 'Nope'"):
        fa.compare_with(_synthetic_result(aucs), "Nope")


def test_explain_global_names_the_verdict_and_the_coverage():
    aucs = {("deletion_global", "Act x Grad"): (0.650, 0.002), ("deletion_global", "Firing frequency"): (0.651, 0.002),
            ("deletion_random", "Act x Grad"): (0.650, 0.002), ("deletion_random", "Firing frequency"): (0.700, 0.002)}
    text = fa.explain_global(_synthetic_result(aucs))
    lines = text.splitlines()
    assert len(lines) == 2
    assert "ties with" in lines[0] and "beats" in lines[1]
    assert "50% are active" in lines[0] and "80%" in lines[0]
