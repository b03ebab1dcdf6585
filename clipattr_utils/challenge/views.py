"""What notebook 06 shows a learner, one call per cell: the classifier against zero-shot,
the latents behind a class's mistakes, a counterfactual check, and the answer box.

Everything here reads the public challenge only (`PublicImages` has no attribute table);
the answer box asks `game.check` / `game.reveal`, the only ways to the sealed answer.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..attribution import act_grad, output_row, target_outputs
from .game import Challenge, check, describe, reveal
from .spec import NO_SHORTCUT, SHORTCUT_KINDS


def test_tokens(challenge: Challenge, clip: Any, cache_dir: str | os.PathLike | None = None) -> torch.Tensor:
    """The CLIP's class tokens of the challenge's test images (cached)."""
    from ..features import extract

    return extract(clip, challenge.test, cache_dir, progress=False).read()


def accuracy_table(challenge: Challenge, clip: Any, x_test: torch.Tensor,
                   prompt_template: str = "a photo of a {}") -> pd.DataFrame:
    """Per class, on the unconfounded test images: the classifier's and zero-shot CLIP's
    recall (share of the class's images called the class) and false-alarm rate (share of
    other classes' images called the class). A shortcut shows as false alarms the zero-shot
    model does not raise."""
    labels = np.asarray(challenge.test.labels())
    pred = target_outputs(x_test, clip.head, challenge.readout).argmax(1).numpy()
    text = clip.encode_text([prompt_template.format(n) for n in challenge.classnames])
    with torch.no_grad():
        zs = clip.head.cosine(x_test, text).argmax(1).cpu().numpy()
    rows = []
    for c, name in enumerate(challenge.classnames):
        own, other = labels == c, labels != c
        rows.append({"class": name, "images": int(own.sum()),
                     "classifier_recall": float((pred[own] == c).mean()), "zero_shot_recall": float((zs[own] == c).mean()),
                     "classifier_false_alarms": float((pred[other] == c).mean()),
                     "zero_shot_false_alarms": float((zs[other] == c).mean())})
    table = pd.DataFrame(rows)
    table["excess_false_alarms"] = table["classifier_false_alarms"] - table["zero_shot_false_alarms"]
    return table


def false_alarms(challenge: Challenge, clip: Any, x_test: torch.Tensor, cls: str) -> np.ndarray:
    """Test rows of other classes that the classifier calls ``cls``, most confident first."""
    c = challenge.classnames.index(cls)
    labels = np.asarray(challenge.test.labels())
    y = target_outputs(x_test, clip.head, challenge.readout)
    logp = torch.log_softmax(y, 1)[:, c].numpy()
    rows = np.flatnonzero((labels != c) & (y.argmax(1).numpy() == c))
    return rows[np.argsort(-logp[rows], kind="stable")]


def relevant_latents(challenge: Challenge, sae: Any, clip: Any, x_test: torch.Tensor, cls: str,
                     rows: Sequence[int] | None = None, n: int = 5) -> pd.DataFrame:
    """The ``n`` latents with the largest mean exact Act x Grad relevance (Eq. 5 on the
    classifier's logit for ``cls``, a linear readout) over ``rows`` (default: the class's
    false alarms), with how often each is active there."""
    c = challenge.classnames.index(cls)
    rows = false_alarms(challenge, clip, x_test, cls) if rows is None else np.asarray(rows)
    if not len(rows):
        return pd.DataFrame(columns=["latent", "mean_relevance", "active_share"])
    attr = act_grad(x_test[torch.as_tensor(rows)], sae, clip.head, output_row(challenge.readout, c))
    dense = torch.zeros(len(rows), sae.d_sae, dtype=torch.float64)
    dense.scatter_add_(1, attr.indices.cpu(), attr.values[:, 0, :].detach().cpu().double())
    active = torch.zeros(len(rows), sae.d_sae).scatter_(1, attr.indices.cpu(), 1.0)
    mean = dense.mean(0)
    top = torch.argsort(mean, descending=True)[:n]
    return pd.DataFrame({"latent": top.numpy(), "mean_relevance": mean[top].numpy(),
                         "active_share": active.mean(0)[top].numpy()})


@torch.no_grad()
def top_rows(sae: Any, x_test: torch.Tensor, latents: Sequence[int], n: int = 8) -> dict[int, list[int]]:
    """latent -> its ``n`` most activating test rows (for `gallery.latent_grid`)."""
    enc = sae.encode(x_test)
    out = {}
    for j in latents:
        a = (enc.values * (enc.indices == int(j))).sum(1)
        order = torch.argsort(a, descending=True)[:n]
        out[int(j)] = [int(r) for r in order if float(a[r]) > 0]
    return out


def counterfactual_figure(challenge: Challenge, clip: Any, cls: str, kind: str, value: str,
                          rows: Sequence[int], cache_dir: str | os.PathLike | None = None):
    """Each test image at ``rows`` before and after the edit, titled with the classifier's
    P(cls): the learner's own counterfactual check."""
    import matplotlib.pyplot as plt

    from ..features import extract

    c = challenge.classnames.index(cls)
    rows = [int(r) for r in rows]
    before = challenge.test.subset(rows)
    after = before.edit(kind, value)
    probs = []
    for s in (before, after):
        x = extract(clip, s, cache_dir, progress=False).read()
        probs.append(torch.softmax(target_outputs(x, clip.head, challenge.readout), 1)[:, c].numpy())
    fig, axes = plt.subplots(2, len(rows), figsize=(1.6 * len(rows), 3.6), squeeze=False)
    for k in range(len(rows)):
        for r, (s, p) in enumerate(zip((before, after), probs)):
            ax = axes[r, k]
            ax.imshow(s.load_image(k))
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"P({cls})={p[k]:.2f}", fontsize=7)
        axes[0, k].set_xlabel(challenge.classnames[challenge.test.label(rows[k])], fontsize=7)
    axes[0, 0].set_ylabel("as drawn", fontsize=8)
    axes[1, 0].set_ylabel(f"+ {kind}={value}", fontsize=8)
    fig.tight_layout()
    return fig, float(np.mean(probs[1]) - np.mean(probs[0]))


