"""The files notebook 02 writes, in one place, so reruns with other seeds can be scored.

``write_outputs(out_dir, ...)`` writes (each atomically):

* ``latents.csv``: one row per labelled latent — ``latent, label, alignment, clarity,
  polysemanticity, firing_rate, mean_activation, top5_mean, hidden`` (plus ``top20_mean``,
  ``attribute``, ``value``, ``support`` and ``eq2_label`` (the label guard, `labeling.support`),
  ``expected_label``, ``expected_alignment`` where known);
* ``top_samples.csv``: ``latent, rank, sample_id, activation`` — the top ``n_used`` samples
  behind each labelled latent;
* ``pool.json``: how to rebuild the image set the rows index (for the sandbox the
  ``sandbox.make_dataset`` keyword arguments);
* ``vocabulary.csv``: ``label, attribute, value``;
* ``top_labels.csv``: ``latent, rank, label, score`` — the ``top_m`` best labels of each latent
  (when the table has `label_latents`' ``top_labels`` column);
* ``class_relevance.csv``: ``latent, rank, class, relevance`` — each latent's classes of largest
  positive mean relevance (at most ``n_classes``), when a class x latent table is given (long, so
  that 1000 classes x 30,000 latents stay small);
* ``diversity.json``: unique-label counts per basis (when given);
* ``ground_truth.json``: the sandbox scores (when given).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..storage import write_json_atomic, write_text_atomic
from .top import TopSamples
from .vocabulary import Vocabulary

LATENT_COLUMNS = ("latent", "label", "alignment", "clarity", "polysemanticity", "firing_rate", "mean_activation",
                  "top5_mean", "hidden")
EXTRA_COLUMNS = ("top20_mean", "count", "attribute", "value", "support", "eq2_label", "expected_label",
                 "expected_alignment")


def _csv(frame: pd.DataFrame) -> str:
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    return buf.getvalue()


def latents_frame(table: pd.DataFrame, hidden: pd.DataFrame | None = None) -> pd.DataFrame:
    """The ``latents.csv`` columns from `label_latents`' table; ``hidden`` marks the rows of a
    `hidden_concepts` result."""
    out = table.copy()
    out["hidden"] = out["latent"].isin(set(hidden["latent"])) if hidden is not None else False
    cols = [*LATENT_COLUMNS, *(c for c in EXTRA_COLUMNS if c in out.columns)]
    return out[cols].reset_index(drop=True)


def top_samples_frame(top: TopSamples, latents: Any, n_used: int = 20) -> pd.DataFrame:
    """``latent, rank, sample_id, activation`` of the top ``n_used`` samples of ``latents``."""
    frame = top.to_frame()
    frame = frame[frame["latent"].isin(set(int(j) for j in latents)) & (frame["rank"] < n_used)]
    return frame[["latent", "rank", "sample_id", "activation"]].reset_index(drop=True)


def class_relevance_frame(class_relevance: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """``latent, rank, class, relevance``: for each latent (a column of the class x latent
    table) its ``n`` classes of largest mean relevance, positive ones only, best first."""
    values = class_relevance.to_numpy(dtype=float)
    order = np.argsort(-values, axis=0, kind="stable")[:n]  # (n, latents)
    classes = np.asarray(class_relevance.index, dtype=object)
    rows = [(int(j), r, str(classes[c]), float(values[c, k]))
            for k, j in enumerate(class_relevance.columns) for r, c in enumerate(order[:, k]) if values[c, k] > 0]
    return pd.DataFrame(rows, columns=["latent", "rank", "class", "relevance"])


def write_outputs(out_dir: str | os.PathLike, *, table: pd.DataFrame, top: TopSamples, vocabulary: Vocabulary,
                  pool: dict, hidden: pd.DataFrame | None = None, n_used: int = 20,
                  diversity: pd.DataFrame | None = None, ground_truth: dict | None = None,
                  class_relevance: pd.DataFrame | None = None, n_classes: int = 10) -> dict[str, Path]:
    """Write the labeling results into ``out_dir`` (module docstring); returns name -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    latents = latents_frame(table, hidden)
    paths = {
        "latents": write_text_atomic(out / "latents.csv", _csv(latents)),
        "top_samples": write_text_atomic(out / "top_samples.csv",
                                         _csv(top_samples_frame(top, latents["latent"], n_used))),
        "pool": write_json_atomic(out / "pool.json", pool, indent=2),
        "vocabulary": write_text_atomic(out / "vocabulary.csv",
                                        _csv(vocabulary.frame[["label", "attribute", "value"]])),
    }
    if "top_labels" in table.columns:  # read by the latent atlas (clipattr_utils.atlas)
        rows = [(int(j), r, str(lab), float(sc)) for j, labs in zip(table["latent"], table["top_labels"])
                for r, (lab, sc) in enumerate(labs)]
        paths["top_labels"] = write_text_atomic(out / "top_labels.csv", _csv(pd.DataFrame(
            rows, columns=["latent", "rank", "label", "score"])))
    if class_relevance is not None:
        paths["class_relevance"] = write_text_atomic(out / "class_relevance.csv",
                                                     _csv(class_relevance_frame(class_relevance, n_classes)))
    if diversity is not None:
        paths["diversity"] = write_json_atomic(out / "diversity.json",
                                               {"bases": diversity.to_dict(orient="records")}, indent=2)
    if ground_truth is not None:
        paths["ground_truth"] = write_json_atomic(out / "ground_truth.json", ground_truth, indent=2)
    return paths


__all__ = ["write_outputs", "latents_frame", "top_samples_frame", "class_relevance_frame", "LATENT_COLUMNS"]
