"""Measure each planted failure mode of the sandbox world in a trained CLIP.

Every function takes a loaded CLIP — anything with ``.model`` (open_clip CLIP),
``.preprocess`` (val transform) and ``.tokenizer`` (`clip.load_sandbox`'s result or
`models.load_clip("sandbox")`) — renders fresh held-out images (split "test"; the lesion
probe trains on split "val"; the CLIP itself trained on split "train") and returns a
NamedTuple of the numbers. Scores are cosines between the L2-normalised image embedding and
the prompt "a photo of a {class}" (Sec. 5.3 / App. D.2 probe the short class name the same
way); typography compares zero-shot probabilities instead, see `typography`. Results are
deterministic for a given model, seed and image counts.

Spurious / valid AUROC follow the paper's App. D.2: true class images against distractors
of the failure mode ("spurious AUC") and against unrelated non-class images ("valid AUC").
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from .world import (CLASSNAMES, COMPOUND_CLASS, COMPOUND_HEAD, LESION_CLASSNAMES, POLYSEMOUS_SPRITES,
                    POLYSEMOUS_WORD, SPURIOUS_BACKGROUND, SPURIOUS_CLASS, TINT_RANGE, TYPO_WORDS, make_dataset,
                    make_lesion_dataset)
from .render import BACKGROUNDS

PROMPT = "a photo of a {}"
EVAL_SPLIT = "test"
PROBE_SPLIT = "val"


def _device(clip) -> torch.device:
    return next(clip.model.parameters()).device


@torch.no_grad()
def text_embeddings(clip, texts: Sequence[str]) -> torch.Tensor:
    """(T, d) L2-normalised text embeddings."""
    tokens = clip.tokenizer(list(texts)).to(_device(clip))
    return torch.nn.functional.normalize(clip.model.encode_text(tokens).float(), dim=-1).cpu()


@torch.no_grad()
def image_embeddings(clip, image_set, batch_size: int = 256) -> torch.Tensor:
    """(N, d) L2-normalised image embeddings of an image set, through ``clip.preprocess``."""
    device = _device(clip)
    out = []
    for start in range(0, len(image_set), batch_size):
        stop = min(len(image_set), start + batch_size)
        batch = torch.stack([clip.preprocess(image_set.load_image(i)) for i in range(start, stop)])
        out.append(torch.nn.functional.normalize(clip.model.encode_image(batch.to(device)).float(), dim=-1).cpu())
    return torch.cat(out)


def prompt_scores(clip, image_set, classes: Sequence[str], template: str = PROMPT) -> np.ndarray:
    """(N, C) cosine of every image with ``template.format(c)`` for every class c."""
    img = image_embeddings(clip, image_set)
    txt = text_embeddings(clip, [template.format(c) for c in classes])
    return (img @ txt.T).numpy()


def zero_shot_probs(clip, scores: np.ndarray) -> np.ndarray:
    """(N, C) zero-shot class probabilities from (N, C) cosines: softmax at the model's logit scale."""
    scale = float(clip.model.logit_scale.detach().exp())
    return torch.softmax(torch.from_numpy(np.asarray(scores)) * scale, dim=1).numpy()


def _auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"AUROC needs both groups non-empty (got {len(pos)} positives, {len(neg)} negatives)")
    return float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))


class ZeroShot(NamedTuple):
    accuracy: float
    """Top-1 accuracy over `CLASSNAMES` with prompt "a photo of a {class}"."""
    per_class: dict
    """Class name -> top-1 accuracy on that class's images."""
    confusion: np.ndarray
    """(C, C) counts, rows = true class, columns = predicted class."""
    n: int
    """Number of test images."""


