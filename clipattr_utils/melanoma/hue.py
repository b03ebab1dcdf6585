"""Image-level red hue (paper App. E, Eq. 32) as a transform of an image set.

    red' = max[min(red * (1 - delta), 1), 0]            (red in [0, 1]; green, blue unchanged)

``delta = -1.0`` doubles the red channel ("more red"), ``delta = 0.2`` scales it by 0.8
("less red"). :class:`RedHueImageSet` wraps any image set so that ``load_image`` returns the
transformed image; its ``describe()`` and ``fingerprint()`` carry ``delta``, so
`features.extract` caches every augmented set as a feature set of its own (the backbone runs
once per set, as for any other images: DESIGN.md, "features first").

The sandbox's lesion world plants its red-hue shortcut with the same operation
(`sandbox.render.lesion_red_hue`: delta = -2 x the record's tint), so on the sandbox the
paper's probe tests the very artefact the data carries, as the paper assumes of ISIC.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
from PIL import Image

from ..data import ImageSet, to_rgb
from ..sandbox.render import scale_red

MORE_RED = -1.0
"""delta of the paper's "more red" condition (the red channel doubled, then clipped)."""
LESS_RED = 0.2
"""delta of the paper's "less red" condition (the red channel times 0.8)."""
CONDITIONS: dict[str, float | None] = {"none": None, "more_red": MORE_RED, "less_red": LESS_RED}
"""The paper's three test conditions by name: no change, Eq. 32 with delta -1.0, with delta 0.2."""


def red_hue(image: Image.Image | np.ndarray, delta: float) -> Image.Image | np.ndarray:
    """Eq. 32 on one image: the red channel times ``1 - delta``, clipped to its range.

    A PIL image (any mode, made RGB) or a uint8 (H, W, 3) array is treated as red in
    [0, 255] = [0, 1] and comes back in the same type, rounded to the nearest integer level.
    A float (H, W, 3) array is taken to hold values in [0, 1] and comes back as float.
    """
    delta = float(delta)
    if not np.isfinite(delta):
        raise ValueError(f"red_hue: delta must be finite, got {delta}")
    if isinstance(image, Image.Image):
        arr = np.asarray(to_rgb(image))
        return Image.fromarray(red_hue(arr, delta))
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"red_hue: expected an (H, W, 3) RGB array, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return scale_red(arr, 1.0 - delta)
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"red_hue: expected uint8 or float pixels, got {arr.dtype}")
    out = arr.copy()
    out[..., 0] = np.clip(arr[..., 0] * (1.0 - delta), 0.0, 1.0)
    return out


class RedHueImageSet(ImageSet):
    """``base`` with Eq. 32 applied to every image (same sample ids, labels and order).

    Its description nests the base set's and adds ``red_hue_delta``, so two deltas (or the
    base set itself) never share a feature cache.
    """

    def __init__(self, base: ImageSet, delta: float):
        if isinstance(base, RedHueImageSet):
            raise ValueError("RedHueImageSet: base is already a red-hue set; wrap the original images instead")
        self.base = base
        self.delta = float(delta)
        if not np.isfinite(self.delta):
            raise ValueError(f"RedHueImageSet: delta must be finite, got {delta}")
        self.classnames = list(getattr(base, "classnames", []))

    def __len__(self) -> int:
        return len(self.base)

    def sample_id(self, i: int) -> str:
        return self.base.sample_id(i)

    def label(self, i: int) -> int:
        return self.base.label(i)

    def labels(self) -> list[int]:
        return self.base.labels()

    def load_image(self, i: int) -> Image.Image:
        return red_hue(self.base.load_image(i), self.delta)

    def describe(self) -> dict:
        kind = self.base.describe().get("kind", "images")
        return {"kind": f"{kind}-red-hue", "red_hue_delta": self.delta, "equation": "paper Eq. 32",
                "base": self.base.describe()}

    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps(self.describe(), sort_keys=True, default=str).encode())
        h.update(self.base.fingerprint().encode())
        return h.hexdigest()

    def __repr__(self) -> str:
        return f"RedHueImageSet(delta={self.delta:g}, base={self.base.describe()!r})"


def condition_sets(base: ImageSet, conditions: dict[str, float | None] | None = None) -> dict[str, ImageSet]:
    """The base set under each condition: ``None`` keeps it as is, a number wraps it in
    :class:`RedHueImageSet` (default: :data:`CONDITIONS`)."""
    conditions = CONDITIONS if conditions is None else conditions
    return {name: base if delta is None else RedHueImageSet(base, delta) for name, delta in conditions.items()}


def condition_features(clip: Any, base: ImageSet, cache_dir: Any = None,
                       conditions: dict[str, float | None] | None = None, **extract_kwargs: Any) -> dict:
    """Cached class tokens of ``base`` under each condition, one `features.extract` per set.

    Returns ``{condition: FeatureCache}``; every cache holds the same sample ids in the same
    order (checked), so row i is the same image under every condition.
    """
    from ..features import extract

    out = {name: extract(clip, s, cache_dir, **extract_kwargs) for name, s in condition_sets(base, conditions).items()}
    ids = {name: cache.ids for name, cache in out.items()}
    first = next(iter(ids))
    for name, got in ids.items():
        if got != ids[first]:
            raise RuntimeError(f"condition_features: cache {name!r} holds other samples than {first!r} "
                               "(an image failed to decode under one condition only?)")
    return out


__all__ = ["red_hue", "RedHueImageSet", "condition_sets", "condition_features", "CONDITIONS", "MORE_RED", "LESS_RED"]
