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


@pytest.fixture(scope="module")
def measured():
    from clipattr_utils.models import load_clip

    return {name: shortcuts.measure_lesions(load_clip(name), seed=5, n_lesion_train=800, n_lesion_test=100)
            for name in ("sandbox-derm", "sandbox")}


def test_the_dermatology_clip_encodes_the_hue(measured):
    derm = measured["sandbox-derm"]
    assert derm["lesion_zero_shot"]["auc_diagnosis"] >= 0.7  # it learned the diagnosis from its captions
    assert derm["lesion"]["drop_melanoma"] >= 40  # a probe on confounded lesions picks the hue up


def test_its_own_diagnosis_does_not_take_the_hue_for_nevus(measured):
    derm, obj = measured["sandbox-derm"]["lesion_zero_shot"], measured["sandbox"]["lesion_zero_shot"]
    assert derm["mean_shift"] >= -0.15
    assert obj["mean_shift"] <= -0.3  # the object-world CLIP does (its planted mode (e))


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
