"""Concept diversity of bases, and interpretability vs activation (paper Sec. 5.2, App. C.1).

`basis_diversity` runs the same labeling procedure on three bases of the explained model's
class token and counts the unique labels each yields (Sec. 5.2: "the inherent neural basis,
PCA-transformed embeddings, and SAE feature space"):

* **SAE**: each latent is a component; its activation a_j(x) ranks the samples.
* **PCA**: the principal directions u_k of the (centred) class tokens of the same image set,
  by decreasing variance; the score is the projection (x - mu) . u_k.
* **neuron**: the coordinates x_i of the class token (the standard basis), by decreasing variance.

A direction's sign is arbitrary for PCA and neurons, and both of its ends gather different
images, so each direction gives TWO components: its positive end (top samples of +score) and
its negative end (top samples of -score). SAE latents are non-negative and have one end.
The comparison is at an equal number of components ``n_components`` (default
``min(2 d_pre, alive SAE latents)``), each basis ranked the same way, by the variance its
components carry: the first ``n/2`` PCA directions (eigenvalue) and the ``n/2`` highest-variance
neurons, both ends each, and the ``n`` SAE latents with the largest E[a_j^2] (the variance
a_j v_j carries, |v_j| = 1) among those with at least ``min_count`` activations
(``select="random"`` draws them at random with ``seed`` instead). Counting both ends favours
the baselines. The full SAE ("SAE (all)": every latent with ``min_count`` activations) is
reported too: the paper's comparison (5,363 unique labels from 17,455 SAE components vs
fewer than 500 for PCA of a 1,024-d space) sets whole bases side by side, and an
overcomplete SAE has many more components than a d-dimensional basis.

Each component: its top ``top`` samples -> mean labeler embedding -> best label by Eq. 2 -> one
label; the basis's diversity is the number of distinct labels over its components.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np
import pandas as pd
import torch

from .align import align
from .labeler import component_embeddings
from .quality import clarity as clarity_fn
from .top import TopSamples, _Accumulator, _chunks, top_activating
from .vocabulary import Vocabulary


class Diversity(NamedTuple):
    """Result of `basis_diversity`."""

    summary: pd.DataFrame
    """One row per basis: ``basis``, ``components``, ``unique_labels``, ``unique_labels_positive``
    (labels with s_j > 0 only), ``mean_clarity``."""

    components: pd.DataFrame
    """One row per component: ``basis``, ``component`` (latent / PCA direction / neuron index),
    ``end`` (+1/-1; +1 for the SAE), ``column`` (its row in ``tops[basis]``), ``label``,
    ``alignment``, ``clarity``."""

    tops: dict
    """basis -> the `TopSamples` its components were labeled from (rows = ``column``), for galleries."""


@torch.no_grad()
def _dense_top(features: Any, fn: Callable[[torch.Tensor], torch.Tensor], width: int, n: int, chunk_rows: int,
               progress: bool) -> TopSamples:
    """TopSamples of the columns of ``fn(x)`` (every entry counts as active)."""
    from tqdm.auto import tqdm

    n_rows, _, chunks, ids, meta = _chunks(features, chunk_rows)
    acc = _Accumulator(width, n, torch.device("cpu"), merge_triplets=2_000_000)
    bar = tqdm(total=n_rows, unit="row", desc="basis scores", disable=not progress)
    for start, x in chunks:
        s = fn(x.double()).float()  # (c, width)
        c = s.shape[0]
        rows = torch.arange(start, start + c).repeat_interleave(width)
        lat = torch.arange(width).repeat(c)
        acc.add(rows, lat, s.reshape(-1))
        bar.update(c)
    bar.close()
    return acc.result(n_rows, ids, ((0, n_rows),), meta)


@torch.no_grad()
def _moments(features: Any, chunk_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (d,) and covariance (d, d) in float64, streamed."""
    n_rows, d, chunks, _, _ = _chunks(features, chunk_rows)
    s = torch.zeros(d, dtype=torch.float64)
    ss = torch.zeros(d, d, dtype=torch.float64)
    shift = None
    for _, x in chunks:
        x = x.double()
        if shift is None:
            shift = x[0].clone()  # shifted sums keep the covariance accurate
        x = x - shift
        s += x.sum(0)
        ss += x.T @ x
    mean = s / n_rows
    cov = ss / n_rows - torch.outer(mean, mean)
    return mean + shift, cov


