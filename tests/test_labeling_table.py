"""labeling.table / diversity: the per-latent table, the hidden-concept filter (Eq. 7), relevance
per latent, basis diversity and interpretability vs activation."""

import time

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from clipattr_utils.attribution import act_grad
from clipattr_utils.labeling import (TABLE_COLUMNS, Vocabulary, basis_diversity, hidden_concepts,
                                     interpretability_vs_activation, label_latents, latent_relevance,
                                     plot_interpretability_vs_activation, top_activating)
from clipattr_utils.labeling.top import TopSamples
from clipattr_utils.sae import TopKSAE

from _tiny import tiny_clip


def _planted(n_labels=6, per=25, d=16, seed=0):
    """Images of n_labels concepts (per each) with labeler embeddings near the concept's text
    embedding; latent j's top rows are the images of concept j (latent n_labels: 5 rows only)."""
    g = torch.Generator().manual_seed(seed)
    T = F.normalize(torch.randn(n_labels, d, generator=g), dim=1)
    concept = torch.arange(n_labels).repeat_interleave(per)
    E = F.normalize(T[concept] + 0.3 * torch.randn(len(concept), d, generator=g) / d ** 0.5, dim=1)
    n = 30
    rows = torch.full((n_labels + 1, n), -1, dtype=torch.int64)
    for j in range(n_labels):
        rows[j, :per] = torch.arange(j * per, (j + 1) * per)
    rows[n_labels, :5] = torch.arange(5)
    vals = torch.where(rows >= 0, torch.linspace(4, 1, n).expand_as(rows) * (1 + torch.arange(n_labels + 1))[:, None],
                       torch.tensor(float("nan")))
    count = (rows >= 0).sum(1) * 4
    top = TopSamples(vals, rows, count, torch.nan_to_num(vals).double().sum(1), len(concept))
    frame = pd.DataFrame({"label": [f"c{j}" for j in range(n_labels)], "attribute": "object",
                          "value": [f"c{j}" for j in range(n_labels)]})
    vocab = Vocabulary(frame, T, F.normalize(torch.randn(d, generator=g), dim=0))
    return top, E, vocab


def test_label_latents_assigns_the_planted_labels():
    top, E, vocab = _planted()
    table = label_latents(top, None, vocab, labeler_embeddings=E, n_used=20, min_count=21,
                          expected_labels=["c0", "c1"], progress=False)
    assert list(table.columns) == list(TABLE_COLUMNS) + ["expected_label", "expected_alignment"]
    assert table["latent"].tolist() == list(range(6))  # latent 6 (20 activations) is below min_count
    assert table["label"].tolist() == [f"c{j}" for j in range(6)]
    assert (table["attribute"] == "object").all()
    assert (table["clarity"] > 0.5).all() and table["polysemanticity"].between(0, 1).all()
    first = table.loc[0, "top_labels"]
    # every top image of latent 0 shows c0, so the guard lets no other object label through
    assert first == [("c0", pytest.approx(table.loc[0, "alignment"]))]
    assert (table["support"] == 1.0).all() and (table["eq2_label"] == table["label"]).all()
    unguarded = label_latents(top, None, vocab, labeler_embeddings=E, n_used=20, min_count=21, guard=None,
                              progress=False)
    assert unguarded["label"].tolist() == table["label"].tolist() and unguarded["support"].isna().all()
    first = unguarded.loc[0, "top_labels"]
    assert first[0][0] == "c0" and len(first) == 5 and first[0][1] == pytest.approx(table.loc[0, "alignment"])
    assert table.loc[0, "expected_label"] == "c0" and table.loc[3, "expected_label"] in ("c0", "c1")
    assert table.loc[3, "expected_alignment"] < table.loc[3, "alignment"]
    np.testing.assert_allclose(table["top5_mean"], top.top5_mean[:6].numpy())
    np.testing.assert_allclose(table["firing_rate"], top.firing_rate[:6].numpy())
    # min_count: the 5-row latent has count 20, kept at min_count=20, dropped at 21
    t21 = label_latents(top, None, vocab, labeler_embeddings=E, min_count=21, progress=False)
    t20 = label_latents(top, None, vocab, labeler_embeddings=E, min_count=20, progress=False)
    assert 6 not in set(t21["latent"]) and 6 in set(t20["latent"])
    # without labeler embeddings: labels from component embeddings, clarity NaN
    from clipattr_utils.labeling import component_embeddings
    t = label_latents(top, component_embeddings(top, E, 20, progress=False), vocab, min_count=21, guard=None,
                      progress=False)
    assert t["label"].tolist() == table["label"].tolist() and t["clarity"].isna().all()


def _big_table(n=30_000, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"latent": np.arange(n), "label": "x", "alignment": rng.normal(0.1, 0.1, n),
                         "expected_alignment": rng.normal(0.05, 0.1, n), "top20_mean": rng.gamma(2, 1.2, n),
                         "clarity": rng.random(n)})


