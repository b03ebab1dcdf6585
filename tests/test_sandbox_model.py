"""The shipped sandbox CLIP: loads by name with no network, and every planted mode is in it.

Each planted mode has a measurement ``measure_<mode>(clip)`` (fixed image counts `N`, image
seed `SEED` = 5; the training record measured on seed 0) and a check
``check_<mode>(result) -> list[str]``: empty when the mode is present, else the reasons.
Every check is asserted empty on the shipped model and NON-empty on a random-init sandbox
CLIP for each torch seed in `RANDOM_INIT_SEEDS`, so each test is shown to fail on a model
that has not learned its mode. `test_record_scores_reproduce` only checks that the record's
headline number reproduces; the evidence for the modes is the seeded checks below.

Where the thresholds come from (`python tests/_measure_thresholds.py`, which prints this
table; measured 2026-11-26 on the renderer-version-2 weights). Each value was measured at the
counts in `N` on image seeds 5, 11, 23, 31 and 47 (none used by the record). Margin rule:
threshold = (min over the five seeds) - 3 SE, rounded down to 0.01 (to 1 for points), where SE
is the larger of the seed-to-seed SD (s) and the sampling SE at these counts: binomial (b), two
binomials at p = 1/2 (b2), Hanley-McNeil for an AUROC (h), the paired SEM `sem_melanoma` (p).
One exception: frac_higher is 1.000 on every seed, where the binomial SE is 0, so it keeps 0.95
(one pair in 20 may fall). "random-init" is the range over torch seeds 0 and 1 x the five image
seeds (10 runs): every check fails on all 10, and each criterion marked * fails on all 10 on its
own (the (a) gap and the probe criteria of (e) do not, hence the extra criteria). The thresholds
belong to the shipped weights: retraining the sandbox CLIP means measuring again.

criterion                                       shipped, 5 seeds      threshold          random-init
                                                min-max (SD)          (SE, source)       (10 runs)
zero-shot top-1 (12 classes, 360 images)        0.919-0.936 (0.006)   0.87 (0.014 b) *   0.05-0.13
(a) auc_valid                                   0.973-0.985 (0.005)   0.94 (0.010 h) *   0.43-0.61
(a) auc_valid - auc_spurious                    0.182-0.264 (0.029)   0.09 (0.029 s)     -0.17-+0.52
(a) score: non-boat on water - elsewhere        0.136-0.155 (0.007)   0.11 (0.007 s) *   -0.01-+0.10
(b) mean_shift of zero-shot P(Y)                0.788-0.860 (0.027)   0.70 (0.027 s) *   -0.001-+0.003
(b) frac_higher (64 pairs)                      1.000-1.000 (0)       0.95 (see above) * 0.34-0.66
(b) auc                                         0.993-1.000 (0.003)   0.97 (0.005 h) *   0.48-0.51
(c) min over sprites of auc                     0.991-1.000 (0.003)   0.97 (0.006 h) *   0.38-0.62
(c) min over sprites of top-1 = "bat"           0.917-0.933 (0.007)   0.81 (0.033 b) *   0.00-0.05
(c) min sprite mean score - others              0.317-0.410 (0.034)   0.21 (0.034 s) *   -0.02-+0.01
(d) flame_shift: P(fire truck) with a flame     0.294-0.379 (0.033)   0.19 (0.033 s) *   -0.001-+0.001
    beside another object minus without
(d) flame_auc (same images, paired)             0.801-0.861 (0.023)   0.72 (0.026 h) *   0.46-0.54
(d) auc_valid (fire truck vs others)            0.995-0.999 (0.002)   0.98 (0.004 h) *   0.50-0.63
(d) mean score: fire truck - fire               0.340-0.353 (0.006)   0.32 (0.006 s) *   +0.01-+0.02
(e) probe drop_melanoma (points)                56.0-62.0 (2.3)       41 (5.0 p)         48-67
(e) probe acc_melanoma (untinted)               0.840-0.910 (0.026)   0.74 (0.033 b)     0.76-0.89
(e) probe acc_nevus_red - acc_nevus             0.350-0.460 (0.043)   0.13 (0.071 b2)    0.38-0.49
(e) zero-shot drop of P(melanoma), red hue      0.406-0.425 (0.008)   0.38 (0.008 s) *   -0.05-+0.04
(e) zero-shot auc_diagnosis                     0.805-0.839 (0.014)   0.71 (0.029 h) *   0.26-0.70
labeler background top-1 (8, 240 images)       0.975-0.988 (0.005)   0.95 (0.005 s) *   0.11-0.18
labeler background top-1 - explained's          0.837-0.862 (0.011)   0.76 (0.023 b) *   -0.02-+0.06
labeler object top-1 (240 images)               0.892-0.925 (0.014)   0.83 (0.019 b) *   0.05-0.13
(The labeler rows: re-measured 2026-12-04 on the labeler of the independent world, `--modes labeler`.)

(d) no longer requires the text-side pull of fire images on the "fire truck" prompt
(auc_head_vs_others): since fire trucks stopped wearing fire colours it sits at 0.55-0.59
(renderer version 1: 0.76-0.88); the mode lives in the flame beside the trucks.

The probe half of (e) (`shortcuts.lesion_red_hue`, the paper's Sec. 5.4 measurement) does not
tell a trained CLIP from an untrained one: the probe learns the red hue from its own
confounded training images, and random-init embeddings keep colour, so a random CLIP shows
an even larger drop. What only the trained model shows is the zero-shot half
(`shortcuts.lesion_zero_shot_red_hue`): its own captions tied the hue to "nevus".
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from clipattr_utils import sandbox as sb
from clipattr_utils.sandbox import shortcuts

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data" / "sandbox"
WEIGHTS = DATA / "sandbox.safetensors"
LABELER = DATA / "sandbox-labeler.safetensors"

pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"shipped weights missing: {WEIGHTS.name}")

SEED = 5
RANDOM_INIT_SEEDS = (0, 1)
N = dict(zero_shot=360, spurious=120, typography=16, polysemy=60, compound=120, lesion_train=800, lesion_test=100,
         background=240, labeler_zero_shot=240)


def _load_random(name: str, torch_seed: int):
    from clipattr_utils.models import RandomWeightsWarning, load_clip

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        torch.manual_seed(torch_seed)
        return load_clip(name, pretrained="random")


@pytest.fixture(scope="module")
def clip():
    from clipattr_utils.models import load_clip

    return load_clip("sandbox")


@pytest.fixture(scope="module")
def random_clips():
    return {s: _load_random("sandbox", s) for s in RANDOM_INIT_SEEDS}


@pytest.fixture(scope="module")
def record():
    return json.loads((DATA / "sandbox.record.json").read_text())


# Every criterion: (mode, name, threshold, standard-error source, counts for that source).
# The thresholds belong to the shipped weights; `python tests/_measure_thresholds.py`
# measures them again and prints this table's derivation (see the module docstring).
# SE sources: "b" binomial at n, "b2" difference of two binomials at n each, "h"
# Hanley-McNeil at (n_pos, n_neg), "p" the measurement's own paired SEM, "s" seed SD only.
CRITERIA: list[tuple[str, str, float, str, tuple[int, ...]]] = [
    ("zero_shot", "top-1", 0.87, "b", (N["zero_shot"],)),
    ("spurious", "auc_valid", 0.94, "h", (N["spurious"], N["spurious"])),
    ("spurious", "auc_valid - auc_spurious", 0.09, "s", ()),
    ("spurious", "mean_score_spurious - mean_score_valid", 0.11, "s", ()),
    ("typography", "mean_shift", 0.70, "s", ()),
    ("typography", "frac_higher", 0.95, "b", (4 * N["typography"],)),
    ("typography", "auc", 0.97, "h", (4 * N["typography"], 4 * N["typography"])),
    ("polysemy", "min auc over sprites", 0.97, "h", (N["polysemy"], N["polysemy"])),
    ("polysemy", "min top-1 over sprites", 0.81, "b", (N["polysemy"],)),
    ("polysemy", "min sprite mean score - mean_score_others", 0.21, "s", ()),
    ("compound", "flame_shift", 0.19, "s", ()),
    ("compound", "flame_auc", 0.72, "h", (N["compound"], N["compound"])),
    ("compound", "auc_valid", 0.98, "h", (N["compound"], N["compound"])),
    ("compound", "mean_score_compound - mean_score_head", 0.32, "s", ()),
    ("lesion", "probe drop_melanoma (points)", 41.0, "p", ()),
    ("lesion", "probe acc_melanoma", 0.74, "b", (N["lesion_test"],)),
    ("lesion", "probe acc_nevus_red - acc_nevus", 0.13, "b2", (N["lesion_test"],)),
    ("lesion", "zero-shot drop of P(melanoma) with the red hue", 0.38, "s", ()),
    ("lesion", "zero-shot auc_diagnosis", 0.71, "h", (N["lesion_test"], N["lesion_test"])),
    ("labeler", "background top-1", 0.95, "s", ()),
    ("labeler", "background top-1 - the explained model's", 0.76, "b", (N["background"],)),
    ("labeler", "object top-1", 0.83, "b", (N["labeler_zero_shot"],)),
]
THRESHOLD = {(mode, name): thr for mode, name, thr, _, _ in CRITERIA}


def _unmet(mode: str, values: dict[str, float]) -> list[str]:
    """Reasons for every criterion of `mode` whose value is not >= its threshold (NaN fails)."""
    names = [name for m, name, *_ in CRITERIA if m == mode]
    assert set(values) == set(names), (mode, sorted(values), names)
    return [f"{n} = {values[n]:.3f} < {THRESHOLD[mode, n]}" for n in names if not values[n] >= THRESHOLD[mode, n]]


def _shown_and_controlled(measure, check, clip, random_clips):
    """The check passes on the shipped model and fails on every random-init one."""
    r = measure(clip)
    assert check(r) == [], f"{check.__name__} on the shipped model: {check(r)}\n{r}"
    for s, rc in random_clips.items():
        rr = measure(rc)
        assert check(rr), f"{check.__name__} passes on a random-init CLIP (torch seed {s}): too weak\n{rr}"
    return r


# ---------------------------------------------------------------- measurements and criteria

def measure_zero_shot(clip, seed=SEED):
    return shortcuts.zero_shot(clip, n=N["zero_shot"], seed=seed)


def values_zero_shot(r) -> dict[str, float]:
    return {"top-1": r.accuracy}


def measure_spurious(clip, seed=SEED):
    return shortcuts.spurious_background(clip, n_per_group=N["spurious"], seed=seed)


def values_spurious(r) -> dict[str, float]:
    return {"auc_valid": r.auc_valid, "auc_valid - auc_spurious": r.auc_valid - r.auc_spurious,
            "mean_score_spurious - mean_score_valid": r.mean_score_spurious - r.mean_score_valid}


def measure_typography(clip, seed=SEED):
    return shortcuts.typography(clip, n_per_word=N["typography"], seed=seed)


def values_typography(r) -> dict[str, float]:
    return {"mean_shift": r.mean_shift, "frac_higher": r.frac_higher, "auc": r.auc}


def measure_polysemy(clip, seed=SEED):
    return shortcuts.polysemy(clip, n_per_group=N["polysemy"], seed=seed)


def values_polysemy(r) -> dict[str, float]:
    if set(r.auc_per_sprite) != set(sb.POLYSEMOUS_SPRITES):
        nan = float("nan")  # a missing sprite fails every criterion
        return dict.fromkeys(["min auc over sprites", "min top-1 over sprites",
                              "min sprite mean score - mean_score_others"], nan)
    return {"min auc over sprites": min(r.auc_per_sprite.values()),
            "min top-1 over sprites": min(r.top1_per_sprite.values()),
            "min sprite mean score - mean_score_others": min(r.mean_score_per_sprite.values()) - r.mean_score_others}


def measure_compound(clip, seed=SEED):
    return shortcuts.compound_noun(clip, n_per_group=N["compound"], seed=seed)


def values_compound(r) -> dict[str, float]:
    # The flame drawn beside another object raises P(fire truck); true fire trucks still rank
    # first (the sprite is unambiguous), so auc_spurious can sit at 1.0. The text-side half
    # (fire images above other non-class images, auc_head_vs_others) is weak since fire
    # trucks stopped wearing fire colours (renderer version 2) and is not required.
    return {"flame_shift": r.flame_shift, "flame_auc": r.flame_auc, "auc_valid": r.auc_valid,
            "mean_score_compound - mean_score_head": r.mean_score_compound - r.mean_score_head}


def measure_lesion(clip, seed=SEED):
    return (shortcuts.lesion_red_hue(clip, n_train=N["lesion_train"], n_test_per_class=N["lesion_test"], seed=seed),
            shortcuts.lesion_zero_shot_red_hue(clip, n_test_per_class=N["lesion_test"], seed=seed))


def values_lesion(r) -> dict[str, float]:
    probe, zs = r
    return {"probe drop_melanoma (points)": probe.drop_melanoma, "probe acc_melanoma": probe.acc_melanoma,
            "probe acc_nevus_red - acc_nevus": probe.acc_nevus_red - probe.acc_nevus,
            "zero-shot drop of P(melanoma) with the red hue": -zs.mean_shift,
            "zero-shot auc_diagnosis": zs.auc_diagnosis}


def measure_labeler(labeler, clip, seed=SEED):
    return {"background_top1": shortcuts.background_zero_shot(labeler, n=N["background"], seed=seed).accuracy,
            "explained_background_top1": shortcuts.background_zero_shot(clip, n=N["background"], seed=seed).accuracy,
            "object_top1": shortcuts.zero_shot(labeler, n=N["labeler_zero_shot"], seed=seed).accuracy}


def values_labeler(r) -> dict[str, float]:
    return {"background top-1": r["background_top1"],
            "background top-1 - the explained model's": r["background_top1"] - r["explained_background_top1"],
            "object top-1": r["object_top1"]}


def _check(mode: str, values):
    """check_<mode>(result) -> the unmet criteria of `mode` (empty when the mode is present)."""
    def check(r) -> list[str]:
        return _unmet(mode, values(r))
    check.__name__ = f"check_{mode}"
    return check


check_zero_shot = _check("zero_shot", values_zero_shot)
check_spurious = _check("spurious", values_spurious)
check_typography = _check("typography", values_typography)
check_polysemy = _check("polysemy", values_polysemy)
check_compound = _check("compound", values_compound)
check_lesion = _check("lesion", values_lesion)
check_labeler = _check("labeler", values_labeler)


# ---------------------------------------------------------------- tests

def test_shipped_files(record):
    cfg = json.loads((DATA / "sandbox.json").read_text())
    assert cfg["text_cfg"]["vocab_size"] == 49408
    assert cfg["vision_cfg"].get("pool_type", "tok") == "tok"
    assert cfg["vision_cfg"]["image_size"] == 64
    # Issue 3: the shipped weights <= 20 MB each. Three models (sandbox, labeler, derm: 7.2 MiB
    # each, most of it the 49,408-token text embedding) stay under 25 MiB together.
    sizes = {p.name: p.stat().st_size for p in DATA.glob("sandbox*.safetensors")}
    assert WEIGHTS.name in sizes and all(n <= 20 * 1024 * 1024 for n in sizes.values()), sizes
    assert sum(sizes.values()) <= 25 * 1024 * 1024, sizes
    assert record["command"].startswith("python -m clipattr_utils.sandbox.train")
    assert record["seed"] == record["train_config"]["seed"]
    assert record["data"]["objects"]["split"] == "train"
    # The record's data fingerprint is the one the current renderer produces for its recipe.
    d = record["data"]["objects"]
    again = sb.make_dataset(d["n"], "train", d["seed"], size=d["size"])
    assert again.fingerprint() == record["data"]["objects_fingerprint"]


def test_loads_like_load_clip(clip):
    from clipattr_utils.sandbox.clip import load_sandbox

    mine = load_sandbox()
    a = mine.model.state_dict()
    b = clip.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    img = sb.make_dataset(1, "test").load_image(0)
    assert torch.equal(mine.preprocess(img), clip.preprocess(img))
    assert torch.equal(mine.tokenizer(["a photo of a fish"]), clip.tokenizer(["a photo of a fish"]))


def test_record_scores_reproduce(clip, record):
    """Reproducibility only: the record's headline number (written by this same measuring code
    at seed 0) is what the shipped file gives now. It is no evidence that a mode is learned."""
    zs = shortcuts.zero_shot(clip, n=record["scores"]["zero_shot"]["n"], seed=0)
    assert zs.accuracy == pytest.approx(record["scores"]["zero_shot"]["accuracy"], abs=1e-9)


def test_zero_shot_on_clean_test_split(clip, random_clips):
    r = _shown_and_controlled(measure_zero_shot, check_zero_shot, clip, random_clips)
    assert r.confusion.sum() == N["zero_shot"]


def test_a_spurious_background(clip, random_clips):
    _shown_and_controlled(measure_spurious, check_spurious, clip, random_clips)


def test_b_typography(clip, random_clips):
    _shown_and_controlled(measure_typography, check_typography, clip, random_clips)


def test_c_polysemy(clip, random_clips):
    _shown_and_controlled(measure_polysemy, check_polysemy, clip, random_clips)


def test_d_compound_noun(clip, random_clips):
    _shown_and_controlled(measure_compound, check_compound, clip, random_clips)


def test_e_lesion_red_hue(clip, random_clips):
    _shown_and_controlled(measure_lesion, check_lesion, clip, random_clips)


def test_markdown_report_quotes_the_record(record):
    from clipattr_utils.sandbox import report

    md = report.markdown()
    assert f"top-1 {record['scores']['zero_shot']['accuracy']:.3f}" in md
    assert record["command"] in md
    assert "P(water \\| boat) = " in md  # escaped: the rates sit in a markdown table


# ---------------------------------------------------------------- the labeler

@pytest.mark.skipif(not LABELER.is_file(), reason=f"shipped labeler missing: {LABELER.name}")
def test_labeler_is_another_model_that_names_hidden_concepts(clip):
    from clipattr_utils.models import load_clip

    labeler = load_clip("sandbox-labeler")
    rec = json.loads((DATA / "sandbox-labeler.record.json").read_text())
    own = json.loads((DATA / "sandbox.record.json").read_text())
    assert rec["train_config"]["captions"] == "labeler" and rec["seed"] != own["seed"]
    assert rec["train_config"]["world"] == "independent"  # no planted link: tests/test_labeler_world.py
    assert labeler.identity != clip.identity
    # It names backgrounds, which the explained model's captions never mention, and still
    # knows the objects; a random-init labeler does neither.
    r = measure_labeler(labeler, clip)
    assert check_labeler(r) == [], (check_labeler(r), r)
    for s in RANDOM_INIT_SEEDS:
        rr = measure_labeler(_load_random("sandbox-labeler", s), clip)
        assert check_labeler(rr), f"check_labeler passes on a random-init labeler (torch seed {s}): too weak\n{rr}"