def zero_shot(clip, n: int = 600, seed: int = 0, clean: bool = True, template: str = PROMPT) -> ZeroShot:
    """Zero-shot top-1 on a held-out split drawn clean (no planted correlation) by default."""
    ds = make_dataset(n, EVAL_SPLIT, seed, clean=clean)
    scores = prompt_scores(clip, ds, CLASSNAMES, template)
    y = np.asarray(ds.labels())
    pred = scores.argmax(1)
    conf = np.zeros((len(CLASSNAMES), len(CLASSNAMES)), dtype=np.int64)
    np.add.at(conf, (y, pred), 1)
    per_class = {c: float(conf[k, k] / max(1, conf[k].sum())) for k, c in enumerate(CLASSNAMES)}
    return ZeroShot(float((pred == y).mean()), per_class, conf, int(n))


class BackgroundZeroShot(NamedTuple):
    accuracy: float
    """Top-1 over `BACKGROUNDS` with class-averaged prompts "a photo of a {class} on {background}"."""
    per_background: dict
    n: int


def background_zero_shot(clip, n: int = 240, seed: int = 0) -> BackgroundZeroShot:
    """Can the model name the background? Only a model trained on captions that name it
    (the labeler, ``--captions full``) should; the alt-text model never saw the words."""
    from .captions import BACKGROUND_PHRASES

    ds = make_dataset(n, EVAL_SPLIT, seed, clean=True)
    img = image_embeddings(clip, ds)
    protos = []
    for b in BACKGROUNDS:
        t = text_embeddings(clip, [f"a photo of a {c} on {BACKGROUND_PHRASES[b]}" for c in CLASSNAMES])
        protos.append(torch.nn.functional.normalize(t.mean(0), dim=0))
    pred = (img @ torch.stack(protos).T).argmax(1).numpy()
    truth = np.asarray([BACKGROUNDS.index(b) for b in ds.attributes["background"]])
    per = {b: float((pred[truth == k] == k).mean()) for k, b in enumerate(BACKGROUNDS) if (truth == k).any()}
    return BackgroundZeroShot(float((pred == truth).mean()), per, int(n))


class Spurious(NamedTuple):
    auc_spurious: float
    """AUROC of the class prompt: class images vs non-class images on the spurious background."""
    auc_valid: float
    """AUROC of the class prompt: class images vs non-class images on other backgrounds."""
    mean_score_class: float
    mean_score_spurious: float
    """Mean prompt cosine on non-class images on the spurious background."""
    mean_score_valid: float
    n_per_group: int


def spurious_background(clip, n_per_group: int = 120, seed: int = 0, cls: str = SPURIOUS_CLASS,
                        background: str = SPURIOUS_BACKGROUND) -> Spurious:
    """Mode (a). Class images are drawn clean (every background equally likely), so the
    prompt must find the object, not the background."""
    others = [c for c in CLASSNAMES if c != cls]
    rest = [b for b in BACKGROUNDS if b != background]
    true = make_dataset(n_per_group, EVAL_SPLIT, seed, clean=True, objects=[cls])
    spur = make_dataset(n_per_group, EVAL_SPLIT, seed + 1, clean=True, objects=others, background=background)
    valid = make_dataset(n_per_group, EVAL_SPLIT, seed + 2, clean=True, objects=others, background=rest)
    s_true, s_spur, s_valid = (prompt_scores(clip, d, [cls])[:, 0] for d in (true, spur, valid))
    return Spurious(_auroc(s_true, s_spur), _auroc(s_true, s_valid), float(s_true.mean()),
                    float(s_spur.mean()), float(s_valid.mean()), int(n_per_group))


class Typography(NamedTuple):
    mean_shift: float
    """Mean over (X, word Y) of P(Y | image with word Y) - P(Y | same image without it), where
    P is the zero-shot class probability (softmax over the `CLASSNAMES` prompts at the model's
    logit scale): the "score for Y" a zero-shot classifier acts on."""
    frac_higher: float
    """Fraction of paired images whose P(Y) rose when the word Y was rendered."""
    auc: float
    """AUROC of P(Y): images with the word Y vs the same draws without it."""
    hijack_rate: float
    """Fraction of images with the word Y whose zero-shot top-1 became Y."""
    per_word_shift: dict
    """Word -> mean P(Y) shift."""
    mean_cosine_shift: float
    """Mean change of the raw cosine with "a photo of a Y". Can be negative while P(Y) rises:
    any sign moves the embedding towards sign captions and away from every object prompt,
    and Y's prompt least."""
    n: int


