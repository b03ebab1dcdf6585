"""Where a probe's reliance on a red-hue edit lies: along Eq. 33's direction u, or across it.

Eq. 34 augments training tokens along one direction u, which teaches the probe to ignore
shifts along u. Whether that removes the reliance on the red hue depends on how much of the
hue's effect lies along u: each image's token moves by D = x(Eq. 32) - x, and only the part
(D . u/|u|) u/|u| is covered. `reliance_split` feeds the probe the full shift, the along-u
part alone and the rest alone, and reports the mean logit change and the accuracy under each;
`reliance_report` does so for the standard probe and the robust probe of one seed.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch


def reliance_split(clf: Any, x: torch.Tensor, x_edit: torch.Tensor, u: torch.Tensor, y: Sequence[int],
                   embed: Callable[[torch.Tensor], np.ndarray] | None = None) -> dict[str, float]:
    """Mean logit change and accuracy of ``clf`` when the rows ``x`` (N, d) move by the full
    shift ``x_edit - x``, by its part along ``u`` only, and by the rest only.

    ``embed`` maps rows to the probe's input (e.g. the head, for class tokens); None: the rows
    are the probe's input. ``y`` are the rows' true labels (accuracy = share predicted as y).
    Returns ``cos_shift_u`` (mean per-row cosine of the shift with u), ``logit_full``,
    ``logit_along_u``, ``logit_across`` and ``acc_none``, ``acc_full``, ``acc_along_u``,
    ``acc_across`` (percent)."""
    x = torch.as_tensor(x).double()
    x_edit = torch.as_tensor(x_edit).double()
    u = torch.as_tensor(u).double().reshape(-1)
    y = np.asarray(y)
    if x.shape != x_edit.shape or x.ndim != 2 or u.shape[0] != x.shape[1] or y.shape != (x.shape[0],):
        raise ValueError(f"reliance_split: x {tuple(x.shape)}, x_edit {tuple(x_edit.shape)}, u {tuple(u.shape)}, "
                         f"y {y.shape} must be (N, d), (N, d), (d,), (N,)")
    if float(u.norm()) == 0.0:
        raise ValueError("reliance_split: u is the zero vector")
    shift = x_edit - x
    uh = u / u.norm()
    along = (shift @ uh)[:, None] * uh[None]
    feed = (lambda t: embed(t.float())) if embed is not None else (lambda t: t.numpy())
    acc = lambda logit: 100.0 * float(((logit > 0).astype(int) == y).mean())  # noqa: E731
    base = clf.decision_function(feed(x))
    out = {"cos_shift_u": float(torch.nn.functional.cosine_similarity(shift, u[None].expand_as(shift), dim=1).mean()),
           "acc_none": acc(base)}
    for name, moved in (("full", x + shift), ("along_u", x + along), ("across", x + shift - along)):
        logit = clf.decision_function(feed(moved))
        out[f"logit_{name}"] = float((logit - base).mean())
        out[f"acc_{name}"] = acc(logit)
    return out


def reliance_report(data: Any, split: Any, standard: Any, latent: int, alpha: float, cfg: Any, seed: int,
                    condition: str = "more_red", label: int = 1) -> pd.DataFrame:
    """`reliance_split` on the test rows of class ``label`` (default: melanoma) under
    ``condition``, for the standard probe and the robust probe augmented along ``latent``'s
    Eq. 33 direction at ``alpha`` (token space, as `experiment.run_seed` trains it)."""
    from . import experiment as ex
    from . import probe as pr

    if condition not in data.tokens:
        raise ValueError(f"reliance_report: no {condition!r} tokens; conditions: {list(data.tokens)}")
    if cfg.space != "token":
        raise ValueError("reliance_report: splits token shifts; run it with cfg.space='token'")
    ben = split.train[data.labels[split.train] == 0]
    u = ex._direction(data, ben, int(latent), cfg)[0].u
    robust = ex.robust_probe(data, split.train, u, float(alpha), ex._rng(seed, float(alpha), 0), cfg.space,
                             cfg.n_aug, cfg.C)
    rows = split.test[data.labels[split.test] == label]
    x, x_edit = data.tokens["none"][rows], data.tokens[condition][rows]
    embed = lambda t: pr.embed(data.head, t)  # noqa: E731
    recs = [{"probe": name, "latent": int(latent), "alpha": a,
             **reliance_split(clf, x, x_edit, u, data.labels[rows], embed=embed)}
            for name, clf, a in (("standard", standard, 0.0), ("robust", robust, float(alpha)))]
    return pd.DataFrame(recs)


__all__ = ["reliance_split", "reliance_report"]
