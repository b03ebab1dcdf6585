"""labeling.support and label_latents' guard: a label must describe most of a latent's top images.

The planted case is the one the guard exists for: a latent whose top images are two (or three)
kinds of object, all on water, and a vocabulary with an object label that lies between the
clusters, so Eq. 2's mean picks it although the labeler classifies no single image as it."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from clipattr_utils.labeling import Vocabulary, label_latents
from clipattr_utils.labeling.support import guarded_values, label_support
from clipattr_utils.labeling.top import TopSamples


def _world(split=(8, 7, 5), d=32, seed=0):
    """Objects a, b, c, the 'between' object m (closest to the mean of a and b), a background
    'water', compound labels 'red a' (colour+object); latent 0's top-20 are a/b/c objects on
    water in ``split``; latent 1's top-20 are all a on water; latent 2's are all m."""
    g = torch.Generator().manual_seed(seed)
    base = F.normalize(torch.randn(5, d, generator=g), dim=1)
    a, b, c, water, red = base
    m = F.normalize(a + b, dim=0)
    objs = {"a": a, "b": b, "c": c, "m": m}
    frame = pd.DataFrame([("a", "object", "a"), ("b", "object", "b"), ("c", "object", "c"), ("m", "object", "m"),
                          ("water", "background", "water"), ("grass", "background", "grass"),
                          ("red a", "colour+object", "red+a"), ("red m", "colour+object", "red+m")],
                         columns=["label", "attribute", "value"])
    grass = F.normalize(torch.randn(d, generator=g), dim=0)
    T = torch.stack([a, b, c, m, water, grass, F.normalize(a + red, dim=0), F.normalize(m + red, dim=0)])
    empty = F.normalize(torch.randn(d, generator=g), dim=0)

    def img(o):
        return F.normalize(1.0 * objs[o] + 0.45 * water + 0.1 * torch.randn(d, generator=g) / d ** 0.5, dim=0)

    kinds = ["a"] * split[0] + ["b"] * split[1] + ["c"] * split[2]
    E = torch.stack([img(o) for o in kinds] + [img("a") for _ in range(20)] + [img("m") for _ in range(20)])
    rows = torch.stack([torch.arange(0, 20), torch.arange(20, 40), torch.arange(40, 60)])
    vals = torch.linspace(3, 1, 20).expand(3, 20).clone()
    top = TopSamples(vals, rows, torch.full((3,), 20), vals.double().sum(1), len(E))
    return top, E, Vocabulary(frame, T, empty), kinds


def _eq2(E_rows, vocab):
    """Eq. 2 written out: cosine of the mean unit embedding with each label, minus the empty prompt's."""
    x = F.normalize(F.normalize(E_rows, dim=1).mean(0), dim=0)
    t = F.normalize(vocab.embeddings, dim=1)
    return t @ x - x @ F.normalize(vocab.empty, dim=0)


def _brute_support(E_rows, vocab):
    """Per image, the object label with the largest cosine (a loop); per label, the share naming its object."""
    objects = ["a", "b", "c", "m"]
    t = F.normalize(vocab.embeddings, dim=1)
    called = []
    for e in F.normalize(E_rows, dim=1):
        cos = {o: float(t[vocab.labels.index(o)] @ e) for o in objects}
        called.append(max(cos, key=cos.get))
    out = {}
    for lab, attr, val in zip(vocab.frame["label"], vocab.frame["attribute"], vocab.frame["value"]):
        obj = val if attr == "object" else (val.split("+")[1] if attr == "colour+object" else None)
        out[lab] = np.mean([c == obj for c in called]) if obj else np.nan
    return out


def test_support_matches_a_per_image_count():
    top, E, vocab, _ = _world()
    got = label_support(top, E, vocab, [0, 1, 2])
    for j in range(3):
        want = _brute_support(E[top.rows[j]], vocab)
        for i, lab in enumerate(vocab.labels):
            if np.isnan(want[lab]):
                assert torch.isnan(got[j, i]), (j, lab)
            else:
                assert float(got[j, i]) == pytest.approx(want[lab]), (j, lab)
    # the mixed latent: 8 a, 7 b, 5 c, and no image is closest to m
    assert float(got[0, vocab.labels.index("m")]) == 0.0
    assert float(got[0, vocab.labels.index("a")]) == pytest.approx(0.4)


