"""Scoring labels against the sandbox's ground truth (every rendered image keeps its attributes).

For a latent, the **purity** of attribute a is the share of its top ``n_used`` (20) images that
carry the most common value of a. A latent is *pure* in a when that share is >= ``purity``
(0.9) and the value is a present one: "no word", "no watermark" and "no tint" are the absence
of a concept, not one, and never count. The sprite attribute counts only for the sprites of
polysemous classes ("bat (animal)" / "bat (club)"); for every other class the sprite is the
object and purity in it is object purity.

A label *names* a value when its vocabulary (attribute, value) equals it. Compound vocabulary
rows name several: attribute ``"colour+object"`` with value ``"red+ball"`` names both, and a
sprite label ("bat (club)") also names its class ("bat"), and the companion label ("a small fire")
names fire.

`score_labels` counts, per attribute, the latents pure in it and the share of those whose
assigned label names the pure value; the overall row counts a latent once (pure in at least
one attribute) and calls it named when its label names any of its pure values. A latent pure
in several attributes (all its top images show red boats on water) cannot be named by one
label in all of them, so the latents pure in that attribute ONLY are counted apart
(``n_only``, ``share_named_only``): the unambiguous cases.

`labeler_zero_shot` measures the labeler itself per attribute (can it name the value of an
image at all?), which bounds what any latent labeling can reach with it.
`hidden_purity` checks the hidden concepts of Eq. 7: which are pure in background, word,
watermark or tint, and that none is pure in an object class.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from .top import TopSamples
from .vocabulary import Vocabulary

GT_ATTRIBUTES: tuple[str, ...] = ("object", "sprite", "colour", "background", "text", "watermark", "tint")
"""Sandbox attributes scored, in report order."""

ABSENT: dict[str, Any] = {"text": "", "watermark": False, "tint": False}
"""Values that mean the concept is absent; never count as pure."""


def attribute_values(attributes: pd.DataFrame, names: tuple[str, ...] = GT_ATTRIBUTES) -> pd.DataFrame:
    """The scored attribute columns of a sandbox attribute table, normalised: strings for
    object / sprite / colour / background / text ("" = no word), booleans for watermark and
    tint (tint strength > 0)."""
    missing = [a for a in names if a not in attributes.columns]
    if missing:
        raise ValueError(f"attribute table lacks columns {missing} (has {list(attributes.columns)})")
    out = pd.DataFrame(index=attributes.index)
    for a in names:
        col = attributes[a]
        if a == "tint":
            out[a] = col.fillna(0).astype(float) > 0
        elif a == "watermark":
            out[a] = col.fillna(False).astype(bool)
        else:
            out[a] = col.fillna("").astype(str)
    return out.reset_index(drop=True)


def _polysemous_sprites() -> dict[str, str]:
    from ..sandbox.render import CLASS_SPRITES

    return {s: c for c, sprites in CLASS_SPRITES.items() if len(sprites) > 1 for s in sprites}


def purity(top: TopSamples, attributes: pd.DataFrame, n_used: int = 20, *, names: tuple[str, ...] = GT_ATTRIBUTES,
           min_samples: int | None = None) -> pd.DataFrame:
    """Per latent and attribute: the most common value among the top ``n_used`` images and its share.

    Returns a frame indexed by latent with ``{a}_value`` and ``{a}_purity`` per attribute;
    latents with fewer than ``min_samples`` (default ``n_used``) top images get None / NaN.
    ``attributes`` is the image set's attribute table, in the row order of the features.
    """
    if not 1 <= n_used <= top.n:
        raise ValueError(f"purity: n_used={n_used} must be in [1, TopSamples.n={top.n}]")
    min_samples = n_used if min_samples is None else int(min_samples)
    vals = attribute_values(attributes, names)
    rows = top.rows[:, :n_used].numpy()
    valid = rows >= 0
    if valid.any() and rows[valid].max() >= len(vals):
        raise ValueError(f"purity: TopSamples rows go up to {rows[valid].max()} but the attribute table has "
                         f"{len(vals)} rows; both must describe the same image set")
    if top.sample_ids is not None and "sample_id" in attributes.columns:
        sid = attributes["sample_id"].astype(str).to_numpy()
        have = sid[rows[valid]]
        if (have != top.sample_ids[:, :n_used][valid]).any():
            raise ValueError("purity: the attribute table is not in the row order of the features (sample ids differ)")
    k = valid.sum(1)
    enough = k >= min_samples
    out = pd.DataFrame(index=pd.RangeIndex(top.d_sae, name="latent"))
    safe = np.where(valid, rows, 0)
    for a in names:
        codes, uniques = pd.factorize(vals[a], sort=True)
        c = torch.from_numpy(codes[safe]).long()
        c[~torch.from_numpy(valid)] = len(uniques)  # a padding bin
        counts = torch.zeros(top.d_sae, len(uniques) + 1, dtype=torch.int64)
        counts.scatter_add_(1, c, torch.ones_like(c))
        counts = counts[:, :-1]
        best = counts.argmax(1).numpy()
        share = counts.max(1).values.numpy() / np.maximum(k, 1)
        value = np.asarray(uniques, dtype=object)[best] if len(uniques) else np.full(top.d_sae, None, object)
        out[f"{a}_value"] = pd.Series(np.where(enough, value, None), index=out.index, dtype=object)
        out[f"{a}_purity"] = np.where(enough, share, np.nan)
    return out


attribute_purity = purity  # an alias the scorers use, whose `purity` argument is the threshold


def pure_attributes(purity_frame: pd.DataFrame, threshold: float = 0.9,
                    names: tuple[str, ...] = GT_ATTRIBUTES) -> pd.DataFrame:
    """Boolean frame (latent x attribute): pure in it (share >= ``threshold``, value present;
    sprites only of polysemous classes)."""
    poly = _polysemous_sprites()
    out = pd.DataFrame(index=purity_frame.index)
    for a in names:
        share = purity_frame[f"{a}_purity"].to_numpy(dtype=np.float64)
        value = purity_frame[f"{a}_value"].to_numpy(dtype=object)
        present = np.array([v is not None and not (isinstance(v, float) and np.isnan(v)) and v != ABSENT.get(a, object())
                            for v in value], dtype=bool)
        if a == "sprite":
            present &= np.array([v in poly for v in value])
        out[a] = (share >= threshold) & present
    return out


def named_pairs(attribute: Any, value: Any) -> set[tuple[str, Any]]:
    """The (attribute, value) pairs a vocabulary row names (see module docstring)."""
    if attribute is None or (isinstance(attribute, float) and np.isnan(attribute)):
        return set()
    attrs = str(attribute).split("+")
    values = str(value).split("+") if len(attrs) > 1 else [value]
    pairs: set[tuple[str, Any]] = set()
    poly = _polysemous_sprites()
    for a, v in zip(attrs, values):
        if a in ("watermark", "tint"):
            v = bool(v) if not isinstance(v, str) else v.lower() == "true"
        pairs.add((a, v))
        if a == "sprite" and v in poly:
            pairs.add(("object", poly[v]))
        if a == "companion":  # "a small fire" names fire, drawn beside an object or on its own
            pairs.add(("object", v))
    return pairs


class LabelScores(NamedTuple):
    """Result of `score_labels`."""

    summary: pd.DataFrame
    """Per attribute (and ``overall``): ``n_pure`` latents pure in it, ``n_named`` of them whose
    label names the pure value, ``share_named``; ``n_only`` / ``share_named_only``: the same
    for latents pure in this attribute alone."""

    per_latent: pd.DataFrame
    """The table's latents with ``pure`` (list of attributes), ``pure_values``, ``named`` (bool)."""


