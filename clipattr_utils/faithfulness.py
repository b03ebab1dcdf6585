"""Faithfulness of latent attributions: deletion and insertion (paper Sec. 5.1, App. B.2).

All four experiments run in closed form on cached class tokens — no backbone pass. With
the SAE error eps and bias b held fixed, setting latent j's activation to zero moves the
class token by -a_j v_j, so after removing the latents j_1..j_s

    deletion:   x_s = x - sum_{i<=s} a_{j_i} v_{j_i}                 (x_0 = x)
    insertion:  x_s = b + eps + sum_{i<=s} a_{j_i} v_{j_i}           (x_0 = b + eps)

and the curve is y(x_s, t) = cos(head(x_s), t) for the sample's class prompt t.

Experiments (``EXPERIMENTS``):

* ``deletion_local``: each sample's own ranking (its scores for its class prompt);
* ``deletion_global``: one ranking per class, from the class mean relevance over the
  evaluated samples of that class;
* ``deletion_random``: one ranking per class, from the mean relevance over
  ``n_random_ref`` random samples of the whole set (any class) for that class's prompt;
* ``insertion_local``: start from all latents ablated and restore them in each sample's
  own order.

Two baselines are orderings rather than attributions (:class:`RandomOrder`,
:class:`FiringFrequency`): a class mean of random scores is not random — latents that fire
on most of the class would go first — so the random baseline draws a uniform order over the
latents active anywhere in the reference set, once per class, from the evaluation's seed;
ranking by firing frequency is kept as a baseline of its own.

AUC: the area under each sample's curve with the steps mapped to [0, 1] (trapezoid rule,
so it is in units of cosine similarity); lower is better for deletion, higher for
insertion. Uncertainty (App. B.2): the samples are split at random into ``n_subsets`` = 9
equal subsets (the remainder of N / 9 is left out), the AUC is computed per subset, and the
reported AUC +- SEM are the mean and standard error of those 9 values.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .attribution import (act_grad, act_grad_paper, act_logit_lens, energy, integrated_gradients, logit_lens,
                          mean_relevance)
from .attribution.result import Attribution
from .head import Head
from .sae.model import EncoderOutput, TopKSAE
from .storage import save_tensors_atomic, write_json_atomic

EXPERIMENTS = ("deletion_local", "deletion_global", "deletion_random", "insertion_local")
TITLES = {
    "deletion_local": "Deletion (local)",
    "deletion_global": "Deletion (global, class mean)",
    "deletion_random": "Deletion (global, random reference)",
    "insertion_local": "Insertion (local)",
}

# ------------------------------------------------------------------ ordering baselines


@runtime_checkable
class OrderBaseline(Protocol):
    """A baseline that proposes orders directly instead of scoring latents.

    ``local_order`` ranks each sample's own active latents; ``reference_order`` gives one
    order from a reference set (a class's samples for the global experiment, the random
    reference set for the random-reference one). ``rng`` is the evaluation's stream.
    """

    def local_order(self, code: EncoderOutput, active: torch.Tensor, steps: int, d_sae: int,
                    rng: np.random.Generator) -> torch.Tensor:
        """(N, steps) latent ids for the N samples of ``code`` ((N, k), ``active`` mask)."""

    def reference_order(self, code: EncoderOutput, active: torch.Tensor, steps: int, d_sae: int,
                        rng: np.random.Generator) -> torch.Tensor:
        """(steps,) latent ids from the reference samples in ``code``."""


def _pad_order(order: np.ndarray, steps: int, d_sae: int) -> np.ndarray:
    """Extend an order shorter than ``steps`` with latents absent from it (they are inactive
    in the reference set, so their steps leave the curves flat)."""
    if len(order) >= steps:
        return order[:steps]
    rest = np.setdiff1d(np.arange(d_sae), order, assume_unique=False)[: steps - len(order)]
    return np.concatenate([order, rest])


def firing_counts(code: EncoderOutput, active: torch.Tensor, d_sae: int) -> np.ndarray:
    """(d_sae,) number of samples in which each latent is active."""
    counts = torch.zeros(d_sae, dtype=torch.float64, device=code.indices.device)
    counts.index_add_(0, code.indices[active], torch.ones(int(active.sum()), dtype=torch.float64,
                                                           device=code.indices.device))
    return counts.cpu().numpy()


@dataclass(frozen=True)
class RandomOrder:
    """The random baseline, random in every experiment.

    * local: a uniformly random order of each sample's own active latents (inactive slots
      last), independent across samples;
    * global / random reference: a uniformly random order of the latents active anywhere in
      the reference set, drawn once per class.
    """

    def local_order(self, code, active, steps, d_sae, rng):
        keys = torch.as_tensor(rng.random(tuple(code.indices.shape)), device=code.indices.device)
        keys = keys.masked_fill(~active, -1.0)  # inactive slots after every active one
        pos = keys.argsort(dim=1, descending=True, stable=True)[:, :steps]
        return code.indices.gather(1, pos)

    def reference_order(self, code, active, steps, d_sae, rng):
        pool = np.unique(code.indices[active].cpu().numpy())
        return torch.as_tensor(_pad_order(rng.permutation(pool), steps, d_sae), device=code.indices.device)


@dataclass(frozen=True)
class FiringFrequency:
    """Rank latents by how many reference samples they fire on (the class's own samples,
    or the random reference set); a sample's local order ranks its active latents by their
    firing count in its class, then by activation. Deterministic (``rng`` unused).

    This is what a class mean of random scores converges to (about half the firing
    frequency), which is why a "random" baseline ranked by its class mean is a strong one.
    """

    def local_order(self, code, active, steps, d_sae, rng):
        counts = torch.as_tensor(firing_counts(code, active, d_sae), device=code.indices.device)
        a = code.values.abs().to(torch.float64)
        key = counts[code.indices] + a / (a.max() + 1.0)  # activation only breaks ties (< 1)
        key = key.masked_fill(~active, -1.0)
        pos = key.argsort(dim=1, descending=True, stable=True)[:, :steps]
        return code.indices.gather(1, pos)

    def reference_order(self, code, active, steps, d_sae, rng):
        counts = firing_counts(code, active, d_sae)
        order = np.argsort(-counts, kind="stable")
        return torch.as_tensor(order[:steps], device=code.indices.device)


DEFAULT_METHODS: dict[str, Callable[..., Attribution] | OrderBaseline] = {
    "Act x Grad": act_grad,
    "Act x Grad (Eq. 31, beta->0)": act_grad_paper,
    "Integrated Gradients": partial(integrated_gradients, steps=10),
    "Act x LogitLens": act_logit_lens,
    "Logit Lens": logit_lens,
    "Energy": energy,
    "Firing frequency": FiringFrequency(),
    "Random": RandomOrder(),
}
"""The paper's six methods (App. B.2), the exact/approximate split of Act x Grad, and the
firing-frequency baseline."""


@dataclass
class FaithfulnessConfig:
    """Settings of :func:`evaluate` (defaults: App. B.2)."""

    steps: int = 10
    """Latents removed (or restored) one by one: the curve has steps + 1 points."""
    n_random_ref: int = 500
    """Reference samples for ``deletion_random`` (all samples if the set is smaller)."""
    n_subsets: int = 9
    """Equal random subsets for the AUC's standard error."""
    seed: int = 0
    """Seeds the random reference set and the subset split."""
    experiments: tuple[str, ...] = EXPERIMENTS

    def __post_init__(self) -> None:
        for name in ("steps", "n_random_ref", "n_subsets"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"FaithfulnessConfig.{name} must be a positive integer, got {v!r}")
        if self.n_subsets < 2:
            raise ValueError(f"FaithfulnessConfig.n_subsets must be >= 2 for a standard error, got {self.n_subsets}")
        self.experiments = tuple(self.experiments)
        bad = [e for e in self.experiments if e not in EXPERIMENTS]
        if bad:
            raise ValueError(f"FaithfulnessConfig.experiments: unknown {bad}; choose from {EXPERIMENTS}")