def test_guard_replaces_the_label_between_two_clusters():
    top, E, vocab, _ = _world()
    eq2 = _eq2(E[top.rows[0]], vocab)
    assert vocab.labels[int(eq2.argmax())] == "m"  # the failure, planted: Eq. 2 names an object no image shows
    unguarded = label_latents(top, None, vocab, labeler_embeddings=E, min_count=1, guard=None, progress=False)
    assert unguarded.loc[0, "label"] == "m"
    table = label_latents(top, None, vocab, labeler_embeddings=E, min_count=1, progress=False)
    row = table.set_index("latent").loc[0]
    # Eq. 2's argmax among what the guard lets through: no object has a majority, so the background
    support = _brute_support(E[top.rows[0]], vocab)
    allowed = [i for i, lab in enumerate(vocab.labels) if np.isnan(support[lab]) or support[lab] >= 0.5]
    want = vocab.labels[allowed[int(eq2[allowed].argmax())]]
    assert row["label"] == want == "water"
    assert row["eq2_label"] == "m" and np.isnan(row["support"])
    assert row["alignment"] == pytest.approx(float(eq2[vocab.labels.index("water")]), abs=1e-5)
    assert [lab for lab, _ in row["top_labels"]] == [vocab.labels[i] for i in
                                                     sorted(allowed, key=lambda i: -float(eq2[i]))][:5]
    # latent 1 (all a): its label stands, supported by every image; latent 2 (all m): "m" stands
    assert table.set_index("latent").loc[1, "label"] in ("a", "red a")
    assert table.set_index("latent").loc[1, "support"] == 1.0
    assert table.set_index("latent").loc[2, "label"] in ("m", "red m")


def test_min_support_is_a_majority_by_default_and_inclusive():
    # 10 a / 10 b: a and b each describe half the images, which is a majority of none but meets 0.5
    top, E, vocab, _ = _world(split=(10, 10, 0))
    sup = label_support(top, E, vocab, [0])[0]
    assert float(sup[vocab.labels.index("a")]) == 0.5
    table = label_latents(top, None, vocab, labeler_embeddings=E, min_count=1, progress=False)
    assert table.loc[0, "label"] != "m" and table.loc[0, "label"] in ("a", "b", "red a", "water")
    strict = label_latents(top, None, vocab, labeler_embeddings=E, min_count=1, min_support=0.6, progress=False)
    assert strict.loc[0, "label"] == "water"


def test_guard_needs_the_labeler_embeddings_and_leaves_unattributed_vocabularies_alone():
    top, E, vocab, _ = _world()
    comp = torch.stack([F.normalize(F.normalize(E[r], dim=1).mean(0), dim=0) for r in top.rows])
    with pytest.raises(ValueError, match="labeler_embeddings"):
        label_latents(top, comp, vocab, min_count=1, progress=False)
    plain = Vocabulary(pd.DataFrame({"label": vocab.labels, "attribute": None, "value": None}), vocab.embeddings,
                       vocab.empty)
    a = label_latents(top, comp, plain, min_count=1, progress=False)
    b = label_latents(top, comp, plain, min_count=1, guard=None, progress=False)
    assert a["label"].tolist() == b["label"].tolist() and a["support"].isna().all()
    assert a.loc[0, "label"] == "m"


def test_guarded_values_refuses_an_attribute_it_cannot_classify():
    frame = pd.DataFrame([("a", "object", "a"), ("red b", "colour+object", "red+b")], columns=["label", "attribute", "value"])
    vocab = Vocabulary(frame, F.normalize(torch.randn(2, 4), dim=1), F.normalize(torch.randn(4), dim=0))
    with pytest.raises(ValueError, match="at least two"):
        guarded_values(vocab)
    frame.loc[len(frame)] = ("c", "object", "c")
    vocab = Vocabulary(frame, F.normalize(torch.randn(3, 4), dim=1), F.normalize(torch.randn(4), dim=0))
    with pytest.raises(ValueError, match="red b"):
        guarded_values(vocab)  # names object b, which no object label names


def test_support_counts_only_the_images_a_latent_has():
    # latent 1 with only 10 of its 20 slots filled (padding -1): all ten show a, so support is 1, not 10/20
    top, E, vocab, _ = _world()
    rows = top.rows.clone()
    rows[1, 10:] = -1
    vals = torch.where(rows >= 0, top.values, torch.tensor(float("nan")))
    padded = TopSamples(vals, rows, torch.tensor([20, 10, 20]), torch.nan_to_num(vals).double().sum(1), top.n_rows)
    sup = label_support(padded, E, vocab, [1])[0]
    assert float(sup[vocab.labels.index("a")]) == 1.0
