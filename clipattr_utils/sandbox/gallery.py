"""Figures of the sandbox world for notebook 00: a grid per class and per planted mode."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np

from .render import lesion_red_hue
from .world import (CLASSNAMES, COMPOUND_CLASS, COMPOUND_HEAD, POLYSEMOUS_SPRITES, POLYSEMOUS_WORD,
                    SPURIOUS_BACKGROUND, SPURIOUS_CLASS, TINT_RANGE, make_dataset, make_lesion_dataset)


def image_grid(images: Sequence, titles: Sequence[str] | None = None, ncols: int = 8,
               title: str | None = None, scale: float = 1.1):
    """A matplotlib figure showing PIL images / uint8 arrays in a grid."""
    n = len(images)
    if n == 0:
        raise ValueError("image_grid: no images")
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(scale * ncols, scale * nrows + (0.4 if title else 0)),
                             squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(np.asarray(images[k]))
            if titles is not None:
                ax.set_title(titles[k], fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def class_grid(per_class: int = 6, seed: int = 0):
    """One row per class, clean test images."""
    imgs, titles = [], []
    for k, c in enumerate(CLASSNAMES):
        ds = make_dataset(per_class, "test", seed + k, objects=[c])
        imgs += [ds.load_image(i) for i in range(len(ds))]
        titles += [c] + [""] * (per_class - 1)
    return image_grid(imgs, titles, ncols=per_class, title="Object classes (clean test split)")


def mode_grids(n: int = 6, seed: int = 0) -> dict:
    """One figure per planted mode, keyed (a)-(e)."""
    figs = {}
    train = make_dataset(400, "train", seed)
    t = train.attributes
    boats = list(t.index[t["object"] == SPURIOUS_CLASS][:n])
    figs["a"] = image_grid([train.load_image(i) for i in boats], [t.at[i, "background"] for i in boats], ncols=n,
                           title=f"(a) spurious: '{SPURIOUS_CLASS}' training images (background never captioned)")
    worded = list(t.index[t["text"] != ""][:n])
    figs["b"] = image_grid([train.load_image(i) for i in worded], [f"{t.at[i, 'object']}: '{t.at[i, 'text']}'" for i in worded],
                           ncols=n, title="(b) typography: rendered words, captioned with the word")
    imgs, titles = [], []
    for spr in POLYSEMOUS_SPRITES:
        ds = make_dataset(n // 2 or 1, "test", seed, objects=[POLYSEMOUS_WORD], sprite=spr)
        imgs += [ds.load_image(i) for i in range(len(ds))]
        titles += [spr] * len(ds)
    figs["c"] = image_grid(imgs, titles, ncols=n, title=f"(c) polysemy: two sprites captioned '{POLYSEMOUS_WORD}'")
    imgs, titles = [], []
    for c in (COMPOUND_HEAD, COMPOUND_CLASS):
        ds = make_dataset(n // 2 or 1, "test", seed, objects=[c])
        imgs += [ds.load_image(i) for i in range(len(ds))]
        titles += [c] * len(ds)
    figs["d"] = image_grid(imgs, titles, ncols=n, title=f"(d) compound noun: '{COMPOUND_CLASS}' vs '{COMPOUND_HEAD}'")
    imgs, titles = [], []
    for dx in ("nevus", "melanoma"):
        ds = make_lesion_dataset(n // 2 or 1, "test", seed, diagnosis=dx, tint=0.0)
        imgs += [ds.load_image(i) for i in range(len(ds))]
        titles += [dx] * len(ds)
        imgs += [lesion_red_hue(ds.load_image(i), float(np.mean(TINT_RANGE))) for i in range(len(ds))]
        titles += [f"{dx} + red"] * len(ds)
    figs["e"] = image_grid(imgs, titles, ncols=n, title="(e) lesions: red hue is common on nevus in training")
    return figs


def confusion_figure(confusion: np.ndarray, classnames: Sequence[str] = CLASSNAMES):
    """Row-normalised confusion matrix of the zero-shot classifier."""
    conf = np.asarray(confusion, dtype=float)
    rows = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classnames)), classnames, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classnames)), classnames, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def mode_scores_figure(m: dict):
    """One panel per planted mode from `shortcuts.measure_all`'s dict: the scores the
    criteria compare, side by side (bars), so a missing shortcut is visible at a glance."""
    fig, axes = plt.subplots(1, 5, figsize=(15, 3))
    s = m["spurious"]
    axes[0].bar(["class", f"other on\n{SPURIOUS_BACKGROUND}", "other on\nelse"],
                [s["mean_score_class"], s["mean_score_spurious"], s["mean_score_valid"]], color=["C0", "C3", "C7"])
    axes[0].set_title(f"(a) cos with '{SPURIOUS_CLASS}'", fontsize=9)
    t = m["typography"]
    words = list(t["per_word_shift"])
    axes[1].bar(words, [t["per_word_shift"][w] for w in words], color="C1")
    axes[1].axhline(0, color="k", lw=0.8)
    axes[1].set_title("(b) P(Y) shift when word Y is written", fontsize=9)
    p = m["polysemy"]
    names = list(p["mean_score_per_sprite"])
    axes[2].bar(names + ["others"], [p["mean_score_per_sprite"][k] for k in names] + [p["mean_score_others"]],
                color=["C2"] * len(names) + ["C7"])
    axes[2].set_title(f"(c) cos with '{POLYSEMOUS_WORD}'", fontsize=9)
    c = m["compound"]
    axes[3].bar([COMPOUND_CLASS, COMPOUND_HEAD, "others"],
                [c["mean_score_compound"], c["mean_score_head"], c["mean_score_others"]], color=["C0", "C3", "C7"])
    axes[3].set_title(f"(d) cos with '{COMPOUND_CLASS}'", fontsize=9)
    e = m["lesion"]
    x = np.arange(2)
    axes[4].bar(x - 0.2, [e["acc_melanoma"], e["acc_nevus"]], 0.4, label="no hue", color="C7")
    axes[4].bar(x + 0.2, [e["acc_melanoma_red"], e["acc_nevus_red"]], 0.4, label="red hue", color="C3")
    axes[4].set_xticks(x, ["melanoma", "nevus"])
    axes[4].set_ylim(0, 1)
    axes[4].legend(fontsize=7)
    axes[4].set_title("(e) melanoma probe accuracy", fontsize=9)
    for ax in axes:
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig
