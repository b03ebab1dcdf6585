"""One interface over the two kinds of training data: an in-memory tensor or an on-disk cache.

Training and evaluation only ever ask for rows by index (``take``) or in order
(``iter_chunks``), so a :class:`clipattr_utils.features.FeatureCache` is streamed from its
memmap and never loaded whole: data far larger than RAM works.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from ..finite import NonFiniteRows

STREAM_ROWS = 65536
"""Rows per read when a whole feature set is streamed (mean, evaluation chunks)."""


class FeatureSource:
    """Rows of an (N, d) feature matrix, from a tensor/array or a FeatureCache-like object."""

    def __init__(self, features: Any, name: str = "features"):
        self.cache = None
        self.name = name
        if isinstance(features, FeatureSource):
            self.__dict__.update(features.__dict__)
            return
        if isinstance(features, np.ndarray):
            features = torch.from_numpy(np.asarray(features, dtype=np.float32))
        if isinstance(features, torch.Tensor):
            if features.ndim != 2:
                raise ValueError(f"{name} must be an (N, d) tensor, got shape {tuple(features.shape)}")
            if not features.is_floating_point():
                raise ValueError(f"{name} must be floating point, got {features.dtype}")
            self._x = features.detach()
            self.n, self.d = int(features.shape[0]), int(features.shape[1])
        elif all(hasattr(features, a) for a in ("take", "read", "n", "d")):
            self.cache = features
            self.n, self.d = int(features.n), int(features.d)
        else:
            raise TypeError(f"{name} must be a torch.Tensor, numpy array or FeatureCache, "
                            f"got {type(features).__name__}")
        if self.n == 0:
            raise ValueError(f"{name} is empty (0 rows)")

    def take(self, indices: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Float32 rows at ``indices`` in the given order (on CPU)."""
        if self.cache is not None:
            return self.cache.take(np.asarray(indices, dtype=np.int64)).float()
        return self._x[torch.as_tensor(indices, dtype=torch.long, device=self._x.device)].float()

    def read(self, start: int, stop: int) -> torch.Tensor:
        if self.cache is not None:
            return self.cache.read(start, stop).float()
        return self._x[start:stop].float()

    def iter_chunks(self, chunk_rows: int) -> Iterator[torch.Tensor]:
        for start in range(0, self.n, chunk_rows):
            yield self.read(start, min(self.n, start + chunk_rows))

    @torch.no_grad()
    def mean(self, chunk_rows: int | None = None) -> torch.Tensor:
        """Per-dimension mean over all rows, accumulated in float64, streamed."""
        total = torch.zeros(self.d, dtype=torch.float64)
        for chunk in self.iter_chunks(chunk_rows or STREAM_ROWS):
            total += chunk.to(torch.float64).sum(0).cpu()
        return (total / self.n).float()

    def require_finite(self, hint: str = "", chunk_rows: int | None = None) -> None:
        """One streamed pass over all rows; a ValueError naming ``self.name``, how many rows hold
        NaN or inf and the first few of them, when any do."""
        bad = NonFiniteRows()
        for start in range(0, self.n, chunk_rows or STREAM_ROWS):
            bad.add(self.read(start, min(self.n, start + (chunk_rows or STREAM_ROWS))), start)
        bad.raise_if_any(self.name, self.n, hint)

    def identity(self) -> dict[str, Any]:
        """What the data is, for cfg.json and for refusing to resume on other data."""
        if self.cache is not None:
            meta = getattr(self.cache, "meta", {}) or {}
            out = {"kind": "feature_cache", "key": getattr(self.cache, "key", meta.get("key")),
                   "n": self.n, "d": self.d}
            for field in ("model", "layer", "image_set"):
                if field in meta:
                    out[field] = meta[field]
            return out
        # A cheap fingerprint: first and last rows (hashing everything would cost a full pass).
        head, tail = self._x[:256].float().cpu().numpy(), self._x[-256:].float().cpu().numpy()
        digest = hashlib.sha256(head.tobytes() + tail.tobytes()).hexdigest()[:16]
        return {"kind": "tensor", "n": self.n, "d": self.d, "fingerprint": digest}


def prefetch(items: Iterable, depth: int = 2) -> Iterator:
    """Yield ``items`` while a background thread produces the next ``depth`` of them.

    Disk reads (numpy memmap) release the GIL, so reading batch i+1 overlaps computing batch i.
    Order is preserved, so results are identical to the plain loop.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def worker() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(item)
        except BaseException as err:  # hand the error to the consumer
            q.put(_Raised(err))
            return
        q.put(done)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, _Raised):
                raise item.err
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a worker waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


class _Raised:
    def __init__(self, err: BaseException):
        self.err = err
