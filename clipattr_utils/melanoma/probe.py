"""The melanoma probe and its explanation by SAE latents (paper Sec. 5.4, Fig. 6a).

The probe is a logistic regression on L2-normalised image embeddings z/|z|, z = head(x). Its
logit y = w . z/|z| + c is a linear readout of the embedding, so the exact Act x Grad of
every active latent is `attribution.act_grad` with the readout in place of a text prompt:

    R_j(x) = a_j v_j . dy/dx                  (positive: towards "melanoma")

Per class, the relevance of latent j is its mean over that class's samples, for the class's
own output: +R for melanoma (the positive logit), -R for benign (the negative logit), a
latent not active in a sample counting 0. Its *share* (the paper's "contributing 4.9 % to the
model's output"; the paper does not spell the normalisation out) is taken here as

    share_j = mean_n s R_jn / mean_n sum_i |R_in|              (s = +1 melanoma, -1 benign)

the class-mean relevance over the class-mean total absolute relevance of the active
latents (the SAE bias and error term get no score and are left out of the denominator).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..attribution import Attribution, act_grad, readout_from_sklearn
from ..head import Head
from ..sae.model import TopKSAE

POSITIVE = 1
"""Label of melanoma (the positive class of the probe); benign / non-melanoma is 0."""


def embed(head: Head, x: torch.Tensor, chunk: int = 65536) -> np.ndarray:
    """(N, d_pre) class tokens -> (N, d_post) L2-normalised image embeddings, float64 numpy."""
    x = torch.as_tensor(x)
    out = []
    with torch.no_grad():
        for s in range(0, x.shape[0], chunk):
            z = head(x[s:s + chunk].to(head.gamma.dtype))
            out.append(torch.nn.functional.normalize(z, dim=-1).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, head.d_post))


SMALL_FIT = 4_000_000
"""Embedding matrices with at most this many entries are fitted with one BLAS thread: lbfgs
on a few thousand rows is dominated by thread hand-offs (10x slower with two threads on a
busy 2-core machine); larger ones keep the library's threads."""


def fit_probe(z: np.ndarray, y: Sequence[int], C: float = 1.0, max_iter: int = 5000):
    """A logistic regression (sklearn, L2, lbfgs) on embeddings ``z``: melanoma (1) vs rest (0)."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    y = np.asarray(y)
    z = np.asarray(z)
    if set(np.unique(y).tolist()) != {0, 1}:
        raise ValueError(f"fit_probe: labels must be 0 (benign) and 1 (melanoma), got {np.unique(y).tolist()}")
    with threadpool_limits(1 if z.size <= SMALL_FIT else None):
        return LogisticRegression(C=float(C), max_iter=int(max_iter)).fit(z, y)


def class_accuracy(clf: Any, z: np.ndarray, y: Sequence[int]) -> dict[int, float]:
    """Accuracy on each class's samples: {label: fraction correct}."""
    y = np.asarray(y)
    pred = clf.predict(np.asarray(z))
    return {int(c): float((pred[y == c] == c).mean()) for c in np.unique(y)}


def probe_relevance(x: torch.Tensor, sae: TopKSAE, head: Head, clf: Any, **opts: Any) -> Attribution:
    """Exact Act x Grad of the probe's logit for the active latents of ``x``: values (N, 1, k)."""
    return act_grad(x, sae, head, readout_from_sklearn(clf, normalize=True), **opts)


def class_relevance(attr: Attribution, labels: Sequence[int], d_sae: int,
                    classnames: Sequence[str] = ("benign", "melanoma")) -> pd.DataFrame:
    """Per class: every latent's mean relevance for that class's output, its share and rank.

    Columns: ``class`` (name), ``label``, ``latent``, ``relevance`` (mean of s R over the
    class's samples), ``share`` (relevance / mean total |R|, see module docstring), ``rank``
    (1 = most relevant for the class), ``active`` (fraction of the class's samples in which
    the latent is active). Latents never active in the class are left out.
    """
    labels = np.asarray(labels)
    if attr.values.shape[1] != 1:
        raise ValueError(f"class_relevance: expected one output (the probe's logit), got {attr.values.shape[1]}")
    if len(labels) != attr.n:
        raise ValueError(f"class_relevance: {len(labels)} labels for {attr.n} samples")
    vals = attr.values[:, 0, :].double()
    frames = []
    for label, name in enumerate(classnames):
        rows = np.flatnonzero(labels == label)
        if rows.size == 0:
            continue
        sign = 1.0 if label == POSITIVE else -1.0
        idx = attr.indices[rows].reshape(-1)
        r = sign * vals[rows].reshape(-1)
        total = torch.zeros(d_sae, dtype=torch.float64).index_add_(0, idx, r) / rows.size
        count = torch.zeros(d_sae, dtype=torch.float64).index_add_(0, idx, (r != 0).double()) / rows.size
        denom = float(vals[rows].abs().sum(dim=1).mean())
        seen = torch.zeros(d_sae, dtype=torch.bool)
        seen[idx[r != 0]] = True
        lat = torch.nonzero(seen).reshape(-1)
        df = pd.DataFrame({"class": name, "label": label, "latent": lat.numpy(),
                           "relevance": total[lat].numpy(),
                           "share": total[lat].numpy() / denom if denom > 0 else np.nan,
                           "active": count[lat].numpy()})
        df = df.sort_values("relevance", ascending=False, kind="stable").reset_index(drop=True)
        df["rank"] = np.arange(1, len(df) + 1)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def rank_of(table: pd.DataFrame, latent: int, cls: str) -> int | None:
    """Rank (1 = top) of ``latent`` among ``cls``'s most relevant latents; None if not listed."""
    hit = table[(table["class"] == cls) & (table["latent"] == int(latent))]
    return None if hit.empty else int(hit["rank"].iloc[0])


def relevance_of(table: pd.DataFrame, latent: int, cls: str) -> dict[str, float]:
    """``relevance`` and ``share`` of one latent for one class (0 where never active)."""
    hit = table[(table["class"] == cls) & (table["latent"] == int(latent))]
    if hit.empty:
        return {"relevance": 0.0, "share": 0.0, "rank": None}
    return {"relevance": float(hit["relevance"].iloc[0]), "share": float(hit["share"].iloc[0]),
            "rank": int(hit["rank"].iloc[0])}


__all__ = ["POSITIVE", "embed", "fit_probe", "class_accuracy", "probe_relevance", "class_relevance", "rank_of",
           "relevance_of"]
