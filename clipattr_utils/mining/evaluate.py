"""Evaluating found failure sets (App. D.2, Fig. 5, Table 1).

For each flagged failure set (class c, its distractors):

* spurious AUC: AUROC of a score separating class c's samples from the distractors;
* valid AUC: AUROC separating class c's samples from all other classes' samples.

Scores: (i) ``short``: cosine with "{short}" (the short class name), (ii) ``full``: with the
full class name, (iii) ``template``: the mean text embedding of the templates
`TEMPLATES` of the short name, (iv) ``both``: templates of the full name, (v) ``probe``: a
one-vs-rest logistic regression on unit image embeddings, trained on a separate split.
Table 1 reports spurious-AUC differences to (i) per failure type: Templating (iii - i),
Extended description (ii - i), Both (iv - i), mean with SEM over failure sets.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .classes import MiningClass

TEMPLATES: tuple[str, ...] = ("{}", "an image of a {}", "a {}")
VARIANTS: tuple[str, ...] = ("short", "full", "template", "both", "probe")
TABLE1 = {"Templating": "template", "Extended description": "full", "Both": "both"}
AUC_COLUMNS = ["class", "latent", "failure_type", "variant", "spurious_auc", "valid_auc", "n_distractors"]


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score(pos) > score(neg)) + 0.5 P(tie) (Mann-Whitney), NaN when a side is empty."""
    from sklearn.metrics import roc_auc_score

    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")  # a failure set without distractors has no AUC; the tables skip it
    return float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))


def prompt_embeddings(clip: Any, classes: Sequence[MiningClass]) -> dict[str, torch.Tensor]:
    """(C, d_post) unit text embeddings per prompt variant (i)-(iv)."""
    def mean_emb(names):
        embs = [F.normalize(clip.encode_text([t.format(n) for n in names]).float(), dim=-1) for t in TEMPLATES]
        return F.normalize(torch.stack(embs).mean(0), dim=-1)
    short = [c.short for c in classes]
    full = [c.full for c in classes]
    return {"short": F.normalize(clip.encode_text(short).float(), dim=-1),
            "full": F.normalize(clip.encode_text(full).float(), dim=-1),
            "template": mean_emb(short), "both": mean_emb(full)}


