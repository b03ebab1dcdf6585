"""Semantic alignment of latents with text labels (paper Eq. 2).

    s_j(t) = cos(x_bar_j, t) - cos(x_bar_j, t_empty)                              (Eq. 2)

x_bar_j is the latent's mean labeler embedding (`component_embeddings`), t a label's text
embedding and t_empty the embedding of the empty prompt, all under the labeler. The label of
latent j is argmax_t s_j(t). The baseline is constant over t, so it never changes *which*
label wins; it sets the scale that thresholds (tau_align of Eq. 7) read: s_j(t) < 0 means the
empty prompt matches the latent's samples better than the label does.

All latents x all labels is d_sae x L (30,000 x 21,843 float32 = 2.6 GB in the paper's setting),
so it is computed in blocks of latents sized by ``budget_bytes`` and only the top-m labels per
latent are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .vocabulary import Vocabulary

DEFAULT_ALIGN_BYTES = 64 * 2**20
"""Budget for one block of latent x label scores (and the top-m temporaries beside it)."""


class Alignment(NamedTuple):
    """Best labels per latent under Eq. 2."""

    label_index: torch.Tensor
    """(d_sae,) int64 index of the best label, argmax_t s_j(t); -1 for latents without samples."""

    score: torch.Tensor
    """(d_sae,) float32 s_j of that label (Eq. 2, baseline subtracted); NaN without samples."""

    top_m_index: torch.Tensor
    """(d_sae, m) int64 the m best labels, best first (-1 padding)."""

    top_m_score: torch.Tensor
    """(d_sae, m) float32 their scores s_j(t) (NaN padding)."""

    baseline: torch.Tensor
    """(d_sae,) float32 cos(x_bar_j, t_empty), the subtracted term (0 when no baseline)."""

    chunk: int
    """Latents per block used: at most chunk x L scores existed at once."""


def align_chunk(n_labels: int, budget_bytes: int = DEFAULT_ALIGN_BYTES) -> int:
    """Latents per block so a block's (chunk x L) float32 scores plus the top-m sort's
    temporaries (about as large again) fit ``budget_bytes``."""
    return int(max(1, budget_bytes // (2 * 4 * max(int(n_labels), 1))))


def _label_inputs(labels: Vocabulary | torch.Tensor, empty: torch.Tensor | bool | None,
                  d: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(labels, Vocabulary):
        t = labels.embeddings
        if empty is None or empty is True:
            empty = labels.empty
    else:
        t = torch.as_tensor(labels)
        if empty is None or empty is True:
            raise TypeError("align: with a label tensor, pass empty=<(d,) empty-prompt embedding> for Eq. 2 "
                            "(or empty=False to skip the baseline); a Vocabulary carries its own")
    if t.ndim != 2 or t.shape[1] != d:
        raise ValueError(f"align: label embeddings must be (L, d={d}), got {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError("align: no labels")
    e = None
    if empty is not False:
        e = torch.as_tensor(empty).float().reshape(-1)
        if e.shape != (d,):
            raise ValueError(f"align: empty-prompt embedding must be (d={d},), got {tuple(torch.as_tensor(empty).shape)}")
        e = F.normalize(e, dim=0)
    return F.normalize(t.float(), dim=1), e


@torch.no_grad()
def align(component_emb: torch.Tensor, labels: Vocabulary | torch.Tensor, *, empty: torch.Tensor | bool | None = None,
          top_m: int = 5, chunk: int | None = None, budget_bytes: int = DEFAULT_ALIGN_BYTES,
          progress: bool = True) -> Alignment:
    """Eq. 2 for every latent against every label, in blocks; keeps the ``top_m`` best labels.

    Args:
        component_emb: (d_sae, d) x_bar_j (`component_embeddings`); NaN rows = latents without samples.
        labels: a `Vocabulary` (brings its empty-prompt embedding) or (L, d) label embeddings.
        empty: the (d,) empty-prompt embedding t_empty; required with a tensor of labels
            (``False`` drops the baseline, i.e. plain cosine, which is not Eq. 2).
        top_m: labels kept per latent.
        chunk: latents per block (default from ``budget_bytes``, see `align_chunk`).
        progress: a tqdm bar over blocks.
    """
    from tqdm.auto import tqdm

    if component_emb.ndim != 2:
        raise ValueError(f"align: component_emb must be (d_sae, d), got shape {tuple(component_emb.shape)}")
    d_sae, d = component_emb.shape
    t, e = _label_inputs(labels, empty, d)
    L = t.shape[0]
    m = min(int(top_m), L)
    if m < 1:
        raise ValueError(f"align: top_m must be >= 1, got {top_m}")
    chunk = align_chunk(L, budget_bytes) if chunk is None else int(chunk)
    if chunk < 1:
        raise ValueError(f"align: chunk must be >= 1, got {chunk}")
    c = component_emb.float()
    ok = ~torch.isnan(c).any(1)
    c = F.normalize(torch.where(ok[:, None], c, torch.zeros_like(c)), dim=1)
    base = (c @ e) if e is not None else torch.zeros(d_sae)
    top_i = torch.full((d_sae, m), -1, dtype=torch.int64)
    top_s = torch.full((d_sae, m), float("nan"))
    for s in tqdm(range(0, d_sae, chunk), desc="align", unit="block", disable=not progress):
        block = c[s:s + chunk] @ t.T  # (chunk, L) cosines
        val, idx = torch.topk(block, m, dim=1)
        del block
        top_i[s:s + chunk] = idx
        top_s[s:s + chunk] = val - base[s:s + chunk, None]
    top_i[~ok] = -1
    top_s[~ok] = float("nan")
    base = torch.where(ok, base, torch.tensor(float("nan")))
    return Alignment(top_i[:, 0].clone(), top_s[:, 0].clone(), top_i, top_s, base, chunk)


@torch.no_grad()
def alignment_scores(component_emb: torch.Tensor, labels: Vocabulary | torch.Tensor, *,
                     empty: torch.Tensor | bool | None = None) -> torch.Tensor:
    """Dense s_j(t) (Eq. 2) for a few latents: (B, d) or (d,) embeddings -> (B, L) or (L,).
    For inspecting one latent in a widget; use `align` for all of them."""
    c = torch.as_tensor(component_emb).float()
    one = c.ndim == 1
    c = c[None] if one else c
    t, e = _label_inputs(labels, empty, c.shape[1])
    c = F.normalize(c, dim=1)
    s = c @ t.T
    if e is not None:
        s = s - (c @ e)[:, None]
    return s[0] if one else s


def expected_alignment(component_emb: torch.Tensor, vocabulary: Vocabulary,
                       expected_labels: Sequence[str] | Vocabulary, *, budget_bytes: int = DEFAULT_ALIGN_BYTES,
                       progress: bool = False) -> pd.DataFrame:
    """Per latent, the best of the EXPECTED labels (e.g. the class names) and its s_j (Eq. 2):
    a frame indexed by latent with ``expected_label`` and ``expected_alignment``, the quantity
    Eq. 7 thresholds with tau_align.

    ``expected_labels`` is a list of labels taken from ``vocabulary`` (the sandbox's object names),
    or a :class:`Vocabulary` of their own: the ImageNet-1k class names are not all among the
    21,843 ImageNet-21k names the paper labels with, so notebook 02 embeds them with the same
    labeler and templates (:meth:`Vocabulary.build`)."""
    if isinstance(expected_labels, Vocabulary):
        sub = expected_labels
        if (sub.embeddings.shape[1] != vocabulary.embeddings.shape[1] or sub.templates != vocabulary.templates
                or sub.labeler != vocabulary.labeler):
            raise ValueError(f"expected_alignment: the expected labels {sub!r} were not embedded like the vocabulary "
                             f"{vocabulary!r} (labeler, embedding width or templates differ)")
    else:
        labels = [str(x) for x in expected_labels]
        known = set(vocabulary.labels)
        missing = [lab for lab in labels if lab not in known]
        if missing:
            raise KeyError(f"expected_alignment: {len(missing)} expected labels are not in the vocabulary "
                           f"({missing[:5]}{' ...' if len(missing) > 5 else ''}); pass them as a Vocabulary of their "
                           "own: Vocabulary.build(labeler, labels, templates=vocabulary.templates)")
        sub = vocabulary.subset(labels)
    al = align(component_emb, sub, top_m=1, budget_bytes=budget_bytes, progress=progress)
    names = np.asarray(sub.labels + [None], dtype=object)
    return pd.DataFrame({"expected_label": names[al.label_index.numpy()],
                         "expected_alignment": al.score.numpy()},
                        index=pd.RangeIndex(component_emb.shape[0], name="latent"))


def label_names(alignment: Alignment, vocabulary: Vocabulary | Sequence[str]) -> np.ndarray:
    """(d_sae,) object array: the name of each latent's best label (None without samples)."""
    labels = vocabulary.labels if isinstance(vocabulary, Vocabulary) else list(vocabulary)
    names = np.asarray(list(labels) + [None], dtype=object)
    return names[alignment.label_index.numpy()]
