"""The melanoma case (Sec. 5.4, App. E): Eq. 32-34 against hand-computed values, the probe's
latent relevance against autograd and a brute-force class mean, the split, the red-latent
finding and the summaries on constructed data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipattr_utils import melanoma as mel
from clipattr_utils.data import TensorImageSet
from clipattr_utils.features import extract
from clipattr_utils.head import Head
from clipattr_utils.sae.model import EncoderOutput, TopKSAE

# ------------------------------------------------------------------------------ Eq. 32


def _strip(reds):
    """A 1 x n uint8 RGB image with the given red values, green 10, blue 200."""
    a = np.zeros((1, len(reds), 3), np.uint8)
    a[0, :, 0], a[0, :, 1], a[0, :, 2] = reds, 10, 200
    return a


def test_eq32_more_red_by_hand():
    out = mel.red_hue(_strip([0, 100, 127, 128, 200, 255]), -1.0)
    # red * 2, clipped at 1 (= 255): 0, 200, 254, 256 -> 255, 400 -> 255, 510 -> 255
    assert out[0, :, 0].tolist() == [0, 200, 254, 255, 255, 255]
    assert (out[..., 1] == 10).all() and (out[..., 2] == 200).all()


def test_eq32_less_red_by_hand():
    out = mel.red_hue(_strip([0, 100, 101, 200, 255]), 0.2)
    # red * 0.8: 0, 80, 80.8 -> 81, 160, 204
    assert out[0, :, 0].tolist() == [0, 80, 81, 160, 204]
    assert (out[..., 1] == 10).all() and (out[..., 2] == 200).all()


def test_eq32_float_pil_and_clipping_at_zero():
    f = np.array([[[0.3, 0.5, 0.5], [0.7, 0.1, 0.2]]])
    np.testing.assert_allclose(mel.red_hue(f, -1.0)[0, :, 0], [0.6, 1.0])
    np.testing.assert_allclose(mel.red_hue(f, 0.2)[0, :, 0], [0.24, 0.56])
    np.testing.assert_allclose(mel.red_hue(f, 1.5)[0, :, 0], [0.0, 0.0])  # red * -0.5 clipped at 0
    np.testing.assert_array_equal(mel.red_hue(f, 0.0), f)
    img = Image.fromarray(_strip([50, 120]))
    out = mel.red_hue(img, -1.0)
    assert isinstance(out, Image.Image) and np.asarray(out)[0, :, 0].tolist() == [100, 240]
    with pytest.raises(ValueError, match="RGB"):
        mel.red_hue(np.zeros((4, 4), np.uint8), 0.2)


def _images(n=4, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_red_hue_image_set_transforms_and_keys_differ(tmp_path, clip_tiny):
    base = TensorImageSet(_images(), labels=[0, 1, 0, 1], name="lesions")
    more, less = mel.RedHueImageSet(base, -1.0), mel.RedHueImageSet(base, 0.2)
    np.testing.assert_array_equal(np.asarray(more.load_image(2)), mel.red_hue(np.asarray(base.load_image(2)), -1.0))
    assert [more.sample_id(i) for i in range(4)] == [base.sample_id(i) for i in range(4)]
    assert more.labels() == base.labels() and more.describe()["red_hue_delta"] == -1.0
    assert len({base.fingerprint(), more.fingerprint(), less.fingerprint()}) == 3
    with pytest.raises(ValueError):
        mel.RedHueImageSet(more, 0.2)
    feats = mel.condition_features(clip_tiny, base, tmp_path, num_workers=0, progress=False)
    assert set(feats) == {"none", "more_red", "less_red"}
    assert len({str(c.path) for c in feats.values()}) == 3  # one cache per condition
    assert feats["more_red"].ids == feats["none"].ids
    assert not torch.allclose(feats["more_red"].read(), feats["none"].read())
    # The cached rows are the images with Eq. 32 applied, nothing else.
    by_hand = TensorImageSet([mel.red_hue(im, -1.0) for im in _images()], labels=[0, 1, 0, 1], name="by-hand")
    torch.testing.assert_close(extract(clip_tiny, by_hand, tmp_path, num_workers=0, progress=False).read(),
                               feats["more_red"].read())


# ------------------------------------------------------------------------------ Eq. 33 / 34


def test_eq33_direction_by_hand():
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [7.0, 10.0], [0.0, 0.0]])
    a = torch.tensor([0.0, 1.0, 5.0, 6.0, 3.0])
    d = mel.red_direction(x, a, latent=7, mode="absolute", params=(1.0, 5.0))
    # high: rows 2, 3 (a >= 5) mean (6, 7); low: rows 0, 1 (a <= 1) mean (2, 1)
    torch.testing.assert_close(d.u, torch.tensor([4.0, 6.0]))
    assert (d.n_low, d.n_high, d.latent) == (2, 2, 7)
    # std mode: mean 3, population std sqrt((9 + 4 + 4 + 9 + 0) / 5) = sqrt(5.2)
    t_low, t_high = mel.thresholds(a, "std", (-0.5, 1.0))
    assert t_low == pytest.approx(3 - 0.5 * np.sqrt(5.2)) and t_high == pytest.approx(3 + np.sqrt(5.2))
    assert mel.PAPER_STD == (-0.26, 2.05)
    # quantiles of (0, 1, 3, 5, 6): 25 % -> 1, 75 % -> 5
    assert mel.thresholds(a, "quantile", (0.25, 0.75)) == (1.0, 5.0)
    d = mel.red_direction(x, a, 7, "quantile", (0.25, 0.75))
    torch.testing.assert_close(d.u, torch.tensor([4.0, 6.0]))
    with pytest.raises(ValueError, match="empty"):
        mel.red_direction(x, a, 7, "absolute", (-1.0, 9.0))
    with pytest.raises(ValueError, match="not below"):
        mel.thresholds(a, "absolute", (2.0, 1.0))


def test_eq34_augmentation_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    u = torch.tensor([2.0, -2.0])
    out = mel.latent_augment(x, u, alpha=0.5, p=[0.1, 0.9])
    # row 0: 0.5 * (0.1 - 0.5) = -0.2 -> x - 0.2 u; row 1: +0.2 u
    torch.testing.assert_close(out, torch.tensor([[0.6, 2.4], [3.4, 3.6]]))
    p = np.random.default_rng(5).random(2)
    want = x + 2.0 * torch.tensor(p - 0.5, dtype=x.dtype)[:, None] * u
    torch.testing.assert_close(mel.latent_augment(x, u, 2.0, rng=5), want)
    torch.testing.assert_close(mel.latent_augment(x, u, 0.0, rng=1), x)


def test_dense_activation():
    code = (torch.tensor([[3, 1], [1, 0], [2, 0]]), torch.tensor([[2.0, 0.5], [1.5, 0.2], [4.0, 0.0]]))
    torch.testing.assert_close(mel.dense_activation(code, 1), torch.tensor([0.5, 1.5, 0.0]))


# ------------------------------------------------------------------- probe relevance


def _world(n=60, d=12, d_post=6, d_sae=40, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    head = Head(1 + 0.3 * torch.randn(d, generator=g), 0.4 * torch.randn(d, generator=g),
                torch.randn(d, d_post, generator=g), 1e-5).double()
    torch.manual_seed(seed)
    sae = TopKSAE(d, d_sae, k).double()
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.3)
    y = np.arange(n) % 2
    x = torch.randn(n, d, generator=g, dtype=torch.float64) + 2.0 * torch.tensor(y, dtype=torch.float64)[:, None] \
        * torch.randn(d, generator=g, dtype=torch.float64)
    return head, sae, x, y


def _autograd_relevance(x, sae, head, clf):
    """Dense (N, d_sae) a_j * d logit / d a_j with eps held fixed (the authors' recipe)."""
    with torch.no_grad():
        idx, vals = sae.encode(x)
        dense = torch.zeros(x.shape[0], sae.d_sae, dtype=x.dtype).scatter(1, idx, vals)
        eps = x - (dense @ sae.W_dec + sae.b_dec)
    a = dense.clone().requires_grad_(True)
    z = head(a @ sae.W_dec + sae.b_dec + eps)
    w = torch.tensor(clf.coef_[0], dtype=x.dtype)
    logit = F.normalize(z, dim=1) @ w + float(clf.intercept_[0])
    grad, = torch.autograd.grad(logit.sum(), a)
    np.testing.assert_allclose(logit.detach().numpy(), clf.decision_function(mel.embed(head, x)), rtol=1e-9)
    return (a * grad).detach()


def test_probe_relevance_and_class_means_match_brute_force():
    head, sae, x, y = _world()
    clf = mel.fit_probe(mel.embed(head, x), y)
    assert clf.score(mel.embed(head, x), y) > 0.8
    attr = mel.probe_relevance(x, sae, head, clf)
    ref = _autograd_relevance(x, sae, head, clf)
    got = torch.zeros_like(ref).scatter(1, attr.indices, attr.values[:, 0, :])
    torch.testing.assert_close(got, ref, rtol=1e-7, atol=1e-10)

    table = mel.class_relevance(attr, y, sae.d_sae)
    for label, cls in enumerate(mel.CLASSES):
        sign = 1.0 if label == 1 else -1.0
        rows = ref[torch.as_tensor(y == label)]
        mean = sign * rows.mean(0)
        share = mean / rows.abs().sum(1).mean()
        t = table[table["class"] == cls]
        lat = torch.as_tensor(t["latent"].to_numpy().copy())
        active = (rows != 0).any(0)
        assert set(t["latent"]) == set(torch.nonzero(active).reshape(-1).tolist())
        np.testing.assert_allclose(t["relevance"].to_numpy(), mean[lat].numpy(), rtol=1e-9)
        np.testing.assert_allclose(t["share"].to_numpy(), share[lat].numpy(), rtol=1e-9)
        assert t["relevance"].is_monotonic_decreasing and t["rank"].tolist() == list(range(1, len(t) + 1))
        best = int(torch.argmax(torch.where(active, mean, torch.tensor(-np.inf, dtype=mean.dtype))))
        assert mel.rank_of(table, best, cls) == 1
    assert mel.relevance_of(table, 10_000, "benign") == {"relevance": 0.0, "share": 0.0, "rank": None}


def test_class_accuracy():
    class Fixed:
        def predict(self, z):
            return np.asarray(z)[:, 0].astype(int)
    z = np.array([[0], [1], [1], [1], [0]])
    assert mel.class_accuracy(Fixed(), z, [0, 0, 1, 1, 1]) == {0: 0.5, 1: pytest.approx(2 / 3)}


# ------------------------------------------------------------------------------ split


def test_split_follows_app_e():
    y = np.array([1] * 50 + [0] * 200)
    s = mel.split_indices(y, seed=3)
    assert (y[s.train] == 1).sum() == 40 and (y[s.train] == 0).sum() == 40  # 80 % melanoma, matched others
    assert (y[s.test] == 1).sum() == 10 and (y[s.test] == 0).sum() == 160
    assert not set(s.train) & set(s.test) and len(s.train) + len(s.test) == len(y)
    s2 = mel.split_indices(y, seed=3)
    assert (s.train == s2.train).all() and not (mel.split_indices(y, seed=4).train == s.train).all()
    s3 = mel.split_indices(y, 0, n_train_other=60, n_test_other=25)
    assert (y[s3.train] == 0).sum() == 60 and (y[s3.test] == 0).sum() == 25
    with pytest.raises(ValueError):
        mel.split_indices(y, 0, n_train_other=200)


# ------------------------------------------------------------------ finding the red latent


def test_redness_by_hand():
    assert mel.redness(np.full((2, 2, 3), (255, 0, 0), np.uint8)) == pytest.approx(1.0)
    assert mel.redness(np.full((2, 2, 3), (0, 255, 255), np.uint8)) == pytest.approx(-1.0)
    assert mel.redness(np.full((1, 1, 3), (0.5, 0.25, 0.75))) == pytest.approx(0.0)


def test_find_red_latent_on_constructed_data():
    """Latent 5 ranks first for benign but fires on grey images; latent 9 (rank 2) fires on
    the red ones; latent 2 (rank 3) on everything. The red one is found and checked."""
    n = 30
    red = np.arange(n) % 3 == 0
    imgs = [np.full((8, 8, 3), (200, 60, 70) if r else (120, 120, 120), np.uint8) for r in red]
    pool = TensorImageSet(imgs, labels=[0] * n)
    rng = np.random.default_rng(0)
    a9 = np.where(red, rng.uniform(2, 3, n), rng.uniform(0, 0.5, n))
    a5 = np.where(red, 0.1, rng.uniform(1, 4, n))
    a2 = rng.uniform(0.5, 1, n)
    order = np.argsort(-np.stack([a9, a5, a2], 1), axis=1)
    ids = np.array([9, 5, 2])[order]
    vals = np.take_along_axis(np.stack([a9, a5, a2], 1), order, axis=1)
    code = EncoderOutput(torch.as_tensor(ids), torch.as_tensor(vals))
    table = pd.DataFrame({"class": "benign", "label": 0, "latent": [5, 9, 2, 4], "relevance": [0.4, 0.3, 0.2, 0.1],
                          "share": [0.4, 0.3, 0.2, 0.1], "active": 1.0, "rank": [1, 2, 3, 4]})
    found = mel.find_red_latent(table, code, pool, n_candidates=3, n_top=10, attribute=red.astype(float))
    assert (found.latent, found.rank, found.purity) == (9, 2, 1.0)
    assert sorted(found.top_rows) == sorted(np.flatnonzero(red).tolist())
    assert found.candidates.set_index("latent").loc[5, "purity"] == 0.0
    only_top = mel.find_red_latent(table, code, pool, n_candidates=1, n_top=10)
    assert only_top.latent == 5 and only_top.purity is None


def _code(acts: dict[int, np.ndarray]) -> EncoderOutput:
    """A sparse code holding every latent of ``acts`` (latent id -> (N,) activations)."""
    a = np.stack(list(acts.values()), 1)
    order = np.argsort(-a, axis=1)
    return EncoderOutput(torch.as_tensor(np.array(list(acts))[order]), torch.as_tensor(np.take_along_axis(a, order, 1)))


def test_red_response_by_hand_and_it_decides_over_redness():
    """Latent 2 (rank 1) fires on naturally red lesions, the reddest images of the pool, but
    does not move when red is added; latent 9 (rank 2) fires on the tinted images and rises
    under more red; latent 5 (rank 3, untinted skin) falls. The pixel statistic picks 2, the
    red response picks 9."""
    n = 30
    kind = np.arange(n) % 3                       # 0: tinted, 1: naturally red, 2: grey
    colour = {0: (190, 80, 80), 1: (240, 20, 20), 2: (120, 120, 120)}
    pool = TensorImageSet([np.full((8, 8, 3), colour[k], np.uint8) for k in kind], labels=[0] * n)
    clean = {9: np.where(kind == 0, 3.0, 0.2), 2: np.where(kind == 1, 2.5, 0.1), 5: np.where(kind == 2, 2.0, 0.3)}
    more_red = {9: clean[9] + 1.5, 2: clean[2].copy(), 5: clean[5] - np.where(kind == 2, 1.2, 0.3)}
    code, red_code = _code(clean), _code(more_red)
    # by hand: 9 rises 1.5 everywhere; 5 falls 1.2 on a third of the images and 0.3 on the rest
    assert mel.red_response(code, red_code, [9, 2, 5]) == pytest.approx({9: 1.5, 2: 0.0, 5: -(1.2 + 2 * 0.3) / 3})
    table = pd.DataFrame({"class": "benign", "label": 0, "latent": [2, 9, 5], "relevance": [0.4, 0.3, 0.2],
                          "share": [0.4, 0.3, 0.2], "active": 1.0, "rank": [1, 2, 3]})
    tinted = (kind == 0).astype(float)
    by_pixels = mel.find_red_latent(table, code, pool, n_candidates=3, n_top=10, attribute=tinted)
    assert (by_pixels.latent, by_pixels.purity) == (2, 0.0)
    found = mel.find_red_latent(table, code, pool, n_candidates=3, n_top=10, attribute=tinted, red_code=red_code)
    assert (found.latent, found.rank, found.purity) == (9, 2, 1.0)
    assert found.candidates.set_index("latent")["response"].to_dict() == pytest.approx({2: 0.0, 9: 1.5, 5: -0.6})
    # the direction candidates use the same measure: only 9 rises at all
    assert mel.red_candidates(table, code, pool, 9, n_candidates=3, n_top=10, red_code=red_code)[0] == [9]
    with pytest.raises(ValueError, match="different images"):
        mel.red_response(code, _code({j: v[:10] for j, v in more_red.items()}), [9])
    # when none of the top candidates rises (5 falls, 2 stays), the search goes on and says so
    low = table.assign(latent=[5, 2, 9])
    narrow = mel.find_red_latent(low, code, pool, n_candidates=2, n_top=10, red_code=red_code)
    assert (narrow.latent, narrow.note) == (2, "")      # without max_candidates: the best of the two
    wide = mel.find_red_latent(low, code, pool, n_candidates=2, n_top=10, red_code=red_code, max_candidates=3)
    assert (wide.latent, wide.rank) == (9, 3) and "none of the 2 most relevant" in wide.note
    assert "-0.60, +0.00" in wide.note and len(wide.candidates) == 3


def test_case_data_code_of_a_condition_is_the_sae_code_of_its_tokens():
    torch.manual_seed(0)
    sae = TopKSAE(6, 12, 3)
    head = Head(torch.ones(6), torch.zeros(6), torch.randn(6, 4), 1e-5)
    x = torch.randn(20, 6)
    data = mel.CaseData({"none": x, "more_red": x + 1.0}, np.arange(20) % 2, head, sae)
    direct = sae.encode(x + 1.0)
    got = data.code_of("more_red")
    assert torch.equal(got.indices, direct.indices) and torch.allclose(got.values, direct.values)
    assert data.code_of("more_red") is got and data.code_of("none") is data.code
    with pytest.raises(ValueError, match="no condition 'less_red'"):
        data.code_of("less_red")


# -------------------------------------------------------------------- run and summaries


def _toy_case(n=400, seed=0):
    """Tokens whose label is weakly coded along e0 and a 'tint' (mostly on benign) along e1;
    "more_red" adds tint to every token, "less_red" removes some."""
    g = torch.Generator().manual_seed(seed)
    d = 8
    head = Head(torch.ones(d), torch.zeros(d), torch.eye(d)[:, :6], 1e-5)
    y = np.arange(n) % 2
    tint = (torch.rand(n, generator=g) < torch.where(torch.as_tensor(y) == 0, 0.6, 0.05)).float()
    x = torch.randn(n, d, generator=g) + 3.0
    x[:, 0] += 1.2 * torch.as_tensor(2 * y - 1, dtype=torch.float32)
    x[:, 1] += 3.0 * tint
    tokens = {"none": x, "more_red": x + torch.eye(d)[1] * 3.0, "less_red": x - torch.eye(d)[1] * 1.0}
    torch.manual_seed(seed)
    sae = TopKSAE(d, 16, 3)
    with torch.no_grad():  # latent 0 reads the tint dimension
        sae.W_enc[:, 0] = torch.eye(d)[1] * 2.0
        sae.W_dec[0] = torch.eye(d)[1]
        sae.b_dec.fill_(3.0)
    return mel.CaseData(tokens, y, head, sae, tint=tint.numpy()), tint


def test_run_case_records_and_summaries():
    data, tint = _toy_case()
    cfg = mel.CaseConfig(alphas=(0.0, 0.5, 4.0), alpha=4.0, n_aug=2)
    res = mel.run_case(data, 0, seeds=[0, 1, 2], cfg=cfg, progress=False)
    acc = res.accuracy_summary()
    assert set(acc["probe"]) == {"standard", "robust", "robust_val"}
    assert set(acc["condition"]) == {"none", "more_red", "less_red"} and set(acc["class"]) == set(mel.CLASSES)
    assert (acc["n_seeds"] == 3).all()
    # One number by hand: the standard probe, seed 1, melanoma under more red.
    s = mel.split_indices(data.labels, 1)
    clf = mel.fit_probe(data.emb["none"][s.train], data.labels[s.train])
    te = s.test[data.labels[s.test] == 1]
    want = 100 * (clf.predict(data.emb["more_red"][te]) == 1).mean()
    got = res.accuracy.query("seed == 1 and probe == 'standard' and condition == 'more_red' and `class` == 'melanoma'")
    assert float(got["accuracy"].iloc[0]) == pytest.approx(want)
    # The planted tint makes the standard probe fail on reddened melanoma ...
    t = res.target()
    assert t["drop_standard"] > 10 and t["standard_drops"]
    # ... and augmenting along the tint latent's direction (alpha 4) removes most of it.
    assert t["cut"] > 0.5
    assert set(res.directions["latent"]) == {0} and (res.directions["cos_u_true_tint"] > 0.9).all()
    assert set(res.relevance["probe"]) == {"standard", "robust", "robust_val"}
    assert {"oracle_sweep", "sweep"} <= set(res.accuracy["probe"])
    tr = res.sweep_tradeoff()
    assert tr["alpha"].tolist() == [0.0, 0.5, 4.0] and abs(tr["cut"].iloc[0]) < 0.1  # alpha 0: no augmentation


def test_run_seed_takes_eq33_from_the_benign_training_rows_only():
    """Eq. 33 (App. E: "non-melanoma samples") by hand on the toy case, where the tint is on 60 %
    of the benign tokens and 5 % of the melanoma ones: the thresholds, set sizes and |u| from
    the benign training rows, not from all training rows or all benign rows."""
    data, _ = _toy_case()
    cfg = mel.CaseConfig(alphas=(0.0,), alpha=0.0, select_alpha=False, oracle=False)
    got = mel.run_seed(data, 0, seed=3, cfg=cfg).direction
    x = data.tokens["none"]
    split = mel.split_indices(data.labels, 3)
    ben = split.train[data.labels[split.train] == 0]
    with torch.no_grad():  # latent 0's activation from the dense pre-activations (top-3, ReLU)
        pre = data.sae.pre_acts(x)
        a = torch.where((pre.topk(3, dim=1).indices == 0).any(1), pre[:, 0].clamp_min(0), 0.0)[ben].double().numpy()
    t_low, t_high = np.quantile(a, [0.5, 0.95])  # the default thresholds
    low, high = a <= t_low, a >= t_high
    u = x[ben][high].double().mean(0) - x[ben][low].double().mean(0)
    assert (got["n_low"], got["n_high"]) == (int(low.sum()), int(high.sum()))
    assert (got["t_low"], got["t_high"]) == (pytest.approx(t_low, abs=1e-5), pytest.approx(t_high, abs=1e-5))
    assert got["act_mean"] == pytest.approx(a.mean(), abs=1e-5)
    assert got["u_norm"] == pytest.approx(float(u.norm()), rel=1e-5)


def test_target_clean_cost_and_sem_by_hand():
    rows = []
    table = {  # (probe, seed): melanoma none, melanoma more_red, benign none
        ("standard", 0): (80, 40, 70), ("standard", 1): (84, 44, 72),
        ("robust", 0): (78, 60, 70), ("robust", 1): (80, 66, 69),
    }
    for (probe, seed), (m0, m1, b0) in table.items():
        for cond, cls, v in (("none", "melanoma", m0), ("more_red", "melanoma", m1), ("none", "benign", b0),
                             ("more_red", "benign", 90)):
            rows.append({"seed": seed, "probe": probe, "alpha": 0.5 if probe == "robust" else 0.0, "condition": cond,
                         "class": cls, "accuracy": float(v)})
    res = mel.CaseResult(mel.CaseConfig(), 3, [0, 1], pd.DataFrame(rows), pd.DataFrame(), pd.DataFrame(), {})
    t = res.target()
    assert t["drop_standard"] == pytest.approx(40.0) and t["drop_robust"] == pytest.approx(16.0)
    assert t["cut"] == pytest.approx(0.6)
    # clean balanced: standard (75, 78), robust (74, 74.5) -> cost mean(-1, -3.5) = -2.25
    assert res.clean_cost() == pytest.approx(-2.25) and not t["met"]
    assert mel.sem([1.0, 3.0]) == pytest.approx(1.0) and mel.sem([2.0]) == 0.0
    s = res.accuracy_summary(("standard",))
    row = s[(s["condition"] == "none") & (s["class"] == "melanoma")].iloc[0]
    assert row["mean"] == pytest.approx(82.0) and row["sem"] == pytest.approx(2.0)


def test_red_hue_examples_figure_shows_each_class_as_rendered_and_reddened():
    import matplotlib

    matplotlib.use("Agg")
    from clipattr_utils.melanoma.hue import red_hue
    from clipattr_utils.melanoma.plots import red_hue_examples

    class Pool:
        def __init__(self):
            self.images = [np.full((4, 4, 3), 40 * (i + 1), dtype=np.uint8) for i in range(5)]

        def load_image(self, i):
            from PIL import Image

            return Image.fromarray(self.images[i])

        def __len__(self):
            return len(self.images)

    pool = Pool()
    labels = [0, 1, 0, 1, 1]
    fig = red_hue_examples(pool, labels, tint=[1, 0, 0, 0, 0], per_class=2)
    axes = np.asarray(fig.axes).reshape(2, 4)
    assert [ax.get_title() for ax in axes[0]] == ["benign, tint", "benign", "melanoma", "melanoma"]
    shown = axes[1, 0].get_images()[0].get_array()
    expect = np.asarray(red_hue(pool.load_image(0), -1.0))
    np.testing.assert_array_equal(np.asarray(shown), expect)


# ------------------------------------------ robust_val: Eq. 33's latent and alpha on validation


def test_red_candidates_keeps_the_red_latents_among_the_most_relevant():
    """Latents 9 and 4 fire on the red images, 5 on the grey ones, 2 on everything: with the
    four most relevant benign latents, the red latent (9) comes first, then 4; 5 (grey) and
    2 (mixed) are not red enough. With three candidates, 4 (rank 4) is out."""
    n = 30
    red = np.arange(n) % 3 == 0
    imgs = [np.full((8, 8, 3), (200, 60, 70) if r else (120, 120, 120), np.uint8) for r in red]
    pool = TensorImageSet(imgs, labels=[0] * n)
    rng = np.random.default_rng(1)
    acts = {9: np.where(red, rng.uniform(2, 3, n), rng.uniform(0, 0.5, n)),
            5: np.where(red, 0.1, rng.uniform(1, 4, n)),
            2: rng.uniform(0.5, 1, n),
            4: np.where(red, rng.uniform(1, 2, n), 0.05)}
    a = np.stack(list(acts.values()), 1)
    order = np.argsort(-a, axis=1)
    code = EncoderOutput(torch.as_tensor(np.array(list(acts))[order]), torch.as_tensor(np.take_along_axis(a, order, 1)))
    table = pd.DataFrame({"class": "benign", "label": 0, "latent": [5, 9, 2, 4], "relevance": [0.4, 0.3, 0.2, 0.1],
                          "share": [0.4, 0.3, 0.2, 0.1], "active": 1.0, "rank": [1, 2, 3, 4]})
    latents, df = mel.red_candidates(table, code, pool, 9, n_candidates=4, min_frac=0.5, n_top=10)
    assert latents == [9, 4]
    # redness of the red images minus the set's mean (a third of the images are red)
    r = (200 - (60 + 70) / 2) / 255
    assert df.set_index("latent").loc[9, "redness"] == pytest.approx(r - r / 3)
    assert df.set_index("latent")["kept"].to_dict() == {5: False, 9: True, 2: False, 4: True}
    assert mel.red_candidates(table, code, pool, 9, n_candidates=3, n_top=10)[0] == [9]
    # the given red latent is always kept (here a grey one), first
    assert mel.red_candidates(table, code, pool, 5, n_candidates=4, n_top=10)[0] == [5, 9, 4]


def test_validation_parts_are_stratified_disjoint_and_cover_the_training_rows():
    labels = np.r_[np.zeros(50, int), np.ones(30, int)]
    train = np.arange(0, 80, 1)[np.arange(80) % 5 != 0]  # 64 rows: 40 benign, 24 melanoma
    parts = mel.validation_parts(labels, train, seed=3, folds=4)
    assert len(parts) == 4
    assert sorted(np.concatenate(parts).tolist()) == sorted(train.tolist())
    for p in parts:
        assert (labels[p] == 0).sum() == 10 and (labels[p] == 1).sum() == 6
    again = mel.validation_parts(labels, train, seed=3, folds=4)
    assert all((a == b).all() for a, b in zip(parts, again))
    (one,) = mel.validation_parts(labels, train, seed=3, val_frac=0.25, folds=1)
    assert (labels[one] == 0).sum() == 10 and (labels[one] == 1).sum() == 6 and set(one) <= set(train)
    with pytest.raises(ValueError):
        mel.validation_parts(labels, train[:6], seed=0, folds=4)


def _toy_case_with_decoy(**kw):
    """The toy case plus latent 1, which reads e2 (noise, not the tint): its Eq. 33 direction
    does not point where "more_red" moves the tokens."""
    data, tint = _toy_case(**kw)
    d = data.tokens["none"].shape[1]
    with torch.no_grad():
        data.sae.W_enc[:, 1] = torch.eye(d)[2] * 2.0
        data.sae.W_dec[1] = torch.eye(d)[2]
    return mel.CaseData(data.tokens, data.labels, data.head, data.sae, tint=data.tint), tint


def test_choose_direction_picks_the_tint_latent_over_a_decoy():
    # The toy's tint is very informative on clean data: ignoring it costs ~4 points, so the
    # cost budget is widened here (it is a parameter).
    data, _ = _toy_case_with_decoy()
    cfg = mel.CaseConfig(alphas=(0.0, 0.5, 4.0, 8.0), val_folds=3, max_cost=6.0, min_cut=0.5,
                         threshold_params=(0.5, 0.9))  # the toy's folds have ~50 benign rows: top 10 %
    train = mel.split_indices(data.labels, 0).train
    latent, alpha, table = mel.choose_direction(data, train, [1, 0], seed=0, cfg=cfg)
    assert set(table["latent"]) == {0, 1} and len(table) == 8
    assert latent == 0 and alpha in (0.5, 4.0, 8.0)
    row = table[(table["latent"] == 0) & (table["alpha"] == alpha)].iloc[0]
    assert row["cut"] >= 0.5 and row["clean_cost"] >= -6.0
    # per latent the smallest alpha that reaches the cut within the cost
    ok0 = table[(table["latent"] == 0) & (table["cut"] >= 0.5) & (table["clean_cost"] >= -6.0)]
    assert alpha == ok0["alpha"].min()
    assert (table.loc[table["latent"] == 1, "cut"] < 0.5).all()
    # the decoy alone never reaches the cut: the best cut within the cost, as choose_alpha did
    latent1, alpha1, table1 = mel.choose_direction(data, train, [1], seed=0, cfg=cfg)
    ok1 = table1[table1["clean_cost"] >= -6.0]
    assert latent1 == 1 and alpha1 == float(ok1.loc[ok1["cut"].idxmax(), "alpha"])
    a, t = mel.choose_alpha(data, train, 1, seed=0, cfg=cfg)
    assert a == alpha1 and "latent" not in t


def test_run_case_robust_val_takes_the_direction_from_a_better_red_candidate():
    """Red latent 1 (the decoy): the App. E probe (alpha 4 along its direction) keeps the drop;
    with latent 0 as a further candidate, robust_val picks it on validation and cuts the drop."""
    data, _ = _toy_case_with_decoy()
    cfg = mel.CaseConfig(alphas=(0.0, 0.5, 4.0, 8.0), alpha=4.0, val_folds=3, oracle=False, max_cost=10.0)
    res = mel.run_case(data, 1, seeds=[0, 1], cfg=cfg, progress=False, direction_latents=[0])
    assert (res.directions["latent_validation"] == 0).all()
    assert res.target("robust")["cut"] < 0.5
    t = res.target("robust_val", max_cost=10.0)
    assert t["met"] and t["cut"] >= 0.5
    only = mel.run_case(data, 1, seeds=[0], cfg=cfg, progress=False)
    assert (only.directions["latent_validation"] == 1).all()


def test_reliance_split_against_a_linear_probe():
    """For a linear probe on the rows themselves, the logit change of a shift is w . shift: the
    along-u and across parts are computed independently here and must add up to the full one."""
    from sklearn.linear_model import LogisticRegression

    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long().numpy()
    clf = LogisticRegression().fit(x.numpy(), y)
    w = torch.as_tensor(clf.coef_[0])
    u = torch.tensor([1.0, 2.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    v = torch.tensor([0.0, 0.0, 1.0, -1.0, 0.5, 0.0], dtype=torch.float64)  # orthogonal to u
    r = mel.reliance_split(clf, x, x + 0.7 * u + 1.3 * v, u, y)
    assert r["logit_along_u"] == pytest.approx(float(w @ (0.7 * u)))
    assert r["logit_across"] == pytest.approx(float(w @ (1.3 * v)))
    assert r["logit_full"] == pytest.approx(r["logit_along_u"] + r["logit_across"])
    assert r["cos_shift_u"] == pytest.approx(float(F.cosine_similarity((0.7 * u + 1.3 * v)[None], u[None])))
    assert r["acc_none"] == pytest.approx(100 * (clf.predict(x.numpy()) == y).mean())
    only_u = mel.reliance_split(clf, x, x + 2 * u, u, y)
    assert only_u["logit_across"] == pytest.approx(0.0, abs=1e-12) and only_u["acc_full"] == only_u["acc_along_u"]
    with pytest.raises(ValueError, match="zero vector"):
        mel.reliance_split(clf, x, x, torch.zeros(6), y)
    with pytest.raises(ValueError, match="must be"):
        mel.reliance_split(clf, x, x[:5], u, y)


def test_reliance_report_on_the_toy_case():
    data, _ = _toy_case()
    cfg = mel.CaseConfig()
    split = mel.split_indices(data.labels, 0)
    standard = mel.fit_probe(data.emb["none"][split.train], data.labels[split.train])
    rep = mel.reliance_report(data, split, standard, 0, 4.0, cfg, seed=0)
    assert rep["probe"].tolist() == ["standard", "robust"]
    # the toy's red shift is one token dimension, which latent 0's Eq. 33 direction nearly is:
    # the standard probe's drop lies along u, and augmenting along u shrinks it there
    std, rob = rep.iloc[0], rep.iloc[1]
    assert (rep["cos_shift_u"] > 0.98).all()
    assert std["logit_full"] < -1 and abs(std["logit_across"]) < 0.1 * abs(std["logit_along_u"])
    assert abs(rob["logit_along_u"]) < 0.5 * abs(std["logit_along_u"]) and rob["acc_full"] > std["acc_full"]
    with pytest.raises(ValueError, match="no 'tint' tokens"):
        mel.reliance_report(data, split, standard, 0, 4.0, cfg, seed=0, condition="tint")


def test_standard_drops_separates_a_learned_shortcut_from_one_in_the_embedding():
    """The toy case's drop comes from its training data (the tint is on 60 % of benign
    tokens): without the tint the probe has nothing to learn and most of the drop goes.
    A shift along the label's own direction (a shortcut in the "embedding") drops with or
    without the tint."""
    data, _ = _toy_case()
    with_tint = mel.standard_drops(data, [0, 1, 2])
    assert list(with_tint["seed"]) == [0, 1, 2] and (with_tint["condition"] == "more_red").all()
    assert with_tint["drop"].mean() > 10
    # The same numbers as run_case's standard probe (same split, same fit).
    res = mel.run_case(data, 0, seeds=[0, 1, 2], cfg=mel.CaseConfig(alphas=(0.0,), select_alpha=False), progress=False)
    np.testing.assert_allclose(with_tint["drop"], res.drops("standard")[("more_red", "melanoma")].to_numpy())
    x = data.tokens["none"].clone()
    y = torch.as_tensor(data.labels)
    x[:, 1] = torch.randn(len(x), generator=torch.Generator().manual_seed(1)) + 3.0  # tint removed
    e0, e1 = torch.eye(x.shape[1])[0], torch.eye(x.shape[1])[1]
    e2 = torch.eye(x.shape[1])[2]  # +e1 -e2: the layer norm's mean stays put
    control = mel.CaseData({"none": x, "more_red": x + 3.0 * (e1 - e2), "toward_benign": x - 2.4 * e0 * (y == 1)[:, None]},
                           data.labels, data.head, data.sae)
    free = mel.standard_drops(control, [0, 1, 2])
    # What remains (~12 points here) is the head's layer norm: the shift rescales every
    # coordinate, the label's too; the part learned from the tinted training data is gone.
    assert free["drop"].mean() < 0.5 * with_tint["drop"].mean()
    entangled = mel.standard_drops(control, [0, 1, 2], condition="toward_benign")
    assert entangled["drop"].mean() > 50
    # Clean accuracies do not depend on the condition read.
    np.testing.assert_allclose(free["melanoma_clean"], entangled["melanoma_clean"])
    with pytest.raises(ValueError, match="condition 'bluer'"):
        mel.standard_drops(control, [0], condition="bluer")


def test_sandbox_recipes_carry_the_probe_data_tint_rates():
    rec = mel.sandbox_recipes(200, 100, seed=2)
    want = {"tint_rate_nevus": mel.sets.POOL_TINT_RATE["nevus"], "tint_rate_melanoma": mel.sets.POOL_TINT_RATE["melanoma"]}
    assert rec["pool"]["recipe"] == want and rec["sae_train"]["recipe"] == want  # the SAE: the probe's distribution
    assert (rec["sae_train"]["split"], rec["sae_train"]["seed"]) == ("train", 3)  # ... but other images
    assert json.loads(json.dumps(rec)) == rec  # what pool.json stores rebuilds the sets
    sets = mel.make_sets(mel.sandbox_recipes(2000, 2000, tint_rate={"nevus": 0.6, "melanoma": 0.0}))
    for name in ("pool", "sae_train"):
        a = sets[name].attributes
        assert (a.loc[a["diagnosis"] == "melanoma", "tint"] == 0).all(), name
        assert 0.55 < (a.loc[a["diagnosis"] == "nevus", "tint"] > 0).mean() < 0.65, name
    with pytest.raises(ValueError, match="tint_rate"):
        mel.sandbox_recipes(tint_rate={"nevus": 0.2})
    with pytest.raises(ValueError, match="tint_rate"):
        mel.sandbox_recipes(tint_rate={"nevus": 1.2, "melanoma": 0.0})