def _label(top: TopSamples, labeler_emb: Any, vocab: Vocabulary, n_used: int, basis: str, component: np.ndarray,
           end: np.ndarray, keep: torch.Tensor, progress: bool) -> pd.DataFrame:
    emb = component_embeddings(top, labeler_emb, n_used, progress=False)[keep]
    al = align(emb, vocab, top_m=1, progress=False)
    names = np.asarray(vocab.labels + [None], dtype=object)
    clar = clarity_fn(top, labeler_emb, n_used, progress=False)[keep]
    return pd.DataFrame({"basis": basis, "component": component, "end": end, "column": keep.numpy(),
                         "label": names[al.label_index.numpy()], "alignment": al.score.numpy(),
                         "clarity": clar.numpy()})


def basis_diversity(features: Any, sae: Any, labeler_emb: Any, vocab: Vocabulary, n_components: int | None = None,
                    top: int = 20, *, min_count: int | None = None, select: str = "variance", seed: int = 0,
                    top_samples: TopSamples | None = None, chunk_rows: int = 8192,
                    progress: bool = True) -> Diversity:
    """Unique labels of the SAE basis vs the PCA basis vs the neuron basis (Sec. 5.2; module docstring).

    Args:
        features: the explained model's class tokens (FeatureCache or (N, d_pre) tensor).
        sae: its SAE.
        labeler_emb: the labeler's unit embeddings of the same images (cache or (N, d) tensor).
        vocab: the label vocabulary under that labeler.
        n_components: components per basis (default ``min(2 d_pre, alive SAE latents)``).
        top: top samples per component (the paper: 20).
        min_count: SAE latents with fewer activations are not drawn (default ``top``).
        select: which ``n_components`` SAE latents: ``"variance"`` (largest E[a_j^2], as PCA
            and neurons are ranked) or ``"random"`` (drawn with ``seed``).
        seed: the draw for ``select="random"``.
        top_samples: `top_activating(features, sae)` when already computed (n >= ``top``).
    """
    min_count = top if min_count is None else int(min_count)
    if top_samples is None:
        top_samples = top_activating(features, sae, n=top, progress=progress)
    if top_samples.n < top:
        raise ValueError(f"basis_diversity: top_samples keeps {top_samples.n} rows per latent, need top={top}")
    alive = torch.nonzero(top_samples.count >= min_count).flatten()
    d = sae.d_in
    n = int(n_components) if n_components is not None else min(2 * d, len(alive))
    if n < 2:
        raise ValueError(f"basis_diversity: need n_components >= 2 (got {n}; alive SAE latents: {len(alive)})")
    if n > len(alive):
        raise ValueError(f"basis_diversity: n_components={n} but only {len(alive)} SAE latents have >= {min_count} "
                         "activations")
    if n > 2 * d:
        raise ValueError(f"basis_diversity: n_components={n} exceeds 2 * d_pre = {2 * d} (both ends of every direction)")
    if select == "variance":
        drawn = alive[torch.argsort(top_samples.mean_square[alive], descending=True, stable=True)[:n]].sort().values
    elif select == "random":
        g = torch.Generator().manual_seed(int(seed))
        drawn = alive[torch.randperm(len(alive), generator=g)[:n]].sort().values
    else:
        raise ValueError(f"basis_diversity: select must be 'variance' or 'random', got {select!r}")

    parts = [_label(top_samples, labeler_emb, vocab, top, "SAE", drawn.numpy(), np.ones(n, np.int64), drawn, progress),
             _label(top_samples, labeler_emb, vocab, top, "SAE (all)", alive.numpy(), np.ones(len(alive), np.int64),
                    alive, progress)]
    n_dirs = (n + 1) // 2
    mean, cov = _moments(features, chunk_rows)
    evals, evecs = torch.linalg.eigh(cov)
    order = torch.argsort(evals, descending=True)[:n_dirs]
    U = evecs[:, order]  # (d, n_dirs)
    pca = _dense_top(features, lambda x: torch.cat([(x - mean) @ U, -((x - mean) @ U)], 1), 2 * n_dirs, top,
                     chunk_rows, progress)
    neurons = torch.argsort(torch.diagonal(cov), descending=True)[:n_dirs]
    neu = _dense_top(features, lambda x: torch.cat([x[:, neurons], -x[:, neurons]], 1), 2 * n_dirs, top,
                     chunk_rows, progress)
    # Columns: directions 0..n_dirs-1 at +, then the same at -; keep the first n in the order
    # (dir 0 +, dir 0 -, dir 1 +, ...).
    cols = torch.stack([torch.arange(n_dirs), torch.arange(n_dirs) + n_dirs], 1).reshape(-1)[:n]
    ends = np.where(cols.numpy() < n_dirs, 1, -1)
    parts.append(_label(pca, labeler_emb, vocab, top, "PCA", (cols % n_dirs).numpy(), ends, cols, progress))
    parts.append(_label(neu, labeler_emb, vocab, top, "neuron", neurons[cols % n_dirs].numpy(), ends, cols, progress))
    comp = pd.concat(parts, ignore_index=True)
    summary = comp.groupby("basis", sort=False).agg(
        components=("label", "size"), unique_labels=("label", lambda s: s.dropna().nunique()),
        mean_clarity=("clarity", "mean")).reset_index()
    pos = comp[comp["alignment"] > 0].groupby("basis", sort=False)["label"].nunique()
    summary["unique_labels_positive"] = summary["basis"].map(pos).fillna(0).astype(int)
    summary = summary[["basis", "components", "unique_labels", "unique_labels_positive", "mean_clarity"]]
    return Diversity(summary, comp, {"SAE": top_samples, "SAE (all)": top_samples, "PCA": pca, "neuron": neu})


