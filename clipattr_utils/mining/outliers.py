"""High-confidence outsiders, relevance z-scores (Eq. 8) and flagged latents (App. D.1).

For class c with prompt t_c:

* outsiders O_c: samples not of class c with y(x, t_c) > mean_c - `out_k` std_c, the
  mean/std of the class's own outputs (App. D.1: 1.5);
* z_j(x) = (R_j(x, t_c) - mu_cj) / sigma_cj for each latent j active on x (Eq. 8);
* latent j is flagged for c when it is active (non-zero) on at least `min_count` outsiders
  (App. D.1: 10) and its z-score, averaged over those outsiders, exceeds `z_thr` (3.0);
* its distractor set: the outsiders on which it is active with z > `z_thr`.

std = 0 guard: a latent never active on the class's own samples has mu = sigma = 0, and is
exactly the kind of unexpected reliance the method looks for. Its sigma is replaced by a
floor, `std_floor` times the median of the class's non-zero latent stds, so its z-score
stays finite and comparable (a relevance as large as a typical latent's spread = z of 1/std_floor).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..attribution import act_grad, n_outputs, output_row
from .relevance import ExpectedRelevance


@dataclass
class MiningConfig:
    out_k: float = 1.5        # outsiders: y > mean_c - out_k * std_c (App. D.1)
    z_thr: float = 3.0        # flag when the mean z over active outsiders exceeds this (App. D.1)
    min_count: int = 10       # ... and the latent is active on at least this many outsiders (App. D.1)
    std_floor: float = 1.0    # sigma floor = std_floor * floor_quantile of the class's non-zero sigmas
    floor_quantile: float = 0.5
    chunk_n: int = 256

    def __post_init__(self) -> None:
        """Refuse values that would mine silently wrong: a NaN threshold flags nothing, a
        negative out_k keeps only samples above the class mean, min_count 0 flags latents
        active on no outsider at all."""
        def finite(v: Any) -> bool:
            return isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and bool(np.isfinite(v))

        def count(v: Any) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1

        checks = [
            (finite(self.out_k) and self.out_k >= 0, "out_k must be a finite number >= 0"),
            (finite(self.z_thr), "z_thr must be a finite number"),
            (count(self.min_count), "min_count must be an integer >= 1"),
            (finite(self.std_floor) and self.std_floor > 0, "std_floor must be a finite number > 0"),
            (finite(self.floor_quantile) and 0 <= self.floor_quantile <= 1, "floor_quantile must lie in [0, 1]"),
            (count(self.chunk_n), "chunk_n must be an integer >= 1"),
        ]
        bad = [f"{message}, got {getattr(self, message.split()[0])!r}" for ok, message in checks if not ok]
        if bad:
            raise ValueError("MiningConfig: " + "; ".join(bad))


CONFIDENCES = ("cosine", "log_prob")
"""What "high model output" means for the outsider rule: ``"cosine"``, y(x, t_c) itself (App.
D.1), or ``"log_prob"``, the zero-shot log-probability of class c among the probed classes."""


def confidence_scores(cosine: torch.Tensor | np.ndarray, kind: str = "cosine", logit_scale: float = 100.0
                      ) -> np.ndarray:
    """(N, C) outputs the outsider rule thresholds, from the (N, C) cosines with the class prompts.

    ``"log_prob"`` = log softmax_c(logit_scale * cos(x, t_c)): the confidence a zero-shot
    classifier acts on. It differs from the cosine where an input moves every prompt's cosine
    at once: a written word naming class c lowers an image's cosine with all object prompts
    but lowers c's least, so P(c | x) jumps while cos(x, t_c) barely moves (sandbox: +0.74
    vs +0.04). Relevance is still explained for the cosine with t_c (Eq. 29)."""
    if kind not in CONFIDENCES:
        raise ValueError(f"confidence must be one of {CONFIDENCES}, got {kind!r}")
    y = torch.as_tensor(cosine).double()
    if y.ndim != 2:
        raise ValueError(f"cosine must be (N, C), got shape {tuple(y.shape)}")
    if kind == "log_prob":
        y = torch.log_softmax(float(logit_scale) * y, dim=1)
    return y.cpu().numpy()


def class_outputs(x: torch.Tensor, head: Any, text: torch.Tensor, confidence: str = "cosine",
                  logit_scale: float = 100.0, chunk_rows: int = 16384) -> np.ndarray:
    """`confidence_scores` of every sample for every class prompt, (N, C) float64, computed
    ``chunk_rows`` samples at a time (ImageNet: 256k x 1000 would not fit as one cosine)."""
    if confidence not in CONFIDENCES:
        raise ValueError(f"confidence must be one of {CONFIDENCES}, got {confidence!r}")
    out = np.empty((x.shape[0], text.shape[0]), dtype=np.float64)
    with torch.no_grad():
        for a in range(0, x.shape[0], chunk_rows):
            out[a:a + chunk_rows] = confidence_scores(head.cosine(x[a:a + chunk_rows], text), confidence, logit_scale)
    return out


def with_output_stats(expected: ExpectedRelevance, scores: np.ndarray, reference_labels: np.ndarray
                      ) -> ExpectedRelevance:
    """``expected`` with its class output mean/std recomputed from ``scores`` (N, C) over each
    class's reference rows, for mining with outputs other than the cosine."""
    from dataclasses import replace

    scores, ref = np.asarray(scores, dtype=np.float64), np.asarray(reference_labels)
    if scores.ndim != 2 or scores.shape[0] != len(ref):
        raise ValueError(f"scores must be (N={len(ref)}, C), got {scores.shape}")
    C = scores.shape[1]
    mean, std = np.full(C, np.nan), np.full(C, np.nan)
    for c in range(C):
        v = scores[ref == c, c]
        if len(v) >= 2:
            mean[c], std[c] = v.mean(), v.std(ddof=1)
    return replace(expected, output_mean=mean, output_std=std)


