"""Mining classes and the sandbox mining pool (paper Sec. 5.3 / App. D.1).

Classes follow ImageNet's convention for polysemy: every sense of a word is its own class
with its own name ("bat (animal)", "bat (club)") but both are *probed with the same word*
("a photo of a bat"): that shared word is the failure the method should find.

`sandbox_mining_pool` draws images in which every planted attribute occurs independently
of the class: backgrounds uniform for every class (water included), words at the training
rate naming other classes, the compound class at the same weight as the others, and the
fire-truck flame companion beside any object at the rate it has beside fire trucks in
training (`COMPOUND_COMPANION_RATE`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class MiningClass:
    """One probed class: ``name`` (unique), ``short`` (the word prompts use), ``full``
    (an extended description, the paper's full class name), and how to recognise its
    sandbox images (``object`` and optionally ``sprite``)."""

    name: str
    short: str
    full: str
    object: str
    sprite: str | None = None


# Extended descriptions: words the sandbox captions use (colour words, "animal" is not one,
# so the senses are told apart by the co-occurring object words of the world).
_FULL = {"bat_animal": "bat, a flying animal with wings", "bat_club": "bat, a wooden club",
         "fire truck": "fire truck, a big truck"}


def sandbox_classes() -> list[MiningClass]:
    """The object world's classes, the polysemous word split into one class per sense."""
    from ..sandbox.render import CLASS_SPRITES
    from ..sandbox.world import CLASSNAMES

    out = []
    for obj in CLASSNAMES:
        sprites = CLASS_SPRITES[obj]
        if len(sprites) > 1:
            for spr in sprites:
                sense = spr.split("_", 1)[1] if "_" in spr else spr
                out.append(MiningClass(f"{obj} ({sense})", obj, _FULL.get(spr, f"{obj} ({sense})"), obj, spr))
        else:
            out.append(MiningClass(obj, obj, _FULL.get(obj, obj), obj, None))
    return out


def class_labels(attributes: pd.DataFrame, classes: Sequence[MiningClass]) -> np.ndarray:
    """(N,) index into ``classes`` of each sandbox image (-1: none of them)."""
    lab = np.full(len(attributes), -1, dtype=np.int64)
    obj = attributes["object"].to_numpy()
    spr = attributes["sprite"].to_numpy()
    for c, mc in enumerate(classes):
        m = obj == mc.object
        if mc.sprite is not None:
            m &= spr == mc.sprite
        lab[m] = c
    return lab


def prompts(classes: Sequence[MiningClass], template: str = "a photo of a {}") -> list[str]:
    """One prompt per class from its short (shared) word."""
    return [template.format(c.short) for c in classes]


def sandbox_mining_pool(n: int, seed: int = 0, *, split: str = "val", companion_rate: float | None = None
                        ) -> tuple[Any, dict]:
    """(image set, the ``sandbox.make_dataset`` keyword arguments that rebuild it, as for
    ``pool.json``; rebuild with ``labeling.pool.rebuild_sandbox_pool``).

    Backgrounds uniform for every class (P(water | boat) = P(water | any) = 1/8); words at the
    training rate (`TEXT_RATE`, naming another class with `TEXT_OTHER_CLASS_SHARE`); the
    compound class at weight 1; the flame companion beside every object (but fire itself) at
    ``companion_rate`` (default: its training rate beside fire trucks)."""
    from ..sandbox import make_dataset
    from ..sandbox.render import BACKGROUNDS
    from ..sandbox.world import COMPOUND_COMPANION_RATE, ObjectRecipe

    rate = COMPOUND_COMPANION_RATE if companion_rate is None else float(companion_rate)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"companion_rate must be in [0, 1], got {companion_rate}")
    uniform = 1.0 / len(BACKGROUNDS)
    recipe = ObjectRecipe(compound_class_weight=1.0, spurious_rate=uniform, spurious_background_other_rate=uniform,
                          compound_companion_rate=rate, companion_other_rate=rate)
    kwargs = {"n": int(n), "split": split, "seed": int(seed), "recipe": asdict(recipe)}
    return make_dataset(int(n), split, int(seed), recipe=recipe), kwargs


__all__ = ["MiningClass", "sandbox_classes", "class_labels", "prompts", "sandbox_mining_pool", "sandbox_reference_labels"]


def sandbox_reference_labels(attributes: pd.DataFrame, classes: Sequence[MiningClass]) -> np.ndarray:
    """Class index of each pool image usable as a *reference* sample of its class (-1:
    not a reference): the class's own images without a rendered word or a companion object.
    Both are put on images independently of the class, so they are not the class's
    appearance: a word naming another class is a typographic attack (the pool prints one on
    36 % of images; ImageNet's reference images rarely carry one), and leaving them in widens
    the class's output spread until "high-confidence" admits nearly every image."""
    lab = class_labels(attributes, classes)
    plain = attributes["text"].fillna("").to_numpy() == ""
    if "companion" in attributes:
        plain &= attributes["companion"].fillna("").to_numpy() == ""
    return np.where(plain, lab, -1)
