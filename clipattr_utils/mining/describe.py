"""What the distractors of a flagged pair share, named by the labeler (Eq. 2 on the distractors).

A latent's label (notebook 02) describes its top activations over a whole labeling pool: the
"what" of the latent. A flagged pair (class c, latent j) is about something narrower: the
distractors, the outsiders of c on which j's relevance for c is unusually high (Eq. 8). A
latent can be flagged for a subset of what it encodes -- a latent whose top images are water
may also carry the word "fish" into the "fish" prompt -- so its global label need not say what
fooled the class. `distractor_labels` names the distractor set itself, with the same Eq. 2:

    s_(c,j)(t) = cos(x_bar_(c,j), t) - cos(x_bar_(c,j), t_empty),

x_bar_(c,j) the mean labeler embedding of the pair's distractors. The paper shows these images
(Fig. 5); this puts a name beside them, from a model that never saw the explained model.

What distractors *share* is not always what *sets them apart*: in the sandbox mining pool
half of all images carry a small flame, so the distractors of a water-fooled "boat" pair
share the flame about as often as the water (0.6-0.8 each), and Eq. 2 names the flame. The
second label contrasts the distractors with the whole pool, label by label, on the
single-image Eq. 2 scores s_i(t) = cos(x_i, t) - cos(x_i, t_empty):

    d_(c,j)(t) = (mean_{i in distractors} s_i(t) - mean_{i in pool} s_i(t)) / std_{i in pool} s_i(t),

the distractors' mean score in pool standard deviations of that label (an effect size, so
labels whose scores vary little across images are not favoured). The best label under it is
the ``distinctive_label``. On held-out worlds 40/41, the water of the spurious "boat" pairs
is named by it in 67 / 88 % of pairs against 41 / 48 % for Eq. 2; the flame of the compound
pairs the other way round (14 / 13 % against 96 / 89 %), so notebook 04 shows both.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..labeling.align import align, label_names
from ..labeling.labeler import _Source
from ..labeling.vocabulary import Vocabulary


DEFAULT_SCORE_BYTES = 64 * 2**20
"""Budget for one block of single-image label scores (rows x labels float32) in `pool_score_stats`."""


class PoolScoreStats(NamedTuple):
    """Per label, the single-image Eq. 2 score s_i(t) over a pool of images."""

    mean: torch.Tensor
    """(L,) float64 mean over the pool of cos(x_i, t) - cos(x_i, t_empty)."""

    std: torch.Tensor
    """(L,) float64 their standard deviation over the pool (population)."""

    n: int
    """Pool images."""


def _unit_labels(vocabulary: Vocabulary) -> tuple[torch.Tensor, torch.Tensor]:
    t = F.normalize(vocabulary.embeddings.float(), dim=1)
    return t, F.normalize(vocabulary.empty.float().reshape(-1), dim=0)


def _single_image_scores(x: torch.Tensor, t: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """(n, L) float64 s_i(t) = cos(x_i, t) - cos(x_i, t_empty) for rows x of labeler embeddings."""
    x = F.normalize(x.float(), dim=1)
    return (x @ t.T - (x @ e)[:, None]).double()


@torch.no_grad()
def pool_score_stats(labeler_embeddings: Any, vocabulary: Vocabulary, *,
                     budget_bytes: int = DEFAULT_SCORE_BYTES) -> PoolScoreStats:
    """Mean and standard deviation of each label's single-image Eq. 2 score over all rows of
    ``labeler_embeddings``, in row blocks that keep at most ``budget_bytes`` of scores at once
    (an ImageNet mining pool of 256k images x 21,843 labels is 22 GB as one matrix)."""
    src = _Source(labeler_embeddings)
    t, e = _unit_labels(vocabulary)
    if src.d != t.shape[1]:
        raise ValueError(f"pool_score_stats: labeler embeddings are {src.d}-d but the vocabulary's are {t.shape[1]}-d")
    if src.n == 0:
        raise ValueError("pool_score_stats: no pool images")
    block = max(1, int(budget_bytes) // (4 * t.shape[0]))
    total = torch.zeros(t.shape[0], dtype=torch.float64)
    total_sq = torch.zeros(t.shape[0], dtype=torch.float64)
    for start in range(0, src.n, block):
        s = _single_image_scores(src.take(np.arange(start, min(start + block, src.n))), t, e)
        total += s.sum(0)
        total_sq += (s * s).sum(0)
    mean = total / src.n
    std = (total_sq / src.n - mean * mean).clamp_min(0).sqrt()
    return PoolScoreStats(mean, std, int(src.n))


@torch.no_grad()
def distractor_labels(flagged: pd.DataFrame, samples: pd.DataFrame, labeler_embeddings: Any,
                      vocabulary: Vocabulary, top_m: int = 3, *, contrast: bool = True,
                      pool_stats: PoolScoreStats | None = None) -> pd.DataFrame:
    """One row per flagged pair: ``class, latent, distractor_label, distractor_alignment`` (the
    best label's Eq. 2 score) and ``distractor_labels`` (the ``top_m`` best, "; "-joined); with
    ``contrast``, also ``distinctive_label`` and ``distinctive_effect``: the label whose
    single-image score most exceeds the pool's, in pool standard deviations (module docstring),
    and ``distinctive_labels`` (its ``top_m`` best).

    ``samples``: the mining result's distractor table (``class, latent, row``), whose rows index
    ``labeler_embeddings`` (the labeler's embeddings of the mining pool, in its order; the
    contrast reads all of them, or takes their `pool_score_stats`)."""
    src = _Source(labeler_embeddings)
    if len(samples) and int(samples["row"].max()) >= src.n:
        raise ValueError(f"distractor_labels: distractor rows go up to {int(samples['row'].max())} but the labeler "
                         f"embeddings have {src.n} rows; both must describe the mining pool in its order")
    groups = {k: g["row"].to_numpy() for k, g in samples.groupby(["class", "latent"])}
    keys = [(str(c), int(j)) for c, j in zip(flagged["class"], flagged["latent"])]
    emb = torch.full((len(keys), src.d), float("nan"))
    for i, key in enumerate(keys):
        rows = groups.get(key)
        if rows is not None and len(rows):
            emb[i] = src.take(np.array(rows, dtype=np.int64)).float().mean(0)
    columns = ["class", "latent", "distractor_label", "distractor_alignment", "distractor_labels"]
    if contrast:
        columns += ["distinctive_label", "distinctive_effect", "distinctive_labels"]
    if not keys:
        return pd.DataFrame(columns=columns)
    al = align(emb, vocabulary, top_m=top_m, progress=False)
    names = np.asarray(vocabulary.labels + [None], dtype=object)
    best = label_names(al, vocabulary)
    tops = ["; ".join(str(names[i]) for i in row if i >= 0) for row in al.top_m_index.numpy()]
    out = pd.DataFrame({"class": [k[0] for k in keys], "latent": [k[1] for k in keys],
                        "distractor_label": [("" if b is None else str(b)) for b in best],
                        "distractor_alignment": al.score.numpy().astype(float), "distractor_labels": tops})
    if not contrast:
        return out
    stats = pool_score_stats(labeler_embeddings, vocabulary) if pool_stats is None else pool_stats
    t, e = _unit_labels(vocabulary)
    if stats.mean.shape != (t.shape[0],):
        raise ValueError(f"distractor_labels: pool_stats cover {tuple(stats.mean.shape)} labels, the vocabulary "
                         f"{t.shape[0]}")
    m = min(int(top_m), t.shape[0])
    lab, eff, tops = [], [], []
    for key in keys:
        rows = groups.get(key)
        if rows is None or not len(rows):
            lab.append(""), eff.append(float("nan")), tops.append("")
            continue
        s = _single_image_scores(src.take(np.array(rows, dtype=np.int64)), t, e)
        d = (s.mean(0) - stats.mean) / stats.std.clamp_min(1e-12)
        val, idx = torch.topk(d, m)
        lab.append(str(names[int(idx[0])])), eff.append(float(val[0]))
        tops.append("; ".join(str(names[int(i)]) for i in idx))
    out["distinctive_label"], out["distinctive_effect"], out["distinctive_labels"] = lab, eff, tops
    return out


__all__ = ["distractor_labels", "pool_score_stats", "PoolScoreStats"]
