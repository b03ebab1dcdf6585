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
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from ..labeling.align import align, label_names
from ..labeling.labeler import _Source
from ..labeling.vocabulary import Vocabulary


@torch.no_grad()
def distractor_labels(flagged: pd.DataFrame, samples: pd.DataFrame, labeler_embeddings: Any,
                      vocabulary: Vocabulary, top_m: int = 3) -> pd.DataFrame:
    """One row per flagged pair: ``class, latent, distractor_label, distractor_alignment`` (the
    best label's Eq. 2 score) and ``distractor_labels`` (the ``top_m`` best, "; "-joined).

    ``samples``: the mining result's distractor table (``class, latent, row``), whose rows index
    ``labeler_embeddings`` (the labeler's embeddings of the mining pool, in its order)."""
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
    if not keys:
        return pd.DataFrame(columns=["class", "latent", "distractor_label", "distractor_alignment",
                                     "distractor_labels"])
    al = align(emb, vocabulary, top_m=top_m, progress=False)
    names = np.asarray(vocabulary.labels + [None], dtype=object)
    best = label_names(al, vocabulary)
    tops = ["; ".join(str(names[i]) for i in row if i >= 0) for row in al.top_m_index.numpy()]
    return pd.DataFrame({"class": [k[0] for k in keys], "latent": [k[1] for k in keys],
                         "distractor_label": [("" if b is None else str(b)) for b in best],
                         "distractor_alignment": al.score.numpy().astype(float), "distractor_labels": tops})


__all__ = ["distractor_labels"]
