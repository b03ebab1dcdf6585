"""A challenge's images: the confounded training set, the unconfounded test set, and the
public face of both (`PublicImages`: pixels, ids, class labels and counterfactual edits, but
no attribute table).

Both sets are drawn from the labeler's independent world (`ObjectRecipe.independent`:
every attribute common and independent of the object); the training set then takes, per
class, the share of images carrying the hidden value the shortcut asks for. Images that
must carry it are drawn with it (a fixed background, word, watermark or tint, or an edited
colour or an added flame); images that must not are drawn and filtered. The test set keeps
the independent world's rates, so the hidden value sits on every class alike.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from ..data import ImageSet
from ..sandbox.world import CLASSNAMES, TINT_RANGE, ObjectRecipe, SandboxImageSet, make_dataset
from .spec import SHORTCUT_KINDS, Shortcut

EDIT_TINT = float(np.mean(TINT_RANGE))
"""The tint a counterfactual edit adds (the middle of the world's tint range)."""


def carries(attributes: pd.DataFrame, kind: str, value: str) -> np.ndarray:
    """Which rows of an object-world attribute table carry ``value`` of attribute ``kind``."""
    if kind not in SHORTCUT_KINDS:
        raise ValueError(f"carries: unknown kind {kind!r}; choose from {list(SHORTCUT_KINDS)}")
    a = attributes
    if kind == "background":
        return (a["background"] == value).to_numpy()
    if kind == "colour":
        return (a["colour"] == value).to_numpy()
    if kind == "word":
        return (a["text"] == value).to_numpy()
    if kind == "watermark":
        return a["watermark"].astype(bool).to_numpy()
    if kind == "tint":
        return (a["tint"].astype(float) > 0).to_numpy()
    return (a["companion"].astype(str) != "").to_numpy()


def with_value(images: SandboxImageSet, kind: str, value: str) -> SandboxImageSet:
    """``images`` with ``value`` of ``kind`` added to every image, everything else kept where
    the renderer allows it (a word moves the sprite away from its band, as in the world)."""
    if kind == "background":
        return images.replace(background=value)
    if kind == "colour":
        return images.replace(colour=value)
    if kind == "watermark":
        return images.replace(watermark=True)
    if kind == "tint":
        return images.replace(tint=EDIT_TINT)
    if kind == "companion":
        return images.with_companion()
    if kind == "word":
        return images.with_word(value)
    raise ValueError(f"with_value: unknown kind {kind!r}; choose from {list(SHORTCUT_KINDS)}")


def _draw_class(target: str, n_with: int, n_without: int, kind: str, value: str, split: str, seed: int,
                size: int) -> list[SandboxImageSet]:
    """``n_with`` images of ``target`` carrying the value and ``n_without`` not carrying it."""
    recipe = ObjectRecipe.independent()
    parts = []
    if n_with:
        fixed: dict[str, Any] = {}
        if kind == "background":
            fixed["background"] = value
        elif kind == "word":
            fixed["text"] = value
        elif kind == "watermark":
            fixed["watermark"] = True
        elif kind == "tint":
            fixed["tint"] = EDIT_TINT
        base = make_dataset(n_with, split, seed, recipe=recipe, objects=[target], size=size, **fixed)
        if kind == "colour":
            base = base.replace(colour=value)
        elif kind == "companion":
            base = base.with_companion()
        parts.append(base)
    if n_without:
        # Draw generously, keep the first n_without rows without the value (the rarest value
        # of any kind, one word, sits on 5 % of the independent world's images).
        pool = make_dataset(2 * n_without + 16, split, seed + 1, recipe=recipe, objects=[target], size=size)
        keep = np.flatnonzero(~carries(pool.attributes, kind, value))[:n_without]
        if len(keep) < n_without:
            raise RuntimeError(f"_draw_class: only {len(keep)} of {n_without} images of {target!r} lack {kind}={value}")
        parts.append(pool.subset(keep))
    return parts


def confounded_training_set(shortcut: Shortcut | None, n_per_class: int, seed: int, size: int = 64
                            ) -> SandboxImageSet:
    """``n_per_class`` training images per class; the target's carry the hidden value at the
    shortcut's strength, the others at its other rate. A control (None) is the independent
    world itself, class-balanced."""
    parts: list[SandboxImageSet] = []
    for c, name in enumerate(CLASSNAMES):
        part_seed = int(seed) * 1000 + 10 * c
        if shortcut is None:
            parts.append(make_dataset(n_per_class, "train", part_seed, recipe=ObjectRecipe.independent(),
                                      objects=[name], size=size))
            continue
        rate = shortcut.strength if name == shortcut.target else shortcut.other_rate
        if shortcut.kind == "companion" and name == "fire":
            rate = 0.0   # a flame beside a fire is the fire itself
        n_with = int(round(rate * n_per_class))
        parts += _draw_class(name, n_with, n_per_class - n_with, shortcut.kind, shortcut.value, "train",
                             part_seed, size)
    return SandboxImageSet.concat(parts, note="challenge training set")


def test_set(n: int, seed: int, size: int = 64) -> SandboxImageSet:
    """The unconfounded test pool: the independent world, every class, every attribute at its own rate."""
    return make_dataset(n, "test", int(seed), recipe=ObjectRecipe.independent(), size=size)


class PublicImages(ImageSet):
    """What an attendee (or the detective) may see of a challenge's image set: pixels, sample
    ids, class labels, and `edit` for counterfactuals. The attribute table stays behind:
    asking for it is an error, so no code path can read the answer off it by accident."""

    def __init__(self, images: SandboxImageSet):
        self._images = images
        self.classnames = list(images.classnames)
        self.size = images.size

    def __len__(self) -> int:
        return len(self._images)

    def sample_id(self, i: int) -> str:
        return self._images.sample_id(i)

    def label(self, i: int) -> int:
        return self._images.label(i)

    def labels(self) -> list[int]:
        return self._images.labels()

    def load_image(self, i: int) -> Image.Image:
        return self._images.load_image(i)

    def describe(self) -> dict:
        return self._images.describe()

    def fingerprint(self) -> str:
        return self._images.fingerprint()

    @property
    def attributes(self) -> pd.DataFrame:
        raise AttributeError("a challenge's images do not show their attribute table (that would give the "
                             "answer away); use challenge.reveal(c) after guessing")

    def subset(self, indices: Sequence[int] | np.ndarray) -> "PublicImages":
        return PublicImages(self._images.subset(indices))

    def edit(self, kind: str, value: str) -> "PublicImages":
        """Every image with ``value`` of attribute ``kind`` added: a counterfactual of the same
        images (``kind`` in `SHORTCUT_KINDS`)."""
        if kind not in SHORTCUT_KINDS or value not in SHORTCUT_KINDS[kind]:
            raise ValueError(f"edit: {kind!r}={value!r} is not an edit the sandbox can make; kinds and values: "
                             f"{SHORTCUT_KINDS}")
        return PublicImages(with_value(self._images, kind, value))

    def take_away(self, kind: str, value: str) -> list["PublicImages"]:
        """The counterfactuals of these images without ``value`` of ``kind`` (`without_value`,
        one per `removal_edits` entry), for checking that what a latent fires on is that
        value. Like `edit` on an image that already carries the value, taking it away from an
        image that does not is a no-op."""
        return [PublicImages(without_value(self._images, kind, value, alt)) for _, alt in removal_edits(kind, value)]

    def __repr__(self) -> str:
        return f"PublicImages({len(self)} images, {len(self.classnames)} classes)"


def without_value(images: SandboxImageSet, kind: str, value: str, alternative: str) -> SandboxImageSet:
    """``images`` with ``kind=value`` taken away where an image carries it: a tint or a
    watermark switched off (``alternative`` "absent"), a background, colour or word replaced
    by ``alternative``; images without the value are returned as they were, in place."""
    if kind in ("tint", "watermark"):
        return images.replace(**{kind: 0.0 if kind == "tint" else False})
    if kind not in ("background", "colour", "word") or alternative == value:
        raise ValueError(f"without_value: cannot take {kind}={value!r} away with {alternative!r}")
    has = carries(images.attributes, kind, value)
    if not has.any():
        return images
    rows, rest = np.flatnonzero(has), np.flatnonzero(~has)
    part = images.subset(rows)
    part = part.with_word(alternative) if kind == "word" else part.replace(**{kind: alternative})
    joined = SandboxImageSet.concat([part, images.subset(rest)] if len(rest) else [part], note=f"without {kind}={value}")
    return joined.subset(np.argsort(np.concatenate([rows, rest]), kind="stable"))


def removal_edits(kind: str, value: str, n_swaps: int = 2) -> list[tuple[str, str]]:
    """How `PublicImages.take_away` removes ``kind=value``: ``[(kind, "absent")]`` for a tint or
    a watermark; for a background, colour or word, ``n_swaps`` other values of the kind to put
    in its place (the next ones after ``value`` in `SHORTCUT_KINDS`' order, so the choice is
    fixed); an empty list for the companion (the renderer cannot take a flame away without
    moving the object)."""
    if kind not in SHORTCUT_KINDS or value not in SHORTCUT_KINDS[kind]:
        raise ValueError(f"removal_edits: {kind!r}={value!r} is not an attribute value of the sandbox; kinds and "
                         f"values: {SHORTCUT_KINDS}")
    if kind in ("tint", "watermark"):
        return [(kind, "absent")]
    if kind == "companion":
        return []
    values = SHORTCUT_KINDS[kind]
    i = values.index(value)
    return [(kind, values[(i + s) % len(values)]) for s in range(1, min(int(n_swaps), len(values) - 1) + 1)]


__all__ = ["EDIT_TINT", "carries", "with_value", "without_value", "removal_edits", "confounded_training_set", "test_set", "PublicImages"]