class FaithfulnessResult(NamedTuple):
    """Curves and AUCs of every (experiment, method)."""

    curves: dict[str, dict[str, np.ndarray]]
    """experiment -> method -> (N, steps + 1) cosine y(x_s, t) per sample and step."""

    auc: pd.DataFrame
    """One row per (experiment, method): ``auc`` (mean of the subset AUCs), ``sem``,
    ``n_subsets``, ``subset_size``."""

    labels: np.ndarray
    """(N,) class of each evaluated sample (its prompt's row in ``text``)."""

    config: FaithfulnessConfig

    seconds: dict[str, float]
    """Wall-clock seconds spent computing each method's attributions."""

    orders: dict[str, dict[str, np.ndarray]] | None = None
    """experiment -> method -> (N, steps) latent ids removed / restored, in order."""

    coverage: pd.DataFrame | None = None
    """How much of each sample an order touches (:func:`order_coverage`), one row per
    (experiment, method)."""

    def table(self, precision: int = 4) -> pd.DataFrame:
        """Methods x experiments, cells 'AUC ± SEM'."""
        return auc_table(self, precision)


# ----------------------------------------------------------------------------- curves


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        if x.ndim != 2:
            raise ValueError(f"x must be (N, d_pre) class tokens, got shape {tuple(x.shape)}")
        return x
    if hasattr(x, "read"):
        return x.read()
    raise TypeError(f"x must be an (N, d_pre) tensor or a FeatureCache, got {type(x).__name__}")


def activations_of(code: EncoderOutput, latents: torch.Tensor) -> torch.Tensor:
    """a_{n, latents[n, s]}: (N, S) activation of each listed latent in sample n (0 if inactive)."""
    idx, a = code
    match = idx[:, None, :] == latents[:, :, None]  # (N, S, k); top-k ids are unique per sample
    return (match.to(a.dtype) * a[:, None, :]).sum(-1)


