"""Scoring a detective's answer: the only module that reads a challenge's answer and its
images' attribute tables.

A planted challenge counts as **found** when the top suspect names the target class and at
least `PURITY` of its latent's top-20 test images carry the hidden value; a control counts as
**passed** when the verdict is "no shortcut found".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .detective import NO_SHORTCUT_FOUND, Investigation
from .game import Challenge, reveal
from .images import carries

PURITY = 0.8
N_TOP = 20


def latent_purity(challenge: Challenge, x_test: torch.Tensor, sae: Any, latent: int, kind: str, value: str,
                  n: int = N_TOP) -> float:
    """Share of ``latent``'s top-``n`` test images (by activation) that carry ``kind=value``."""
    with torch.no_grad():
        enc = sae.encode(x_test)
        hit = enc.indices == int(latent)
        a = (enc.values * hit).sum(1).double().cpu().numpy()
    top = np.argsort(-a, kind="stable")[:n]
    top = top[a[top] > 0]
    if not len(top):
        return 0.0
    has = carries(challenge.test._images.attributes, kind, value)
    return float(has[top].mean())


def score(challenge: Challenge, result: Investigation, x_test: torch.Tensor, sae: Any) -> dict:
    """``{"control", "correct", "kind", "value", "target", "found_class", "purity", ...}``."""
    answer = reveal(challenge)
    out: dict[str, Any] = {"seed": challenge.seed, "control": answer is None, "verdict": result.verdict,
                           "kind": None if answer is None else answer.kind,
                           "value": None if answer is None else answer.value,
                           "target": None if answer is None else answer.target,
                           "strength": None if answer is None else answer.strength}
    # The best-scored suspect whether confirmed or not, so that a confirmation threshold can
    # be chosen afterwards on development seeds from these rows alone (the ranking does not
    # depend on it): at threshold t a planted challenge is found when top_right and top_z >= t,
    # a control passes when top_z < t.
    top = result.suspects.iloc[0] if len(result.suspects) else None
    out["top_z"] = float(top["score"]) if top is not None else float("-inf")
    out["top_suspect"] = "" if top is None else f"{top['class']}: {top['edit']} (latent {int(top['latent'])})"
    out["top_right"] = False
    if answer is not None and top is not None and top["class"] == answer.target:
        out["top_purity"] = latent_purity(challenge, x_test, sae, int(top["latent"]), answer.kind, answer.value)
        out["top_right"] = out["top_purity"] >= PURITY
    if answer is None:
        out["correct"] = result.verdict == NO_SHORTCUT_FOUND
        return out
    found = result.found
    out["found_class"] = None if found is None else found["class"]
    if found is None or found["class"] != answer.target:
        out.update(correct=False, purity=None)
        return out
    purity = latent_purity(challenge, x_test, sae, found["latent"], answer.kind, answer.value)
    out.update(purity=purity, correct=purity >= PURITY)
    return out


__all__ = ["PURITY", "N_TOP", "latent_purity", "score"]