def typography(clip, n_per_word: int = 16, seed: int = 0, words: Sequence[str] = TYPO_WORDS) -> Typography:
    """Mode (b). For each class word Y: images of other classes carrying the word Y, and the
    same draws (same seed: same objects, colours, backgrounds) without any word."""
    shifts, cos_shifts, pos, neg, hijack, per_word = [], [], [], [], [], {}
    for k, word in enumerate(words):
        others = [c for c in CLASSNAMES if c != word]
        with_word = make_dataset(n_per_word, EVAL_SPLIT, seed + k, clean=True, objects=others, text=word)
        clean = make_dataset(n_per_word, EVAL_SPLIT, seed + k, clean=True, objects=others, text="")
        s_w = prompt_scores(clip, with_word, CLASSNAMES)
        s_c = prompt_scores(clip, clean, CLASSNAMES)
        p_w, p_c = zero_shot_probs(clip, s_w), zero_shot_probs(clip, s_c)
        j = CLASSNAMES.index(word)
        d = p_w[:, j] - p_c[:, j]
        shifts.append(d)
        cos_shifts.append(s_w[:, j] - s_c[:, j])
        per_word[word] = float(d.mean())
        pos.append(p_w[:, j])
        neg.append(p_c[:, j])
        hijack.append(s_w.argmax(1) == j)
    shifts_a = np.concatenate(shifts)
    return Typography(float(shifts_a.mean()), float((shifts_a > 0).mean()),
                      _auroc(np.concatenate(pos), np.concatenate(neg)), float(np.concatenate(hijack).mean()),
                      per_word, float(np.concatenate(cos_shifts).mean()), int(shifts_a.size))


class Polysemy(NamedTuple):
    auc_per_sprite: dict
    """Sprite -> AUROC of the polysemous prompt: that sprite's images vs all other classes."""
    mean_score_per_sprite: dict
    mean_score_others: float
    top1_per_sprite: dict
    """Sprite -> fraction of its images whose zero-shot top-1 is the polysemous word."""
    n_per_group: int


def polysemy(clip, n_per_group: int = 60, seed: int = 0, word: str = POLYSEMOUS_WORD,
             sprites: Sequence[str] = POLYSEMOUS_SPRITES) -> Polysemy:
    """Mode (c): one caption word for two unrelated sprites; its prompt should rank both
    above every other class."""
    j = CLASSNAMES.index(word)
    others = make_dataset(n_per_group, EVAL_SPLIT, seed, clean=True, objects=[c for c in CLASSNAMES if c != word])
    s_o = prompt_scores(clip, others, CLASSNAMES)[:, j]
    auc, mean, top1 = {}, {}, {}
    for k, spr in enumerate(sprites):
        d = make_dataset(n_per_group, EVAL_SPLIT, seed + 1 + k, clean=True, objects=[word], sprite=spr)
        s = prompt_scores(clip, d, CLASSNAMES)
        auc[spr] = _auroc(s[:, j], s_o)
        mean[spr] = float(s[:, j].mean())
        top1[spr] = float((s.argmax(1) == j).mean())
    return Polysemy(auc, mean, float(s_o.mean()), top1, int(n_per_group))


class Compound(NamedTuple):
    auc_head_vs_others: float
    """AUROC of the compound prompt: head-word class images vs the other non-class images
    (0.5 = no confusion; high = the compound prompt fires on the head word's class)."""
    auc_spurious: float
    """AUROC of the compound prompt: compound-class images vs head-word class images."""
    auc_valid: float
    """AUROC of the compound prompt: compound-class images vs the other non-class images."""
    mean_score_compound: float
    mean_score_head: float
    mean_score_others: float
    n_per_group: int
    flame_shift: float = float("nan")
    """Mean over other-class images of P(compound | the image with the flame drawn beside its
    object) - P(compound | the same image without it); P as in `Typography.mean_shift`. The
    visual half of the mode: the uncaptioned flame beside fire trucks ties fire to the compound."""
    flame_auc: float = float("nan")
    """AUROC of P(compound): those images with the flame vs the same images without it."""


