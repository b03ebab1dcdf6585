"""Top-activating samples per SAE latent, streamed over a feature cache of any size (Sec. 3.2).

The first step of labeling: for every latent j, the ``n`` samples with the largest
activations a_j(x) (paper Sec. 3.2, "the top-k most activating samples ... are retrieved"),
plus the per-latent statistics of App. C (firing rate, mean activation, top-5 / top-20 means).

Memory is O(d_sae x n) whatever the number of rows: the features are encoded chunk by chunk
(``sae.encode``), each chunk's active (row, latent, value) triplets are pruned against the
running n-th best value of their latent, sorted by (latent, -value, row), cut to n per latent
and merged into the running (d_sae, n) table. Order is exact and deterministic: descending
activation, ties broken by the lower row index (what a stable sort of each latent's column of
the dense activation matrix gives).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..finite import NonFiniteRows
from ..sae.model import TopKSAE

_PAD_ROW = torch.iinfo(torch.int64).max  # sorts after every real row while merging
DEFAULT_ENCODE_BYTES = 256 * 2**20
"""Budget for one chunk's dense (rows x d_sae) pre-activations inside ``sae.encode``."""
DEFAULT_MERGE_TRIPLETS = 4_000_000
"""Active (row, latent, value) triplets buffered before they are merged into the table."""


