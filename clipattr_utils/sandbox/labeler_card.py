"""The labeler's report card: can it name each kind of attribute in a single image?

Whatever a labeler cannot name in one image, no latent labelled with it can be named by
(Eq. 2 averages its embeddings of a latent's top images). The card measures it per attribute
kind on held-out images of the independent world (`world.ObjectRecipe.independent`, split
"test": no image the labeler trained on, every attribute independent of the object):

- object, colour, background, written word (which word, on the images carrying one): top-1
  accuracy of the argmax over that kind's labels of the sandbox vocabulary (chance 1 / labels);
- watermark, tint (present or not): balanced accuracy of "the label's prompt scores higher
  than the empty prompt" -- Eq. 2's own contrast, with no threshold fitted (zero-shot) -- and,
  beside it, the AUROC of that score difference (how separable the two groups are at all).

Prompts go through ``templates`` as in notebook 02 (`labeling.Vocabulary`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

CARD_KINDS: tuple[str, ...] = ("object", "colour", "background", "text", "watermark", "tint")
"""Attribute kinds of the card, in report order."""

TARGET = 0.85
"""The accuracy every kind the renderer makes visible at 64 px should reach."""


def _balanced_accuracy(score: np.ndarray, present: np.ndarray) -> float:
    return float(0.5 * ((score[present] > 0).mean() + (score[~present] <= 0).mean()))


@torch.no_grad()
def labeler_card(clip: Any, n: int = 1200, seed: int = 0, templates: Sequence[str] = ("a photo of {}",),
                 image_set: Any = None) -> pd.DataFrame:
    """One row per attribute kind: ``kind, metric, score, chance, n, auroc`` (auroc for the
    binary kinds only). ``image_set``: the images to score (default: ``n`` held-out images of
    the independent world with ``seed``); it must carry the sandbox attribute columns."""
    from sklearn.metrics import roc_auc_score

    from ..labeling.ground_truth import attribute_values, labeler_zero_shot
    from ..labeling.vocabulary import Vocabulary, sandbox_vocabulary
    from .shortcuts import image_embeddings
    from .world import ObjectRecipe, make_dataset

    if image_set is None:
        if n < 50:
            raise ValueError(f"labeler_card: n must be >= 50 images for per-kind accuracies, got {n}")
        image_set = make_dataset(int(n), "test", int(seed), recipe=ObjectRecipe.independent())
    vocab = Vocabulary.build(clip, sandbox_vocabulary(), templates=tuple(templates), progress=False)
    img = image_embeddings(clip, image_set)
    # The kinds with several values: notebook 02's own per-attribute zero-shot accuracy.
    zero_shot = labeler_zero_shot(img, image_set.attributes, vocab).set_index("attribute")
    vals = attribute_values(image_set.attributes)
    frame = vocab.frame
    rows = []
    for kind in CARD_KINDS:
        if kind in ("watermark", "tint"):
            idx = np.flatnonzero((frame["attribute"] == kind).to_numpy())
            present = vals[kind].to_numpy(dtype=bool)
            if present.all() or not present.any():
                raise ValueError(f"labeler_card: the images need both {kind} and no {kind} (got {present.mean():.2f})")
            score = ((img @ vocab.embeddings[idx[0]].float()) - (img @ vocab.empty.float())).numpy()  # Eq. 2
            rows.append({"kind": kind, "metric": "balanced accuracy (label vs empty prompt)",
                         "score": _balanced_accuracy(score, present), "chance": 0.5, "n": int(len(present)),
                         "auroc": float(roc_auc_score(present, score))})
            continue
        if kind not in zero_shot.index:
            raise ValueError(f"labeler_card: no image shows a {kind} of the vocabulary")
        r = zero_shot.loc[kind]
        rows.append({"kind": kind, "metric": "top-1 accuracy", "score": float(r["score"]), "chance": float(r["chance"]),
                     "n": int(r["n"]), "auroc": np.nan})
    out = pd.DataFrame(rows)
    out["meets_target"] = out["score"] >= TARGET
    return out


__all__ = ["labeler_card", "CARD_KINDS", "TARGET"]
