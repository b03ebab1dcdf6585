"""mining.ground_truth.label_names_planted: do a found pair's labels name its planted attribute?"""

import pandas as pd
import pytest

from clipattr_utils.labeling import sandbox_vocabulary
from clipattr_utils.mining import ground_truth as gt
from clipattr_utils.mining.classes import sandbox_classes


def test_label_names_planted_per_mode():
    truth = pd.DataFrame({"class": ["boat", "boat", "car", "fire truck", "bat (animal)", "star"],
                          "latent": [1, 2, 3, 4, 5, 6],
                          "mode": ["a_spurious", "a_spurious", "b_typography", "d_compound", "c_polysemy", ""]})
    flagged = pd.DataFrame({"class": truth["class"], "latent": truth["latent"],
                            "label": ["water", "red boat", "the word 'car'", "orange fire", "bat (club)", "star"]})
    out = gt.label_names_planted(truth, flagged, sandbox_vocabulary(colour_objects=True), sandbox_classes())
    # The pair without a planted mode is left out; each other row says whether its label
    # names the planted attribute: water yes, "red boat" no (the class, not the background),
    # the written word yes, "orange fire" yes (names fire), the other bat sense yes.
    assert out["latent"].tolist() == [1, 2, 3, 4, 5]
    assert out["names_planted"].tolist() == [True, False, True, True, True]
    # A word other than the class's own, or the class's own sense, does not count.
    flagged.loc[2, "label"] = "the word 'fish'"
    flagged.loc[4, "label"] = "bat (animal)"
    out = gt.label_names_planted(truth, flagged, sandbox_vocabulary(colour_objects=True), sandbox_classes())
    assert out["names_planted"].tolist() == [True, False, False, True, False]
    # Labels read back from notebook 02's vocabulary.csv (strings) behave the same.
    csv = sandbox_vocabulary(colour_objects=True)[["label", "attribute", "value"]].astype(str)
    assert gt.label_names_planted(truth, flagged, csv, sandbox_classes())["names_planted"].tolist() == \
        [True, False, False, True, False]

    # Several label columns: a pair names its attribute when any of them does.
    flagged["other"] = ["a small fire", "water", "", "", "bat (club)", ""]
    both = gt.label_names_planted(truth, flagged, csv, sandbox_classes(), label_column=["label", "other"])
    assert both["names_planted"].tolist() == [True, True, False, True, True]
    assert both["label"].tolist()[:2] == ["water / a small fire", "red boat / water"]


def test_distractor_labels_name_each_pairs_distractor_set_with_eq2():
    import numpy as np
    import torch
    import torch.nn.functional as F

    from clipattr_utils.labeling import Vocabulary
    from clipattr_utils.mining import distractor_labels

    # Three labels on orthogonal axes, the empty prompt on a fourth; pool images near "water"
    # (rows 0-9), near "the word 'car'" (rows 10-19), or on the empty prompt's axis (rows 20-29).
    frame = pd.DataFrame({"label": ["water", "the word 'car'", "red ball"],
                          "attribute": ["background", "text", "colour+object"], "value": ["water", "car", "red+ball"]})
    eye = torch.eye(8)
    vocab = Vocabulary(frame, eye[:3].clone(), eye[3].clone())
    g = torch.Generator().manual_seed(0)
    noise = 0.1 * torch.randn(30, 8, generator=g)
    emb = F.normalize(torch.cat([eye[0].expand(10, 8), eye[1].expand(10, 8), eye[3].expand(10, 8)]) + noise, dim=1)
    flagged = pd.DataFrame({"class": ["boat", "car", "star", "tree"], "latent": [1, 2, 3, 4]})
    samples = pd.DataFrame({"class": ["boat"] * 10 + ["car"] * 10 + ["star"] * 10,
                            "latent": [1] * 10 + [2] * 10 + [3] * 10, "row": list(range(30))})
    out = distractor_labels(flagged, samples, emb, vocab)
    assert out["distractor_label"].tolist()[:2] == ["water", "the word 'car'"]
    # Eq. 2 by hand: cosine of the distractors' mean with the label minus with the empty prompt.
    for k, (rows, lab) in enumerate([(range(0, 10), 0), (range(10, 20), 1), (range(20, 30), None)]):
        mean = F.normalize(emb[list(rows)].mean(0), dim=0)
        best = int((mean @ eye[:3].T).argmax())
        if lab is not None:
            assert best == lab
        assert out["distractor_alignment"][k] == pytest.approx(float(mean @ eye[best] - mean @ eye[3]), abs=1e-5)
    # Distractors like the empty prompt get a negative score; a pair without distractors gets none.
    assert out["distractor_alignment"][2] < 0
    assert out.loc[3, "distractor_label"] == "" and np.isnan(out.loc[3, "distractor_alignment"])
    with pytest.raises(ValueError, match="labeler embeddings have 5 rows"):
        distractor_labels(flagged, samples, emb[:5], vocab)