@dataclass
class TopSamples:
    """Per latent: the ``n`` most activating rows (descending) and activation statistics.

    Padding: a latent active on fewer than ``n`` rows has ``rows == -1``, ``values == NaN``
    (and ``sample_ids is None``) in its remaining slots; a latent never active has only padding.
    All statistics count the *active* slots of the SAE code (``sae.active_mask``).
    """

    values: torch.Tensor
    """(d_sae, n) float32 activations a_j of the top rows, descending; NaN = padding."""

    rows: torch.Tensor
    """(d_sae, n) int64 row indices into the features (plus ``row_offset``); -1 = padding."""

    count: torch.Tensor
    """(d_sae,) int64 number of rows on which the latent is active (non-zero activations)."""

    total: torch.Tensor
    """(d_sae,) float64 sum of the latent's activations over all rows (for exact merges)."""

    n_rows: int
    """N, the number of rows scanned (the denominator of ``firing_rate``)."""

    total_sq: torch.Tensor | None = None
    """(d_sae,) float64 sum of squared activations (``mean_square``: the variance a latent
    carries, E[a_j^2] |v_j|^2 with unit decoder rows; used to rank latents like PCA directions)."""

    sample_ids: np.ndarray | None = None
    """(d_sae, n) object array of the sample ids at ``rows`` (None = padding), or None when
    the features carried no ids."""

    ranges: tuple[tuple[int, int], ...] = ()
    """The global row ranges [start, stop) scanned (one per shard; `merge` checks they are disjoint)."""

    meta: dict[str, Any] = field(default_factory=dict)
    """Provenance: feature cache key, SAE config, n."""

    # ------------------------------------------------------------------ shape
    @property
    def d_sae(self) -> int:
        return int(self.values.shape[0])

    @property
    def n(self) -> int:
        """Slots kept per latent."""
        return int(self.values.shape[1])

    @property
    def valid(self) -> torch.Tensor:
        """(d_sae, n) bool: which slots hold a real sample."""
        return self.rows >= 0

    # ------------------------------------------------------------------ statistics (App. C)
    @property
    def firing_rate(self) -> torch.Tensor:
        """(d_sae,) count / N: the share of rows on which the latent is active."""
        return self.count.double() / max(self.n_rows, 1)

    @property
    def mean_activation(self) -> torch.Tensor:
        """(d_sae,) mean activation over the rows where the latent fires (NaN if it never does)."""
        return torch.where(self.count > 0, self.total / self.count.clamp_min(1).double(),
                           torch.tensor(float("nan"), dtype=torch.float64))

    @property
    def mean_square(self) -> torch.Tensor:
        """(d_sae,) E[a_j^2] over all N rows (inactive rows counting 0)."""
        if self.total_sq is None:
            raise ValueError("this TopSamples carries no sum of squares (made by an older version)")
        return self.total_sq / max(self.n_rows, 1)

    @property
    def mean_activation_all(self) -> torch.Tensor:
        """(d_sae,) mean activation over all N rows, inactive rows counting 0 (App. C's
        "average activation over the entire dataset"); = mean_activation * firing_rate."""
        return self.total / max(self.n_rows, 1)

    def top_mean(self, m: int) -> torch.Tensor:
        """(d_sae,) mean of the latent's top ``min(m, count)`` activations (NaN if never active).

        Raises if ``m > n`` (those values were not kept)."""
        if not 1 <= m <= self.n:
            raise ValueError(f"top_mean: m={m} must be in [1, n={self.n}] (the table keeps the top {self.n} rows)")
        v = self.values[:, :m].double()
        ok = ~torch.isnan(v)
        k = ok.sum(1)
        s = torch.where(ok, v, torch.zeros_like(v)).sum(1)
        return torch.where(k > 0, s / k.clamp_min(1), torch.tensor(float("nan"), dtype=torch.float64))

    @property
    def top5_mean(self) -> torch.Tensor:
        """(d_sae,) mean of the top-5 activations (App. C, Fig. 9 left)."""
        return self.top_mean(min(5, self.n))

    @property
    def top20_mean(self) -> torch.Tensor:
        """(d_sae,) mean of the top-20 activations (the relevance proxy of App. C.2, tau_act)."""
        return self.top_mean(min(20, self.n))

    def stats(self) -> pd.DataFrame:
        """One row per latent: latent, count, firing_rate, mean_activation, mean_activation_all,
        top5_mean, top20_mean."""
        return pd.DataFrame({
            "latent": np.arange(self.d_sae), "count": self.count.numpy(), "firing_rate": self.firing_rate.numpy(),
            "mean_activation": self.mean_activation.numpy(), "mean_activation_all": self.mean_activation_all.numpy(),
            "top5_mean": self.top5_mean.numpy(), "top20_mean": self.top20_mean.numpy(),
        })

    # ------------------------------------------------------------------ access
    def latent(self, j: int) -> pd.DataFrame:
        """The valid top rows of latent ``j``: rank, row, sample_id, activation."""
        keep = self.valid[j]
        rows = self.rows[j][keep].numpy()
        ids = self.sample_ids[j][keep.numpy()] if self.sample_ids is not None else [None] * len(rows)
        return pd.DataFrame({"rank": np.arange(len(rows)), "row": rows, "sample_id": list(ids),
                             "activation": self.values[j][keep].numpy()})

    def top_rows(self, latents: Iterable[int] | None = None, n: int | None = None) -> dict[int, list[int]]:
        """latent -> its top ``n`` rows (for `gallery.latent_grid`)."""
        n = self.n if n is None else int(n)
        ids = range(self.d_sae) if latents is None else latents
        return {int(j): [int(r) for r in self.rows[int(j), :n] if r >= 0] for j in ids}

    def to_frame(self) -> pd.DataFrame:
        """Long format, padding left out: latent, rank, row, sample_id, activation."""
        valid = self.valid.numpy()
        latent, rank = np.nonzero(valid)
        ids = self.sample_ids[valid] if self.sample_ids is not None else np.full(len(latent), None, object)
        return pd.DataFrame({"latent": latent.astype(np.int64), "rank": rank.astype(np.int64),
                             "row": self.rows.numpy()[valid], "sample_id": ids,
                             "activation": self.values.numpy()[valid]})

    # ------------------------------------------------------------------ io
    def save(self, folder: str | os.PathLike) -> Path:
        """``top_samples.safetensors`` + ``top_samples.json`` (ids, ranges, meta) in ``folder``, atomically."""
        from ..storage import save_tensors_atomic, write_json_atomic

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"values": self.values, "rows": self.rows, "count": self.count, "total": self.total}
        if self.total_sq is not None:
            tensors["total_sq"] = self.total_sq
        save_tensors_atomic(folder / "top_samples.safetensors", tensors)
        ids = None if self.sample_ids is None else [[None if v is None else str(v) for v in r] for r in self.sample_ids]
        write_json_atomic(folder / "top_samples.json", {"n_rows": self.n_rows, "ranges": [list(r) for r in self.ranges],
                                                        "meta": self.meta, "sample_ids": ids}, indent=0)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "TopSamples":
        from safetensors.torch import load_file

        folder = Path(folder)
        for name in ("top_samples.safetensors", "top_samples.json"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"TopSamples.load: {folder / name} is missing")
        t = load_file(str(folder / "top_samples.safetensors"))
        info = json.loads((folder / "top_samples.json").read_text())
        ids = None if info["sample_ids"] is None else np.array(info["sample_ids"], dtype=object)
        return cls(t["values"], t["rows"], t["count"], t["total"], int(info["n_rows"]), t.get("total_sq"), ids,
                   tuple(tuple(r) for r in info["ranges"]), info.get("meta", {}))

    def __repr__(self) -> str:
        alive = int((self.count > 0).sum())
        return f"TopSamples(d_sae={self.d_sae}, n={self.n}, n_rows={self.n_rows}, active latents={alive})"


