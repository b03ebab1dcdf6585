"""labeling.ground_truth on constructed data: purity, what counts as pure, label scoring, the
hidden-concept check and the labeler's own zero-shot quality."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from clipattr_utils.labeling import (Vocabulary, hidden_purity, labeler_zero_shot, labels_naming, pure_attributes,
                                     purity, sandbox_vocabulary, score_labels)
from clipattr_utils.labeling.top import TopSamples

N = 80


def _attributes():
    rows = []
    objects, colours, backgrounds = ["cup", "star", "tree", "house", "fish"], ["green", "blue", "white"], \
        ["plain", "grass", "sand", "brick"]
    for i in range(N):  # by default every attribute varies (no value reaches 90 % of 20 rows)
        o = objects[i % 5]
        rows.append({"sample_id": f"img{i}", "object": o, "sprite": o, "colour": colours[i % 3],
                     "background": backgrounds[i % 4], "text": "", "watermark": False, "tint": 0.0})
    df = pd.DataFrame(rows)
    # 20 balls (rows 0-19), red on rows 0-9
    df.loc[0:19, ["object", "sprite"]] = ["ball", "ball"]
    df.loc[0:9, "colour"] = "red"
    # water on rows 20-38 (19 rows), the word "car" on rows 40-57 (18 rows)
    df.loc[20:38, "background"] = "water"
    df.loc[40:57, "text"] = "car"
    # watermark and tint on rows 30-49, clubs on rows 50-59
    df.loc[30:49, "watermark"] = True
    df.loc[30:49, "tint"] = 0.3
    df.loc[50:59, ["object", "sprite"]] = ["bat", "bat_club"]
    return df


def _top(rows_per_latent, ids):
    n = 20
    rows = torch.full((len(rows_per_latent), n), -1, dtype=torch.int64)
    for j, r in enumerate(rows_per_latent):
        rows[j, :len(r)] = torch.tensor(r[:n])
    vals = torch.where(rows >= 0, torch.linspace(3, 1, n).expand_as(rows), torch.tensor(float("nan")))
    sid = np.full(rows.shape, None, dtype=object)
    v = (rows >= 0).numpy()
    sid[v] = np.asarray(ids, dtype=object)[rows.numpy()[v]]
    return TopSamples(vals, rows, (rows >= 0).sum(1) * 5, torch.zeros(len(rows_per_latent), dtype=torch.float64), N,
                      None, sid, ((0, N),))


LATENTS = [
    list(range(0, 20)),                 # 0: object ball (pure), colour red 10/20 (not pure)
    list(range(20, 39)) + [59],         # 1: background water 19/20 = 0.95 (pure)
    list(range(0, 20)),                 # 2: same images as 0, labelled wrongly
    list(range(40, 58)) + [0, 1],       # 3: text car 18/20 = 0.9 (pure, at the threshold)
    list(range(30, 50)),                # 4: watermark and tint, both pure
    list(range(60, 80)),                # 5: nothing shared but "no word / no watermark / no tint"
    list(range(45, 60)) + [0, 1, 2, 3, 4],  # 6: sprite bat_club 10/20 -> not pure
    list(range(50, 60)),                # 7: only 10 samples -> no purity
    list(range(0, 10)) * 2,             # 8: red balls: object and colour pure
]


def test_purity_and_what_counts_as_pure():
    attrs = _attributes()
    top = _top(LATENTS, attrs["sample_id"])
    pur = purity(top, attrs)
    assert pur.loc[0, "object_value"] == "ball" and pur.loc[0, "object_purity"] == 1.0
    assert pur.loc[0, "colour_purity"] == 0.5
    assert pur.loc[1, "background_value"] == "water" and pur.loc[1, "background_purity"] == pytest.approx(0.95)
    assert pur.loc[3, "text_value"] == "car" and pur.loc[3, "text_purity"] == pytest.approx(0.9)
    assert pur.loc[4, "watermark_value"] == True and pur.loc[4, "tint_value"] == True  # noqa: E712
    assert pur.loc[5, "text_value"] == "" and pur.loc[5, "text_purity"] == 1.0
    assert np.isnan(pur.loc[7, "object_purity"]) and pur.loc[7, "object_value"] is None
    pure = pure_attributes(pur, 0.9)
    assert pure.loc[0].to_dict() == {"object": True, "sprite": False, "colour": False, "background": False,
                                     "text": False, "watermark": False, "tint": False}
    assert pure.loc[1, "background"] and pure.loc[3, "text"] and pure.loc[4, "watermark"] and pure.loc[4, "tint"]
    assert not pure.loc[5].any()  # no word, no watermark, no tint: absence is no concept
    assert not pure.loc[7].any()
    assert pure.loc[8, "object"] and pure.loc[8, "colour"]
    # sprite purity counts only for polysemous classes: a ball latent is not "sprite-pure"
    assert pur.loc[0, "sprite_purity"] == 1.0 and not pure.loc[0, "sprite"]
    with pytest.raises(ValueError, match="row order"):
        purity(top, attrs.iloc[::-1].reset_index(drop=True))


def test_score_labels_per_attribute_and_overall():
    attrs = _attributes()
    top = _top(LATENTS, attrs["sample_id"])
    vocab = sandbox_vocabulary(colour_objects=True)
    table = pd.DataFrame({"latent": [0, 1, 2, 3, 4, 5, 8],
                          "label": ["ball", "boat", "cup", "the word 'car'", "a red tint", "cup", "red ball"]})
    res = score_labels(table, top, attrs, vocab)
    s = res.summary.set_index("attribute")
    assert (s.loc["object", "n_pure"], s.loc["object", "n_named"]) == (3, 2)  # 0 ball ok, 2 cup wrong, 8 red ball ok
    assert (s.loc["colour", "n_pure"], s.loc["colour", "n_named"]) == (1, 1)  # "red ball" names red too
    assert (s.loc["background", "n_pure"], s.loc["background", "n_named"]) == (1, 0)
    assert (s.loc["text", "n_pure"], s.loc["text", "n_named"]) == (1, 1)
    assert (s.loc["watermark", "n_pure"], s.loc["watermark", "n_named"]) == (1, 0)
    assert (s.loc["tint", "n_pure"], s.loc["tint", "n_named"]) == (1, 1)
    # overall: latents 0,1,2,3,4,8 are pure in something (5 is not); named: 0,3,4,8
    assert (s.loc["overall", "n_pure"], s.loc["overall", "n_named"]) == (6, 4)
    # only-pure: latents 4 and 8 are pure in two attributes and leave the "only" counts
    assert s.loc["watermark", "n_only"] == 0 and s.loc["object", "n_only"] == 2
    assert s.loc["overall", "n_only"] == 4 and s.loc["overall", "share_named_only"] == pytest.approx(2 / 4)
    per = res.per_latent.set_index("latent")
    assert per.loc[4, "pure"] == ["watermark", "tint"] and per.loc[5, "named"] is None
    # a sprite label names its class
    club = _top([list(range(50, 60)) * 2], attrs["sample_id"])
    r = score_labels(pd.DataFrame({"latent": [0], "label": ["bat (club)"]}), club, attrs, vocab).summary.set_index("attribute")
    assert r.loc["object", "n_named"] == 1 and r.loc["sprite", "n_named"] == 1
    r = score_labels(pd.DataFrame({"latent": [0], "label": ["bat"]}), club, attrs, vocab).summary.set_index("attribute")
    assert r.loc["object", "n_named"] == 1 and r.loc["sprite", "n_named"] == 0


def test_hidden_purity_and_expected_labels():
    attrs = _attributes()
    top = _top(LATENTS, attrs["sample_id"])
    hidden = pd.DataFrame({"latent": [1, 3, 4, 5]})
    hp = hidden_purity(hidden, top, attrs).set_index("attribute")
    assert hp.loc["background", "n_pure"] == 1 and hp.loc["background", "values"] == ["water"]
    assert hp.loc["text", "latents"] == [3] and hp.loc["tint", "n_pure"] == 1
    assert hp.loc["object", "n_pure"] == 0
    hp = hidden_purity(pd.DataFrame({"latent": [0]}), top, attrs).set_index("attribute")
    assert hp.loc["object", "latents"] == [0]
    vocab = sandbox_vocabulary(colour_objects=True)
    exp = labels_naming(vocab, "object")
    assert "ball" in exp and "red ball" in exp and "bat (club)" in exp
    assert "red" not in exp and "a red tint" not in exp and "water" not in exp
    assert labels_naming(vocab, "object", ["boat"]) == ["boat"] + [f"{c} boat" for c in
                                                                   vocab.loc[vocab["attribute"] == "colour", "value"]]


def test_labeler_zero_shot_on_planted_embeddings():
    attrs = _attributes()
    objects = sorted(set(attrs["object"]))
    frame = pd.DataFrame({"label": objects + ["a red tint"], "attribute": ["object"] * len(objects) + ["tint"],
                          "value": objects + [True]})
    g = torch.Generator().manual_seed(0)
    T = torch.linalg.qr(torch.randn(16, len(frame), generator=g)).Q.T.contiguous()  # orthonormal label embeddings
    obj = {o: i for i, o in enumerate(objects)}
    X = torch.stack([T[obj[o]] + (0.8 * T[-1] if t > 0 else 0) for o, t in zip(attrs["object"], attrs["tint"])])
    X = F.normalize(X + 0.05 * torch.randn(X.shape, generator=g), dim=1)
    vocab = Vocabulary(frame, T, F.normalize(torch.randn(16, generator=g), dim=0))
    zs = labeler_zero_shot(X, attrs, vocab).set_index("attribute")
    assert zs.loc["object", "score"] == 1.0 and zs.loc["object", "chance"] == pytest.approx(1 / len(objects))
    assert zs.loc["tint", "metric"] == "auroc" and zs.loc["tint", "score"] > 0.95
    with pytest.raises(ValueError, match="attribute rows"):
        labeler_zero_shot(X[:5], attrs, vocab)


def test_sandbox_pool_rebuilds_from_its_keyword_arguments_and_decouples_backgrounds():
    import json

    from clipattr_utils.labeling.pool import rebuild_sandbox_pool, sandbox_pool

    pool, kwargs = sandbox_pool(400, seed=3)
    again = rebuild_sandbox_pool(json.loads(json.dumps(kwargs)))  # through pool.json
    assert again.fingerprint() == pool.fingerprint()
    a = pool.attributes
    boats = a[a["object"] == "boat"]
    assert len(boats) > 10 and (boats["background"] == "water").mean() < 0.5  # not the 0.99 of training
    assert (a["watermark"].astype(bool)).mean() > 0.1 and (a["tint"] > 0).mean() > 0.05


def test_choose_templates_picks_the_best_normalised_zero_shot(monkeypatch):
    import pandas as pd

    from clipattr_utils.labeling import pool as pool_mod

    scores = {("{}",): [0.5, 0.9], ("a photo of {}",): [0.8, 0.9]}

    def fake_zero_shot(emb, attrs, vocab):
        return pd.DataFrame({"attribute": ["object", "tint"], "score": scores[vocab.templates],
                             "chance": [0.1, 0.5]})

    class FakeVocabulary:
        @staticmethod
        def build(labeler, vocab, templates, progress=False):
            return type("V", (), {"templates": tuple(templates)})()

    monkeypatch.setattr(pool_mod, "labeler_zero_shot", fake_zero_shot)
    monkeypatch.setattr(pool_mod, "Vocabulary", FakeVocabulary)
    best, table = pool_mod.choose_templates(None, None, None, None, candidates=list(scores))
    assert best == ("a photo of {}",)
    assert table["mean_norm"].tolist() == [((0.5 - 0.1) / 0.9 + 0.8) / 2, ((0.8 - 0.1) / 0.9 + 0.8) / 2]
