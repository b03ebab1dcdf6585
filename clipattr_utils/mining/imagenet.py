"""Failure mining on ImageNet (paper Sec. 5.3, App. D.1): one mining class per ImageNet-1k
class, and the mining pool, every fifth image of the training split.

Names follow App. D.2: a class is prompted with its *short* name, the first WordNet lemma
("crane" for both the bird and the machine, which is what makes polysemy visible), and the
*full* name lists every lemma ("crane" / "crane, derrick"... as WordNet gives them). ``name``
is open_clip's cleaned class name ("crane bird", "construction crane"), unique per class.
"""

from __future__ import annotations

import os
from typing import Any

from .classes import MiningClass


def imagenet_classes() -> list[MiningClass]:
    """The 1000 ImageNet-1k classes in index order (``object`` holds the wnid)."""
    from timm.data import ImageNetInfo

    from ..data import imagenet_classnames, imagenet_wnids

    info = ImageNetInfo("imagenet-1k")
    names = list(imagenet_classnames())
    seen: dict[str, int] = {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
    out = []
    for i, (wnid, name) in enumerate(zip(imagenet_wnids(), names)):
        lemmas = info.index_to_description(i)  # "tench, Tinca tinca"
        short = lemmas.split(",")[0].strip()
        # open_clip repeats two names ("missile", "sunglasses"): the wnid tells them apart.
        unique = name if seen[name] == 1 else f"{name} ({wnid})"
        out.append(MiningClass(unique, short, lemmas.strip(), wnid, None))
    return out


def imagenet_mining_pool(root: str | os.PathLike, every: int = 5, max_per_class: int | None = None
                         ) -> tuple[Any, dict]:
    """(image set, its description for ``pool.json``): every ``every``-th image of each class
    under ``root/<wnid>/`` (App. D.1: every fifth image of ImageNet train, ~256 per class).
    Every image is a reference sample of its own class (labels = class index)."""
    from ..data import ImageNetFolder

    pool = ImageNetFolder(root, every=every, max_per_class=max_per_class)
    return pool, {"kind": "ImageNetFolder", "root": str(root), "every": every, "max_per_class": max_per_class}


__all__ = ["imagenet_classes", "imagenet_mining_pool"]