class AnswerBox:
    """Guess the shortcut: a class (or "no shortcut"), an attribute kind and value; Check says
    right or wrong, Reveal shows the answer. Static in a batch run (papermill): pass the
    guess as arguments to `show` and it prints the verdict (and the answer when ``reveal``)."""

    def __init__(self, challenge: Challenge):
        self.challenge = challenge
        self.last: bool | None = None

    def verdict(self, target: str | None, kind: str | None, value: str | None) -> str:
        self.last = check(self.challenge, target, kind, value)
        guess = NO_SHORTCUT if target in (None, NO_SHORTCUT) else f"'{target}' relies on {kind}={value}"
        return f"{'Right' if self.last else 'Not right'}: your guess was {guess}."

    def answer(self) -> str:
        return "The answer: " + describe(reveal(self.challenge))

    def show(self, target: str | None = None, kind: str | None = None, value: str | None = None,
             reveal_answer: bool = False, interactive: bool | None = None):
        from ..widgets import _display, interactive_default

        interactive = interactive_default() if interactive is None else interactive
        if not interactive:
            if target is not None:
                print(self.verdict(target, kind, value))
            else:
                print("(static view: open the notebook in JupyterLab to use the answer box, or pass guess_class)")
            if reveal_answer:
                print(self.answer())
            return self.last
        import ipywidgets as W

        classes = W.Dropdown(options=[NO_SHORTCUT] + list(self.challenge.classnames), description="class")
        kinds = W.Dropdown(options=list(self.challenge.values), description="attribute")
        values = W.Dropdown(options=list(self.challenge.values[kinds.value]), description="value")
        check_button, reveal_button = W.Button(description="Check"), W.Button(description="Reveal")
        out = W.Output()

        def on_kind(*_):
            values.options = list(self.challenge.values.get(kinds.value, SHORTCUT_KINDS[kinds.value]))

        def on_check(*_):
            with out:
                out.clear_output()
                t = None if classes.value == NO_SHORTCUT else classes.value
                print(self.verdict(t, kinds.value, values.value))

        def on_reveal(*_):
            with out:
                print(self.answer())

        kinds.observe(on_kind, names="value")
        check_button.on_click(on_check)
        reveal_button.on_click(on_reveal)
        box = W.VBox([W.HBox([classes, kinds, values]), W.HBox([check_button, reveal_button]), out])
        self.widgets = {"class": classes, "kind": kinds, "value": values, "check": check_button,
                        "reveal": reveal_button, "out": out}
        _display(box)
        return box


__all__ = ["test_tokens", "accuracy_table", "false_alarms", "relevant_latents", "top_rows", "counterfactual_figure",
           "AnswerBox"]