class TorchProbe:
    """Multinomial logistic regression fitted with torch's L-BFGS on sklearn's own objective,
    C * sum_i CE(W z_i + b, y_i) + ||W||^2 / 2 (no penalty on b): the same optimum as
    ``LogisticRegression(C=C)`` (a convex problem), on the GPU when there is one. On this CPU it
    is not faster than sklearn (benchmarks/probe.py); it is there so that the ImageNet probe
    (50,000 val embeddings x 1,000 classes) can run where the GEMMs are cheap. Exposes what
    `variant_scores` reads: ``coef_``, ``intercept_``, ``classes_`` and ``decision_function``."""

    def __init__(self, C: float = 1.0, max_iter: int = 500, tol: float = 1e-6, device: str | torch.device = "cpu"):
        self.C, self.max_iter, self.tol, self.device = float(C), int(max_iter), float(tol), torch.device(device)

    def fit(self, z: np.ndarray, y: np.ndarray) -> "TorchProbe":
        self.classes_ = np.unique(y)
        index = {c: i for i, c in enumerate(self.classes_)}
        t = torch.as_tensor(np.array([index[v] for v in y]), device=self.device)
        x = torch.as_tensor(np.asarray(z), dtype=torch.float64, device=self.device)
        W = torch.zeros(len(self.classes_), x.shape[1], dtype=torch.float64, device=self.device, requires_grad=True)
        b = torch.zeros(len(self.classes_), dtype=torch.float64, device=self.device, requires_grad=True)
        opt = torch.optim.LBFGS([W, b], max_iter=self.max_iter, tolerance_grad=self.tol, tolerance_change=1e-12,
                                history_size=20, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = self.C * F.cross_entropy(x @ W.T + b, t, reduction="sum") + 0.5 * W.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.coef_ = W.detach().cpu().numpy()
        self.intercept_ = b.detach().cpu().numpy()
        return self

    def decision_function(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(z) @ self.coef_.T + self.intercept_


PROBE_SOLVERS = ("sklearn", "torch")


def train_probe(embeddings: np.ndarray, labels: np.ndarray, n_classes: int, seed: int = 0, C: float = 1.0,
                require_all_classes: bool = True, solver: str = "sklearn", device: str | torch.device = "cpu"):
    """One-vs-rest (multinomial) logistic regression on unit image embeddings. With
    ``require_all_classes=False`` a split missing some classes is accepted (a capped ImageNet
    dry run); `variant_scores` then scores those classes below every seen one.

    ``solver``: "sklearn" (``LogisticRegression``, lbfgs; the default, what the recorded
    sandbox numbers used) or "torch" (`TorchProbe`: the same objective in torch, on ``device``;
    the ImageNet presets use it on the GPU: in the ImageNet-layout rehearsal sklearn took 4
    minutes for 1,000 embeddings x 1,000 classes on this CPU, and ImageNet val has 50,000)."""
    if solver not in PROBE_SOLVERS:
        raise ValueError(f"train_probe: solver must be one of {PROBE_SOLVERS}, got {solver!r}")
    keep = np.asarray(labels) >= 0
    z = embeddings[keep] / np.linalg.norm(embeddings[keep], axis=1, keepdims=True)
    if solver == "torch":
        clf = TorchProbe(C=C, device=device).fit(z, np.asarray(labels)[keep])
    else:
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=C, max_iter=2000, random_state=seed)
        clf.fit(z, np.asarray(labels)[keep])
    if len(clf.classes_) < 3:
        raise ValueError(f"probe training split has {len(clf.classes_)} classes; at least 3 are needed")
    if require_all_classes and list(clf.classes_) != list(range(n_classes)):
        raise ValueError(f"probe training split lacks classes: has {list(clf.classes_)}, needs 0..{n_classes - 1}")
    return clf


class ScoreColumns:
    """(N, C) linear scores z @ W.T + b of one variant, computed a class column at a time.

    `failure_aucs` reads one column per failure set (``s[rows, c]``), so the whole matrix --
    256,000 pool images x 1,000 classes x 5 variants, 5 GB at ImageNet size -- never exists.
    Indexing takes ``[rows, c]`` or ``[rows, [c1, c2, ...]]``; ``np.asarray(s)`` builds the dense
    matrix when it is wanted (small pools). Columns of ``missing`` classes (a probe that never
    saw them) hold ``fill`` everywhere."""

    def __init__(self, z: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None,
                 columns: np.ndarray | None = None, n_classes: int | None = None, fill: float = 0.0):
        self.z = z
        self.weight, self.bias = weight, bias
        self.columns = np.arange(len(weight)) if columns is None else np.asarray(columns)
        self.n_classes = int(n_classes if n_classes is not None else len(weight))
        self._where = {int(c): i for i, c in enumerate(self.columns)}
        self.fill = float(fill)
        self._last: tuple[int, np.ndarray] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.z), self.n_classes)

    def column(self, c: int) -> np.ndarray:
        """(N,) scores of class ``c``."""
        c = int(c)
        if not 0 <= c < self.n_classes:
            raise IndexError(f"class {c} out of range 0..{self.n_classes - 1}")
        if self._last is not None and self._last[0] == c:
            return self._last[1]
        i = self._where.get(c)
        if i is None:
            col = np.full(len(self.z), self.fill, dtype=np.float32)
        else:
            col = self.z @ self.weight[i]
            if self.bias is not None:
                col = col + self.bias[i]
        self._last = (c, col)
        return col

    def __getitem__(self, key: tuple[Any, Any]) -> np.ndarray:
        rows, cols = key
        if np.ndim(cols) == 0:
            return self.column(int(cols))[rows]
        return np.stack([self.column(int(c))[rows] for c in cols], axis=-1)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.stack([self.column(c) for c in range(self.n_classes)], axis=1)
        return out if dtype is None else out.astype(dtype)


def _min_score(z: np.ndarray, weight: np.ndarray, bias: np.ndarray, chunk_rows: int = 8192) -> float:
    """min over rows and classes of z @ weight.T + bias, in row chunks."""
    return float(min((z[s:s + chunk_rows] @ weight.T + bias).min() for s in range(0, len(z), chunk_rows)))


def variant_scores(image_emb: torch.Tensor, prompts: dict[str, torch.Tensor], probe: Any = None
                   ) -> dict[str, ScoreColumns]:
    """(N, C) scores per variant from (N, d_post) image embeddings, as `ScoreColumns` (one class
    column at a time). The probe's are its decision function, z @ coef.T + intercept, for the
    classes it saw; classes it never saw score below all it did."""
    z = F.normalize(image_emb.float(), dim=-1).numpy()
    out = {k: ScoreColumns(z, t.float().numpy()) for k, t in prompts.items()}
    if probe is not None:
        n_classes = next(iter(prompts.values())).shape[0]
        coef, intercept = np.asarray(probe.coef_, np.float32), np.asarray(probe.intercept_, np.float32)
        if len(coef) != len(probe.classes_):
            raise ValueError(f"variant_scores: the probe has {len(coef)} weight rows for {len(probe.classes_)} "
                             "classes (a binary probe); train it on at least 3 classes")
        fill = _min_score(z, coef, intercept) - 1.0 if len(probe.classes_) != n_classes else 0.0
        out["probe"] = ScoreColumns(z, coef, intercept, probe.classes_, n_classes, fill)
    return out


