"""The melanoma case's dermatology CLIP (`sandbox-derm`, lesions only): it encodes the red hue
(a probe trained on the world's confounded lesions reads it) without its own diagnosis taking
the hue for "nevus" -- unlike the object-world `sandbox` CLIP, whose training captions tied the
two together. Measured on image seed 5 (the record's numbers are seed 0)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipattr_utils.sandbox import shortcuts

DATA = Path(__file__).resolve().parent.parent / "data" / "sandbox"
DERM = DATA / "sandbox-derm.safetensors"

pytestmark = pytest.mark.skipif(not DERM.is_file(), reason=f"shipped weights missing: {DERM.name}")


RANDOM_INIT_SEEDS = (0, 1)
HUE_PROMPTS = ("a dermoscopy image of a lesion, with a red tint", "a dermoscopy image of a lesion")


def _load_random(torch_seed: int):
    import warnings

    import torch

    from clipattr_utils.models import RandomWeightsWarning, load_clip

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        torch.manual_seed(torch_seed)
        return load_clip("sandbox-derm", pretrained="random")


def hue_named(clip, n: int = 100, seed: int = 5) -> float:
    """AUROC of "... with a red tint" minus the same prompt without it, the same lesions drawn
    with and without the hue: does the CLIP's text side know the hue its captions named?"""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from clipattr_utils.sandbox import make_lesion_dataset

    text = shortcuts.text_embeddings(clip, list(HUE_PROMPTS))
    score = [(shortcuts.image_embeddings(clip, make_lesion_dataset(n, "test", seed, tint=t)) @ text.T).numpy()
             for t in (0.35, 0.0)]
    diff = [s[:, 0] - s[:, 1] for s in score]
    return float(roc_auc_score(np.r_[np.ones(n), np.zeros(n)], np.r_[diff[0], diff[1]]))


def measure(clip) -> dict:
    r = shortcuts.measure_lesions(clip, seed=5, n_lesion_train=800, n_lesion_test=100)
    return {"auc_diagnosis": r["lesion_zero_shot"]["auc_diagnosis"], "mean_shift": r["lesion_zero_shot"]["mean_shift"],
            "drop_melanoma": r["lesion"]["drop_melanoma"], "hue_named": hue_named(clip)}


def unmet_hue(r) -> list[str]:
    """It learned the diagnosis from its captions and names the hue (seed 5: 0.81 and 1.00; random-init
    0.29-0.61 and 0.24-0.26); a probe on confounded lesions reads the hue (85 points; random-init 50-51:
    on its own this part does not tell a trained CLIP from an untrained one)."""
    out = []
    if not r["auc_diagnosis"] >= 0.7:
        out.append(f"auc_diagnosis {r['auc_diagnosis']:.3f} < 0.7")
    if not r["hue_named"] >= 0.9:
        out.append(f"hue_named {r['hue_named']:.3f} < 0.9")
    if not r["drop_melanoma"] >= 40:
        out.append(f"drop_melanoma {r['drop_melanoma']:.1f} < 40")
    return out


def unmet_not_nevus(r) -> list[str]:
    """Its own diagnosis, which it learned (AUROC >= 0.7), does not move towards "nevus" with the hue
    (seed 5: +0.13; a random-init CLIP's -0.04..+0.04 says nothing, as it diagnoses nothing)."""
    out = []
    if not r["auc_diagnosis"] >= 0.7:
        out.append(f"auc_diagnosis {r['auc_diagnosis']:.3f} < 0.7")
    if not r["mean_shift"] >= -0.15:
        out.append(f"mean_shift {r['mean_shift']:+.3f} < -0.15")
    return out


@pytest.fixture(scope="module")
def measured():
    from clipattr_utils.models import load_clip

    return {"sandbox-derm": measure(load_clip("sandbox-derm")),
            "sandbox": shortcuts.measure_lesions(load_clip("sandbox"), seed=5, n_lesion_train=800, n_lesion_test=100),
            "random": [measure(_load_random(s)) for s in RANDOM_INIT_SEEDS]}


def test_the_dermatology_clip_encodes_the_hue(measured):
    derm = measured["sandbox-derm"]
    assert unmet_hue(derm) == [], derm
    for s, r in zip(RANDOM_INIT_SEEDS, measured["random"]):
        assert unmet_hue(r), f"a random-init sandbox-derm (torch seed {s}) passes the hue check: {r}"


def test_its_own_diagnosis_does_not_take_the_hue_for_nevus(measured):
    derm, obj = measured["sandbox-derm"], measured["sandbox"]["lesion_zero_shot"]
    assert unmet_not_nevus(derm) == [], derm
    assert obj["mean_shift"] <= -0.3  # the object-world CLIP does (its planted mode (e))
    for s, r in zip(RANDOM_INIT_SEEDS, measured["random"]):
        assert unmet_not_nevus(r), f"a random-init sandbox-derm (torch seed {s}) passes: {r}"


def test_record_says_how_it_was_trained():
    rec = json.loads((DATA / "sandbox-derm.record.json").read_text())
    assert rec["data"]["objects"] is None
    recipe = rec["data"]["lesions"]["recipe"]
    assert recipe["tint_rate_nevus"] == recipe["tint_rate_melanoma"] > 0
    assert "--lesion-tint-rate" in rec["command"] and rec["train_config"]["captions"] == "derm"


def test_markdown_report_has_a_lesion_only_section():
    from clipattr_utils.sandbox import report

    rec = json.loads((DATA / "sandbox-derm.record.json").read_text())
    md = report.markdown()
    section = md[md.index("### `sandbox-derm`"):]
    assert "0 object images + 12000 lesion images, derm captions" in section
    assert f"drops {rec['scores']['lesion']['drop_melanoma']:.1f}" in section
    assert f"moves {rec['scores']['lesion_zero_shot']['mean_shift']:+.3f}" in section
