"""Which attribute values can the explained CLIP see at all? A linear probe per value (value
present vs absent) on the unit image embeddings of the independent world, scored by
held-out AUROC. A shortcut on a value the embedding does not encode cannot be learned by
a classifier on that embedding, so `spec.DRAWN_VALUES` leaves such values out."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
import torch

from .images import carries, test_set
from .spec import ENCODED_AUROC, SHORTCUT_KINDS


def encodability(clip: Any = None, cache_dir: str | os.PathLike | None = None, n_train: int = 2400,
                 n_test: int = 1200, seed: int = 0) -> pd.DataFrame:
    """One row per (kind, value) of `SHORTCUT_KINDS`: held-out AUROC of a balanced logistic
    probe on unit image embeddings, and ``encoded`` = AUROC >= `spec.ENCODED_AUROC`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from ..features import extract
    from ..models import load_clip

    clip = clip if clip is not None else load_clip("sandbox")
    sets = test_set(n_train, 20_000 + seed), test_set(n_test, 30_000 + seed)
    emb = []
    for s in sets:
        x = extract(clip, s, cache_dir, progress=False).read()
        with torch.no_grad():
            emb.append(torch.nn.functional.normalize(clip.head(x).double(), dim=-1).numpy())
    rows = []
    for kind, values in SHORTCUT_KINDS.items():
        for value in values:
            has = [carries(s.attributes, kind, value) for s in sets]
            probe = LogisticRegression(C=10.0, max_iter=3000, class_weight="balanced").fit(emb[0], has[0])
            auroc = float(roc_auc_score(has[1], probe.decision_function(emb[1])))
            rows.append({"kind": kind, "value": value, "auroc": auroc, "encoded": auroc >= ENCODED_AUROC,
                         "share_test": float(has[1].mean())})
    return pd.DataFrame(rows)


__all__ = ["encodability"]