def score_labels(table: pd.DataFrame, top: TopSamples, image_set_attributes: pd.DataFrame,
                 vocabulary: Vocabulary | pd.DataFrame, purity: float = 0.9, n_used: int = 20, *,
                 names: tuple[str, ...] = GT_ATTRIBUTES) -> LabelScores:
    """How often the assigned labels name what the latents' top images share (module docstring).

    Args:
        table: `label_latents` output (``latent``, ``label``).
        top: the `TopSamples` behind it.
        image_set_attributes: the labeling pool's attribute table (``image_set.attributes``).
        vocabulary: the vocabulary (or its frame) with ``label, attribute, value``.
        purity: share of the top images that must agree (0.9).
        n_used: top images inspected (20).
    """
    frame = vocabulary.frame if isinstance(vocabulary, Vocabulary) else vocabulary
    pairs_of = {lab: named_pairs(a, v) for lab, a, v in zip(frame["label"], frame["attribute"], frame["value"])}
    pur = attribute_purity(top, image_set_attributes, n_used, names=names)
    pure = pure_attributes(pur, purity, names)
    lat = table["latent"].to_numpy()
    rows = []
    counts = {a: [0, 0, 0, 0] for a in names}
    overall = [0, 0]
    for j, label in zip(lat, table["label"]):
        pj = [a for a in names if pure.at[j, a]]
        named_pairs_j = pairs_of.get(label, set())
        hits = [a for a in pj if (a, pur.at[j, f"{a}_value"]) in named_pairs_j]
        for a in pj:
            counts[a][0] += 1
            counts[a][1] += a in hits
            if len(pj) == 1:
                counts[a][2] += 1
                counts[a][3] += a in hits
        if pj:
            overall[0] += 1
            overall[1] += bool(hits)
        rows.append({"latent": int(j), "label": label, "pure": pj,
                     "pure_values": {a: pur.at[j, f"{a}_value"] for a in pj}, "named": bool(hits) if pj else None})
    summ = [{"attribute": a, "n_pure": c[0], "n_named": c[1], "share_named": c[1] / c[0] if c[0] else np.nan,
             "n_only": c[2], "share_named_only": c[3] / c[2] if c[2] else np.nan} for a, c in counts.items()]
    n_only = sum(c[2] for c in counts.values())
    summ.append({"attribute": "overall", "n_pure": overall[0], "n_named": overall[1],
                 "share_named": overall[1] / overall[0] if overall[0] else np.nan, "n_only": n_only,
                 "share_named_only": sum(c[3] for c in counts.values()) / n_only if n_only else np.nan})
    return LabelScores(pd.DataFrame(summ), pd.DataFrame(rows))