def failure_aucs(scores: dict[str, np.ndarray], labels: np.ndarray, failures: pd.DataFrame,
                 samples: pd.DataFrame) -> pd.DataFrame:
    """Per failure set (rows of ``failures``: class, class_index, latent, failure_type) and
    variant: spurious AUC (class vs its distractors, ``samples.row``) and valid AUC (class vs
    all other classes' samples)."""
    labels = np.asarray(labels)
    grouped = {k: g["row"].to_numpy() for k, g in samples.groupby(["class", "latent"])}
    rows = []
    for r in failures.itertuples(index=False):
        c = int(r.class_index)
        dis = grouped.get((r[0], int(r.latent)), np.array([], dtype=np.int64))
        pos = labels == c
        neg = (labels != c) & (labels >= 0)
        for v, s in scores.items():
            rows.append({"class": r[0], "latent": int(r.latent), "failure_type": r.failure_type, "variant": v,
                         "spurious_auc": auroc(s[pos, c], s[dis, c]), "valid_auc": auroc(s[pos, c], s[neg, c]),
                         "n_distractors": len(dis)})
    return pd.DataFrame(rows, columns=AUC_COLUMNS)


def _sem(v: pd.Series) -> float:
    v = v.dropna()
    return float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def summary(aucs: pd.DataFrame) -> pd.DataFrame:
    """Mean and SEM of spurious and valid AUC per failure type and variant (Fig. 5 / 14)."""
    if aucs.empty:
        return pd.DataFrame(columns=["failure_type", "variant", "spurious_auc", "valid_auc", "n_sets",
                                     "spurious_sem", "valid_sem"])
    g = aucs.groupby(["failure_type", "variant"])
    out = g.agg(spurious_auc=("spurious_auc", "mean"), valid_auc=("valid_auc", "mean"),
                n_sets=("spurious_auc", "count")).reset_index()
    out["spurious_sem"] = g["spurious_auc"].apply(_sem).to_numpy()
    out["valid_sem"] = g["valid_auc"].apply(_sem).to_numpy()
    return out


def table1(aucs: pd.DataFrame) -> pd.DataFrame:
    """Table 1: per failure type, the spurious-AUC change from the short prompt (mean, SEM
    over failure sets) for templating, an extended description, and both."""
    if aucs.empty:
        return pd.DataFrame(columns=["failure_type", "n_sets"] + [c for n in TABLE1 for c in (n, f"{n} sem")])
    wide = aucs.pivot_table(index=["failure_type", "class", "latent"], columns="variant",
                            values="spurious_auc").reset_index()
    rows = []
    for ft, g in wide.groupby("failure_type"):
        row = {"failure_type": ft, "n_sets": len(g)}
        for name, v in TABLE1.items():
            d = g[v] - g["short"]
            row[name] = float(d.mean())
            row[f"{name} sem"] = _sem(d)
        rows.append(row)
    return pd.DataFrame(rows)


def probe_vs_prompts(aucs: pd.DataFrame, failure_type: str = "spurious") -> dict:
    """Spurious AUC of the probe vs the best prompt variant on one failure type."""
    s = summary(aucs)
    s = s[s["failure_type"] == failure_type].set_index("variant")
    if s.empty or "probe" not in s.index:
        return {"failure_type": failure_type, "available": False}
    prompts = s.drop(index="probe")
    best = prompts["spurious_auc"].idxmax()
    return {"failure_type": failure_type, "available": True, "probe_spurious_auc": float(s.at["probe", "spurious_auc"]),
            "probe_sem": float(s.at["probe", "spurious_sem"]), "best_prompt": str(best),
            "best_prompt_spurious_auc": float(prompts.at[best, "spurious_auc"]),
            "short_prompt_spurious_auc": float(s.at["short", "spurious_auc"]) if "short" in s.index else float("nan"),
            "probe_more_robust": bool(s.at["probe", "spurious_auc"] > prompts.at[best, "spurious_auc"])}


def plot_failure_aucs(aucs: pd.DataFrame):
    """Fig. 5-like: valid AUC (x) vs spurious AUC (y), mean +- SEM, per failure type
    (panel) and variant (marker)."""
    import matplotlib.pyplot as plt

    s = summary(aucs)
    types = sorted(s["failure_type"].unique())
    fig, axes = plt.subplots(1, max(1, len(types)), figsize=(3.6 * max(1, len(types)), 3.4), squeeze=False)
    markers = dict(zip(VARIANTS, "os^Dv"))
    for ax, ft in zip(axes[0], types):
        for r in s[s["failure_type"] == ft].itertuples():
            ax.errorbar(r.valid_auc, r.spurious_auc, xerr=np.nan_to_num(r.valid_sem), yerr=np.nan_to_num(r.spurious_sem),
                        marker=markers.get(r.variant, "o"), ls="none", capsize=2, label=r.variant)
        ax.set_title(f"{ft} (n={int(s[s['failure_type'] == ft]['n_sets'].max())})", fontsize=9)
        ax.set_xlabel("valid AUC")
        ax.set_ylabel("spurious AUC")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.plot([0, 1], [0, 1], color="0.8", lw=0.8, zorder=0)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


__all__ = ["TEMPLATES", "VARIANTS", "TABLE1", "auroc", "prompt_embeddings", "train_probe", "variant_scores", "ScoreColumns",
           "TorchProbe", "PROBE_SOLVERS",
           "failure_aucs", "summary", "table1", "probe_vs_prompts", "plot_failure_aucs"]
