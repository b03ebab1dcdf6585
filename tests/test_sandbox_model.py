"""The shipped sandbox CLIP: loads by name with no network, and every planted mode is in it.

Thresholds are the issue's "Done when" list; image counts are small (a few hundred images
through a 64x64 ViT) so the file stays fast. Numbers on larger sets are in the training
record and README.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clipattr_utils import sandbox as sb
from clipattr_utils.sandbox import shortcuts

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data" / "sandbox"
WEIGHTS = DATA / "sandbox.safetensors"

pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"shipped weights missing: {WEIGHTS.name}")


@pytest.fixture(scope="module")
def clip():
    from clipattr_utils.models import load_clip

    return load_clip("sandbox")


@pytest.fixture(scope="module")
def record():
    return json.loads((DATA / "sandbox.record.json").read_text())


def test_shipped_files(record):
    cfg = json.loads((DATA / "sandbox.json").read_text())
    assert cfg["text_cfg"]["vocab_size"] == 49408
    assert cfg["vision_cfg"].get("pool_type", "tok") == "tok"
    assert cfg["vision_cfg"]["image_size"] == 64
    total = sum(p.stat().st_size for p in DATA.glob("sandbox*.safetensors"))
    assert WEIGHTS.stat().st_size <= 20 * 1024 * 1024 and total <= 20 * 1024 * 1024
    assert record["command"].startswith("python -m clipattr_utils.sandbox.train")
    assert record["seed"] == record["train_config"]["seed"]
    assert record["data"]["objects"]["split"] == "train"
    # The record's data fingerprint is the one the current renderer produces for its recipe.
    d = record["data"]["objects"]
    again = sb.make_dataset(d["n"], "train", d["seed"], size=d["size"])
    assert again.fingerprint() == record["data"]["objects_fingerprint"]


def test_loads_like_load_clip(clip):
    from clipattr_utils.sandbox.clip import load_sandbox
    import torch

    mine = load_sandbox()
    a = mine.model.state_dict()
    b = clip.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    img = sb.make_dataset(1, "test").load_image(0)
    assert torch.equal(mine.preprocess(img), clip.preprocess(img))
    assert torch.equal(mine.tokenizer(["a photo of a fish"]), clip.tokenizer(["a photo of a fish"]))


def test_record_scores_reproduce(clip, record):
    # The record's headline number is what the shipped file gives now (deterministic eval).
    zs = shortcuts.zero_shot(clip, n=record["scores"]["zero_shot"]["n"], seed=0)
    assert zs.accuracy == pytest.approx(record["scores"]["zero_shot"]["accuracy"], abs=1e-9)


def test_zero_shot_on_clean_test_split(clip):
    zs = shortcuts.zero_shot(clip, n=360, seed=5)
    assert zs.accuracy >= 0.90, zs.per_class
    assert zs.confusion.sum() == 360


def test_a_spurious_background(clip):
    r = shortcuts.spurious_background(clip, n_per_group=80, seed=5)
    assert r.auc_valid - r.auc_spurious >= 0.10, r
    assert r.mean_score_spurious > r.mean_score_valid


def test_b_typography(clip):
    r = shortcuts.typography(clip, n_per_word=12, seed=5)
    assert r.mean_shift > 0 and r.frac_higher > 0.6 and r.auc >= 0.70, r


def test_c_polysemy(clip):
    r = shortcuts.polysemy(clip, n_per_group=40, seed=5)
    assert set(r.auc_per_sprite) == set(sb.POLYSEMOUS_SPRITES)
    assert min(r.auc_per_sprite.values()) >= 0.90, r
    assert min(r.mean_score_per_sprite.values()) > r.mean_score_others


def test_d_compound_noun(clip):
    r = shortcuts.compound_noun(clip, n_per_group=40, seed=5)
    # The prompt ranks the head word's images above every other non-class image; true fire
    # trucks still rank first (the sprite is unambiguous), so auc_spurious can sit at 1.0.
    assert r.auc_head_vs_others >= 0.70, r
    assert r.mean_score_head > r.mean_score_others
    assert r.mean_score_compound > r.mean_score_head


def test_e_lesion_red_hue(clip):
    r = shortcuts.lesion_red_hue(clip, n_train=400, n_test_per_class=60, seed=5)
    assert r.drop_melanoma >= 10.0, r
    assert r.acc_nevus_red >= r.acc_nevus  # the red hue pushes towards the benign class
    assert r.acc_melanoma >= 0.6  # the probe does learn the task on untinted images


def test_measurements_depend_on_the_model(clip):
    # Guard against a measurement that cannot fail: a randomly initialised sandbox CLIP
    # must not show the learned behaviour.
    from clipattr_utils.models import load_clip
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rand = load_clip("sandbox", pretrained="random")
    assert shortcuts.zero_shot(rand, n=120, seed=5).accuracy < 0.4
    assert min(shortcuts.polysemy(rand, n_per_group=20, seed=5).auc_per_sprite.values()) < 0.9


def test_markdown_report_quotes_the_record(record):
    from clipattr_utils.sandbox import report

    md = report.markdown()
    assert f"top-1 {record['scores']['zero_shot']['accuracy']:.3f}" in md
    assert record["command"] in md
    assert "P(water \\| boat) = " in md  # escaped: the rates sit in a markdown table


# ---------------------------------------------------------------- the labeler

LABELER = DATA / "sandbox-labeler.safetensors"


@pytest.mark.skipif(not LABELER.is_file(), reason=f"shipped labeler missing: {LABELER.name}")
def test_labeler_is_another_model_that_names_hidden_concepts(clip):
    from clipattr_utils.models import load_clip

    labeler = load_clip("sandbox-labeler")
    rec = json.loads((DATA / "sandbox-labeler.record.json").read_text())
    own = json.loads((DATA / "sandbox.record.json").read_text())
    assert rec["train_config"]["captions"] == "full" and rec["seed"] != own["seed"]
    assert labeler.identity != clip.identity
    # It names backgrounds, which the explained model's captions never mention ...
    lab_bg = shortcuts.background_zero_shot(labeler, n=160, seed=5).accuracy
    own_bg = shortcuts.background_zero_shot(clip, n=160, seed=5).accuracy
    assert lab_bg >= 0.7 and lab_bg > own_bg + 0.3, (lab_bg, own_bg)
    # ... and still knows the objects.
    assert shortcuts.zero_shot(labeler, n=240, seed=5).accuracy >= 0.7
