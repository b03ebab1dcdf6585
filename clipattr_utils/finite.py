"""Refusing NaN and inf in feature rows, with the count and the first bad rows named.

One non-finite number in a feature row poisons whatever it reaches, and nothing downstream
raises by itself: in an SAE training batch it turns every weight NaN (the decoder
renormalisation and Adam's moments spread it to all latents) while ``train`` returns
normally; in ``top_k`` over NaN pre-activations it picks arbitrary latent ids; a NaN score
sorts anywhere. So the entry points that take feature rows check them here and refuse the
input, saying how many rows are bad and which (global row indices, so they can be looked up
in the cache's ``ids``). Streaming callers feed chunks to one :class:`NonFiniteRows` and
raise once at the end, so the count covers every row, not just the first chunk.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

SHOW_ROWS = 5
"""How many bad row indices an error lists."""


class NonFiniteRows:
    """Counts the rows holding NaN or inf over chunks of an (N, ...) matrix."""

    def __init__(self) -> None:
        self.count = 0
        self.first: list[int] = []

    def add(self, x: torch.Tensor | np.ndarray, start: int = 0) -> None:
        """Check rows ``start .. start + len(x)`` (``x`` is their data)."""
        t = torch.as_tensor(x)
        if not t.is_floating_point() or bool(torch.isfinite(t).all()):
            return
        bad = torch.nonzero(~torch.isfinite(t).reshape(t.shape[0], -1).all(1)).flatten()
        self.count += int(bad.numel())
        need = SHOW_ROWS - len(self.first)
        if need > 0:
            self.first += [int(r) + int(start) for r in bad[:need].tolist()]

    def error(self, name: str, n_rows: int, hint: str = "") -> ValueError:
        more = ", ..." if self.count > len(self.first) else ""
        rows = ", ".join(str(r) for r in self.first)
        return ValueError(f"{name}: {self.count} of {n_rows} rows hold NaN or inf (rows {rows}{more})"
                          + (f"; {hint}" if hint else ""))

    def raise_if_any(self, name: str, n_rows: int, hint: str = "") -> None:
        if self.count:
            raise self.error(name, n_rows, hint)


def require_finite(x: Any, name: str, *, hint: str = "") -> None:
    """Raise a ValueError naming ``name``, the number of non-finite rows of ``x`` and the first
    few; return quietly when every value is finite."""
    rows = NonFiniteRows()
    rows.add(x)
    rows.raise_if_any(name, int(torch.as_tensor(x).shape[0]), hint)