def misnamed_objects(table: pd.DataFrame, top: TopSamples, image_set_attributes: pd.DataFrame,
                     vocabulary: Vocabulary | pd.DataFrame, n_used: int = 20, min_share: float = 0.5,
                     min_alignment: float | None = 0.0) -> pd.DataFrame:
    """Latents labelled with an object ("boat", "red boat", "bat (club)") whose top ``n_used``
    images mostly do not show that object (share < ``min_share``): the labels that tell a user
    "boat" for a latent of trees and cars on water. Columns ``latent, label, alignment, object,
    object_share, top_object, top_object_share``; empty when every object label holds.

    ``min_alignment``: only labels whose Eq. 2 score (the table's ``alignment``) exceeds it
    count (default 0: a label that fits no better than the empty prompt is the argmax over a
    vocabulary with nothing to say, which the atlas marks as weak); None counts every label."""
    frame = vocabulary.frame if isinstance(vocabulary, Vocabulary) else vocabulary
    object_of = {}
    for lab, a, v in zip(frame["label"], frame["attribute"], frame["value"]):
        if str(a) == "companion":  # says what is beside the object, not what the object is
            continue
        objs = [pv for pa, pv in named_pairs(a, v) if pa == "object"]
        if objs:
            object_of[str(lab)] = str(objs[0])
    objects = attribute_values(image_set_attributes, ("object",))["object"].to_numpy()
    rows = []
    alignment = table["alignment"].to_numpy(dtype=float) if "alignment" in table.columns else \
        np.full(len(table), np.nan)
    for j, label, align in zip(table["latent"].to_numpy(), table["label"], alignment):
        if str(label) not in object_of:
            continue
        if min_alignment is not None and not align > min_alignment:
            continue
        r = top.rows[int(j), :n_used].numpy()
        r = r[r >= 0]
        if not len(r):
            continue
        shown = pd.Series(objects[r]).value_counts()
        share = float((objects[r] == object_of[str(label)]).mean())
        if share < min_share:
            rows.append({"latent": int(j), "label": str(label), "alignment": float(align),
                         "object": object_of[str(label)], "object_share": share,
                         "top_object": str(shown.index[0]), "top_object_share": float(shown.iloc[0] / len(r))})
    return pd.DataFrame(rows, columns=["latent", "label", "alignment", "object", "object_share", "top_object",
                                       "top_object_share"])


