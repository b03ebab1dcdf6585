"""Failure mining (clipattr_utils.mining): streamed expected relevance, outsiders, Eq. 8
z-scores and flagging on constructed data, and the sandbox ground-truth scoring."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import clipattr_utils as ca
from clipattr_utils import mining as mi
from clipattr_utils.mining import ground_truth as gt
from clipattr_utils.mining.relevance import dense_block


def _random_sae(d_in, d_sae=64, k=6, seed=0):
    torch.manual_seed(seed)
    sae = ca.TopKSAE(d_in, d_sae, k=k)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.3)
    return sae.eval()


def test_running_moments_match_brute_force_over_uneven_chunks():
    rng = np.random.default_rng(0)
    data = torch.as_tensor(rng.normal(3.0, 2.0, size=(203, 7)))
    data[:, 2] = 0.0  # an inactive latent: mean 0, std 0
    mom = mi.RunningMoments(7)
    for a, b in [(0, 1), (1, 50), (50, 51), (51, 203)]:
        mom.update(data[a:b])
    assert mom.n == 203
    torch.testing.assert_close(mom.mean, data.mean(0))
    torch.testing.assert_close(mom.std(), data.std(0, unbiased=True))
    assert float(mom.std()[2]) == 0.0


def test_expected_relevance_streams_the_dense_mean_and_std(clip_tiny):
    head = clip_tiny.head
    sae = _random_sae(head.d_pre)
    torch.manual_seed(1)
    x = torch.randn(40, head.d_pre)
    labels = np.array([0] * 17 + [1] * 23)
    text = torch.randn(2, head.d_post)
    exp = mi.expected_relevance(x, labels, sae, head, text, chunk_n=5, progress=False)
    for c in (0, 1):
        xc = x[torch.as_tensor(labels == c)]
        attr = ca.act_grad(xc, sae, head, text[c:c + 1])
        dense = dense_block(attr.indices, attr.values[:, 0], sae.d_sae).double()
        torch.testing.assert_close(exp.mean[c], dense.mean(0), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(exp.std[c], dense.std(0), atol=1e-6, rtol=1e-5)
        y = head.cosine(xc, text[c:c + 1])[:, 0].double().numpy()
        assert exp.output_mean[c] == pytest.approx(y.mean(), abs=1e-6)
        assert exp.output_std[c] == pytest.approx(y.std(ddof=1), abs=1e-6)
        assert int(exp.count[c]) == len(xc)


def test_outsiders_are_other_class_samples_above_mean_minus_k_std():
    y = np.array([0.9, 0.1, 0.5, 0.6, 0.2, 0.95])
    labels = np.array([0, 1, 1, 2, 2, 0])
    rows = mi.outsiders(y, labels, 0, out_mean=0.7, out_std=0.1, out_k=1.5)
    assert rows.tolist() == [3]  # 0.6 > 0.55; 0.5 is not; class-0 rows never count


def test_zscores_and_std_guard():
    mean = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)
    std = torch.tensor([0.5, 0.0, 1.0], dtype=torch.float64)
    sd = mi.guarded_std(std, std_floor=1.0, quantile=0.5)
    assert float(sd[1]) == pytest.approx(0.75)  # the median of the non-zero stds
    z = mi.zscores(torch.tensor([[2.0, 1.5]]), torch.tensor([[0, 1]]), mean, sd)
    # stds below the floor are raised to it too (0.5 -> 0.75)
    assert torch.allclose(z, torch.tensor([[1.0 / 0.75, 2.0]], dtype=torch.float64))
    assert float(mi.guarded_std(std, std_floor=1.0, quantile=1.0)[2]) == 1.0
    assert torch.isfinite(z).all()


def test_flag_class_finds_the_planted_outlier_latent_and_not_the_clean_one():
    rng = np.random.default_rng(0)
    n = 60
    rows = np.arange(n)
    # latent 3: planted, z ~ 6 on 20 outsiders; latent 5: clean, z ~ N(0, 1) on all 60;
    # latent 7: high z but only on 4 outsiders (below min_count).
    z_rows = np.concatenate([rows[:20], rows, rows[:4]])
    z_idx = np.concatenate([np.full(20, 3), np.full(n, 5), np.full(4, 7)])
    z_val = np.concatenate([rng.normal(6, 0.5, 20), rng.normal(0, 1, n), np.full(4, 9.0)])
    latents, counts, mean_z, dis = mi.flag_class(z_rows, z_idx, z_val, d_sae=10, z_thr=3.0, min_count=10)
    assert latents.tolist() == [3]
    assert counts.tolist() == [20] and mean_z[0] > 5
    assert dis[3].tolist() == sorted(rows[:20][z_val[:20] > 3.0].tolist())
    # Thresholds are parameters.
    latents, *_ = mi.flag_class(z_rows, z_idx, z_val, d_sae=10, z_thr=3.0, min_count=3)
    assert latents.tolist() == [3, 7]


def _exact_code_world(head):
    """An SAE whose encoder recovers its code exactly (orthonormal decoder rows, W_enc = V^T),
    two prompts, j* (the direction class 0's prompt likes most), the other latents by
    decreasing liking, and ``make(pairs, n, scale)``: n tokens built from the latent pairs."""
    d_sae = head.d_pre
    torch.manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(d_sae, d_sae))
    sae = ca.TopKSAE(head.d_pre, d_sae, k=2)
    with torch.no_grad():
        sae.W_dec.copy_(q)
        sae.W_enc.copy_(q.T)
        sae.b_enc.zero_()
        sae.b_dec.copy_(torch.randn(d_sae))  # a baseline; the encoder subtracts it, so recovery stays exact
    sae.eval()
    text = torch.randn(2, head.d_post)
    V, b = sae.W_dec.detach(), sae.b_dec.detach()
    y_dir = head.cosine(b + 3 * V, text[:1])[:, 0]
    order = torch.argsort(y_dir, descending=True).tolist()
    gen = torch.Generator().manual_seed(4)

    def make(pairs, n, scale=(1.0, 1.0)):
        xs = []
        for i in range(n):
            js = pairs[i % len(pairs)]
            a = torch.tensor(scale) * (1.0 + 0.2 * torch.rand(2, generator=gen))
            xs.append((a[:, None] * V[list(js)]).sum(0) + b)
        return torch.stack(xs)

    return sae, text, order[0], order[1:], make


def _dense_relevance(x, sae, head, prompt):
    """(n, d_sae) Act x Grad relevance for one prompt, inactive latents 0."""
    attr = ca.act_grad(x, sae, head, prompt)
    return torch.zeros(len(x), sae.d_sae, dtype=torch.float64).scatter_(1, attr.indices, attr.values[:, 0].double())


def test_flag_class_thresholds_at_their_boundaries():
    # App. D.1: "at least 10 non-zero activations" (>= min_count) and "a z-score above 3.0" (>).
    z_rows = np.arange(30)
    z_idx = np.repeat([1, 2, 3], 10)
    z_val = np.concatenate([np.full(10, 3.5), np.full(10, 3.0), np.r_[np.full(9, 4.0), 2.0]])
    latents, counts, mean_z, dis = mi.flag_class(z_rows, z_idx, z_val, d_sae=5, z_thr=3.0, min_count=10)
    assert latents.tolist() == [1, 3] and counts.tolist() == [10, 10]  # latent 2: mean z 3.0 is not above 3.0
    assert mean_z.tolist() == pytest.approx([3.5, 3.8])
    assert dis[3].tolist() == list(range(20, 29))  # its one sample with z = 2 is not a distractor
    assert mi.flag_class(z_rows, z_idx, z_val, d_sae=5, z_thr=3.0, min_count=11)[0].tolist() == []


def test_mine_flags_an_unexpected_latent_and_matches_a_brute_force_z(clip_tiny):
    """Class 0 references never use latent j*; outsiders of class 1 carry it strongly and
    score high for class 0's prompt: j* is flagged for class 0, with the brute-force mean z."""
    head = clip_tiny.head
    sae, text, j_star, others, make = _exact_code_world(head)
    d_sae = sae.d_sae
    x0 = make([(others[0], others[1]), (others[1], others[2])], 40)
    x1 = make([(j_star, others[5])], 30, scale=(3.0, 1.0))
    x = torch.cat([x0, x1])
    labels = np.array([0] * 40 + [1] * 30)
    ids = [f"s{i}" for i in range(len(x))]
    exp = mi.expected_relevance(x, labels, sae, head, text, progress=False)
    cfg = mi.MiningConfig(out_k=50.0, z_thr=3.0, min_count=10)  # every other-class sample is an outsider
    res = mi.mine(x, labels, ids, sae, head, text, exp, ["zero", "one"], config=cfg, progress=False,
                  label_table=pd.DataFrame({"latent": [j_star], "label": ["planted"]}))
    fl = res.flagged
    assert list(fl.columns[:5]) == ["class", "latent", "label", "n_samples", "mean_z"]
    assert (np.diff(fl["mean_z"].to_numpy()) <= 0).all()
    row = fl[(fl["class"] == "zero") & (fl["latent"] == j_star)]
    assert len(row) == 1 and row["label"].iloc[0] == "planted"
    # brute force: dense relevance of the outsiders, Eq. 8 with the guarded std
    attr = ca.act_grad(x1, sae, head, text[:1])
    dense = dense_block(attr.indices, attr.values[:, 0], d_sae).double()
    active = (torch.zeros_like(dense).scatter_(1, attr.indices, 1.0) > 0)[:, j_star]
    sd = mi.guarded_std(exp.std[0], cfg.std_floor, cfg.floor_quantile)
    z = (dense[active, j_star] - exp.mean[0, j_star]) / sd[j_star]
    assert row["mean_z"].iloc[0] == pytest.approx(float(z.mean()), rel=1e-5)
    assert row["n_samples"].iloc[0] == int(active.sum())
    got = set(res.samples[(res.samples["class"] == "zero") & (res.samples["latent"] == j_star)]["sample_id"])
    want = {ids[40 + i] for i in np.flatnonzero(active.numpy())[(z > 3.0).numpy()]}
    assert got == want
    # the clean latents of class 0's own references are not flagged for class 0
    assert not set(fl[fl["class"] == "zero"]["latent"]) & {others[0], others[1], others[2]}


def test_mine_subtracts_the_class_mean_of_a_latent_the_references_use(clip_tiny):
    """Eq. 8 with mu_cj != 0: half of class 0's references carry j* too, so its expected
    relevance is far from 0, and the outsiders' mean z is (R - mu) / sigma, not R / sigma."""
    head = clip_tiny.head
    sae, text, j_star, others, make = _exact_code_world(head)
    x0 = make([(others[0], others[1]), (j_star, others[2])], 40, scale=(3.0, 1.0))
    x1 = make([(j_star, others[5])], 30, scale=(6.0, 1.0))
    x, labels = torch.cat([x0, x1]), np.array([0] * 40 + [1] * 30)
    exp = mi.expected_relevance(x, labels, sae, head, text, progress=False)
    cfg = mi.MiningConfig(out_k=50.0, z_thr=0.0, min_count=10)
    res = mi.mine(x, labels, [f"s{i}" for i in range(70)], sae, head, text, exp, ["zero", "one"], config=cfg,
                  progress=False)
    ref = _dense_relevance(x0, sae, head, text[:1])  # brute force: the references' moments ...
    mu, sd = ref.mean(0), mi.guarded_std(ref.std(0), cfg.std_floor, cfg.floor_quantile)
    assert abs(float(mu[j_star])) > 0.5 * float(sd[j_star]), "the fixture should give j* a clear class mean"
    r = _dense_relevance(x1, sae, head, text[:1])[:, j_star]  # ... and Eq. 8 on the outsiders (j* active on all)
    want = float(((r - mu[j_star]) / sd[j_star]).mean())
    row = res.flagged[(res.flagged["class"] == "zero") & (res.flagged["latent"] == j_star)]
    assert len(row) == 1 and row["n_samples"].iloc[0] == 30
    assert row["mean_z"].iloc[0] == pytest.approx(want, rel=1e-4)


def test_sandbox_classes_split_the_polysemous_word_and_share_its_prompt():
    classes = mi.sandbox_classes()
    names = [c.name for c in classes]
    assert "bat (animal)" in names and "bat (club)" in names and "bat" not in names
    p = dict(zip(names, mi.prompts(classes)))
    assert p["bat (animal)"] == p["bat (club)"] == "a photo of a bat"
    pool, kwargs = mi.sandbox_mining_pool(400, seed=0)
    att = pool.attributes
    lab = mi.class_labels(att, classes)
    assert (lab >= 0).all()
    assert set(att.loc[lab == names.index("bat (club)"), "sprite"]) == {"bat_club"}
    # backgrounds independent of the class: boats are not mostly on water
    assert (att.loc[att.object == "boat", "background"] == "water").mean() < 0.5
    assert (att.loc[att.object != "boat", "background"] == "water").mean() > 0.05
    # the flame at one rate beside every class: independent of the class
    assert kwargs["recipe"]["compound_companion_rate"] == kwargs["recipe"]["companion_other_rate"] > 0
    from clipattr_utils.labeling.pool import rebuild_sandbox_pool
    assert rebuild_sandbox_pool(kwargs).fingerprint() == pool.fingerprint()


def test_ground_truth_scoring_on_a_constructed_table():
    classes = mi.sandbox_classes()
    att = pd.DataFrame({
        "object": ["ball"] * 4 + ["bat"] * 4 + ["fire"] * 4,
        "sprite": ["ball"] * 4 + ["bat_club"] * 4 + ["fire"] * 4,
        "background": ["water"] * 3 + ["grass"] + ["plain"] * 4 + ["sand"] * 4,
        "text": ["", "", "", "car"] + [""] * 8,
    })
    flagged = pd.DataFrame({"class": ["boat", "bat (animal)", "fire truck", "car"], "latent": [1, 2, 3, 4],
                            "mean_z": [9.0, 8.0, 7.0, 6.0]})
    samples = pd.DataFrame({"class": ["boat"] * 4 + ["bat (animal)"] * 4 + ["fire truck"] * 4 + ["car"] * 4,
                            "latent": [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4,
                            "row": list(range(12)) + [0, 1, 2, 3]})
    truth = gt.pair_truth(flagged, samples, att, classes)
    assert truth["mode"].tolist() == ["a_spurious", "c_polysemy", "d_compound", ""]
    assert truth["suggested_type"].tolist()[:3] == ["spurious", "polysemy", "compound noun"]
    s = gt.score(truth, classes, top=10)
    assert s["recall"]["a_spurious"] == 1.0 and s["recall"]["c_polysemy"] == 0.5
    assert s["recall"]["b_typography"] == 0.0 and s["precision_at_10"] == pytest.approx(0.75)


def test_review_tags_round_trip_and_suggestions_are_not_applied(tmp_path):
    from clipattr_utils.mining.review import ReviewView

    flagged = pd.DataFrame({"class": ["boat", "bat (animal)"], "latent": [5, 9], "label": ["water", ""],
                            "n_samples": [12, 11], "mean_z": [4.0, 3.5]})
    samples = pd.DataFrame({"class": ["boat", "boat", "bat (animal)"], "latent": [5, 5, 9],
                            "sample_id": ["a", "b", "c"], "row": [0, 1, 2]})
    sugg = pd.DataFrame({"class": ["boat"], "latent": [5], "suggested_type": ["spurious"],
                         "suggested_attribute": ["background=water"], "suggested_share": [0.9]})
    view = ReviewView(flagged, samples, None, suggestions=sugg)
    assert view.suggestion("boat", 5)[0] == "spurious"
    assert view.card(0)["tag"] == ""  # shown, never applied
    view.tag("boat", 5, "spurious", note="all on water")
    view.tag("bat (animal)", 9, "polysemy")
    with pytest.raises(ValueError):
        view.tag("boat", 5, "bogus")
    path = view.save(tmp_path / "tags.csv")
    fresh = ReviewView(flagged, samples, None)
    tags = fresh.load(path)
    pd.testing.assert_frame_equal(tags, view.tags)
    assert fresh.card(1)["tag"] == "polysemy" and fresh.card(0)["rows"] == [0, 1]
    assert isinstance(fresh.show(interactive=False), pd.DataFrame)


@pytest.mark.parametrize("field, value", [("out_k", -1.0), ("out_k", float("inf")), ("z_thr", float("nan")),
                                          ("min_count", 0), ("min_count", 2.5), ("std_floor", 0.0),
                                          ("floor_quantile", 1.5), ("chunk_n", 0)])
def test_mining_config_refuses_values_that_mine_silently_wrong(field, value):
    with pytest.raises(ValueError, match=rf"^MiningConfig: {field} must .*, got {value!r}"):
        mi.MiningConfig(**{field: value})


def test_review_load_checks_the_whole_file_before_applying_any_row(tmp_path):
    """Unmatched pairs used to be skipped after a print, an unknown tag raised after the rows
    before it were applied, and a non-integer latent gave a bare int() error."""
    from clipattr_utils.mining.review import ReviewView

    flagged = pd.DataFrame({"class": ["boat", "bat (animal)"], "latent": [5, 9], "label": ["water", ""],
                            "n_samples": [12, 11], "mean_z": [4.0, 3.5]})
    samples = pd.DataFrame({"class": ["boat"], "latent": [5], "sample_id": ["a"], "row": [0]})
    view = ReviewView(flagged, samples, None)
    path = tmp_path / "tags.csv"
    cases = [
        ("Boat,5,spurious,\n", r"1 pairs not flagged here: row 1: \('Boat', 5\), did you mean 'boat'\?"),
        ("boat,5,spurious,\nbat (animal),9,bogus,\n", r"1 tags not in \[.*\]: row 2: 'bogus'"),
        ("boat,5,spurious,\nbat (animal),nine,polysemy,\n", r"1 latents that are not integers: row 2: 'nine'"),
        ("boat,5,spurious,\nboat,5,,\n", r"1 pairs listed twice: rows 1 and 2: \('boat', 5\)"),
    ]
    for body, match in cases:
        path.write_text("class,latent,tag,note\n" + body)
        with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: nothing loaded, the file has {match}"):
            view.load(path)
        assert (view.tags["tag"] == "").all(), f"a refused file applied a row: {body!r}"
    path.write_text("class,latent,tag,note\nbat (animal),9,polysemy,two senses\nboat,5,,\n")
    assert view.load(path)["tag"].tolist() == ["", "polysemy"]


def test_review_draws_the_pairs_latent_over_its_distractors_and_toggles_it():
    import torch

    from clipattr_utils.mining.review import ReviewView

    class Images:
        def load_image(self, i):
            return np.full((8, 8, 3), 40 + int(i), dtype=np.uint8)

    flagged = pd.DataFrame({"class": ["boat"], "latent": [5], "label": ["water"], "n_samples": [2], "mean_z": [4.0]})
    samples = pd.DataFrame({"class": ["boat", "boat"], "latent": [5, 5], "sample_id": ["a", "b"], "row": [3, 7]})
    calls = []

    def heat(latent, rows):
        calls.append((latent, list(rows)))
        return torch.ones(len(rows), 2, 2)

    view = ReviewView(flagged, samples, Images(), heat=heat)
    hot = view.figure(0).axes[0].get_images()[0].get_array()
    assert calls == [(5, [3, 7])]
    box = view.show(interactive=True)
    heat_box = box.children[0].children[1]
    assert heat_box.value and not heat_box.disabled
    heat_box.value = False
    plain = view.figure(0).axes[0].get_images()[0].get_array()
    assert np.array_equal(np.asarray(plain), Images().load_image(3)) and not np.array_equal(np.asarray(hot),
                                                                                              np.asarray(plain))


def test_auroc_and_table1_on_constructed_scores():
    from clipattr_utils.mining import evaluate as ev

    assert ev.auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert ev.auroc(np.array([1.0]), np.array([1.0])) == 0.5
    labels = np.array([0, 0, 0, 1, 1, 1])
    failures = pd.DataFrame({"class": ["a"], "class_index": [0], "latent": [3], "failure_type": ["spurious"]})
    samples = pd.DataFrame({"class": ["a", "a"], "latent": [3, 3], "row": [3, 4]})
    s = np.zeros((6, 2))
    s[:, 0] = [0.9, 0.8, 0.7, 0.85, 0.1, 0.0]
    scores = {"short": s, "full": s + np.array([[0, 0]] * 3 + [[-1, 0]] * 3), "template": s, "both": s}
    aucs = ev.failure_aucs(scores, labels, failures, samples)
    short = aucs[aucs.variant == "short"].iloc[0]
    assert short.spurious_auc == pytest.approx(ev.auroc(s[:3, 0], s[[3, 4], 0]))
    assert short.valid_auc == pytest.approx(ev.auroc(s[:3, 0], s[3:, 0]))
    t1 = ev.table1(aucs)
    assert t1.loc[0, "Extended description"] == pytest.approx(1.0 - short.spurious_auc)
    assert t1.loc[0, "Templating"] == 0.0

    # no failure sets: empty tables with their columns, no errors
    empty = ev.failure_aucs(scores, labels, failures.iloc[:0], samples)
    assert ev.table1(empty).empty and ev.summary(empty).empty
    assert ev.probe_vs_prompts(empty)["available"] is False


def test_log_prob_confidence_counts_a_word_as_confident_where_the_cosine_does_not():
    # Class 0's references sit at cosine 0.30 with the other prompts at 0.10. The "worded"
    # outsider lowers every cosine, its own least: its cosine for class 0 (0.22) is far below
    # the references, its zero-shot probability of class 0 is as high as theirs.
    rng = np.random.default_rng(0)
    refs = np.column_stack([0.30 + 0.005 * rng.standard_normal(20), np.full(20, 0.10), np.full(20, 0.10)])
    worded = np.array([[0.22, 0.01, 0.01]])
    cos = np.vstack([refs, worded])
    labels = np.array([0] * 20 + [1])
    lp = mi.confidence_scores(cos, "log_prob", logit_scale=50.0)
    logits = 50.0 * cos
    brute = logits - np.log(np.exp(logits).sum(1, keepdims=True))  # independent log-softmax
    np.testing.assert_allclose(lp, brute, atol=1e-12)
    np.testing.assert_array_equal(mi.confidence_scores(cos, "cosine"), cos)
    for kind, found in (("cosine", []), ("log_prob", [20])):
        y = mi.confidence_scores(cos, kind, logit_scale=50.0)
        rows = mi.outsiders(y[:, 0], labels, 0, y[:20, 0].mean(), y[:20, 0].std(ddof=1))
        assert rows.tolist() == found, kind
    with pytest.raises(ValueError, match="confidence"):
        mi.confidence_scores(cos, "softmax")


def test_with_output_stats_recomputes_the_class_statistics_from_reference_rows():
    exp = mi.ExpectedRelevance(mean=torch.zeros(2, 3), std=torch.ones(2, 3), count=np.array([3, 2]),
                               output_mean=np.zeros(2), output_std=np.zeros(2), active=torch.zeros(2, 3))
    scores = np.array([[1.0, 9.0], [2.0, 9.0], [4.0, 9.0], [9.0, 5.0], [9.0, 7.0], [100.0, 100.0]])
    ref = np.array([0, 0, 0, 1, 1, -1])  # the last row is not a reference of any class
    out = mi.with_output_stats(exp, scores, ref)
    np.testing.assert_allclose(out.output_mean, [7 / 3, 6.0])
    np.testing.assert_allclose(out.output_std, [np.std([1, 2, 4], ddof=1), np.std([5, 7], ddof=1)])
    assert exp.output_mean.tolist() == [0.0, 0.0], "the input is not modified"
    with pytest.raises(ValueError, match="scores"):
        mi.with_output_stats(exp, scores[:4], ref)


def test_mining_pool_puts_the_flame_beside_any_object_and_references_leave_it_out():
    pool, kwargs = mi.sandbox_mining_pool(400, seed=4)
    a = pool.attributes
    burning = a["companion"] != ""
    others = ~a["object"].isin(["fire", "fire truck"])
    assert 0.35 < burning[others].mean() < 0.65, "the flame occurs beside other objects at its training rate"
    assert not burning[a["object"] == "fire"].any(), "fire itself never gets a companion flame"
    ref = mi.sandbox_reference_labels(a, mi.sandbox_classes())
    assert (ref[burning.to_numpy()] == -1).all() and (ref[(a["text"] != "").to_numpy()] == -1).all()
    assert (ref >= 0).sum() > 100
    # the compound's truth: a flame beside a car shows fire
    shows = gt.carries(a, "shows", "fire")
    assert np.array_equal(shows, ((a["object"] == "fire") | burning).to_numpy())
    with pytest.raises(ValueError, match="companion_rate"):
        mi.sandbox_mining_pool(10, companion_rate=1.5)


def test_default_worlds_keep_their_fingerprints_and_draws():
    # companion_other_rate came later: off, it must not change a default world's draws or key.
    from dataclasses import asdict

    from clipattr_utils import sandbox as sb
    from clipattr_utils.sandbox.world import ObjectRecipe

    a = sb.make_dataset(50, "train", seed=3)
    b = sb.make_dataset(50, "train", seed=3, recipe=ObjectRecipe(companion_other_rate=0.0))
    assert a.fingerprint() == b.fingerprint()
    assert "companion_other_rate" not in a.describe()
    assert asdict(ObjectRecipe())["companion_other_rate"] == 0.0
    c = sb.make_dataset(50, "train", seed=3, recipe=ObjectRecipe(companion_other_rate=0.5))
    assert c.fingerprint() != a.fingerprint()
    assert (c.attributes["companion"][~c.attributes["object"].isin(["fire", "fire truck"])] != "").any()


def test_class_outputs_in_chunks_equal_one_pass(clip_tiny):
    head = clip_tiny.head
    torch.manual_seed(3)
    x = torch.randn(37, head.d_pre)
    text = torch.randn(5, head.d_post)
    with torch.no_grad():
        whole = torch.log_softmax(20.0 * head.cosine(x, text).double(), dim=1).numpy()
    np.testing.assert_allclose(mi.class_outputs(x, head, text, "log_prob", 20.0, chunk_rows=8), whole, atol=1e-5)  # float32 cosines, batch-size rounding
    with torch.no_grad():
        np.testing.assert_allclose(mi.class_outputs(x, head, text, chunk_rows=5), head.cosine(x, text).double().numpy(),
                                   atol=1e-5)


def test_imagenet_classes_keep_the_polysemous_short_names_and_unique_names():
    classes = mi.imagenet_classes()
    assert len(classes) == 1000 and len({c.name for c in classes}) == 1000
    assert classes[134].short == classes[517].short == "crane"
    assert classes[0].short == "tench" and classes[0].full.startswith("tench, ")
    assert mi.prompts(classes[:1]) == ["a photo of a tench"]


def test_probe_scores_for_classes_it_never_saw_rank_below_the_seen_ones():
    from clipattr_utils.mining import evaluate as ev

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(60, 8))
    labels = np.repeat([0, 2, 3], 20)  # class 1 and 4 missing
    emb[labels == 2] += 3.0
    with pytest.raises(ValueError, match="lacks classes"):
        ev.train_probe(emb, labels, 5)
    probe = ev.train_probe(emb, labels, 5, require_all_classes=False)
    s = ev.variant_scores(torch.as_tensor(emb), {"short": torch.randn(5, 8)}, probe)["probe"]
    assert s.shape == (60, 5)
    assert (s[:, [1, 4]].max() < s[:, [0, 2, 3]].min())
    z = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    np.testing.assert_allclose(s[:, [0, 2, 3]], probe.decision_function(z.astype(np.float32)), rtol=1e-5, atol=1e-6)


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(field + ":"))


