"""The sandbox labeling pool and the labeler's prompt templates, chosen on held-out images.

A labeling pool should let every concept the world renders occur apart from the classes, as
ImageNet's images do: `sandbox_pool` draws backgrounds independently of the object (boats are
on water only 1/8 of the time) and keeps words, watermark and tint at visible rates. Its
keyword arguments are returned too, so a rerun (or a scorer) rebuilds exactly these images.

`choose_templates` picks the template set under which the labeler names single images best
(its zero-shot accuracy per attribute on a separate calibration set, normalised by chance),
so no latent result enters the choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import pandas as pd

from .ground_truth import labeler_zero_shot
from .vocabulary import Vocabulary

TEMPLATE_CANDIDATES: tuple[tuple[str, ...], ...] = (
    ("{}",),
    ("a photo of {}",),
    ("{}", "a photo of {}"),
    ("a photo of {}", "a picture of {}", "an image of {}"),
    ("{}", "a photo of {}", "a picture of {}", "an image of {}"),
)
"""Template sets tried by `choose_templates`; ``("{}",)`` is the paper's bare label."""


def sandbox_pool(n: int, seed: int = 0, *, split: str = "val", tint_rate: float = 0.15,
                 watermark_rate: float = 0.2) -> tuple[Any, dict]:
    """(image set, the ``sandbox.make_dataset`` keyword arguments that rebuild it).

    Backgrounds are drawn independently of the object (the spurious water-boat rate set to
    1/8, like every other pair); words keep the training rate; tint and watermark at the
    given rates (the training split has 5 % and 10 %).
    """
    from ..sandbox import make_dataset
    from ..sandbox.render import BACKGROUNDS
    from ..sandbox.world import ObjectRecipe

    uniform = 1.0 / len(BACKGROUNDS)
    recipe = ObjectRecipe(spurious_rate=uniform, spurious_background_other_rate=uniform, tint_rate=float(tint_rate),
                          watermark_rate=float(watermark_rate))
    kwargs = {"n": int(n), "split": split, "seed": int(seed), "recipe": asdict(recipe)}
    return make_dataset(int(n), split, int(seed), recipe=recipe), kwargs


def rebuild_sandbox_pool(kwargs: dict) -> Any:
    """The image set `sandbox_pool`'s keyword arguments (as stored in ``pool.json``) describe."""
    from ..sandbox import make_dataset
    from ..sandbox.world import ObjectRecipe

    kw = dict(kwargs)
    if isinstance(kw.get("recipe"), dict):
        kw["recipe"] = ObjectRecipe(**kw["recipe"])
    return make_dataset(kw.pop("n"), kw.pop("split"), kw.pop("seed"), **kw)


def choose_templates(labeler: Any, calibration_embeddings: Any, calibration_attributes: pd.DataFrame,
                     vocabulary: pd.DataFrame, candidates: Sequence[Sequence[str]] = TEMPLATE_CANDIDATES
                     ) -> tuple[tuple[str, ...], pd.DataFrame]:
    """(best template set, table): the labeler's zero-shot score per attribute for each
    candidate on the calibration images, and ``mean_norm``, the mean over attributes of
    (score - chance) / (1 - chance); the best set maximises ``mean_norm``."""
    rows = []
    for templates in candidates:
        templates = tuple(templates)
        zs = labeler_zero_shot(calibration_embeddings, calibration_attributes,
                               Vocabulary.build(labeler, vocabulary, templates=templates, progress=False))
        norm = (zs["score"] - zs["chance"]) / (1 - zs["chance"])
        rows.append({"templates": " | ".join(templates), **dict(zip(zs["attribute"], zs["score"].round(3))),
                     "mean_norm": float(norm.mean())})
    table = pd.DataFrame(rows)
    best = tuple(candidates[int(table["mean_norm"].idxmax())])
    return best, table


__all__ = ["sandbox_pool", "rebuild_sandbox_pool", "choose_templates", "TEMPLATE_CANDIDATES"]
