"""The image sets of the melanoma case and their provenance (``pool.json``).

Sandbox (default): a pool of lesion images from the *test* split (the probe's data; the
red-hue shortcut is part of the data there, as in ISIC) and a separate set from the
*train* split for the SAE. Every set is named by the `sandbox.make_lesion_dataset` keyword
arguments that rebuild it exactly.

ISIC 2019: the pool is `data.ISIC2019` (binary melanoma vs rest); the SAE is loaded
(``sae_dir``) or trained on the pool's clean class tokens.
"""

from __future__ import annotations

import os
from typing import Any

from ..data import ISIC2019, ImageSet
from ..sandbox.world import LesionRecipe, make_lesion_dataset


POOL_TINT_RATE: dict[str, float] = {"nevus": 0.2, "melanoma": 0.05}
"""The probe's data (the stand-in for ISIC 2019): the red hue on 20 % of nevus and 5 % of
melanoma images. The dermatology CLIP (``sandbox-derm``) saw the hue on 30 % of both, so
the shortcut lives in this data alone, as the paper's does in ISIC."""


def sandbox_recipes(n_pool: int = 3000, n_sae_train: int = 4000, seed: int = 0, size: int = 64,
                    tint_rate: dict[str, float] | None = None) -> dict[str, dict]:
    """``{name: make_lesion_dataset kwargs}`` of the sandbox sets: "pool" (probe train/test,
    test split) and "sae_train" (train split, another seed than the sandbox CLIPs' own 0),
    both drawn with ``tint_rate`` ({"nevus": p, "melanoma": q}; None: :data:`POOL_TINT_RATE`).

    The SAE sees other images from the probe's distribution, as the paper's SAE learned
    ISIC 2019 (with 2020 and 2024) and its probe read ISIC 2019. With the lesion world's own
    rates instead (the hue on half the nevi), the SAE spent latents on the *untinted* colours
    that adding red switches off; those, not a red latent, then led the benign relevance
    ranking in about half of the SAEs (docs/melanoma.md)."""
    if n_pool < 20:
        raise ValueError(f"n_pool must be >= 20 lesion images, got {n_pool}")
    rate = dict(POOL_TINT_RATE if tint_rate is None else tint_rate)
    if set(rate) != {"nevus", "melanoma"}:
        raise ValueError(f"tint_rate must be {{'nevus': p, 'melanoma': q}}, got {tint_rate}")
    recipe = {"tint_rate_nevus": float(rate["nevus"]), "tint_rate_melanoma": float(rate["melanoma"])}
    LesionRecipe(**recipe)  # the range check, before any image is drawn
    return {"pool": {"n": int(n_pool), "split": "test", "seed": int(seed), "size": int(size), "recipe": recipe},
            "sae_train": {"n": int(n_sae_train), "split": "train", "seed": int(seed) + 1, "size": int(size),
                          "recipe": dict(recipe)}}


def make_sets(recipes: dict[str, dict]) -> dict[str, ImageSet]:
    """The sets of :func:`sandbox_recipes` (or any ``{name: make_lesion_dataset kwargs}``)."""
    return {name: make_lesion_dataset(**kw) for name, kw in recipes.items()}


def isic_pool(csv_path: str | os.PathLike, image_dir: str | os.PathLike) -> tuple[ImageSet, dict[str, Any]]:
    """ISIC 2019 as a binary pool (1 = melanoma) with its provenance for ``pool.json``."""
    pool = ISIC2019(csv_path, image_dir, binary_melanoma=True)
    return pool, {"pool": {"isic2019": {"csv": os.path.basename(str(csv_path)), **pool.describe()}}}


__all__ = ["POOL_TINT_RATE", "sandbox_recipes", "make_sets", "isic_pool"]
