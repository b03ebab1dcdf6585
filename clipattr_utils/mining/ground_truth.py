"""Sandbox ground truth for flagged pairs: which planted attribute their distractors share.

Planted modes (world.py): (a) spurious background ``boat`` / ``water``; (b) typography: a
class Y in `TYPO_WORDS` / images with the word Y; (c) polysemy: one ``bat`` sense / the
other sense's images; (d) compound noun: ``fire truck`` / images showing ``fire`` (the
object, or its flame drawn beside another object).
A flagged pair counts as a found planted mode when more than `majority` of its distractors
carry that class's planted attribute.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .classes import MiningClass

MODES = ("a_spurious", "b_typography", "c_polysemy", "d_compound")
FAILURE_TYPES = ("polysemy", "compound noun", "typography", "spurious", "other", "not a failure")
MODE_TYPE = {"a_spurious": "spurious", "b_typography": "typography", "c_polysemy": "polysemy",
             "d_compound": "compound noun"}


def carries(attributes: pd.DataFrame, column: str, value: str) -> np.ndarray:
    """Which rows carry ``column == value``. ``column="shows"`` asks whether the image shows the
    object ``value`` anywhere: as its object or as the companion drawn beside it."""
    if column != "shows":
        return (attributes[column] == value).to_numpy()
    from ..sandbox.render import CLASS_SPRITES

    sprites = set(CLASS_SPRITES.get(value, ()))
    companion = attributes["companion"].fillna("") if "companion" in attributes else pd.Series("", index=attributes.index)
    return ((attributes["object"] == value) | companion.isin(sprites)).to_numpy()


def planted_attributes(mc: MiningClass) -> list[tuple[str, str, str]]:
    """(mode, column, value) of the planted attributes that fool class ``mc``'s prompt
    (column ``"shows"``: see `carries`)."""
    from ..sandbox.render import CLASS_SPRITES
    from ..sandbox.world import (COMPOUND_CLASS, COMPOUND_HEAD, POLYSEMOUS_WORD, SPURIOUS_BACKGROUND,
                                 SPURIOUS_CLASS, TYPO_WORDS)

    out = []
    if mc.object == SPURIOUS_CLASS:
        out.append(("a_spurious", "background", SPURIOUS_BACKGROUND))
    if mc.short in TYPO_WORDS:
        out.append(("b_typography", "text", mc.short))
    if mc.object == POLYSEMOUS_WORD and mc.sprite is not None:
        out += [("c_polysemy", "sprite", s) for s in CLASS_SPRITES[mc.object] if s != mc.sprite]
    if mc.object == COMPOUND_CLASS:
        out.append(("d_compound", "shows", COMPOUND_HEAD))
    return out


def suggest_type(attributes: pd.DataFrame, rows: Sequence[int], mc: MiningClass, majority: float = 0.5
                 ) -> tuple[str, str, float]:
    """(failure type, "column=value", share) suggested from the distractors' attributes.

    Looks, in order, for a shared word naming the class (typography), an image of another
    sense of the class's word (polysemy), an object named by the class's first word
    (compound noun), then the most common background (spurious); returns "other" when no
    candidate reaches ``majority``. Generic: it does not know which modes were planted."""
    a = attributes.iloc[np.asarray(rows, dtype=np.int64)]
    if len(a) == 0:
        return "other", "", 0.0
    cands = []
    cands.append(("typography", "text", mc.short, float((a["text"] == mc.short).mean())))
    same_word = (a["object"] == mc.object) & (a["sprite"] != (mc.sprite or ""))
    if mc.sprite is not None:
        top = a.loc[same_word, "sprite"].value_counts()
        if len(top):
            cands.append(("polysemy", "sprite", str(top.index[0]), float(same_word.mean())))
    words = mc.short.split()
    if len(words) > 1:
        cands.append(("compound noun", "shows", words[0], float(carries(a, "shows", words[0]).mean())))
    bg = a["background"].value_counts(normalize=True)
    cands.append(("spurious", "background", str(bg.index[0]), float(bg.iloc[0])))
    best = max(cands, key=lambda c: c[3])
    if best[3] <= majority:
        return "other", f"{best[1]}={best[2]}", best[3]
    return best[0], f"{best[1]}={best[2]}", best[3]


def pair_truth(flagged: pd.DataFrame, samples: pd.DataFrame, attributes: pd.DataFrame,
               classes: Sequence[MiningClass], majority: float = 0.5) -> pd.DataFrame:
    """Per flagged pair: the planted mode whose attribute most of its distractors share
    (``mode`` = "" if none), that share, and the generic suggestion."""
    by_name = {c.name: c for c in classes}
    grouped = {k: g["row"].to_numpy() for k, g in samples.groupby(["class", "latent"])}
    rows = []
    for r in flagged.itertuples(index=False):
        mc = by_name[r[0]]
        d = grouped.get((mc.name, int(r.latent)), np.array([], dtype=np.int64))
        a = attributes.iloc[d]
        mode, share = "", 0.0
        for m, col, val in planted_attributes(mc):
            s = float(carries(a, col, val).mean()) if len(a) else 0.0
            if s > share:
                mode, share = m, s
        hit = share > majority
        st, sattr, sshare = suggest_type(attributes, d, mc, majority)
        rows.append({"class": mc.name, "latent": int(r.latent), "mode": mode if hit else "",
                     "planted_share": share, "true_type": MODE_TYPE[mode] if hit else "other",
                     "suggested_type": st, "suggested_attribute": sattr, "suggested_share": sshare})
    return pd.DataFrame(rows, columns=["class", "latent", "mode", "planted_share", "true_type", "suggested_type",
                                       "suggested_attribute", "suggested_share"])


def score(truth: pd.DataFrame, classes: Sequence[MiningClass], top: int = 10) -> dict:
    """Recall per planted mode (share of the mode's (class, attribute) targets found by at
    least one flagged pair) and precision among the ``top`` flagged pairs (truth rows are
    in the flagged table's order, best mean_z first)."""
    targets = {m: set() for m in MODES}
    for mc in classes:
        for m, col, val in planted_attributes(mc):
            targets[m].add((mc.name, val))
    found = {m: set() for m in MODES}
    by_name = {c.name: c for c in classes}
    for r in truth.itertuples(index=False):
        if r.mode:
            vals = [v for m, col, v in planted_attributes(by_name[r[0]]) if m == r.mode]
            for v in vals:
                found[r.mode].add((r[0], v))
    recall = {m: (len(found[m] & targets[m]) / len(targets[m]) if targets[m] else float("nan")) for m in MODES}
    head = truth.head(top)
    precision = float((head["mode"] != "").mean()) if len(head) else float("nan")
    return {"recall": recall, "precision_at_%d" % top: precision, "n_flagged": int(len(truth)),
            "all_modes_covered": bool(all(v > 0 for v in recall.values()))}


def label_names_planted(truth: pd.DataFrame, flagged: pd.DataFrame, vocabulary: pd.DataFrame,
                        classes: Sequence[MiningClass], label_column: str | Sequence[str] = "label") -> pd.DataFrame:
    """Do the labels of the found pairs name the planted attribute they point at? One row per
    pair with a planted mode: its ``label`` (notebook 02's, carried in ``flagged``) and
    ``names_planted``: the label names the attribute of that mode -- the background ("water")
    for (a), the written word for (b), the other sprite or its class for (c), fire for (d).
    ``vocabulary``: the label frame (``label, attribute, value``) the labels came from;
    ``label_column``: which column of ``flagged`` holds the labels (``"label"``, the latent's
    own from notebook 02, or ``"distractor_label"`` / ``"distinctive_label"`` from
    `describe.distractor_labels`); several columns: the pair names it when any of its labels
    does (``label`` then joins them with " / ")."""
    columns = [label_column] if isinstance(label_column, str) else list(label_column)
    from ..labeling.ground_truth import named_pairs

    pairs_of = {str(lab): named_pairs(a, v) for lab, a, v in
                zip(vocabulary["label"], vocabulary["attribute"], vocabulary["value"])}
    blank = pd.Series("", index=flagged.index)
    label_of = {(str(c), int(j)): [str(x) for x in labs] for c, j, *labs in
                zip(flagged["class"], flagged["latent"], *[flagged.get(col, blank).fillna("") for col in columns])}
    by_name = {c.name: c for c in classes}
    rows = []
    for r in truth.itertuples(index=False):
        if not r.mode:
            continue
        labels = label_of.get((r[0], int(r.latent)), [""])
        named = set().union(*(pairs_of.get(lab, set()) for lab in labels))
        wanted = set()
        for m, col, val in planted_attributes(by_name[r[0]]):
            if m == r.mode:
                # "shows": the object itself, or drawn beside another one (the companion)
                wanted |= {("object", val), ("companion", val)} if col == "shows" else {(col, val)}
        rows.append({"class": r[0], "latent": int(r.latent), "mode": r.mode, "label": " / ".join(labels),
                     "names_planted": bool(named & wanted)})
    return pd.DataFrame(rows, columns=["class", "latent", "mode", "label", "names_planted"])


__all__ = ["MODES", "FAILURE_TYPES", "MODE_TYPE", "carries", "planted_attributes", "suggest_type", "pair_truth", "score",
           "label_names_planted"]