def test_hidden_concepts_eq7_pure_and_fast():
    table = _big_table()
    before = table.copy()
    hid = hidden_concepts(table, tau_act=3.0, tau_align=0.0)
    want = table[(table.top20_mean >= 3.0) & (table.expected_alignment <= 0.0)]
    assert set(hid["latent"]) == set(want["latent"])
    assert hid["top20_mean"].is_monotonic_decreasing and (hid["hidden_alignment"] <= 0).all()
    pd.testing.assert_frame_equal(table, before)  # pure
    # relevance instead of the activation proxy; a Series indexed by latent, missing latents dropped
    rel = pd.Series(np.linspace(0, 1, 30_000), index=np.arange(30_000))[::2]
    hid = hidden_concepts(table, relevance=rel, tau_rel=0.5, tau_align=0.1)
    want = table[(table.latent % 2 == 0) & (table.latent / 29_999 >= 0.5) & (table.expected_alignment <= 0.1)]
    assert set(hid["latent"]) == set(want["latent"]) and hid["relevance"].is_monotonic_decreasing
    # a per-latent vector works too, and `expected` overrides the column
    vec = torch.linspace(0, 1, 30_000)
    exp = pd.Series(-1.0, index=np.arange(30_000))
    hid = hidden_concepts(table, relevance=vec, tau_rel=0.9, expected=exp, tau_align=0.0)
    assert set(hid["latent"]) == set(table.latent[vec.numpy() >= 0.9])
    no_expected = table.drop(columns=["expected_alignment"])
    hid = hidden_concepts(no_expected, tau_act=3.0, tau_align=0.0)  # falls back to the best label's alignment
    assert set(hid["latent"]) == set(table.latent[(table.top20_mean >= 3) & (table.alignment <= 0)])
    with pytest.raises(ValueError, match="tau_rel"):
        hidden_concepts(table, relevance=rel)
    # fast enough for a slider
    start = time.perf_counter()
    for tau in np.linspace(1, 5, 20):
        hidden_concepts(table, tau_act=tau, tau_align=0.05)
    assert (time.perf_counter() - start) / 20 < 0.05


def test_hidden_concepts_thresholds_are_inclusive():
    # Eq. 7: R_j >= tau_rel and s_j <= tau_align; a latent exactly at a threshold is kept.
    table = pd.DataFrame({"latent": [0, 1, 2, 3, 4], "label": "x", "top20_mean": [3.0, 3.0, 2.5, 4.0, 3.5],
                          "expected_alignment": [0.25, 0.5, 0.0, 0.25, 0.26]})
    assert hidden_concepts(table, tau_act=3.0, tau_align=0.25)["latent"].tolist() == [3, 0]
    rel = pd.Series([1.0, 2.0, 2.0, 0.5, 2.0])
    assert hidden_concepts(table, relevance=rel, tau_rel=2.0, tau_align=0.0)["latent"].tolist() == [2]


def test_latent_relevance_is_max_over_prompts_of_mean_act_grad():
    clip = tiny_clip()
    g = torch.Generator().manual_seed(3)
    sae = TopKSAE(clip.d_pre, 40, 4, generator=g)
    x = torch.randn(30, clip.d_pre, generator=g)
    text = F.normalize(torch.randn(3, clip.d_post, generator=g), dim=1)
    rel = latent_relevance(x, sae, clip.head, text, chunk_n=7, progress=False)
    attr = act_grad(x, sae, clip.head, text)
    mean = attr.mean(40)  # (T, d_sae)
    assert isinstance(rel, pd.Series) and rel.index.name == "latent" and len(rel) == 40
    np.testing.assert_allclose(rel.to_numpy(), mean.max(0).values.numpy(), rtol=1e-5, atol=1e-7)
    full = latent_relevance(x, sae, clip.head, text, reduce=None, progress=False)
    torch.testing.assert_close(full, mean, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="reduce"):
        latent_relevance(x, sae, clip.head, text, reduce="sum", progress=False)


