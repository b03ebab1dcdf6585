"""Figures of the melanoma case: Fig. 6a (relevance of the top latents per class), Fig. 6b
(accuracy per red-hue condition, standard vs robust probe) and Fig. 15 (the alpha sweep)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

CONDITION_LABELS = {"none": "none", "more_red": "more red (δ = -1)", "less_red": "less red (δ = 0.2)",
                    "tint": "planted tint"}
PROBE_LABELS = {"standard": "standard", "robust": "robust", "robust_val": "robust (latent, α on validation)"}


def _ordered(conditions) -> list[str]:
    seen = list(dict.fromkeys(conditions))
    return [c for c in CONDITION_LABELS if c in seen] + [c for c in seen if c not in CONDITION_LABELS]


def _class_panel(ax, cls: str, grid_axis: str = "both") -> None:
    ax.set_title(f"{cls} samples")
    ax.set_ylim(0, 100)
    ax.grid(axis=grid_axis, alpha=0.3)


def _finish(fig, axes, title: str | None):
    """The accuracy figures' shared frame: y label, legend, title, layout."""
    axes[0, 0].set_ylabel("accuracy (%)")
    axes[0, -1].legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_accuracy(summary: pd.DataFrame, probes: Sequence[str] = ("standard", "robust"),
                  conditions: Sequence[str] | None = None, title: str | None = None):
    """Fig. 6b: one panel per class, bars per condition and probe, error bars = SEM.

    ``summary``: records ``probe, condition, class, mean, sem`` (``CaseResult.accuracy_summary``).
    """
    import matplotlib.pyplot as plt

    if conditions is None:
        conditions = _ordered(summary["condition"])
    classes = [c for c in ("melanoma", "benign") if c in set(summary["class"])]
    fig, axes = plt.subplots(1, len(classes), figsize=(1.4 * len(conditions) * len(classes) + 1, 3.4), sharey=True,
                             squeeze=False)
    width = 0.8 / len(probes)
    for ax, cls in zip(axes[0], classes):
        for k, probe in enumerate(probes):
            rows = summary[(summary["class"] == cls) & (summary["probe"] == probe)].set_index("condition")
            means = [rows["mean"].get(c, np.nan) for c in conditions]
            sems = [rows["sem"].get(c, np.nan) for c in conditions]
            x = np.arange(len(conditions)) + (k - (len(probes) - 1) / 2) * width
            ax.bar(x, means, width, yerr=sems, capsize=3, label=PROBE_LABELS.get(probe, probe))
        ax.set_xticks(np.arange(len(conditions)), [CONDITION_LABELS.get(c, c) for c in conditions], fontsize=8)
        _class_panel(ax, cls, grid_axis="y")
    return _finish(fig, axes, title)


def plot_alpha_sweep(sweep: pd.DataFrame, standard: pd.DataFrame | None = None,
                     conditions: Sequence[str] | None = None, title: str | None = None):
    """Fig. 15: accuracy per class and condition against alpha (log-spaced axis; alpha = 0
    drawn at the left edge), mean ± SEM over seeds; ``standard`` (the standard probe's
    summary) as dashed horizontal lines."""
    import matplotlib.pyplot as plt

    if conditions is None:
        conditions = _ordered(sweep["condition"])
    classes = [c for c in ("melanoma", "benign") if c in set(sweep["class"])]
    alphas = np.sort(sweep["alpha"].unique())
    pos = {a: i for i, a in enumerate(alphas)}
    fig, axes = plt.subplots(1, len(classes), figsize=(4.4 * len(classes), 3.4), sharey=True, squeeze=False)
    colours = dict(zip(conditions, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, cls in zip(axes[0], classes):
        for cond in conditions:
            rows = sweep[(sweep["class"] == cls) & (sweep["condition"] == cond)].sort_values("alpha")
            if rows.empty:
                continue
            x = [pos[a] for a in rows["alpha"]]
            ax.errorbar(x, rows["mean"], yerr=rows["sem"], marker="o", ms=3, capsize=2, color=colours[cond],
                        label=CONDITION_LABELS.get(cond, cond))
            if standard is not None:
                s = standard[(standard["class"] == cls) & (standard["condition"] == cond) &
                             (standard["probe"] == "standard")]
                if not s.empty:
                    ax.axhline(float(s["mean"].iloc[0]), ls="--", lw=0.8, color=colours[cond])
        ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        ax.set_xlabel("α (Eq. 34)")
        _class_panel(ax, cls)
    return _finish(fig, axes, title)


def plot_relevance(tables: dict[str, pd.DataFrame], red_latent: int | None = None, n: int = 8):
    """Fig. 6a: per class, the share of the output carried by the ``n`` most relevant
    latents of the first probe in ``tables`` (e.g. standard), beside the same latents'
    shares for the other probes; the red latent is marked with a star."""
    import matplotlib.pyplot as plt

    names = list(tables)
    first = tables[names[0]]
    classes = [c for c in ("benign", "melanoma") if c in set(first["class"])]
    fig, axes = plt.subplots(1, len(classes), figsize=(4.8 * len(classes), 3.4), squeeze=False)
    width = 0.8 / len(names)
    for ax, cls in zip(axes[0], classes):
        top = first[first["class"] == cls].sort_values("rank").head(n)["latent"].tolist()
        for k, name in enumerate(names):
            t = tables[name]
            t = t[t["class"] == cls].set_index("latent")["share"]
            vals = [100.0 * float(t.get(j, 0.0)) for j in top]
            ax.bar(np.arange(len(top)) + (k - (len(names) - 1) / 2) * width, vals, width,
                   label=PROBE_LABELS.get(name, name))
        ax.set_xticks(np.arange(len(top)), [f"{j}{'*' if j == red_latent else ''}" for j in top], fontsize=8)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xlabel("latent (* = red latent)")
        ax.set_title(f"most relevant for {cls}")
    axes[0, 0].set_ylabel("share of output (%)")
    axes[0, -1].legend(fontsize=8)
    fig.tight_layout()
    return fig


__all__ = ["plot_accuracy", "plot_alpha_sweep", "plot_relevance", "CONDITION_LABELS", "PROBE_LABELS"]


def red_hue_examples(pool, labels: Sequence[int], *, tint: Sequence[float] | None = None, per_class: int = 3,
                     delta: float | None = None, classnames: Sequence[str] = ("benign", "melanoma")):
    """The first ``per_class`` images of each class (columns) as rendered (top row) and with
    Eq. 32's red hue at ``delta`` (bottom row, default more red); titles say the class and,
    when ``tint`` is given, whether the image carries the planted tint."""
    import matplotlib.pyplot as plt

    from .hue import MORE_RED, RedHueImageSet

    delta = MORE_RED if delta is None else float(delta)
    labels = np.asarray(labels)
    show = [int(i) for c in range(len(classnames)) for i in np.flatnonzero(labels == c)[:per_class]]
    if not show:
        raise ValueError("red_hue_examples: no images of any class in labels")
    rows = [("none", pool), (f"δ = {delta:g}", RedHueImageSet(pool, delta))]
    fig, axes = plt.subplots(2, len(show), figsize=(1.5 * len(show), 3.2), squeeze=False)
    for col, i in enumerate(show):
        title = classnames[labels[i]] + (", tint" if tint is not None and tint[i] > 0 else "")
        for row, (_, images) in enumerate(rows):
            ax = axes[row, col]
            ax.imshow(np.asarray(images.load_image(i)))
            ax.set_title(title, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    for row, (name, _) in enumerate(rows):
        axes[row, 0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    return fig