def test_failure_aucs_read_score_columns_without_the_dense_matrix():
    """Issue 24: the scores of every pool image for every class and variant are never held
    whole. The AUCs equal those from the dense matrices, and the process's peak memory while
    scoring (Linux: peak RSS reset through /proc/self/clear_refs) stays far below the two dense
    (N, C) matrices (160 MB here)."""
    import os

    from clipattr_utils.mining import evaluate as ev

    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    g = torch.Generator().manual_seed(0)
    n, c, d = 50000, 400, 32
    emb = torch.randn(n, d, generator=g)
    prompts = {"short": torch.randn(c, d, generator=g), "full": torch.randn(c, d, generator=g)}
    labels = np.arange(n) % c
    samples = pd.DataFrame({"class": "k3", "latent": 7, "row": np.arange(0, 600, 7)})
    failures = pd.DataFrame({"class": ["k3"], "class_index": [3], "latent": [7], "failure_type": ["spurious"]})
    ev.failure_aucs(ev.variant_scores(emb[:50], prompts), labels[:50], failures, samples[:1])  # imports, warm-up
    base = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    got = ev.failure_aucs(ev.variant_scores(emb, prompts), labels, failures, samples)
    added = _status_mb("VmHWM") - base
    assert added < 40, f"scoring added {added:.0f} MB; the dense matrices are {2 * n * c * 4 / 2**20:.0f} MB"
    z = F.normalize(emb, dim=-1)
    dense = {k: (z @ t.T).numpy() for k, t in prompts.items()}
    want = ev.failure_aucs(dense, labels, failures, samples)
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(ev.variant_scores(emb[:500], prompts)["full"]), dense["full"][:500],
                               rtol=1e-5, atol=1e-5)