# ---------------------------------------------------------------------------- merging


def _merge_tables(v1: torch.Tensor, r1: torch.Tensor, v2: torch.Tensor, r2: torch.Tensor,
                  n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge two (U, *) candidate tables (padding: value -inf, row _PAD_ROW) into the top ``n``
    by (-value, row). Returns (values, rows, which, position): ``which`` 0/1 says the source
    table and ``position`` the column in it (for carrying sample ids)."""
    v = torch.cat([v1, v2], dim=1)
    r = torch.cat([r1, r2], dim=1)
    src = torch.cat([torch.zeros_like(r1), torch.ones_like(r2)], dim=1)
    pos = torch.cat([torch.arange(r1.shape[1], device=r1.device).expand_as(r1),
                     torch.arange(r2.shape[1], device=r2.device).expand_as(r2)], dim=1)
    # Lexicographic (-value, row): stable sort by row, then stable sort by value descending.
    o = torch.sort(r, dim=1, stable=True).indices
    v, r, src, pos = (t.gather(1, o) for t in (v, r, src, pos))
    o = torch.sort(v, dim=1, descending=True, stable=True).indices[:, :n]
    return v.gather(1, o), r.gather(1, o), src.gather(1, o), pos.gather(1, o)


class _Accumulator:
    """The running (d_sae, n) table plus counts and sums, fed with active triplets."""

    def __init__(self, d_sae: int, n: int, device: torch.device, merge_triplets: int):
        self.d_sae, self.n, self.device = d_sae, n, device
        self.values = torch.full((d_sae, n), float("-inf"), dtype=torch.float32, device=device)
        self.rows = torch.full((d_sae, n), _PAD_ROW, dtype=torch.int64, device=device)
        self.count = torch.zeros(d_sae, dtype=torch.int64, device=device)
        self.total = torch.zeros(d_sae, dtype=torch.float64, device=device)
        self.total_sq = torch.zeros(d_sae, dtype=torch.float64, device=device)
        self.merge_triplets = int(merge_triplets)
        self._buf: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._buffered = 0
        self.merges = 0

    def add(self, rows: torch.Tensor, latents: torch.Tensor, values: torch.Tensor) -> None:
        """Active triplets, in increasing row order within and across calls."""
        values = values.float()
        self.count += torch.bincount(latents, minlength=self.d_sae)
        self.total.index_add_(0, latents, values.double())
        self.total_sq.index_add_(0, latents, values.double() ** 2)
        # Prune: a value not above the latent's current n-th best can never enter (ties lose to
        # the earlier row already kept, since rows arrive in increasing order).
        keep = values > self.values[latents, self.n - 1]
        if not bool(keep.all()):
            rows, latents, values = rows[keep], latents[keep], values[keep]
        if rows.numel():
            self._buf.append((rows, latents, values))
            self._buffered += rows.numel()
        if self._buffered >= self.merge_triplets:
            self.flush()

    def flush(self) -> None:
        if not self._buf:
            return
        rows, lat, val = (torch.cat(p) for p in zip(*self._buf))
        self._buf, self._buffered = [], 0
        # Prune again against the table as it is now.
        keep = val > self.values[lat, self.n - 1]
        rows, lat, val = rows[keep], lat[keep], val[keep]
        if not rows.numel():
            return
        # Sort by (latent, -value, row): rows ascend in buffer order, so two stable sorts do it.
        o = torch.sort(val, descending=True, stable=True).indices
        rows, lat, val = rows[o], lat[o], val[o]
        o = torch.sort(lat, stable=True).indices
        rows, lat, val = rows[o], lat[o], val[o]
        touched, per = torch.unique_consecutive(lat, return_counts=True)
        starts = torch.cumsum(per, 0) - per
        rank = torch.arange(lat.numel(), device=lat.device) - torch.repeat_interleave(starts, per)
        keep = rank < self.n
        rows, lat, val, rank = rows[keep], lat[keep], val[keep], rank[keep]
        slot = torch.searchsorted(touched, lat)
        cv = torch.full((touched.numel(), self.n), float("-inf"), dtype=torch.float32, device=self.device)
        cr = torch.full((touched.numel(), self.n), _PAD_ROW, dtype=torch.int64, device=self.device)
        cv[slot, rank] = val
        cr[slot, rank] = rows
        v, r, _, _ = _merge_tables(self.values[touched], self.rows[touched], cv, cr, self.n)
        self.values[touched] = v
        self.rows[touched] = r
        self.merges += 1

    def result(self, n_rows: int, ids: Sequence[str] | None, ranges: tuple, meta: dict) -> TopSamples:
        self.flush()
        pad = self.rows == _PAD_ROW
        values = self.values.masked_fill(pad, float("nan")).cpu()
        rows = self.rows.masked_fill(pad, -1).cpu()
        sample_ids = None
        if ids is not None:
            sample_ids = _gather_ids(ids, rows, offset=ranges[0][0] if ranges else 0)
        return TopSamples(values, rows, self.count.cpu(), self.total.cpu(), int(n_rows), self.total_sq.cpu(),
                          sample_ids, ranges, meta)


def _gather_ids(ids: Sequence[str], rows: torch.Tensor, offset: int) -> np.ndarray:
    arr = np.asarray(ids, dtype=object)
    r = rows.numpy()
    out = np.full(r.shape, None, dtype=object)
    valid = r >= 0
    out[valid] = arr[r[valid] - offset]
    return out


# ---------------------------------------------------------------------------- entry points


def _chunks(features: Any, chunk_rows: int) -> tuple[int, int, Iterator[tuple[int, torch.Tensor]], list[str] | None, dict]:
    """(N, d, iterator of (start, rows), ids, meta) for a FeatureCache, tensor or array."""
    from ..features import FeatureCache

    if isinstance(features, FeatureCache):
        meta = {"features": str(features.path.name), "features_key": features.key}
        return features.n, features.d, features.iter_chunks(chunk_rows), list(features.ids), meta
    if isinstance(features, np.ndarray):
        features = torch.from_numpy(features)
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features must be a FeatureCache, torch.Tensor or numpy array, got {type(features).__name__}")
    if features.ndim != 2:
        raise ValueError(f"features must be (N, d_in), got shape {tuple(features.shape)}")
    x = features.detach()
    it = ((s, x[s:s + chunk_rows].float()) for s in range(0, x.shape[0], chunk_rows))  # float16 rows too
    return int(x.shape[0]), int(x.shape[1]), it, None, {}


def auto_chunk_rows(d_sae: int, budget_bytes: int = DEFAULT_ENCODE_BYTES) -> int:
    """Rows per encode chunk so the dense (rows x d_sae) float32 pre-activations fit ``budget_bytes``."""
    return int(max(64, min(65536, budget_bytes // (4 * max(d_sae, 1)))))


@torch.no_grad()
def top_activating(features: Any, sae: TopKSAE, n: int = 100, *, chunk_rows: int | None = None,
                   ids: Sequence[str] | None = None, row_offset: int = 0, device: str | torch.device | None = None,
                   merge_triplets: int = DEFAULT_MERGE_TRIPLETS, progress: bool = True) -> TopSamples:
    """The ``n`` most activating rows of every latent, streamed (paper Sec. 3.2; App. C stats).

    Args:
        features: a `FeatureCache` (any size: read chunk by chunk), or an (N, d_in) tensor/array.
        sae: the top-k SAE; only its active slots (``sae.active_mask``) count.
        n: rows kept per latent (>= 20 so that ``top20_mean`` is defined on 20 values).
        chunk_rows: rows per ``sae.encode`` call (default: a ~256 MB dense pre-activation block).
        ids: sample ids for a tensor input (a FeatureCache brings its own).
        row_offset: added to every row index, so shards of one image set can be numbered in a
            global index and merged with `merge`.
        device: where encoding and merging run (default: the SAE's device).
        merge_triplets: active triplets buffered between merges (bounds the temporaries).
        progress: a tqdm bar over chunks.

    Returns:
        `TopSamples`; memory O(d_sae x n) plus one chunk.
    """
    from tqdm.auto import tqdm

    if n < 1:
        raise ValueError(f"top_activating: n must be >= 1, got {n}")
    chunk_rows = auto_chunk_rows(sae.d_sae) if chunk_rows is None else int(chunk_rows)
    if chunk_rows < 1:
        raise ValueError(f"top_activating: chunk_rows must be >= 1, got {chunk_rows}")
    n_rows, d, chunks, cache_ids, meta = _chunks(features, chunk_rows)
    if d != sae.d_in:
        raise ValueError(f"top_activating: features have width d={d} but the SAE expects d_in={sae.d_in}")
    if ids is not None:
        if cache_ids is not None:
            raise ValueError("top_activating: ids= is only for tensor input; a FeatureCache carries its own ids")
        if len(ids) != n_rows:
            raise ValueError(f"top_activating: {len(ids)} ids for {n_rows} feature rows")
        cache_ids = [str(i) for i in ids]
    dev = torch.device(device) if device is not None else sae.W_dec.device
    acc = _Accumulator(sae.d_sae, int(n), dev, merge_triplets)
    bad = NonFiniteRows()
    bar = tqdm(total=n_rows, unit="row", desc="top-activating samples", disable=not progress)
    for start, x in chunks:
        bad.add(x, start + row_offset)
        if bad.count:  # the table is refused below; only count the remaining bad rows
            bar.update(x.shape[0])
            continue
        code = sae.encode(x.to(dev, sae.W_enc.dtype), chunk_rows=max(chunk_rows, 1))
        active = sae.active_mask(code)
        r, slot = torch.nonzero(active, as_tuple=True)  # row-major: rows ascend
        acc.add(r + (start + row_offset), code.indices[r, slot], code.values[r, slot])
        bar.update(x.shape[0])
    bar.close()
    # A NaN row would count in n_rows (and the activation frequencies) yet never enter a table.
    bad.raise_if_any("top_activating: features", n_rows, "drop or repair those rows first")
    meta = {**meta, "sae": sae.config(), "n": int(n)}
    return acc.result(n_rows, cache_ids, ((int(row_offset), int(row_offset) + n_rows),), meta)


def merge(a: TopSamples, b: TopSamples) -> TopSamples:
    """Exact union of two `TopSamples` over disjoint row ranges (shards of one image set,
    numbered in one global index via ``row_offset``): the same table a single pass gives."""
    if a.d_sae != b.d_sae or a.n != b.n:
        raise ValueError(f"merge: shapes differ: (d_sae, n) = ({a.d_sae}, {a.n}) vs ({b.d_sae}, {b.n})")
    for s1, e1 in a.ranges:
        for s2, e2 in b.ranges:
            if s1 < e2 and s2 < e1:
                raise ValueError(f"merge: row ranges overlap ([{s1}, {e1}) and [{s2}, {e2})); number the shards in "
                                 "one global index with top_activating(..., row_offset=...)")
    if (a.sample_ids is None) != (b.sample_ids is None):
        raise ValueError("merge: one table has sample ids and the other has none")

    def prep(t: TopSamples) -> tuple[torch.Tensor, torch.Tensor]:
        pad = t.rows < 0
        return t.values.masked_fill(pad, float("-inf")), t.rows.masked_fill(pad, _PAD_ROW)

    v, r, src, pos = _merge_tables(*prep(a), *prep(b), a.n)
    pad = r == _PAD_ROW
    ids = None
    if a.sample_ids is not None:
        both = np.stack([a.sample_ids, b.sample_ids])  # (2, d_sae, n)
        lat = np.arange(a.d_sae)[:, None]
        ids = both[src.numpy(), lat, pos.numpy()]
        ids[pad.numpy()] = None
    ranges = tuple(sorted(a.ranges + b.ranges))
    meta = dict(a.meta) if a.meta == b.meta else {"merged": [a.meta, b.meta]}
    total_sq = None if a.total_sq is None or b.total_sq is None else a.total_sq + b.total_sq
    return TopSamples(v.masked_fill(pad, float("nan")), r.masked_fill(pad, -1), a.count + b.count,
                      a.total + b.total, a.n_rows + b.n_rows, total_sq, ids, ranges, meta)