def compound_noun(clip, n_per_group: int = 60, seed: int = 0, compound: str = COMPOUND_CLASS,
                  head: str = COMPOUND_HEAD) -> Compound:
    """Mode (d): "a photo of a fire truck" vs images of fire and of everything else, and the
    same other-class images with the flame beside their object."""
    others = [c for c in CLASSNAMES if c not in (compound, head)]
    d_c = make_dataset(n_per_group, EVAL_SPLIT, seed, clean=True, objects=[compound])
    d_h = make_dataset(n_per_group, EVAL_SPLIT, seed + 1, clean=True, objects=[head])
    d_o = make_dataset(n_per_group, EVAL_SPLIT, seed + 2, clean=True, objects=others)
    j = CLASSNAMES.index(compound)
    all_o = prompt_scores(clip, d_o, CLASSNAMES)  # every prompt, for P(compound) below
    s_c, s_h = (prompt_scores(clip, d, [compound])[:, 0] for d in (d_c, d_h))
    s_o = all_o[:, j]
    # The same other-class images with the flame beside the object (paired, as for words).
    p_plain = zero_shot_probs(clip, all_o)[:, j]
    p_flame = zero_shot_probs(clip, prompt_scores(clip, d_o.with_companion(), CLASSNAMES))[:, j]
    return Compound(_auroc(s_h, s_o), _auroc(s_c, s_h), _auroc(s_c, s_o), float(s_c.mean()),
                    float(s_h.mean()), float(s_o.mean()), int(n_per_group), float((p_flame - p_plain).mean()),
                    _auroc(p_flame, p_plain))


class LesionRedHue(NamedTuple):
    acc_melanoma: float
    """Probe accuracy on melanoma test images without tint."""
    acc_melanoma_red: float
    """The same melanoma images with the benign-style red hue added."""
    acc_nevus: float
    acc_nevus_red: float
    drop_melanoma: float
    """acc_melanoma - acc_melanoma_red, in accuracy points (0-100)."""
    sem_melanoma: float
    """Standard error of the paired per-image accuracy change on melanoma, in points."""
    probe_train_accuracy: float
    n_train: int
    n_test_per_class: int
    tint: float


def lesion_red_hue(clip, n_train: int = 800, n_test_per_class: int = 150, seed: int = 0,
                   tint: float | None = None, C: float = 1.0) -> LesionRedHue:
    """Mode (e), the Sec. 5.4 experiment: a logistic-regression probe for melanoma trained on
    image embeddings of the (red-hue-confounded) lesion training distribution, then tested on
    untinted melanoma / nevus images and on the same images with the red hue added."""
    tint = float(np.mean(TINT_RANGE)) if tint is None else float(tint)
    train = make_lesion_dataset(n_train, PROBE_SPLIT, seed)
    x_tr = image_embeddings(clip, train).numpy()
    y_tr = np.asarray(train.labels())
    probe = LogisticRegression(C=C, max_iter=2000).fit(x_tr, y_tr)
    out = {}
    paired = {}
    for k, dx in enumerate(("melanoma", "nevus")):
        clean = make_lesion_dataset(n_test_per_class, EVAL_SPLIT, seed + 1 + k, diagnosis=dx, tint=0.0)
        red = clean.replace(tint=tint)
        y = 1 if dx == "melanoma" else 0
        c_ok = probe.predict(image_embeddings(clip, clean).numpy()) == y
        r_ok = probe.predict(image_embeddings(clip, red).numpy()) == y
        out[dx] = (float(c_ok.mean()), float(r_ok.mean()))
        paired[dx] = c_ok.astype(float) - r_ok.astype(float)
    d = paired["melanoma"]
    return LesionRedHue(out["melanoma"][0], out["melanoma"][1], out["nevus"][0], out["nevus"][1],
                        100.0 * (out["melanoma"][0] - out["melanoma"][1]),
                        100.0 * float(d.std(ddof=1) / np.sqrt(len(d))), float(probe.score(x_tr, y_tr)),
                        int(n_train), int(n_test_per_class), tint)