def test_a_small_fire_names_the_compound_and_nothing_else():
    # The companion label ("a small fire": the flame beside another object) names fire for the
    # compound mode; for the spurious or typography modes it names nothing planted.
    truth = pd.DataFrame({"class": ["fire truck", "boat", "car"], "latent": [1, 2, 3],
                          "mode": ["d_compound", "a_spurious", "b_typography"]})
    flagged = truth[["class", "latent"]].assign(label="a small fire")
    vocab = sandbox_vocabulary(colour_objects=True, watermark=False)
    assert vocab.set_index("label").loc["a small fire", "attribute"] == "companion"
    out = gt.label_names_planted(truth, flagged, vocab, sandbox_classes())
    assert out["names_planted"].tolist() == [True, False, False]


def test_a_small_fire_names_fire_but_is_no_object_claim():
    from clipattr_utils.labeling.ground_truth import named_pairs

    assert ("object", "fire") in named_pairs("companion", "fire")


def test_distinctive_label_names_what_sets_distractors_apart_from_the_pool():
    """Half the pool shows a flame, an eighth water; a pair's distractors all show both. Eq. 2
    on their mean names the flame (it is as strong in them as the water); the contrast with
    the pool names the water, whose score is far above the pool's. The effect is recomputed by
    hand from single-image scores, and the blocked pool statistics equal the one-block ones."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from clipattr_utils.labeling import Vocabulary
    from clipattr_utils.mining import distractor_labels
    from clipattr_utils.mining.describe import pool_score_stats

    frame = pd.DataFrame({"label": ["a small fire", "water", "red ball"],
                          "attribute": ["companion", "background", "colour+object"],
                          "value": ["fire", "water", "red+ball"]})
    eye = torch.eye(6)
    vocab = Vocabulary(frame, eye[:3].clone(), eye[3].clone())
    g = torch.Generator().manual_seed(1)
    n = 400
    flame = torch.zeros(n, dtype=torch.bool)
    flame[: n // 2] = True
    water = torch.zeros(n, dtype=torch.bool)
    water[n // 2 - 40: n // 2 + 10] = True  # 50 water images, 40 of them with a flame
    x = eye[3] + 1.2 * flame[:, None] * eye[0] + 1.0 * water[:, None] * eye[1] + 0.3 * torch.randn(n, 6, generator=g)
    emb = F.normalize(x, dim=1)
    rows = list(range(n // 2 - 40, n // 2))  # flame and water
    flagged = pd.DataFrame({"class": ["boat"], "latent": [7]})
    samples = pd.DataFrame({"class": "boat", "latent": 7, "row": rows})
    out = distractor_labels(flagged, samples, emb, vocab)
    assert out.loc[0, "distractor_label"] == "a small fire"
    assert out.loc[0, "distinctive_label"] == "water"
    # By hand: single-image Eq. 2 scores, distractor mean minus pool mean over the pool std.
    s = (emb @ eye[:3].T - (emb @ eye[3])[:, None]).double().numpy()
    effect = (s[rows].mean(0) - s.mean(0)) / s.std(0)
    assert out.loc[0, "distinctive_effect"] == pytest.approx(effect.max(), rel=1e-5)
    assert out.loc[0, "distinctive_labels"].split("; ")[:2] == [frame["label"][i] for i in np.argsort(-effect)[:2]]
    one, blocked = pool_score_stats(emb, vocab), pool_score_stats(emb, vocab, budget_bytes=4 * 3 * 7)
    assert torch.allclose(one.mean, blocked.mean) and torch.allclose(one.std, blocked.std)
    # Without the contrast, the columns are absent; stats from another vocabulary are refused.
    assert "distinctive_label" not in distractor_labels(flagged, samples, emb, vocab, contrast=False)
    other = Vocabulary(frame.iloc[:2], eye[:2].clone(), eye[3].clone())
    with pytest.raises(ValueError, match="pool_stats cover"):
        distractor_labels(flagged, samples, emb, vocab, pool_stats=pool_score_stats(emb, other))