def test_interpretability_vs_activation_matches_numpy():
    rng = np.random.default_rng(1)
    n = 500
    top5 = rng.gamma(2, 1, n)
    table = pd.DataFrame({"top5_mean": top5, "mean_activation": top5 * rng.uniform(0.3, 0.6, n),
                          "firing_rate": rng.uniform(1e-4, 0.2, n),
                          "clarity": 0.1 * top5 + rng.normal(0, 0.1, n)})
    table.loc[3, "clarity"] = np.nan  # skipped
    c = interpretability_vs_activation(table).set_index("metric")
    ok = table["clarity"].notna()
    x, y = table.loc[ok, "top5_mean"].to_numpy(), table.loc[ok, "clarity"].to_numpy()
    assert c.loc["top5_mean", "pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    rank = lambda a: pd.Series(a).rank().to_numpy()  # noqa: E731
    assert c.loc["top5_mean", "spearman"] == pytest.approx(np.corrcoef(rank(x), rank(y))[0, 1])
    assert c.loc["top5_mean", "pearson_log"] == pytest.approx(np.corrcoef(np.log10(x), y)[0, 1])
    assert c.loc["top5_mean", "n"] == n - 1 and c.loc["top5_mean", "pearson"] > 0.5
    fig = plot_interpretability_vs_activation(table)
    assert len(fig.axes) == 3
    import matplotlib.pyplot as plt
    plt.close(fig)
    with pytest.raises(ValueError, match="no 'clarity'"):
        interpretability_vs_activation(table.drop(columns=["clarity"]))


def test_basis_diversity_components_and_pca_tops():
    g = torch.Generator().manual_seed(5)
    d, N, L = 6, 400, 8
    x = torch.randn(N, d, generator=g) * torch.tensor([5.0, 3, 2, 1, 0.5, 0.2])
    sae = TopKSAE(d, 24, 3, generator=g)
    with torch.no_grad():
        sae.b_dec.copy_(x.mean(0))
    labeler = F.normalize(torch.randn(N, 5, generator=g), dim=1)
    vocab = Vocabulary(pd.DataFrame({"label": [f"t{i}" for i in range(L)]}), F.normalize(torch.randn(L, 5, generator=g), dim=1),
                       F.normalize(torch.randn(5, generator=g), dim=0))
    div = basis_diversity(x, sae, labeler, vocab, n_components=8, top=10, progress=False)
    s = div.summary.set_index("basis")
    assert list(s.index) == ["SAE", "SAE (all)", "PCA", "neuron"]
    assert s.loc["SAE", "components"] == s.loc["PCA", "components"] == s.loc["neuron", "components"] == 8
    assert (s["unique_labels"] <= L).all() and (s["unique_labels"] >= 1).all()
    comp = div.components
    pca = comp[comp.basis == "PCA"]
    assert pca["component"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and pca["end"].tolist() == [1, -1] * 4
    # PCA direction 0 is (up to sign) the first axis here; its two ends hold the extreme rows
    xc = x - x.mean(0)
    cov = xc.T @ xc / N
    u = torch.linalg.eigh(cov.double()).eigenvectors[:, -1].float()
    proj = xc @ u
    tops = div.tops["PCA"]
    ends = {frozenset(tops.rows[c, :10].tolist()) for c in pca["column"][:2]}
    want = {frozenset(torch.argsort(proj, descending=True)[:10].tolist()),
            frozenset(torch.argsort(-proj, descending=True)[:10].tolist())}
    assert ends == want
    # neurons: by decreasing variance, so coordinate 0 first; its positive end = the 10 largest x[:, 0]
    neu = comp[comp.basis == "neuron"]
    assert neu["component"].tolist()[:2] == [0, 0]
    assert set(div.tops["neuron"].rows[neu["column"].iloc[0], :10].tolist()) == \
        set(torch.argsort(x[:, 0], descending=True)[:10].tolist())
    # SAE by variance: the latents with the largest E[a^2]
    top = top_activating(x, sae, n=10, progress=False)
    alive = torch.nonzero(top.count >= 10).flatten()
    want_sae = set(alive[torch.argsort(top.mean_square[alive], descending=True)[:8]].tolist())
    assert set(comp[comp.basis == "SAE"]["component"]) == want_sae
    rnd = basis_diversity(x, sae, labeler, vocab, n_components=8, top=10, select="random", seed=1, progress=False)
    assert len(rnd.components[rnd.components.basis == "SAE"]) == 8
    with pytest.raises(ValueError, match="exceeds 2 \\* d_pre"):
        basis_diversity(x, sae, labeler, vocab, n_components=14, top=10, progress=False)


def test_basis_diversity_counts_unique_labels_per_basis():
    """Four clusters of 25 tokens in 2-d, one concept each: p at (3, 3), q at (-3, -3), r at
    (1, -1), s at (-1, 1). PCA's two directions (the diagonals) reach all four clusters at
    their ends; both neurons reach only p and q (x_0 and x_1 are largest on p); an SAE with
    one latent per cluster direction (k = 1) has one latent per cluster. So 4 labels for the
    SAE and PCA, 2 for the neurons."""
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[3.0, 3.0], [-3.0, -3.0], [1.0, -1.0], [-1.0, 1.0]])
    concept = torch.arange(4).repeat_interleave(25)
    x = centers[concept] + 0.05 * torch.randn(100, 2, generator=g)
    sae = TopKSAE(2, 4, 1)
    with torch.no_grad():
        unit = F.normalize(centers, dim=1)
        sae.W_dec.copy_(unit), sae.W_enc.copy_(unit.T), sae.b_enc.zero_(), sae.b_dec.zero_()
    labeler = F.normalize(torch.eye(4)[concept] + 0.01 * torch.randn(100, 4, generator=g), dim=1)
    vocab = Vocabulary(pd.DataFrame({"label": ["p", "q", "r", "s"]}), torch.eye(4), F.normalize(torch.ones(4), dim=0))
    div = basis_diversity(x, sae, labeler, vocab, top=10, progress=False)
    s = div.summary.set_index("basis")
    assert s["components"].tolist() == [4, 4, 4, 4]
    assert s["unique_labels"].to_dict() == {"SAE": 4, "SAE (all)": 4, "PCA": 4, "neuron": 2}
    assert s["unique_labels_positive"].to_dict() == {"SAE": 4, "SAE (all)": 4, "PCA": 4, "neuron": 2}
    assert sorted(div.components.query("basis == 'neuron'")["label"]) == ["p", "p", "q", "q"]