# ---------------------------------------------------------------------------- App. C.1

ACTIVATION_METRICS = ("top5_mean", "mean_activation", "firing_rate")


def interpretability_vs_activation(table: pd.DataFrame, metrics: tuple[str, ...] = ACTIVATION_METRICS,
                                   interpretability: str = "clarity") -> pd.DataFrame:
    """Correlations of clarity with activation statistics over the latents (App. C.1, Fig. 9).

    One row per metric: ``pearson``, ``spearman``, ``pearson_log`` (Pearson with log10 of the
    metric, as Fig. 9 plots mean activation and firing rate), ``n`` latents used (finite values).
    """
    if interpretability not in table.columns:
        raise ValueError(f"interpretability_vs_activation: table has no {interpretability!r} column")
    rows = []
    for m in metrics:
        if m not in table.columns:
            raise ValueError(f"interpretability_vs_activation: table has no {m!r} column")
        x = table[m].to_numpy(dtype=np.float64)
        y = table[interpretability].to_numpy(dtype=np.float64)
        ok = np.isfinite(x) & np.isfinite(y)
        x, y = x[ok], y[ok]
        if len(x) < 3:
            rows.append({"metric": m, "pearson": np.nan, "spearman": np.nan, "pearson_log": np.nan, "n": len(x)})
            continue
        pos = x > 0
        xs, ys = pd.Series(x), pd.Series(y)
        rows.append({"metric": m, "pearson": float(xs.corr(ys)), "spearman": float(xs.corr(ys, method="spearman")),
                     "pearson_log": float(pd.Series(np.log10(x[pos])).corr(pd.Series(y[pos])))
                     if pos.sum() >= 3 else np.nan, "n": int(len(x))})
    return pd.DataFrame(rows)


def plot_interpretability_vs_activation(table: pd.DataFrame, metrics: tuple[str, ...] = ACTIVATION_METRICS,
                                        interpretability: str = "clarity", log: tuple[str, ...] = (
                                            "mean_activation", "firing_rate")):
    """Fig. 9: clarity against each activation statistic, one scatter per metric, the
    correlations in the titles (log x axis for ``log`` metrics). Returns the figure."""
    import matplotlib.pyplot as plt

    corr = interpretability_vs_activation(table, metrics, interpretability).set_index("metric")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        ax.scatter(table[m], table[interpretability], s=4, alpha=0.4)
        r = corr.loc[m]
        if m in log:
            ax.set_xscale("log")
            ax.set_title(f"{m}: r(log)={r.pearson_log:.2f}, rho={r.spearman:.2f}", fontsize=9)
        else:
            ax.set_title(f"{m}: r={r.pearson:.2f}, rho={r.spearman:.2f}", fontsize=9)
        ax.set_xlabel(m)
    axes[0, 0].set_ylabel(interpretability)
    fig.tight_layout()
    return fig
