"""The labeler's view of each latent: the mean final embedding of its top samples (Sec. 3.2).

A *labeler* is any open_clip model whose FINAL image embedding is used — the paper's
MobileCLIP-S2 (``load_clip("MobileCLIP-S2", "datacompdr", role="labeler")``), the MobileCLIP2
family, or offline the shipped ``"sandbox-labeler"``. Its unit image embeddings of the labeling
pool are cached once (`labeler_embeddings`, i.e. ``features.extract(..., what="embedding")``);
everything here then runs on that cache and a `TopSamples` table.

    x_bar_j = mean of the labeler embeddings of latent j's top ``n_used`` samples   (Eq. 2's x_bar_j)

Rows: ``TopSamples.rows`` index the labeler embeddings directly, so both must come from the
same image set in the same order. When both carry sample ids this is checked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .top import TopSamples

DEFAULT_GATHER_BYTES = 128 * 2**20
"""Budget for one block of gathered (latents x n_used x d) labeler embeddings."""


def labeler_embeddings(labeler: Any, image_set: Any, cache_dir: str | os.PathLike | None = None, **kwargs: Any):
    """The labeler's L2-normalised final image embeddings of ``image_set``, cached: a thin alias
    of ``features.extract(labeler, image_set, cache_dir, what="embedding", **kwargs)``."""
    from ..features import extract

    return extract(labeler, image_set, cache_dir, what="embedding", **kwargs)


class _Source:
    """Rows of labeler embeddings from a tensor/array or a FeatureCache (memmap)."""

    def __init__(self, embeddings: Any):
        from ..features import FeatureCache

        self.ids: list[str] | None = None
        if isinstance(embeddings, FeatureCache):
            if embeddings.what != "embedding":
                raise ValueError(f"labeler embeddings: {embeddings.path.name} caches {embeddings.what!r}, not final "
                                 "embeddings; extract them with features.extract(labeler, images, what='embedding')")
            self.cache, self.x = embeddings, None
            self.n, self.d, self.ids = embeddings.n, embeddings.d, embeddings.ids
        else:
            x = torch.as_tensor(np.asarray(embeddings) if isinstance(embeddings, np.ndarray) else embeddings)
            if x.ndim != 2:
                raise ValueError(f"labeler embeddings must be (N, d), got shape {tuple(x.shape)}")
            self.cache, self.x = None, x.detach().float()
            self.n, self.d = int(x.shape[0]), int(x.shape[1])

    def take(self, rows: np.ndarray) -> torch.Tensor:
        if self.x is not None:
            return self.x[torch.from_numpy(rows)]
        return self.cache.take(rows)


def _check_rows(top: TopSamples, src: _Source, n_used: int) -> None:
    rows = top.rows[:, :n_used]
    valid = rows >= 0
    if valid.any() and int(rows[valid].max()) >= src.n:
        raise ValueError(f"TopSamples rows go up to {int(rows[valid].max())} but the labeler embeddings have only "
                         f"{src.n} rows; both must come from the same image set")
    if src.ids is not None and top.sample_ids is not None:
        v = valid.numpy()
        have = np.asarray(src.ids, dtype=object)[rows.numpy()[v]]
        want = top.sample_ids[:, :n_used][v]
        bad = np.flatnonzero(have != want)
        if bad.size:
            raise ValueError(f"labeler embeddings are not row-aligned with the TopSamples: row "
                             f"{int(rows.numpy()[v][bad[0]])} is {have[bad[0]]!r} there but {want[bad[0]]!r} in the "
                             "features; extract both from the same image set")


def iter_top_embeddings(top: TopSamples, embeddings: Any, n_used: int = 20, *, latents: torch.Tensor | None = None,
                        block_bytes: int = DEFAULT_GATHER_BYTES,
                        progress: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(latent ids (B,), E (B, m, d), mask (B, m))`` blocks: the labeler embeddings of
    each latent's top ``m = n_used`` samples (mask False on padding, where E is 0)."""
    from tqdm.auto import tqdm

    if not 1 <= n_used <= top.n:
        raise ValueError(f"n_used={n_used} must be in [1, TopSamples.n={top.n}]")
    src = embeddings if isinstance(embeddings, _Source) else _Source(embeddings)
    _check_rows(top, src, n_used)
    ids = torch.arange(top.d_sae) if latents is None else torch.as_tensor(latents, dtype=torch.int64)
    block = max(1, int(block_bytes // (4 * n_used * max(src.d, 1))))
    for s in tqdm(range(0, len(ids), block), desc="labeler embeddings", unit="block", disable=not progress):
        lat = ids[s:s + block]
        rows = top.rows[lat, :n_used]
        mask = rows >= 0
        flat = rows[mask].numpy()
        uniq, inv = np.unique(flat, return_inverse=True)
        E = torch.zeros(len(lat), n_used, src.d)
        if uniq.size:
            E[mask] = src.take(uniq)[torch.from_numpy(inv.reshape(-1))]
        yield lat, E, mask


def component_embeddings(top: TopSamples, labeler_embeddings: Any, n_used: int = 20, *,
                         block_bytes: int = DEFAULT_GATHER_BYTES, progress: bool = True) -> torch.Tensor:
    """(d_sae, d) x_bar_j of Eq. 2: the mean labeler embedding of latent j's top ``n_used``
    samples, re-normalised to unit length. A latent with fewer samples averages those it has;
    a latent with none gets a row of NaN.

    Args:
        top: from `top_activating` on the explained model's features.
        labeler_embeddings: (N, d) unit labeler embeddings of the same images (tensor/array),
            or their cache (`labeler_embeddings` / ``extract(..., what="embedding")``).
        n_used: top samples averaged (the paper: 20).
    """
    out = None
    for lat, E, mask in iter_top_embeddings(top, labeler_embeddings, n_used, block_bytes=block_bytes,
                                            progress=progress):
        if out is None:
            out = torch.full((top.d_sae, E.shape[2]), float("nan"))
        k = mask.sum(1)
        mean = E.sum(1) / k.clamp_min(1)[:, None]
        mean = F.normalize(mean, dim=1)
        mean[k == 0] = float("nan")
        out[lat] = mean
    assert out is not None
    return out