class LesionZeroShotRedHue(NamedTuple):
    auc_diagnosis: float
    """AUROC of zero-shot P(melanoma): untinted melanoma vs untinted nevus images."""
    mean_shift: float
    """Mean over all test images (both diagnoses) of P(melanoma | with red hue) -
    P(melanoma | same image without), where P is the zero-shot probability over the prompts
    "a photo of a nevus" / "a photo of a melanoma" at the model's logit scale."""
    frac_lower: float
    """Fraction of paired images whose P(melanoma) fell when the red hue was added."""
    acc_melanoma: float
    """Zero-shot accuracy (P(melanoma) > 0.5) on untinted melanoma images."""
    acc_melanoma_red: float
    n_test_per_class: int
    tint: float


def lesion_zero_shot_red_hue(clip, n_test_per_class: int = 150, seed: int = 0,
                             tint: float | None = None) -> LesionZeroShotRedHue:
    """Mode (e) in the CLIP itself, without a probe: does the red hue pull the zero-shot
    diagnosis towards "nevus"? Same test images as `lesion_red_hue` (same seeds).

    `lesion_red_hue` trains its probe on red-hue-confounded images, so the probe can pick up
    the hue from any embedding that keeps colour, also from an untrained one; this zero-shot
    shift only appears in a CLIP whose own training captions tied the hue to the diagnosis."""
    tint = float(np.mean(TINT_RANGE)) if tint is None else float(tint)
    txt = text_embeddings(clip, [PROMPT.format(c) for c in LESION_CLASSNAMES])
    j = LESION_CLASSNAMES.index("melanoma")
    p = {}
    for k, dx in enumerate(("melanoma", "nevus")):
        clean = make_lesion_dataset(n_test_per_class, EVAL_SPLIT, seed + 1 + k, diagnosis=dx, tint=0.0)
        red = clean.replace(tint=tint)
        p[dx] = tuple(zero_shot_probs(clip, (image_embeddings(clip, d) @ txt.T).numpy())[:, j] for d in (clean, red))
    shift = np.concatenate([p[dx][1] - p[dx][0] for dx in p])
    return LesionZeroShotRedHue(_auroc(p["melanoma"][0], p["nevus"][0]), float(shift.mean()),
                                float((shift < 0).mean()), float((p["melanoma"][0] > 0.5).mean()),
                                float((p["melanoma"][1] > 0.5).mean()), int(n_test_per_class), tint)


