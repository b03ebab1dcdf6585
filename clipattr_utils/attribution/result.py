"""Attribution outputs and the helpers every method shares.

Every method scores only the k latents active in each sample, so a result is the sparse
pair ``indices`` (N, k) + ``values`` (N, T, k) rather than a dense (N, T, d_sae) tensor.
From there: the top-n latents per (sample, prompt), the mean over a reference set (the
"global relevance" of Sec. 4.2 b and App. B.2), and a long-format pandas view.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch


class Attribution(NamedTuple):
    """Scores of the active latents of N samples for T outputs (prompts or readouts)."""

    indices: torch.Tensor
    """(N, k) int64 latent ids j active in each sample (the SAE's top-k, decreasing activation)."""

    values: torch.Tensor
    """(N, T, k) score R_j(x_n, t) of latent ``indices[n, i]`` for output t.

    T-independent methods (energy, random) return a broadcast view (``expand``); call
    ``.contiguous()`` before writing into it in place."""

    @property
    def n(self) -> int:
        return self.indices.shape[0]

    @property
    def t(self) -> int:
        return self.values.shape[1]

    @property
    def k(self) -> int:
        return self.indices.shape[1]

    def top(self, n: int, largest: bool = True) -> "TopAttribution":
        """The ``n`` highest (or lowest) scoring latents per (sample, prompt)."""
        return top_n(self, n, largest=largest)

    def mean(self, d_sae: int, sparse: bool = False) -> torch.Tensor:
        """Mean relevance over the N samples, per prompt: (T, d_sae). See :func:`mean_relevance`."""
        return mean_relevance(self, d_sae, sparse=sparse)

    def to_frame(self, **kwargs) -> pd.DataFrame:
        """Long-format DataFrame; see :func:`to_frame`."""
        return to_frame(self, **kwargs)


class TopAttribution(NamedTuple):
    """The n best latents per (sample, prompt), sorted by score."""

    indices: torch.Tensor
    """(N, T, n) int64 latent ids, best first."""

    values: torch.Tensor
    """(N, T, n) their scores."""

    def to_frame(self, **kwargs) -> pd.DataFrame:
        return to_frame(self, **kwargs)


def _check(attr: Attribution) -> None:
    if not isinstance(attr, Attribution):
        raise TypeError(f"expected an Attribution, got {type(attr).__name__}")
    if attr.indices.ndim != 2 or attr.values.ndim != 3 or attr.values.shape[0] != attr.indices.shape[0] \
            or attr.values.shape[2] != attr.indices.shape[1]:
        raise ValueError(
            f"Attribution shapes disagree: indices {tuple(attr.indices.shape)} must be (N, k) and "
            f"values {tuple(attr.values.shape)} must be (N, T, k)"
        )


def top_n(attr: Attribution, n: int, largest: bool = True) -> TopAttribution:
    """Top-``n`` latents per (sample, prompt) by signed score (``largest=False``: most negative)."""
    _check(attr)
    if not 0 < n <= attr.k:
        raise ValueError(f"top_n: need 0 < n <= k={attr.k}, got n={n}")
    vals, pos = attr.values.topk(n, dim=-1, largest=largest, sorted=True)
    ids = attr.indices[:, None, :].expand(-1, attr.t, -1).gather(-1, pos)
    return TopAttribution(ids, vals)


def mean_relevance(attr: Attribution, d_sae: int, sparse: bool = False) -> torch.Tensor:
    """Global relevance: mean over the N samples of R_j(x_n, t), latents not active in a
    sample counting as 0 (App. B.2, "global relevance scores based on the samples").

    Returns (T, d_sae), dense by default; ``sparse=True`` gives a coalesced sparse COO tensor
    holding only latents active somewhere in the reference set.
    """
    _check(attr)
    if attr.indices.numel() and int(attr.indices.max()) >= d_sae:
        raise ValueError(f"mean_relevance: latent id {int(attr.indices.max())} >= d_sae={d_sae}")
    acc = MeanRelevance(attr.t, d_sae, dtype=attr.values.dtype, device=attr.values.device, sparse=sparse)
    acc(slice(0, attr.n), slice(0, attr.t), attr)
    return acc.result()


class MeanRelevance:
    """Streaming mean relevance, usable as the ``on_chunk`` callback of any method so that the
    (N, T, k) scores are never held at once::

        acc = MeanRelevance(T, sae.d_sae)
        act_grad(x, sae, head, text, on_chunk=acc)
        R_mean = acc.result()          # (T, d_sae)

    Memory: one dense (T, d_sae) sum (``sparse=True`` keeps only the (t, j) pairs seen).
    """

    def __init__(self, n_outputs: int, d_sae: int, *, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", sparse: bool = False):
        self.n_outputs, self.d_sae, self.sparse = int(n_outputs), int(d_sae), bool(sparse)
        self.dtype, self.device = dtype, torch.device(device)
        self._sum = None if sparse else torch.zeros(self.n_outputs, self.d_sae, dtype=dtype, device=self.device)
        self._parts: list[torch.Tensor] = []
        self._seen: dict[tuple[int, int], int] = {}

    def __call__(self, n_slice: slice, t_slice: slice, chunk: Attribution) -> None:
        vals = chunk.values.to(self.device, self.dtype)
        nc, tc, k = vals.shape
        if t_slice.stop > self.n_outputs:
            raise ValueError(f"MeanRelevance(n_outputs={self.n_outputs}) got prompts up to {t_slice.stop}")
        # Count samples per prompt chunk so the mean divides by the samples actually seen.
        key = (t_slice.start, t_slice.stop)
        self._seen[key] = self._seen.get(key, 0) + nc
        ids = chunk.indices.to(self.device)
        flat_ids = ids.reshape(-1)  # (nc*k,)
        per_t = vals.permute(1, 0, 2).reshape(tc, nc * k)
        if self.sparse:
            rows = torch.arange(t_slice.start, t_slice.stop, device=self.device)
            r = rows[:, None].expand(tc, nc * k).reshape(-1)
            c = flat_ids[None, :].expand(tc, -1).reshape(-1)
            self._parts.append(torch.sparse_coo_tensor(torch.stack([r, c]), per_t.reshape(-1),
                                                       (self.n_outputs, self.d_sae), check_invariants=True).coalesce())
        else:
            self._sum[t_slice].index_add_(1, flat_ids, per_t)

    def result(self) -> torch.Tensor:
        counts = torch.zeros(self.n_outputs, dtype=self.dtype, device=self.device)
        for (t0, t1), c in self._seen.items():
            counts[t0:t1] += c
        if (counts == 0).any():
            missing = int((counts == 0).nonzero()[0])
            raise ValueError(f"MeanRelevance: no samples were seen for output {missing}")
        if self.sparse:
            total = torch.sparse_coo_tensor(torch.empty(2, 0, dtype=torch.long, device=self.device),
                                            torch.empty(0, dtype=self.dtype, device=self.device),
                                            (self.n_outputs, self.d_sae), check_invariants=True)
            for p in self._parts:
                total = total + p
            total = total.coalesce()
            idx, val = total.indices(), total.values() / counts[total.indices()[0]]
            return torch.sparse_coo_tensor(idx, val, total.shape, check_invariants=True).coalesce()
        return self._sum / counts[:, None]


def to_frame(
    attr: Attribution | TopAttribution,
    *,
    prompts: Sequence[str] | None = None,
    sample_ids: Sequence[str] | None = None,
    latent_names: Sequence[str] | None = None,
    top: int | None = None,
) -> pd.DataFrame:
    """Long format: one row per (sample, prompt, latent) with columns ``sample``, ``prompt``,
    ``rank`` (0 = highest score), ``latent``, ``score`` and, where given, ``latent_name``.

    ``top`` keeps the best ``top`` latents per (sample, prompt) (recommended: the full table
    has N*T*k rows).
    """
    if isinstance(attr, Attribution):
        _check(attr)
        attr = top_n(attr, top or attr.k)
    elif not isinstance(attr, TopAttribution):
        raise TypeError(f"to_frame expects Attribution or TopAttribution, got {type(attr).__name__}")
    elif top is not None:
        attr = TopAttribution(attr.indices[..., :top], attr.values[..., :top])
    n, t, m = attr.values.shape
    if prompts is not None and len(prompts) != t:
        raise ValueError(f"to_frame: prompts has {len(prompts)} entries for T={t} outputs")
    if sample_ids is not None and len(sample_ids) != n:
        raise ValueError(f"to_frame: sample_ids has {len(sample_ids)} entries for N={n} samples")
    ii, tt, rr = np.meshgrid(np.arange(n), np.arange(t), np.arange(m), indexing="ij")
    latents = attr.indices.detach().cpu().numpy().reshape(-1)
    df = pd.DataFrame({
        "sample": np.asarray(sample_ids, dtype=object)[ii.reshape(-1)] if sample_ids is not None else ii.reshape(-1),
        "prompt": np.asarray(prompts, dtype=object)[tt.reshape(-1)] if prompts is not None else tt.reshape(-1),
        "rank": rr.reshape(-1),
        "latent": latents,
        "score": attr.values.detach().cpu().double().numpy().reshape(-1),
    })
    if latent_names is not None:
        names = np.asarray(latent_names, dtype=object)
        if latents.size and latents.max() >= len(names):
            raise ValueError(f"to_frame: latent id {latents.max()} has no entry in latent_names ({len(names)})")
        df["latent_name"] = names[latents]
    return df