def outsiders(y_c: np.ndarray, labels: np.ndarray, c: int, out_mean: float, out_std: float,
              out_k: float = 1.5) -> np.ndarray:
    """Rows not of class c whose output for c's prompt exceeds mean - out_k * std."""
    y_c, labels = np.asarray(y_c), np.asarray(labels)
    return np.flatnonzero((labels != c) & (y_c > out_mean - out_k * out_std))


def guarded_std(std: torch.Tensor, std_floor: float = 1.0, quantile: float = 0.5) -> torch.Tensor:
    """std with zeros (and tiny values) raised to ``std_floor`` x the ``quantile`` of the non-zero ones."""
    nz = std[std > 0]
    floor = float(torch.quantile(nz.double(), quantile)) * std_floor if nz.numel() else 1.0
    return std.clamp_min(floor if floor > 0 else 1e-12)


def zscores(values: torch.Tensor, indices: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Eq. 8 for the active latents: (n, k) relevance of latents ``indices`` -> (n, k) z."""
    return (values.double() - mean[indices]) / std[indices]


@dataclass
class MiningResult:
    flagged: pd.DataFrame                 # class, latent, label, n_samples, mean_z, ...
    samples: pd.DataFrame                 # class, latent, sample_id (the distractor sets)
    outsiders: dict[int, np.ndarray] = field(default_factory=dict)   # class index -> rows
    config: MiningConfig = field(default_factory=MiningConfig)


def flag_class(z_rows: np.ndarray, z_idx: np.ndarray, z_val: np.ndarray, d_sae: int, z_thr: float,
               min_count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, np.ndarray]]:
    """Flagging on one class's outsiders from flat (row, latent, z) triples of active latents.
    Returns (latents, active counts, mean z, {latent: distractor rows})."""
    cnt = np.bincount(z_idx, minlength=d_sae)
    zsum = np.bincount(z_idx, weights=z_val, minlength=d_sae)
    mean_z = np.divide(zsum, cnt, out=np.full(d_sae, np.nan), where=cnt > 0)
    hit = np.flatnonzero((cnt >= min_count) & (mean_z > z_thr))
    dis = {}
    for j in hit:
        m = (z_idx == j) & (z_val > z_thr)
        dis[int(j)] = np.unique(z_rows[m])
    return hit, cnt[hit], mean_z[hit], dis


def mine(x: torch.Tensor, labels: np.ndarray, sample_ids: Sequence[str], sae: Any, head: Any, text: torch.Tensor,
         expected: ExpectedRelevance, classnames: Sequence[str], *, config: MiningConfig | None = None,
         label_table: pd.DataFrame | None = None, scores: np.ndarray | None = None,
         progress: bool = True) -> MiningResult:
    """Find flagged (class, latent) pairs and their distractor sets on the samples ``x``
    (labels: class index per row, -1 for none; ``text[c]`` the prompt of class c).

    ``label_table``: a labeling table with columns ``latent`` and ``label`` (e.g. from
    ``ca.label_latents``) to name the flagged latents.
    ``scores``: (N, C) outputs the outsider rule compares with ``expected.output_mean/std``
    (default: the cosine with ``text``; `confidence_scores` gives the zero-shot
    log-probability, and `with_output_stats` the matching class statistics). Relevance is
    always that of the cosine with ``text[c]``.

    ``text`` may be a :class:`~clipattr_utils.attribution.Readout` instead (a classifier's
    logits, output c for class c): relevance then explains logit c, and ``scores`` must be
    given (e.g. the classifier's log-probabilities), with ``expected`` computed for the same readout."""
    cfg = config or MiningConfig()
    labels = np.asarray(labels)
    ids = np.asarray(list(sample_ids))
    C = n_outputs(text)
    if scores is None:
        if not isinstance(text, torch.Tensor):
            raise ValueError("mine: with a Readout in place of prompts, pass scores (N, C): the outputs that "
                             "decide which samples count as confidently predicted")
        y = class_outputs(x, head, text, "cosine", chunk_rows=cfg.chunk_n * 64)
    else:
        y = np.asarray(scores, dtype=np.float64)
        if y.shape != (x.shape[0], C):
            raise ValueError(f"scores must be (N={x.shape[0]}, C={C}), got {y.shape}")
    flag_rows, sample_rows, outs = [], [], {}
    for c in tqdm(range(C), desc="outsiders", disable=not progress):
        if expected.count[c] < 2:
            continue
        rows = outsiders(y[:, c], labels, c, expected.output_mean[c], expected.output_std[c], cfg.out_k)
        outs[c] = rows
        if len(rows) == 0:
            continue
        mu, sd = expected.mean[c], guarded_std(expected.std[c], cfg.std_floor, cfg.floor_quantile)
        parts = []

        def take(ns, ts, block, mu=mu, sd=sd, rows=rows, parts=parts):
            idx = block.indices.detach().cpu()
            z = zscores(block.values[:, 0, :].detach().cpu(), idx, mu, sd).numpy()
            r = np.repeat(rows[ns][:, None], idx.shape[1], 1)
            nz = block.values[:, 0, :].detach().cpu().numpy() != 0
            parts.append((r[nz], idx.numpy()[nz], z[nz]))

        act_grad(x[torch.as_tensor(rows)], sae, head, output_row(text, c), on_chunk=take, chunk_n=cfg.chunk_n)
        zr, zi, zv = (np.concatenate(p) for p in zip(*parts))
        hit, cnt, mz, dis = flag_class(zr, zi, zv, sae.d_sae, cfg.z_thr, cfg.min_count)
        for j, n_act, m in zip(hit, cnt, mz):
            d_rows = dis[int(j)]
            flag_rows.append({"class": classnames[c], "latent": int(j), "n_samples": int(n_act), "mean_z": float(m),
                              "n_distractors": len(d_rows), "class_index": c, "n_outsiders": len(rows)})
            sample_rows += [{"class": classnames[c], "latent": int(j), "sample_id": str(ids[r]), "row": int(r)}
                            for r in d_rows]
    flagged = pd.DataFrame(flag_rows, columns=["class", "latent", "n_samples", "mean_z", "n_distractors",
                                               "class_index", "n_outsiders"])
    names = {}
    if label_table is not None and len(label_table):
        names = dict(zip(label_table["latent"].astype(int), label_table["label"].astype(str)))
    flagged.insert(2, "label", [names.get(int(j), "") for j in flagged["latent"]])
    flagged = flagged.sort_values("mean_z", ascending=False, kind="stable").reset_index(drop=True)
    samples = pd.DataFrame(sample_rows, columns=["class", "latent", "sample_id", "row"])
    return MiningResult(flagged, samples, outs, cfg)


def distractor_rows(result: MiningResult, cls: str, latent: int) -> np.ndarray:
    s = result.samples
    return s.loc[(s["class"] == cls) & (s["latent"] == int(latent)), "row"].to_numpy()


__all__ = ["CONFIDENCES", "class_outputs", "confidence_scores", "with_output_stats", "MiningConfig", "MiningResult", "outsiders", "guarded_std", "zscores", "flag_class", "mine",
           "distractor_rows", "save_result", "FLAGGED_COLUMNS"]


FLAGGED_COLUMNS = ["class", "latent", "label", "n_samples", "mean_z"]


def save_result(result: MiningResult, out_dir: Any) -> dict[str, Any]:
    """Write ``flagged.csv`` (class, latent, label, n_samples, mean_z, then the extra columns;
    sorted by mean_z) and ``flagged_samples.csv`` (class, latent, sample_id), atomically."""
    from pathlib import Path

    from ..storage import write_text_atomic

    out = Path(out_dir)
    fl = result.flagged
    cols = FLAGGED_COLUMNS + [c for c in fl.columns if c not in FLAGGED_COLUMNS]
    p1 = write_text_atomic(out / "flagged.csv", fl[cols].to_csv(index=False))
    p2 = write_text_atomic(out / "flagged_samples.csv",
                           result.samples[["class", "latent", "sample_id"]].to_csv(index=False))
    return {"flagged": p1, "samples": p2}