def ablation_curves(
    x: torch.Tensor,
    code: EncoderOutput,
    sae: TopKSAE,
    head: Head,
    prompts: torch.Tensor,
    order: torch.Tensor,
    mode: str = "deletion",
    chunk: int = 256,
) -> np.ndarray:
    """y(x_s, t_n) for s = 0..S when the latents ``order[n, :s]`` are removed from sample n
    (``mode='deletion'``) or are the only ones restored on top of b + eps (``'insertion'``).

    Args:
        x: (N, d_pre) class tokens; code: ``sae.encode(x)``.
        prompts: (N, d_post) text embedding each sample is scored against.
        order: (N, S) latent ids in removal / restoration order (a latent not active in a
            sample has activation 0 there: its step leaves the curve flat).
    Returns:
        (N, S + 1) float64 array.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    n = x.shape[0]
    if prompts.shape != (n, head.d_post):
        raise ValueError(f"prompts must be (N={n}, d_post={head.d_post}), got {tuple(prompts.shape)}")
    if order.ndim != 2 or order.shape[0] != n:
        raise ValueError(f"order must be (N={n}, S) latent ids, got {tuple(order.shape)}")
    out = np.empty((n, order.shape[1] + 1))
    V = sae.W_dec.detach().to(x.dtype)
    with torch.no_grad():
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            xs, idx, a = x[s:e], code.indices[s:e], code.values[s:e].to(x.dtype)
            steps = activations_of(EncoderOutput(idx, a), order[s:e])[:, :, None] * V[order[s:e]]  # (Nc, S, d)
            cum = torch.cat([torch.zeros_like(steps[:, :1]), steps.cumsum(1)], dim=1)
            if mode == "deletion":
                pts = xs[:, None, :] - cum
            else:
                base = xs - torch.einsum("nk,nkd->nd", a, V[idx])  # b + eps
                pts = base[:, None, :] + cum
            z = F.normalize(head(pts.reshape(-1, x.shape[1])), dim=-1).reshape(e - s, -1, head.d_post)
            t = F.normalize(prompts[s:e].to(z.dtype), dim=-1)
            out[s:e] = (z * t[:, None, :]).sum(-1).double().cpu().numpy()
    return out


def local_order(attr: Attribution, active: torch.Tensor, steps: int) -> torch.Tensor:
    """(N, steps) latent ids by decreasing score of each sample for its own prompt
    (``attr.values`` (N, 1, k)); inactive slots (``active`` (N, k) False) are ranked last.

    ``active`` is :meth:`TopKSAE.active_mask` of the code: with ``relu=False`` every top-k
    latent is active, negative activations included.
    """
    if attr.values.shape[1] != 1:
        raise ValueError(f"local_order expects scores for one prompt per sample, got T={attr.values.shape[1]}")
    if not isinstance(active, torch.Tensor) or active.dtype != torch.bool or active.shape != attr.indices.shape:
        raise ValueError(f"active must be an (N, k) = {tuple(attr.indices.shape)} bool mask "
                         "(TopKSAE.active_mask(code)), got "
                         f"{type(active).__name__} {tuple(getattr(active, 'shape', ()))}")
    scores = attr.values[:, 0, :].clone()
    scores[~active.to(scores.device)] = -torch.inf
    pos = scores.argsort(dim=1, descending=True, stable=True)[:, :steps]
    return attr.indices.gather(1, pos)


def order_coverage(order: torch.Tensor, code: EncoderOutput, active: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per sample, how much of it an order of S latents touches.

    Returns ``(active_share, mass_share)``, each (N,): the fraction of the S ordered latents
    active in the sample, and the share of the sample's total |activation| they carry. A
    class-level order can only move a sample through latents active in it, which is why
    frequent latents make strong global orders.
    """
    a = code.values.abs() * active.to(code.values.dtype)
    hit = activations_of(EncoderOutput(code.indices, a), order.to(code.indices.device))  # (N, S)
    is_active = activations_of(EncoderOutput(code.indices, active.to(code.values.dtype)), order.to(code.indices.device))
    total = a.sum(1).clamp_min(torch.finfo(a.dtype).tiny)
    return (is_active.mean(1).double().cpu().numpy(), (hit.sum(1) / total).double().cpu().numpy())


def auc_per_sample(curves: np.ndarray) -> np.ndarray:
    """Trapezoid area under each row, steps mapped to [0, 1]."""
    s = curves.shape[1] - 1
    if s < 1:
        raise ValueError("a curve needs at least two points for an AUC")
    return (curves[:, 1:] + curves[:, :-1]).sum(1) / (2 * s)


def subset_auc(curves: np.ndarray, n_subsets: int = 9, seed: int = 0) -> tuple[float, float, int]:
    """(mean, SEM, subset size) of the AUC over ``n_subsets`` equal random subsets (App. B.2)."""
    n = curves.shape[0]
    m = n // n_subsets
    if m < 1:
        raise ValueError(f"need at least n_subsets={n_subsets} samples for the subset SEM, got {n}")
    per = auc_per_sample(curves)
    perm = np.random.default_rng(seed).permutation(n)[: m * n_subsets].reshape(n_subsets, m)
    subs = per[perm].mean(1)
    return float(subs.mean()), float(subs.std(ddof=1) / np.sqrt(n_subsets)), m


# ------------------------------------------------------------------------------ driver


