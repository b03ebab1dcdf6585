"""The labeler's independent world (issue 28): no planted link between object and attribute,
captions that name what is visible, and the shipped labeler trained on exactly that world."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2_contingency

from clipattr_utils import sandbox as sb
from clipattr_utils.sandbox import captions as cap
from clipattr_utils.sandbox import world

DATA = Path(__file__).resolve().parents[1] / "data" / "sandbox"


@pytest.fixture(scope="module")
def independent():
    return sb.make_dataset(6000, "train", seed=11, recipe=sb.ObjectRecipe.independent())


def _independent_of_object(table: pd.DataFrame, column: str, rows=None) -> float:
    """p-value of a chi-square test of independence between the object and ``column``."""
    t = table if rows is None else table[rows]
    return float(chi2_contingency(pd.crosstab(t["object"], t[column]))[1])


def test_planted_links_lists_every_mode_of_the_explained_recipe():
    links = sb.ObjectRecipe().planted_links()
    assert [l[:3] for l in links] == ["(a)", "(b)", "(d)", "(d)", "col"], links
    assert sb.ObjectRecipe.independent().planted_links() == []
    # Each switch alone brings its link back: the check reads every field it claims to.
    for change, prefix in [(dict(spurious_rate=0.5), "(a)"), (dict(word_independent=False), "(b)"),
                           (dict(companion_other_rate=0.0), "(d)"), (dict(compound_class_weight=0.4), "(d)"),
                           (dict(class_colours=True), "col")]:
        fields = {**sb.ObjectRecipe.independent().__dict__, **change}
        assert [l[:3] for l in sb.ObjectRecipe(**fields).planted_links()] == [prefix], change


def test_independent_world_draws_attributes_independently_of_the_object(independent):
    t = independent.attributes.copy()
    t["has_word"], t["tinted"] = t["text"] != "", t["tint"] > 0
    t["flame"] = t["companion"] != ""
    for column in ("background", "colour", "has_word", "watermark", "tinted"):
        assert _independent_of_object(t, column) > 1e-4, column
    # Which word, among the images that carry one (the planted world never writes an object's own name).
    assert _independent_of_object(t, "text", t["has_word"]) > 1e-4
    own = (t["text"] == t["object"]).sum()
    assert own > 0
    # The flame: beside every object but fire itself, at one rate.
    not_fire = t["object"] != sb.COMPOUND_HEAD
    assert _independent_of_object(t, "flame", not_fire) > 1e-4
    # And every attribute is common (the captions can teach it).
    assert t["has_word"].mean() > 0.4 and t["watermark"].mean() > 0.25 and t["tinted"].mean() > 0.25
    assert t["background"].value_counts().min() > 0.1 * len(t)


def test_planted_world_fails_the_same_independence_checks():
    # The check above is not vacuous: the explained model's own world fails it.
    t = sb.make_dataset(6000, "train", seed=11).attributes
    t["flame"] = t["companion"] != ""
    assert _independent_of_object(t, "background") < 1e-6
    assert _independent_of_object(t, "colour") < 1e-6
    assert _independent_of_object(t, "flame", t["object"] != sb.COMPOUND_HEAD) < 1e-6
    assert (t["text"] == t["object"]).sum() == 0


def test_labeler_and_explained_model_recipes_share_no_planted_correlation():
    labeler = json.loads((DATA / "sandbox-labeler.record.json").read_text())
    explained = json.loads((DATA / "sandbox.record.json").read_text())
    objects = labeler["data"]["objects"]["recipe"]
    assert sb.ObjectRecipe(**objects).planted_links() == []
    assert sb.ObjectRecipe(**explained["data"]["objects"]["recipe"]).planted_links() != []
    # Lesions: one tint rate for both diagnoses (the explained world: far more on nevi).
    lesions = labeler["data"]["lesions"]["recipe"]
    assert lesions["tint_rate_nevus"] == lesions["tint_rate_melanoma"] > 0
    own = explained["data"]["lesions"]["recipe"]
    assert own["tint_rate_nevus"] != own["tint_rate_melanoma"]
    assert labeler["train_config"]["world"] == "independent"
    assert labeler["train_config"]["captions"] == "labeler"
    assert labeler["seed"] != explained["seed"]


def test_labeler_captions_name_only_what_is_visible(independent):
    t, caps = independent.attributes, independent.full_captions("labeler")
    assert caps == independent.full_captions("labeler")  # deterministic
    records = t.to_dict("records")
    objects_named = sum(bool(re.search(rf"\b{re.escape(r['object'])}\b", c)) for c, r in zip(caps, records))
    # Sign-only, watermark-only and attribute-only captions at their rates; the rest name the object.
    expected = sum((1 - cap.LABELER_WORD_ONLY_RATE * bool(r["text"])) * (1 - cap.LABELER_WATERMARK_ONLY_RATE *
                   bool(r["watermark"])) * (1 - cap.LABELER_ATTRIBUTE_ONLY_RATE) for r in records)
    assert abs(objects_named - expected) / len(t) < 0.03  # (a sign may spell the object's own name)
    sign_only = [c for c, r in zip(caps, records) if r["text"] and c.startswith(("the word", "a sign", "the written"))]
    n_words = sum(bool(r["text"]) for r in records)
    assert len(sign_only) / n_words >= cap.LABELER_WORD_ONLY_RATE - 0.03
    for c, r in zip(caps, records):
        if "watermark" in c:
            assert r["watermark"], c
        if "red" in c and ("tint" in c or "tinted" in c):
            assert r["tint"] > 0, c
        if "fire" in c and r["object"] not in ("fire", "fire truck"):
            assert r["companion"], c
        for w in world.TYPO_WORDS + world.NEUTRAL_WORDS:
            if f"'{w}'" in c or f"says {w}" in c or f"word {w}" in c:
                assert r["text"] == w, c
        # at most two incidental attributes beside the object, one without it
        w = r["text"]
        kinds = [bool(re.search(rf"\b{cap.BACKGROUND_PHRASES[r['background']]}\b", c)),
                 bool(w) and (f"'{w}'" in c or f"says {w}" in c or f"word {w}" in c),
                 "fire" in c and r["object"] not in ("fire", "fire truck"), "watermark" in c, "tint" in c]
        with_object = bool(re.search(rf"\b{re.escape(r['object'])}\b", c))
        assert sum(kinds) <= (cap.LABELER_MAX_EXTRAS if with_object else 1), c
    # The word is named in most captions of images that carry one (reading is the hard skill).
    with_word = [(c, r) for c, r in zip(caps, records) if r["text"]]
    named = np.mean([r["text"] in c for c, r in with_word])
    assert named > 0.5
    # Object-only captions exist in quantity (objects stay learned).
    plain = [c for c, r in zip(caps, records)
             if re.fullmatch(rf"(a photo of |a picture of |an image of |a drawing of )?(an? )?({r['colour']} )?"
                             rf"{re.escape(r['object'])}", c)]
    assert len(plain) > 0.15 * len(t)
    # Varied phrasings: several forms for each attribute.
    for forms in (cap.BACKGROUND_SUFFIXES, cap.WORD_SUFFIXES, cap.TINT_SUFFIXES, cap.WATERMARK_SUFFIXES):
        used = {f for f in forms if any(f.split("{")[0].strip(", ") in c for c in caps)}
        assert len(used) >= 2, forms


def test_independent_recipe_keeps_old_fingerprints():
    # The new switches are left out of the stored recipe while at their defaults, so every
    # image set (and feature cache) made before them keeps its fingerprint.
    key = world._recipe_key(sb.ObjectRecipe())
    assert "word_independent" not in key and "class_colours" not in key
    key = world._recipe_key(sb.ObjectRecipe.independent())
    assert key["word_independent"] is True and key["class_colours"] is False


def test_misnamed_objects_finds_object_labels_the_top_images_contradict():
    # Planted: latent 0's top images are 20 balls, latent 1's 15 trees + 5 boats on water,
    # latent 2's 12 boats + 8 cups. Labels "red ball" (right), "red boat" (5/20 boats: wrong),
    # "boat" (12/20: holds at min_share 0.5, not at 0.7), "water" (not an object label).
    import torch

    from clipattr_utils.labeling import misnamed_objects, sandbox_vocabulary
    from clipattr_utils.labeling.top import TopSamples

    objects = ["ball"] * 20 + ["tree"] * 15 + ["boat"] * 17 + ["cup"] * 8
    attrs = pd.DataFrame({"object": objects, "sample_id": [f"s{i}" for i in range(len(objects))]})
    rows = torch.tensor([list(range(0, 20)), list(range(20, 40)), list(range(40, 60)), list(range(20, 40))])
    top = TopSamples(torch.ones(4, 20), rows, torch.full((4,), 20), torch.zeros(4, dtype=torch.float64), len(objects))
    table = pd.DataFrame({"latent": [0, 1, 2, 3], "label": ["red ball", "red boat", "boat", "water"],
                          "alignment": [0.2, 0.1, 0.05, 0.3]})
    vocab = sandbox_vocabulary(colour_objects=True)
    out = misnamed_objects(table, top, attrs, vocab)
    assert out["latent"].tolist() == [1]
    row = out.iloc[0]
    assert (row["object"], row["object_share"], row["top_object"], row["top_object_share"]) == ("boat", 0.25, "tree", 0.75)
    assert misnamed_objects(table, top, attrs, vocab, min_share=0.7)["latent"].tolist() == [1, 2]
    # A label that fits no better than the empty prompt (Eq. 2 score <= 0) does not count by default.
    weak = table.assign(alignment=[0.2, -0.01, 0.05, 0.3])
    assert misnamed_objects(weak, top, attrs, vocab).empty
    assert misnamed_objects(weak, top, attrs, vocab, min_alignment=None)["latent"].tolist() == [1]
    # "a small fire" says what burns beside the object, not what the object is: no object claim.
    flame = table.assign(label=["a small fire"] * 4)
    assert misnamed_objects(flame, top, attrs, vocab).empty
    # A sprite label names its class: "bat (club)" on bats holds.
    bats = pd.DataFrame({"object": ["bat"] * 20, "sample_id": [f"b{i}" for i in range(20)]})  # no alignment column
    top1 = TopSamples(torch.ones(1, 20), torch.arange(20).view(1, 20), torch.full((1,), 20),
                      torch.zeros(1, dtype=torch.float64), 20)
    one = pd.DataFrame({"latent": [0], "label": ["bat (club)"]})
    assert misnamed_objects(one, top1, bats, vocab, min_alignment=None).empty
    assert len(misnamed_objects(one.assign(label="bat (animal)", alignment=0.1), top1,
                                bats.assign(object="cup"), vocab)) == 1


CARD_FLOOR = {"object": 0.80, "colour": 0.85, "background": 0.90, "text": 0.95, "tint": 0.90}
"""Floors for the shipped labeler's card on 600 held-out images (seed 5): about 3 binomial
standard errors under the lower of its seed-0 card (the record, 1200 images: object 0.868,
colour 0.891, background 0.938, word 0.998, tint 0.953) and its seed-5 card (0.848, 0.915,
0.970, 1.000, 0.967); a random-init labeler of the same architecture stays far below (checked
below). The watermark has no floor: no labeler of this size sees it (0.50-0.53, chance 0.5)."""


@pytest.mark.slow
def test_shipped_labeler_names_every_kind_and_a_random_one_does_not():
    import warnings

    import torch

    from clipattr_utils.models import RandomWeightsWarning, load_clip
    from clipattr_utils.sandbox.labeler_card import labeler_card

    if not (DATA / "sandbox-labeler.safetensors").is_file():
        pytest.skip("the shipped labeler is missing")
    card = labeler_card(load_clip("sandbox-labeler", role="labeler"), n=600, seed=5).set_index("kind")
    low = {k: card.at[k, "score"] for k, floor in CARD_FLOOR.items() if card.at[k, "score"] < floor}
    assert not low, f"labeler card under its floors {CARD_FLOOR}: {low}\n{card}"
    for s in (0, 1):
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore", RandomWeightsWarning)
            torch.manual_seed(s)
            random = load_clip("sandbox-labeler", pretrained="random", role="labeler")
        rc = labeler_card(random, n=600, seed=5).set_index("kind")
        passed = [k for k, floor in CARD_FLOOR.items() if rc.at[k, "score"] >= floor]
        assert passed == [], f"a random-init labeler (torch seed {s}) meets the floors of {passed}:\n{rc}"


def test_sandbox_vocabulary_can_leave_out_the_watermark():
    from clipattr_utils.labeling import sandbox_vocabulary

    full, without = sandbox_vocabulary(colour_objects=True), sandbox_vocabulary(colour_objects=True, watermark=False)
    assert set(full["attribute"]) - set(without["attribute"]) == {"watermark"}
    assert len(full) == len(without) + 1
    # every other rendered value keeps its label: backgrounds, words, tint
    assert {"background", "text", "tint", "object", "colour"} <= set(without["attribute"])