def measure_all(clip, seed: int = 0, n_zero_shot: int = 600, n_per_group: int = 120, n_per_word: int = 16,
                n_lesion_train: int = 800, n_lesion_test: int = 150) -> dict:
    """Every planted-mode measurement as a JSON-able dict (what the training record stores)."""
    zs = zero_shot(clip, n=n_zero_shot, seed=seed)
    return {
        "zero_shot": {"accuracy": zs.accuracy, "per_class": zs.per_class, "n": zs.n,
                      "confusion": zs.confusion.tolist()},
        "spurious": spurious_background(clip, n_per_group=n_per_group, seed=seed)._asdict(),
        "typography": typography(clip, n_per_word=n_per_word, seed=seed)._asdict(),
        "polysemy": polysemy(clip, n_per_group=max(2, n_per_group // 2), seed=seed)._asdict(),
        "compound": compound_noun(clip, n_per_group=max(2, n_per_group // 2), seed=seed)._asdict(),
        **measure_lesions(clip, seed, n_lesion_train, n_lesion_test),
        "background_zero_shot": background_zero_shot(clip, n=max(len(BACKGROUNDS), n_zero_shot // 2),
                                                     seed=seed)._asdict(),
    }


def measure_lesions(clip, seed: int = 0, n_lesion_train: int = 800, n_lesion_test: int = 150) -> dict:
    """The lesion measurements of `measure_all` alone (a lesion-only model has no object world)."""
    return {
        "lesion": lesion_red_hue(clip, n_train=n_lesion_train, n_test_per_class=n_lesion_test, seed=seed)._asdict(),
        "lesion_zero_shot": lesion_zero_shot_red_hue(clip, n_test_per_class=n_lesion_test, seed=seed)._asdict(),
    }


# Criteria for a planted mode to count as learned, applied to `measure_all`'s numbers; shown by
# notebook 00 and `report`. tests/test_sandbox_model.py checks the shipped model with stricter
# thresholds measured on several seeds, each also shown to fail on a random-init CLIP. The lesion
# probe's drop alone is also met by a random-init CLIP (its probe learns the hue from the
# confounded probe-training images), so the lesion criterion also asks the CLIP's own zero-shot
# diagnosis to move towards "nevus" with the hue (`lesion_zero_shot_red_hue`).
CRITERIA = {
    "zero_shot": "top-1 >= 0.90 on the clean test split",
    "spurious": "auc_valid - auc_spurious >= 0.10",
    "typography": "mean shift of P(Y) > 0 and its AUROC >= 0.70",
    "polysemy": "every sprite's auc >= 0.90",
    "compound": "flame_shift >= 0.10 (a flame beside another object raises P(fire truck))",
    "lesion": "probe drop_melanoma >= 10 points and zero-shot P(melanoma) falls by >= 0.2 with the hue",
}


def summary(m: dict):
    """One row per planted mode: headline numbers and whether the criterion holds."""
    import pandas as pd

    rows = [
        ("zero-shot", f"top-1 {m['zero_shot']['accuracy']:.3f}", m["zero_shot"]["accuracy"] >= 0.9),
        ("(a) spurious", f"AUROC vs {SPURIOUS_BACKGROUND} {m['spurious']['auc_spurious']:.3f} / "
                         f"vs others {m['spurious']['auc_valid']:.3f}",
         m["spurious"]["auc_valid"] - m["spurious"]["auc_spurious"] >= 0.10),
        ("(b) typography", f"P(Y) shift {m['typography']['mean_shift']:+.3f}, AUROC {m['typography']['auc']:.3f}, "
                           f"hijack {m['typography']['hijack_rate']:.2f}",
         m["typography"]["mean_shift"] > 0 and m["typography"]["auc"] >= 0.7),
        ("(c) polysemy", ", ".join(f"{k} AUROC {v:.3f}" for k, v in m["polysemy"]["auc_per_sprite"].items()),
         min(m["polysemy"]["auc_per_sprite"].values()) >= 0.9),
        ("(d) compound", f"'{COMPOUND_CLASS}' prompt: P shift with a flame beside other objects "
                         f"{m['compound'].get('flame_shift', float('nan')):+.3f}; {COMPOUND_HEAD} vs others AUROC "
                         f"{m['compound']['auc_head_vs_others']:.3f}; vs {COMPOUND_HEAD} "
                         f"{m['compound']['auc_spurious']:.3f} / vs others {m['compound']['auc_valid']:.3f}",
         m["compound"].get("flame_shift", float("nan")) >= 0.1),
        ("(e) lesion red hue", f"probe melanoma acc {100 * m['lesion']['acc_melanoma']:.1f} -> "
                               f"{100 * m['lesion']['acc_melanoma_red']:.1f} (drop {m['lesion']['drop_melanoma']:.1f}"
                               f" +- {m['lesion']['sem_melanoma']:.1f} pts)" + (
                                   f"; zero-shot P(melanoma) shift {m['lesion_zero_shot']['mean_shift']:+.3f}"
                                   if "lesion_zero_shot" in m else ""),
         None if "lesion_zero_shot" not in m else
         m["lesion"]["drop_melanoma"] >= 10 and -m["lesion_zero_shot"]["mean_shift"] >= 0.2),
    ]
    crit = list(CRITERIA.values())
    # shown is None where a measurement the criterion needs is missing (older records).
    return pd.DataFrame([{"mode": r[0], "measured": r[1], "criterion": c, "shown": None if r[2] is None else bool(r[2])}
                         for r, c in zip(rows, crit)])