def _check_labels(labels: Any, n: int, n_classes: int) -> np.ndarray:
    lab = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if lab.shape != (n,) or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be (N={n},) integers, got shape {lab.shape} dtype {lab.dtype}")
    if n and (lab.min() < 0 or lab.max() >= n_classes):
        raise ValueError(f"labels must index the {n_classes} rows of text; found {lab.min()}..{lab.max()} "
                         "(unlabeled samples, -1, cannot be evaluated)")
    return lab.astype(np.int64)


def _resolve_methods(methods: Any) -> dict[str, Callable[..., Attribution] | OrderBaseline]:
    if methods is None:
        return dict(DEFAULT_METHODS)
    if not isinstance(methods, Mapping):
        unknown = [m for m in methods if m not in DEFAULT_METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; known: {list(DEFAULT_METHODS)}")
        return {m: DEFAULT_METHODS[m] for m in methods}
    for name, m in methods.items():
        if not (callable(m) or isinstance(m, OrderBaseline)):
            raise TypeError(f"method {name!r} must be an attribution function or an OrderBaseline, "
                            f"got {type(m).__name__}")
    return dict(methods)


def _takes_generator(method: Callable[..., Any]) -> bool:
    """Whether an attribution function draws random numbers (has a ``generator`` keyword)."""
    try:
        return "generator" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def evaluate(
    x: Any,
    labels: Any,
    sae: TopKSAE,
    head: Head,
    text: torch.Tensor,
    methods: Mapping[str, Callable[..., Attribution] | OrderBaseline] | Sequence[str] | None = None,
    config: FaithfulnessConfig | None = None,
    *,
    reference_x: Any = None,
    progress: bool = True,
) -> FaithfulnessResult:
    """Run the App. B.2 experiments for every method.

    Args:
        x: (N, d_pre) class tokens of the evaluation samples (or a FeatureCache).
        labels: (N,) class of each sample: the row of ``text`` it is scored against.
        text: (C, d_post) one prompt embedding per class.
        methods: name -> attribution function (``method(x, sae, head, text, code=...)``) or
            :class:`OrderBaseline`, or a list of names from :data:`DEFAULT_METHODS`; default
            all of them.
        config: steps, n_random_ref, n_subsets, seed, experiments.
        reference_x: pool for the random reference set (default: ``x`` itself).

    Randomness comes from one stream per evaluation, seeded from ``config.seed``: the
    reference set and subsets from numpy's ``default_rng(seed)``, each random method from
    its own generator seeded by (seed, method position), handed to attribution functions
    that take a ``generator`` keyword (e.g. :func:`~clipattr_utils.attribution.random_scores`).
    """
    cfg = config or FaithfulnessConfig()
    methods = _resolve_methods(methods)
    device = sae.W_dec.device
    xt = _as_tensor(x).to(device)
    if xt.shape[1] != head.d_pre:
        raise ValueError(f"x must be (N, d_pre={head.d_pre}), got {tuple(xt.shape)}")
    if text.ndim != 2 or text.shape[1] != head.d_post:
        raise ValueError(f"text must be (C, d_post={head.d_post}) class prompt embeddings, got {tuple(text.shape)}")
    n = xt.shape[0]
    lab = _check_labels(labels, n, text.shape[0])
    if n < cfg.n_subsets:
        raise ValueError(f"need at least n_subsets={cfg.n_subsets} samples, got {n}")
    dtype = xt.dtype
    text = text.to(device, dtype)
    with torch.no_grad():
        code = sae.encode(xt.to(sae.W_enc.dtype))
        code = EncoderOutput(code.indices, code.values.to(dtype))
    active = sae.active_mask(code)
    lab_t = torch.as_tensor(lab, device=device)
    prompts = text[lab_t]
    classes = np.unique(lab)
    if cfg.steps > sae.k and any(e.endswith("local") for e in cfg.experiments):
        raise ValueError(f"steps={cfg.steps} exceeds the k={sae.k} active latents per sample")
    S = cfg.steps

    ref_x = ref_code = ref_active = None
    if "deletion_random" in cfg.experiments:
        pool = xt if reference_x is None else _as_tensor(reference_x).to(device, dtype)
        if pool.shape[1] != head.d_pre:
            raise ValueError(f"reference_x must be (N, d_pre={head.d_pre}), got {tuple(pool.shape)}")
        n_ref = min(cfg.n_random_ref, pool.shape[0])
        pick = np.sort(np.random.default_rng(cfg.seed).choice(pool.shape[0], n_ref, replace=False))
        ref_x = pool[torch.as_tensor(pick, device=device)]
        with torch.no_grad():
            rc = sae.encode(ref_x.to(sae.W_enc.dtype))
        ref_code = EncoderOutput(rc.indices, rc.values.to(dtype))
        ref_active = sae.active_mask(ref_code)

    curves: dict[str, dict[str, np.ndarray]] = {e: {} for e in cfg.experiments}
    orders_out: dict[str, dict[str, np.ndarray]] = {e: {} for e in cfg.experiments}
    coverage_rows: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    need_local = any(e.endswith("local") for e in cfg.experiments)
    bar = tqdm(list(methods.items()), desc="faithfulness", disable=not progress)
    for position, (name, method) in enumerate(bar):
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        # One stream per (evaluation, method): reproducible, and independent of which
        # other methods run alongside.
        rng = np.random.default_rng([cfg.seed, position])
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        opts = {"generator": gen} if not isinstance(method, OrderBaseline) and _takes_generator(method) else {}
        local = torch.empty(n, S, dtype=torch.long, device=device)
        glob = torch.empty(n, S, dtype=torch.long, device=device)
        for c in classes:
            rows = torch.as_tensor(np.flatnonzero(lab == c), device=device)
            code_c, active_c = EncoderOutput(code.indices[rows], code.values[rows]), active[rows]
            if isinstance(method, OrderBaseline):
                if need_local:
                    local[rows] = method.local_order(code_c, active_c, S, sae.d_sae, rng)
                if "deletion_global" in cfg.experiments:
                    glob[rows] = method.reference_order(code_c, active_c, S, sae.d_sae, rng)[None, :]
                continue
            attr = method(xt[rows], sae, head, text[int(c):int(c) + 1], code=code_c, **opts)
            if need_local:
                local[rows] = local_order(attr, active_c, S)
            if "deletion_global" in cfg.experiments:
                glob[rows] = mean_relevance(attr, sae.d_sae)[0].topk(S).indices[None, :].expand(len(rows), -1)
        rand = None
        if ref_x is not None:
            if isinstance(method, OrderBaseline):
                per_class = torch.stack([method.reference_order(ref_code, ref_active, S, sae.d_sae, rng)
                                         for _ in range(text.shape[0])])  # one draw per class
            else:
                attr = method(ref_x, sae, head, text, code=ref_code, **opts)  # (n_ref, C, k)
                per_class = mean_relevance(attr, sae.d_sae).topk(S, dim=1).indices
            rand = per_class.to(device)[lab_t]  # (N, S)
        seconds[name] = time.perf_counter() - t0
        for e in cfg.experiments:
            order = {"deletion_local": local, "insertion_local": local, "deletion_global": glob,
                     "deletion_random": rand}[e]
            mode = "insertion" if e.startswith("insertion") else "deletion"
            curves[e][name] = ablation_curves(xt, code, sae, head, prompts, order, mode)
            orders_out[e][name] = order.cpu().numpy().copy()  # own memory: local orders serve two experiments
            act_share, mass_share = order_coverage(order, code, active)
            coverage_rows.append({"experiment": e, "method": name, "active_share": float(act_share.mean()),
                                  "mass_share": float(mass_share.mean())})
    rows_out = []
    for e in cfg.experiments:
        for name, cur in curves[e].items():
            auc, sem, m = subset_auc(cur, cfg.n_subsets, cfg.seed)
            rows_out.append({"experiment": e, "method": name, "auc": auc, "sem": sem,
                             "n_subsets": cfg.n_subsets, "subset_size": m})
    return FaithfulnessResult(curves, pd.DataFrame(rows_out), lab, cfg, seconds, orders_out,
                              pd.DataFrame(coverage_rows))


def auc_table(result: FaithfulnessResult, precision: int = 4) -> pd.DataFrame:
    """Methods (rows) x experiments (columns), cells 'AUC ± SEM'."""
    df = result.auc.copy()
    df["cell"] = [f"{a:.{precision}f} ± {s:.{precision}f}" for a, s in zip(df["auc"], df["sem"])]
    table = df.pivot(index="method", columns="experiment", values="cell")
    order = [m for m in dict.fromkeys(df["method"])]
    return table.loc[order, [e for e in result.config.experiments]]


def coverage_table(result: FaithfulnessResult,
                   experiments: Sequence[str] = ("deletion_global", "deletion_random")) -> pd.DataFrame:
    """Methods (rows) x (experiment, share) columns: the mean fraction of the ordered latents
    active in a sample (``active_share``) and of its |activation| they carry (``mass_share``).

    A global order acts on a sample only through latents active in it; this table is the
    reason a frequency-based order competes in the global experiments.
    """
    if result.coverage is None:
        raise ValueError("this result carries no coverage (it was saved by an older version)")
    df = result.coverage[result.coverage["experiment"].isin(list(experiments))]
    table = df.pivot(index="method", columns="experiment", values=["active_share", "mass_share"])
    table = table.swaplevel(axis=1).sort_index(axis=1, level=0)
    return table.loc[[m for m in dict.fromkeys(df["method"])]]


def ranking(result: FaithfulnessResult, experiment: str) -> list[str]:
    """Methods from most to least faithful in one experiment (lowest deletion AUC first,
    highest insertion AUC first)."""
    df = result.auc[result.auc["experiment"] == experiment]
    if df.empty:
        raise ValueError(f"experiment {experiment!r} was not run; ran {result.config.experiments}")
    return list(df.sort_values("auc", ascending=experiment.startswith("deletion"))["method"])


# ----------------------------------------------------------------------------- figure


def plot_faithfulness(result: FaithfulnessResult, experiments: Sequence[str] | None = None,
                      figsize_per_panel: tuple[float, float] = (4.2, 3.6)):
    """One panel per experiment (as Fig. 3 / Fig. 7 / Fig. 8): mean cosine vs step with the
    standard error across samples shaded, legend 'method (AUC ± SEM over subsets)'."""
    import matplotlib.pyplot as plt

    experiments = list(experiments or result.config.experiments)
    fig, axes = plt.subplots(1, len(experiments), figsize=(figsize_per_panel[0] * len(experiments), figsize_per_panel[1]),
                             squeeze=False)
    auc = result.auc.set_index(["experiment", "method"])
    for ax, e in zip(axes[0], experiments):
        if e not in result.curves:
            raise ValueError(f"experiment {e!r} was not run; ran {result.config.experiments}")
        for name, cur in result.curves[e].items():
            steps = np.arange(cur.shape[1])
            mean, sem = cur.mean(0), cur.std(0, ddof=1) / np.sqrt(cur.shape[0])
            a, s = auc.loc[(e, name), ["auc", "sem"]]
            line, = ax.plot(steps, mean, marker="o", ms=3, label=f"{name} ({a:.3f} ± {s:.3f})")
            ax.fill_between(steps, mean - sem, mean + sem, color=line.get_color(), alpha=0.2)
        better = "lower AUC is better" if e.startswith("deletion") else "higher AUC is better"
        ax.set_title(f"{TITLES[e]}\n({better})", fontsize=10)
        ax.set_xlabel("latents " + ("removed" if e.startswith("deletion") else "restored"))
        ax.set_ylabel("cosine similarity y(x, t)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def config_dict(cfg: FaithfulnessConfig) -> dict[str, Any]:
    return asdict(cfg)


GRADIENT_METHODS = ("Act x Grad", "Act x Grad (Eq. 31, beta->0)", "Integrated Gradients")


def compare_with(result: FaithfulnessResult, baseline: str = "Random",
                 methods: Sequence[str] = GRADIENT_METHODS) -> pd.DataFrame:
    """Each of ``methods`` against ``baseline`` in every experiment that was run.

    ``gap_in_sem`` is the AUC difference over the combined SEM, positive when the method is
    more faithful (lower deletion AUC, higher insertion AUC); ``beats`` is ``gap_in_sem > 2``.
    """
    df = result.auc.set_index(["experiment", "method"])
    rows = []
    for e in result.config.experiments:
        if (e, baseline) not in df.index:
            raise ValueError(f"baseline {baseline!r} was not evaluated in {e}")
        b = df.loc[(e, baseline)]
        sign = -1.0 if e.startswith("deletion") else 1.0
        for m in methods:
            if (e, m) not in df.index:
                continue
            r = df.loc[(e, m)]
            gap = sign * (r["auc"] - b["auc"]) / max(float(np.hypot(r["sem"], b["sem"])), 1e-12)
            rows.append({"experiment": e, "method": m, "auc": r["auc"], "sem": r["sem"], "baseline": baseline,
                         "baseline_auc": b["auc"], "baseline_sem": b["sem"], "gap_in_sem": float(gap),
                         "beats": bool(gap > 2)})
    return pd.DataFrame(rows)


def explain_global(result: FaithfulnessResult, frequency: str = "Firing frequency",
                   gradient_methods: Sequence[str] = GRADIENT_METHODS) -> str:
    """A few sentences, with this run's numbers, on how the best gradient-based method fares
    against the firing-frequency order in the global experiments and why (order coverage)."""
    if result.coverage is None:
        raise ValueError("this result carries no coverage (it was saved by an older version)")
    auc = result.auc.set_index(["experiment", "method"])
    cov = result.coverage.set_index(["experiment", "method"])
    lines = []
    for e in ("deletion_global", "deletion_random"):
        if e not in result.config.experiments or (e, frequency) not in auc.index:
            continue
        grads = [m for m in gradient_methods if (e, m) in auc.index]
        if not grads:
            continue
        g = min(grads, key=lambda m: auc.loc[(e, m), "auc"])
        ga, gs = auc.loc[(e, g), ["auc", "sem"]]
        fa_, fs = auc.loc[(e, frequency), ["auc", "sem"]]
        gap = (fa_ - ga) / max(float(np.hypot(gs, fs)), 1e-12)
        verdict = ("beats" if gap > 2 else "ties with" if gap > -2 else "loses to")
        lines.append(
            f"{TITLES[e]}: the best gradient-based method, {g} ({ga:.3f} ± {gs:.3f}), {verdict} the "
            f"firing-frequency order ({fa_:.3f} ± {fs:.3f}; {gap:+.1f} SEM). Of its {result.config.steps} "
            f"class-level latents, {cov.loc[(e, g), 'active_share']:.0%} are active in an average image "
            f"(carrying {cov.loc[(e, g), 'mass_share']:.0%} of its activation); of the frequency order's, "
            f"{cov.loc[(e, frequency), 'active_share']:.0%} ({cov.loc[(e, frequency), 'mass_share']:.0%}).")
    return "\n".join(lines) if lines else "No global experiment with the firing-frequency baseline was run."


def check_paper_ordering(result: FaithfulnessResult, gradient_methods: Sequence[str] = GRADIENT_METHODS,
                         random_method: str = "Random",
                         experiments: Sequence[str] = ("deletion_local", "insertion_local")) -> pd.DataFrame:
    """Does the run show the paper's ordering (Sec. 5.1, App. B.2): a gradient-based method
    most faithful, random least? One row per experiment with the best gradient-based and the
    best other method (AUC, SEM), ``gap_in_sem`` (their AUC difference over the combined SEM,
    positive when the gradient method is better), ``gradient_best`` and ``random_worst``."""
    rows = []
    for e in experiments:
        order = ranking(result, e)
        df = result.auc[result.auc["experiment"] == e].set_index("method")
        grads = [m for m in order if m in gradient_methods]
        others = [m for m in order if m not in gradient_methods and m != random_method]
        if not grads or not others:
            raise ValueError(f"check_paper_ordering needs gradient-based and other methods in {e}; have {order}")
        g, o = grads[0], others[0]
        sign = -1.0 if e.startswith("deletion") else 1.0
        gap = sign * (df.at[g, "auc"] - df.at[o, "auc"]) / max(np.hypot(df.at[g, "sem"], df.at[o, "sem"]), 1e-12)
        rows.append({"experiment": e, "best": order[0], "best_gradient": g, "gradient_auc": df.at[g, "auc"],
                     "gradient_sem": df.at[g, "sem"], "best_other": o, "other_auc": df.at[o, "auc"],
                     "other_sem": df.at[o, "sem"], "gap_in_sem": float(gap),
                     "gradient_best": order[0] in gradient_methods, "worst": order[-1],
                     "random_worst": order[-1] == random_method})
    return pd.DataFrame(rows)


def save_result(result: FaithfulnessResult, directory: str | os.PathLike) -> Path:
    """Write ``curves.safetensors`` (one (N, steps+1) tensor per experiment/method, the
    orders as ``order/<experiment>/<method>``, and the labels) and ``faithfulness.json``
    (config, AUC table, coverage, seconds) into ``directory``, each atomically."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"{e}/{m}": torch.as_tensor(c) for e, per in result.curves.items() for m, c in per.items()}
    for e, per in (result.orders or {}).items():
        tensors.update({f"order/{e}/{m}": torch.tensor(o) for m, o in per.items()})  # copies: no shared storage
    tensors["labels"] = torch.as_tensor(result.labels)
    save_tensors_atomic(out / "curves.safetensors", tensors)
    body = {"config": asdict(result.config), "auc": result.auc.to_dict(orient="records"), "seconds": result.seconds,
            "methods": list(next(iter(result.curves.values())).keys()) if result.curves else [],
            "coverage": None if result.coverage is None else result.coverage.to_dict(orient="records")}
    write_json_atomic(out / "faithfulness.json", body, indent=2, sort_keys=False)
    return out


def load_result(directory: str | os.PathLike) -> FaithfulnessResult:
    """Read what :func:`save_result` wrote."""
    import json

    from safetensors.torch import load_file

    d = Path(directory)
    for name in ("curves.safetensors", "faithfulness.json"):
        if not (d / name).is_file():
            raise FileNotFoundError(f"load_result: {d / name} is missing")
    body = json.loads((d / "faithfulness.json").read_text())
    cfg = FaithfulnessConfig(**body["config"])
    tensors = load_file(str(d / "curves.safetensors"))
    curves = {e: {m: tensors[f"{e}/{m}"].numpy() for m in body["methods"]} for e in cfg.experiments}
    orders = {e: {m: tensors[f"order/{e}/{m}"].numpy() for m in body["methods"] if f"order/{e}/{m}" in tensors}
              for e in cfg.experiments}
    coverage = pd.DataFrame(body["coverage"]) if body.get("coverage") is not None else None
    return FaithfulnessResult(curves, pd.DataFrame(body["auc"]), tensors["labels"].numpy(), cfg, body["seconds"],
                              orders, coverage)


# ------------------------------------------------------------------------ data helpers


def balanced_indices(labels: Sequence[int] | np.ndarray, n_per_class: int,
                     classes: Sequence[int] | None = None) -> np.ndarray:
    """Positions of the first ``n_per_class`` samples of each class in ``classes`` (default:
    every class present), in class order — the evaluation set of App. B.2 (first 100
    classes x 50 images). Raises naming the class when one has too few samples."""
    lab = np.asarray(labels)
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, (int, np.integer)) or n_per_class < 1:
        raise ValueError(f"n_per_class must be a positive integer, got {n_per_class!r}")
    classes = sorted(set(lab[lab >= 0].tolist())) if classes is None else list(classes)
    out = []
    for c in classes:
        rows = np.flatnonzero(lab == c)
        if len(rows) < n_per_class:
            raise ValueError(f"class {c} has only {len(rows)} samples, fewer than n_per_class={n_per_class}")
        out.append(rows[:n_per_class])
    return np.concatenate(out) if out else np.empty(0, dtype=np.int64)


def own_prompt_scores(method: Callable[..., Attribution], x: torch.Tensor, labels: Any, sae: TopKSAE, head: Head,
                      text: torch.Tensor, **opts: Any) -> Attribution:
    """Scores of each sample for its own class prompt only: values (N, 1, k), computed class
    by class so no (N, C, k) block is formed."""
    xt = _as_tensor(x)
    lab = _check_labels(labels, xt.shape[0], text.shape[0])
    idx = torch.empty(xt.shape[0], sae.k, dtype=torch.long)
    vals = None
    for c in np.unique(lab):
        rows = torch.as_tensor(np.flatnonzero(lab == c))
        attr = method(xt[rows], sae, head, text[int(c):int(c) + 1], **opts)
        if vals is None:
            vals = torch.empty(xt.shape[0], 1, sae.k, dtype=attr.values.dtype)
        idx[rows], vals[rows] = attr.indices.cpu(), attr.values.cpu()
    if vals is None:
        vals = torch.empty(0, 1, sae.k)
    return Attribution(idx, vals)


def method_comparison(x: torch.Tensor, label: int, sae: TopKSAE, head: Head, text: torch.Tensor,
                      methods: Mapping[str, Callable[..., Attribution] | OrderBaseline] | None = None,
                      sort_by: str = "Act x Grad") -> pd.DataFrame:
    """One sample's active latents with every attribution method's score and rank for its
    class prompt ``text[label]``, sorted by ``sort_by`` (rank 1 = highest score).

    Args:
        x: (d_pre,) or (1, d_pre) class token of the sample.
        methods: name -> attribution function (order baselines are skipped: they give no
            scores); default :data:`DEFAULT_METHODS`.
    """
    xt = x.reshape(1, -1)
    methods = _resolve_methods(methods)
    with torch.no_grad():
        code = sae.encode(xt.to(sae.W_enc.dtype))
    table = pd.DataFrame({"latent": code.indices[0].tolist(), "activation": code.values[0].detach().double().numpy(),
                          "active": sae.active_mask(code)[0].numpy()})
    prompt = text[int(label):int(label) + 1]
    for name, method in methods.items():
        if isinstance(method, OrderBaseline):
            continue
        attr = method(xt, sae, head, prompt, code=EncoderOutput(code.indices, code.values.detach()))
        score = attr.values[0, 0].detach().double().cpu().numpy()
        table[name] = score
        table[f"rank {name}"] = (-score).argsort(kind="stable").argsort(kind="stable") + 1
    if sort_by not in table:
        raise ValueError(f"sort_by={sort_by!r} is not among the methods: {[c for c in table if not c.startswith('rank')]}")
    return table.sort_values(sort_by, ascending=False, kind="stable").reset_index(drop=True)


def approximation_error(exact: Attribution, approx: Attribution, top: int = 10) -> pd.DataFrame:
    """Per (sample, prompt): how far an approximation (e.g. the paper's Eq. 29/31 form) is from
    the exact scores. Columns: ``rel_error`` (max |approx - exact| / max |exact| over the k
    latents), ``top_overlap`` (shared latents among the ``top`` best, as a fraction),
    ``same_top1``, ``rank_corr`` (Spearman over the k latents), ``sign_flips`` (latents whose
    score changes sign)."""
    if exact.values.shape != approx.values.shape or not torch.equal(exact.indices, approx.indices):
        raise ValueError("approximation_error: both attributions must cover the same samples, prompts and latents")
    e, a = exact.values.double(), approx.values.double()
    n, t, k = e.shape
    top = min(top, k)
    rel = ((a - e).abs().amax(-1) / e.abs().amax(-1).clamp_min(1e-300))
    te, ta = e.topk(top, dim=-1).indices, a.topk(top, dim=-1).indices
    overlap = (te[..., :, None] == ta[..., None, :]).any(-1).double().mean(-1)
    re, ra = e.argsort(-1).argsort(-1).double(), a.argsort(-1).argsort(-1).double()
    re, ra = re - re.mean(-1, keepdim=True), ra - ra.mean(-1, keepdim=True)
    rho = (re * ra).sum(-1) / (re.norm(dim=-1) * ra.norm(dim=-1)).clamp_min(1e-300)
    flips = ((e > 0) != (a > 0)).sum(-1)
    ii, tt = np.meshgrid(np.arange(n), np.arange(t), indexing="ij")
    return pd.DataFrame({"sample": ii.reshape(-1), "prompt": tt.reshape(-1), "rel_error": rel.reshape(-1).numpy(),
                         "top_overlap": overlap.reshape(-1).numpy(),
                         "same_top1": (te[..., 0] == ta[..., 0]).reshape(-1).numpy(),
                         "rank_corr": rho.reshape(-1).numpy(), "sign_flips": flips.reshape(-1).numpy()})


__all__ = ["EXPERIMENTS", "DEFAULT_METHODS", "FaithfulnessConfig", "FaithfulnessResult", "evaluate",
           "ablation_curves", "local_order", "activations_of", "auc_per_sample", "subset_auc", "auc_table",
           "ranking", "plot_faithfulness", "config_dict", "balanced_indices", "own_prompt_scores",
           "approximation_error", "check_paper_ordering", "save_result", "load_result", "GRADIENT_METHODS",
           "OrderBaseline", "RandomOrder", "FiringFrequency", "method_comparison", "compare_with", "explain_global", "firing_counts", "order_coverage", "coverage_table"]