def hidden_purity(hidden: pd.DataFrame, top: TopSamples, image_set_attributes: pd.DataFrame,
                  purity: float = 0.9, n_used: int = 20, *,
                  names: tuple[str, ...] = GT_ATTRIBUTES) -> pd.DataFrame:
    """Per attribute: how many of the ``hidden`` latents (a `hidden_concepts` result) are pure
    in it, and which (``latents``). On the sandbox, hidden concepts should be pure in
    background / text / watermark / tint and never in an object class."""
    pur = attribute_purity(top, image_set_attributes, n_used, names=names)
    pure = pure_attributes(pur, purity, names)
    lat = hidden["latent"].to_numpy()
    sub = pure.loc[lat] if len(lat) else pure.iloc[:0]
    return pd.DataFrame([{"attribute": a, "n_pure": int(sub[a].sum()),
                          "latents": [int(j) for j in sub.index[sub[a].to_numpy()]],
                          "values": sorted({str(pur.at[j, f'{a}_value']) for j in sub.index[sub[a].to_numpy()]})}
                         for a in names])


@torch.no_grad()
def labeler_zero_shot(labeler_embeddings: Any, attributes: pd.DataFrame, vocabulary: Vocabulary) -> pd.DataFrame:
    """How well the labeler names each attribute of single images (its quality, per attribute).

    For every attribute of the vocabulary with several values (object, colour, background,
    text, sprite, colour+object): the accuracy of the argmax over that attribute's labels, on
    the images where the attribute is present (``chance`` = 1 / number of labels). For the
    binary ones (watermark, tint): the AUROC of the image's cosine with the label, present vs
    absent (chance 0.5; Eq. 2's baseline is per latent and would only add per-image noise here).
    Images: ``labeler_embeddings`` (N, d) with ``attributes`` in the same order.
    """
    from sklearn.metrics import roc_auc_score

    from .labeler import _Source

    src = _Source(labeler_embeddings)
    if src.n != len(attributes):
        raise ValueError(f"labeler_zero_shot: {src.n} embeddings but {len(attributes)} attribute rows")
    X = torch.nn.functional.normalize(src.take(np.arange(src.n)).float(), dim=1)
    S = X @ vocabulary.embeddings.T
    frame = vocabulary.frame
    present = {a: attributes[a] for a in GT_ATTRIBUTES if a in attributes.columns}
    vals = attribute_values(attributes, tuple(present)) if present else pd.DataFrame()
    rows = []
    for a in pd.unique(frame["attribute"].dropna()):
        idx = np.flatnonzero((frame["attribute"] == a).to_numpy())
        parts = str(a).split("+")
        if not all(p in vals.columns for p in parts):
            continue
        if a in ("watermark", "tint"):
            y = vals[a].to_numpy(dtype=bool)
            if y.all() or not y.any():
                continue
            rows.append({"attribute": a, "metric": "auroc", "score": float(roc_auc_score(y, S[:, idx[0]].numpy())),
                         "chance": 0.5, "n": int(len(y))})
            continue
        truth = vals[parts].astype(str).agg("+".join, axis=1).to_numpy()
        labels = frame["value"].to_numpy()[idx].astype(str)
        keep = np.isin(truth, labels)  # images showing one of the labelled values
        if not keep.any():
            continue
        pred = labels[S[:, idx].argmax(1).numpy()]
        rows.append({"attribute": a, "metric": "accuracy", "score": float((pred[keep] == truth[keep]).mean()),
                     "chance": 1 / len(idx), "n": int(keep.sum())})
    return pd.DataFrame(rows)


def labels_naming(vocabulary: Vocabulary | pd.DataFrame, attribute: str = "object",
                  values: Any = None) -> list[str]:
    """Labels of the vocabulary that name some value of ``attribute`` (or one of ``values``):
    on the sandbox, ``labels_naming(vocab, "object")`` are the EXPECTED labels of Eq. 7 — the
    class names, and the sprite ("bat (club)") and coloured-object ("red ball") labels that
    name a class too."""
    frame = vocabulary.frame if isinstance(vocabulary, Vocabulary) else vocabulary
    wanted = None if values is None else {str(v) for v in values}
    out = []
    for lab, a, v in zip(frame["label"], frame["attribute"], frame["value"]):
        for pa, pv in named_pairs(a, v):
            if pa == attribute and (wanted is None or str(pv) in wanted):
                out.append(str(lab))
                break
    return out