def test_torch_probe_reaches_sklearns_optimum():
    """The torch solver minimises sklearn's own objective (C * cross-entropy + ||W||^2 / 2, the
    intercept unpenalised): it reaches an objective at least as low, the same probabilities to
    2e-3, and plugs into variant_scores with classes it never saw, like sklearn's."""
    from clipattr_utils.mining import evaluate as ev

    rng = np.random.default_rng(1)
    n, d, c = 600, 24, 8
    y = rng.integers(0, c, n)
    x = rng.normal(size=(c, d))[y] + 1.5 * rng.normal(size=(n, d))
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    sk = ev.train_probe(x, y, c, C=2.0)
    tp = ev.train_probe(x, y, c, C=2.0, solver="torch")

    def objective(p):
        logits = torch.as_tensor(p.decision_function(z), dtype=torch.float64)
        return float(2.0 * F.cross_entropy(logits, torch.as_tensor(y), reduction="sum") + 0.5 * (p.coef_ ** 2).sum())

    assert objective(tp) <= objective(sk) + 1e-3
    prob = {k: torch.softmax(torch.as_tensor(p.decision_function(z)), 1).numpy() for k, p in (("sk", sk), ("t", tp))}
    assert np.abs(prob["sk"] - prob["t"]).max() < 2e-3
    keep = y != 3  # a class the probe never sees
    partial = ev.train_probe(x[keep], y[keep], c, solver="torch", require_all_classes=False)
    s = ev.variant_scores(torch.as_tensor(x, dtype=torch.float32), {"short": torch.randn(c, d)}, partial)["probe"]
    assert s[:, 3].max() < s[:, [0, 1, 2, 4, 5, 6, 7]].min()
    with pytest.raises(ValueError, match="solver"):
        ev.train_probe(x, y, c, solver="liblinear")
