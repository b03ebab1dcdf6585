"""Image galleries of SAE latents: the samples on which a latent is most active, beside the
image being explained. Figures only; the numbers come from the SAE code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .sae.model import EncoderOutput


def top_activating_rows(code: EncoderOutput | tuple[torch.Tensor, torch.Tensor], latents: Sequence[int],
                        n: int = 5) -> dict[int, list[int]]:
    """For each latent, the rows of ``code`` with its ``n`` largest activations (largest
    first; rows where it is inactive never appear, so a rare latent may get fewer)."""
    indices, values = code
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out: dict[int, list[int]] = {}
    for j in latents:
        rows, slots = torch.nonzero(indices == int(j), as_tuple=True)
        acts = values[rows, slots].detach()
        keep = acts > 0
        rows, acts = rows[keep], acts[keep]
        order = torch.argsort(acts, descending=True, stable=True)[:n]
        out[int(j)] = rows[order].tolist()
    return out


def latent_grid(image_set, rows_per_latent: Mapping[int, Sequence[int]], *, anchor: int | None = None,
                anchor_title: str | None = None, caption: Callable[[int], str] | None = None,
                n: int | None = None, scale: float = 1.5,
                heat: Callable[[int, Sequence[int]], Any] | None = None):
    """One row per latent: (optionally) the anchor image, then the images at its rows.

    Args:
        image_set: anything with ``load_image(i)``.
        rows_per_latent: latent id -> sample rows to show (e.g. :func:`top_activating_rows`).
        anchor: a sample row shown first in every row (the image being explained).
        caption: row -> short title under each image (e.g. its class name).
        n: columns of examples (default: the longest list).
        heat: ``(latent, rows) -> (len(rows), grid rows, grid columns)`` maps drawn over each
            example and over the anchor (e.g. `spatial.heat_source(clip, sae, image_set)`: where
            the latent's activation comes from); None shows the plain images.
    """
    import matplotlib.pyplot as plt

    if not rows_per_latent:
        raise ValueError("latent_grid: no latents to show")
    n = n or max(len(r) for r in rows_per_latent.values())
    first = 1 if anchor is not None else 0
    fig, axes = plt.subplots(len(rows_per_latent), first + n, figsize=(scale * (first + n), scale * len(rows_per_latent)),
                             squeeze=False)
    for r, (j, rows) in enumerate(rows_per_latent.items()):
        if anchor is not None:
            image = image_set.load_image(anchor)
            if heat is not None:   # the anchor with this row's latent's map: which latent, where
                from .spatial import overlay

                image = overlay(image, heat(int(j), [int(anchor)])[0])
            axes[r, 0].imshow(np.asarray(image))
            if r == 0 and anchor_title:
                axes[r, 0].set_title(anchor_title, fontsize=8)
        axes[r, 0].set_ylabel(f"latent {j}", fontsize=8)
        shown = [int(i) for i in list(rows)[:n]]
        maps = heat(int(j), shown) if heat is not None and shown else None
        for c, i in enumerate(shown, start=first):
            image = image_set.load_image(i)
            if maps is not None:
                from .spatial import overlay

                image = overlay(image, maps[c - first])
            axes[r, c].imshow(np.asarray(image))
            if caption is not None:
                axes[r, c].set_title(caption(int(i)), fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


__all__ = ["top_activating_rows", "latent_grid"]
