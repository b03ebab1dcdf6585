"""The melanoma experiment of Sec. 5.4 / App. E on cached class tokens: splits, the red
latent, the standard and the robust probe over several seeds, and their summaries.

Everything here runs on the class tokens of one image pool under the three red-hue
conditions (`hue.condition_features`: the backbone ran once per condition) plus the SAE and
the head. Per seed (the seed draws the probe's training split and the augmentation):

1. split (App. E): ``train_frac`` of the melanoma samples plus as many others (or
   ``n_train_other``) for training, the rest for testing;
2. the standard probe: logistic regression on the clean training embeddings;
3. its relevance per class (`probe.class_relevance`, on the clean training samples);
4. Eq. 33 on the benign training samples, with the red latent's activations;
5. the robust probe: the same regression on Eq. 34-augmented training tokens (through the
   head; ``space="embedding"`` augments the normalised embeddings instead);
6. accuracy per class under each condition on the test samples, and the same for every
   alpha of the sweep (Fig. 15);
7. "robust_val": Eq. 33's latent (the red latent or another red candidate,
   :func:`red_candidates`) and alpha chosen on a validation part of the training samples
   (:func:`choose_direction`), then the robust probe on all training samples.

The red latent itself is found once, from the first seed's standard probe, without naming
it: among the ``n_candidates`` latents most relevant for the benign class, the one whose
activation rises most when red is added to the images (:func:`red_response`, Eq. 32's
"more red" condition; without it, the one whose top images are reddest, :func:`redness`);
a ground-truth attribute (the sandbox's ``tint``) only checks the choice afterwards.

Accuracies are stored in percent; ``clean_cost`` is robust minus standard clean (no red-hue
change) balanced accuracy, the mean of the two class accuracies, in points (negative: the
robust probe is worse).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..gallery import top_activating_rows
from ..head import Head
from ..sae.model import EncoderOutput, TopKSAE
from . import direction as dr
from . import probe as pr
from .hue import CONDITIONS

CLASSES = ("benign", "melanoma")
"""Class names used in every table: label 0 (non-melanoma; the sandbox's nevus) and 1."""


@dataclass
class CaseConfig:
    """Settings of the experiment (defaults: App. E where it says, else documented choices)."""

    train_frac: float = 0.8
    """Share of the melanoma samples used for training (App. E: 80 %)."""
    n_train_other: int | None = None
    """Non-melanoma training samples; None: as many as melanoma training samples (App. E:
    3,629 melanoma and 4,000 others, about matched)."""
    n_test_other: int | None = None
    """Cap on the non-melanoma test samples (None: all remaining; ISIC has ~17,000)."""
    C: float = 1.0
    """Inverse L2 strength of the logistic regression (sklearn's default; the paper gives none)."""
    alpha: float = 0.5
    """Eq. 34's alpha for "the" robust probe (App. E: 0.5)."""
    alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    """The sweep of Fig. 15 (0 = the standard probe up to the augmentation draw)."""
    threshold_mode: str = "quantile"
    """Eq. 33's thresholds: "quantile", "std" or "absolute" (see `direction.thresholds`)."""
    threshold_params: tuple[float, float] = (0.5, 0.95)
    """(low, high) for ``threshold_mode``; the default: below the median vs the top 5 % of
    the benign training samples' activations (the sandbox's red latent is 0 on many samples,
    where the paper's mean - 0.26 std / mean + 2.05 std leaves only ~10 samples above). On
    the sandbox the top 10 % cut less (world 1 with the first dermatology CLIP: 53 % vs 65 %):
    with the hue on a fifth of the benign images, that set already mixes in untinted ones."""
    space: str = "token"
    """Where Eq. 33/34 act: "token" (class tokens, then the head; the default) or
    "embedding" (the L2-normalised embeddings the probe reads)."""
    n_aug: int = 1
    """Augmented copies of each training sample (each with its own p)."""
    n_candidates: int = 3
    """How many of the benign class's most relevant latents are candidates for the red latent."""
    n_top: int = 20
    """Top-activating images per latent for the grids, the redness score and the purity check."""
    select_alpha: bool = True
    """Also fit "robust_val": the robust probe with alpha (and, among ``direction_latents``,
    the latent of Eq. 33) chosen on a validation part of the training samples (never the
    test samples), see :func:`choose_direction`."""
    n_direction_candidates: int = 10
    """For "robust_val": how many of the benign class's most relevant latents may give Eq. 33's
    direction; of those, the red ones (:func:`red_candidates`: a red response at least
    ``min_redness_frac`` of the largest) are tried on validation. 1: the
    red latent only (the paper's single red latent). Read by the notebook, which passes the
    resulting latents to :func:`run_case` as ``direction_latents``. 10 rather than 5: the
    sandbox SAEs split the hue over several latents, and the one ranked within the top 3 may
    cover only part of the tinted images (world 11: its top 5 % of benign activations were
    57 % tinted, cut 30 %; with the strongly responding latents at ranks 6 and 9 tried too, 55 %)."""
    min_redness_frac: float = 0.5
    """See ``n_direction_candidates``."""
    val_frac: float = 0.25
    """Share of the training samples held out (stratified) for that choice (``val_folds=1``)."""
    val_folds: int = 4
    """> 1: that choice by stratified ``val_folds``-fold cross-validation on the training
    samples (drops and costs averaged over the folds; every training sample validates once),
    which is less noisy than one held-out part; 1: one held-out part of ``val_frac``."""
    min_cut: float = 0.6
    """The choice's goal: cut the melanoma drop under more red by this share ... (above the
    issue's 50 %: the alpha that first reaches the goal on the validation folds cuts less on
    the test images -- with 0.5, world 3 of the sandbox landed at 49 %)."""
    max_cost: float = 2.0
    """... at no more than this many points of clean balanced accuracy."""
    oracle: bool = True
    """Where a ground-truth tint is known (sandbox), also sweep alpha with the ground-truth
    direction (mean tinted - mean untinted benign training token): an upper bound for what
    a single-direction augmentation can do, for diagnosis only."""

    def __post_init__(self) -> None:
        if not 0.0 < self.train_frac < 1.0:
            raise ValueError(f"CaseConfig.train_frac must be in (0, 1), got {self.train_frac}")
        if self.space not in ("token", "embedding"):
            raise ValueError(f"CaseConfig.space must be 'token' or 'embedding', got {self.space!r}")
        if self.n_aug < 1:
            raise ValueError(f"CaseConfig.n_aug must be >= 1, got {self.n_aug}")
        if self.val_folds < 1:
            raise ValueError(f"CaseConfig.val_folds must be >= 1, got {self.val_folds}")
        if self.n_direction_candidates < 1:
            raise ValueError(f"CaseConfig.n_direction_candidates must be >= 1, got {self.n_direction_candidates}")
        self.alphas = tuple(float(a) for a in self.alphas)
        self.threshold_params = tuple(float(v) for v in self.threshold_params)  # type: ignore[assignment]


# ------------------------------------------------------------------------------------ split


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    test: np.ndarray


def split_indices(labels: Sequence[int], seed: int, train_frac: float = 0.8, n_train_other: int | None = None,
                  n_test_other: int | None = None) -> Split:
    """App. E's split: ``train_frac`` of the melanoma samples (label 1) and as many others
    (label 0; or ``n_train_other``) for training, everything else (others capped at
    ``n_test_other``) for testing. Sorted row indices, drawn with ``seed``."""
    y = np.asarray(labels)
    mel, oth = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    n_mel = int(round(train_frac * len(mel)))
    if not 0 < n_mel < len(mel):
        raise ValueError(f"split_indices: {len(mel)} melanoma samples cannot be split {train_frac:g} / "
                         f"{1 - train_frac:g} with both parts non-empty")
    n_oth = n_mel if n_train_other is None else int(n_train_other)
    if not 0 < n_oth < len(oth):
        raise ValueError(f"split_indices: {n_oth} non-melanoma training samples requested, {len(oth)} available "
                         "(some must remain for testing)")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2019]))
    mel_tr = rng.choice(mel, n_mel, replace=False)
    oth_tr = rng.choice(oth, n_oth, replace=False)
    oth_te = np.setdiff1d(oth, oth_tr)
    if n_test_other is not None and n_test_other < len(oth_te):
        oth_te = rng.choice(oth_te, int(n_test_other), replace=False)
    return Split(np.sort(np.r_[mel_tr, oth_tr]), np.sort(np.r_[np.setdiff1d(mel, mel_tr), oth_te]))


# ----------------------------------------------------------------------------- the red latent


def redness(image: Any) -> float:
    """Mean over pixels of red - (green + blue) / 2, in [-1, 1] (pixels scaled to [0, 1])."""
    raw = np.asarray(image)
    a = raw.astype(np.float64)
    if not np.issubdtype(raw.dtype, np.floating):
        a = a / 255.0
    return float((a[..., 0] - 0.5 * (a[..., 1] + a[..., 2])).mean())


@dataclass
class RedLatent:
    """The latent found for the red hue, with the evidence."""

    latent: int
    rank: int
    """Its rank among the benign class's most relevant latents (1 = top)."""
    top_rows: list[int]
    """Rows (of the pool) of its ``n_top`` most activating images, most active first."""
    candidates: pd.DataFrame
    """The candidates: latent, rank, relevance, share, redness (of their top images, minus
    the pool's mean redness), response (:func:`red_response`, where the "more red" code was
    given) and, where an attribute was given, purity."""
    purity: float | None
    """Share of its top images that carry the attribute (the sandbox's tint), when known."""
    note: str = ""
    """Why the choice needs a second look, e.g. the search had to go below the top candidates."""


def explain_standard(data: "CaseData", seed: int, cfg: "CaseConfig | None" = None) -> tuple[Any, pd.DataFrame, Split]:
    """The standard probe of one seed and its class-relevance table on its clean training
    samples: ``(probe, table, split)`` (what :func:`find_red_latent` reads)."""
    cfg = cfg or CaseConfig()
    split = split_indices(data.labels, seed, cfg.train_frac, cfg.n_train_other, cfg.n_test_other)
    clf = pr.fit_probe(data.emb["none"][split.train], data.labels[split.train], C=cfg.C)
    attr = pr.probe_relevance(data.tokens["none"][split.train], data.sae, data.head, clf)
    return clf, pr.class_relevance(attr, data.labels[split.train], data.sae.d_sae, CLASSES), split


def red_response(code: EncoderOutput, red_code: EncoderOutput, latents: Sequence[int]) -> dict[int, float]:
    """Per latent, its mean activation change when red is added to the images (Eq. 32):
    ``red_code`` is the SAE code of the same images as ``code`` under "more red". A latent
    "highly sensitive to red tones" (App. E) rises; one for the lesion's own untinted colour
    falls, however red its top images may look."""
    if tuple(code.indices.shape) != tuple(red_code.indices.shape):
        raise ValueError(f"red_response: the codes cover different images ({tuple(code.indices.shape)} vs "
                         f"{tuple(red_code.indices.shape)}); both must encode the same rows")
    return {int(j): float((dr.dense_activation(red_code, j) - dr.dense_activation(code, j)).mean()) for j in latents}


def _candidate_table(table: pd.DataFrame, code: EncoderOutput, image_set: Any, n_candidates: int, n_top: int,
                     attribute: Sequence[float] | None, n_reference: int, seed: int,
                     red_code: EncoderOutput | None) -> tuple[pd.DataFrame, dict, str]:
    """The ``n_candidates`` most relevant benign latents with the redness of their top
    ``n_top`` images, their red response (given ``red_code``) and, given ``attribute``, the
    purity; those rows per latent; and the column that decides ("response" or "redness")."""
    ben = table[table["class"] == CLASSES[0]].sort_values("rank")
    if ben.empty:
        raise ValueError("find_red_latent: the table has no benign rows")
    cand = ben.head(int(n_candidates))
    rows = top_activating_rows(code, cand["latent"].tolist(), n=int(n_top))
    rng = np.random.default_rng(seed)
    ref_rows = rng.choice(len(image_set), min(int(n_reference), len(image_set)), replace=False)
    base = float(np.mean([redness(image_set.load_image(int(i))) for i in ref_rows]))
    attr = None if attribute is None else np.asarray(attribute, dtype=np.float64)
    response = None if red_code is None else red_response(code, red_code, cand["latent"].tolist())
    recs = []
    for r in cand.itertuples():
        top = rows[int(r.latent)]
        red = float(np.mean([redness(image_set.load_image(int(i))) for i in top])) - base if top else float("nan")
        rec = {"latent": int(r.latent), "rank": int(r.rank), "relevance": float(r.relevance),
               "share": float(r.share), "n_top": len(top), "redness": red}
        if response is not None:
            rec["response"] = response[int(r.latent)]
        if attr is not None:
            rec["purity"] = float((attr[top] > 0).mean()) if top else float("nan")
        recs.append(rec)
    return pd.DataFrame(recs), rows, ("redness" if response is None else "response")


def find_red_latent(table: pd.DataFrame, code: EncoderOutput, image_set: Any, n_candidates: int = 3,
                    n_top: int = 20, attribute: Sequence[float] | None = None, n_reference: int = 200,
                    seed: int = 0, red_code: EncoderOutput | None = None,
                    max_candidates: int | None = None) -> RedLatent:
    """The red latent without naming it: among the ``n_candidates`` latents most relevant
    for the benign class (``table`` from `probe.class_relevance`), the one most sensitive
    to red tones.

    With ``red_code`` (the SAE code of the same images under Eq. 32's "more red",
    `CaseData.code_of`), that is the latent whose activation rises most when red is added
    (:func:`red_response`): the paper's test of the red latent, made before the choice.
    Without it, the latent whose top ``n_top`` images (rows of ``code``, the clean tokens of
    ``image_set``) are reddest (:func:`redness`, relative to ``n_reference`` random images of
    the set) -- a pixel statistic that also rewards latents of naturally red lesions: on the
    sandbox it often chose a latent of red-looking but untinted images while a tint latent
    was among the candidates (docs/melanoma.md).

    If no candidate rises under more red (all responses <= 0: the top latents are the
    lesions' untinted colours, which adding red switches off) and ``max_candidates`` is
    larger, the search goes on among the top ``max_candidates``; the latent's true rank is
    reported and :attr:`RedLatent.note` says so (the paper's claim, a red latent among the
    *most* relevant, then does not hold for this SAE).

    ``attribute`` (e.g. the sandbox's ``tint`` column) is used only for the reported purity
    of every candidate: the share of its top images where the attribute is > 0.
    """
    n_all = max(int(n_candidates), int(max_candidates or 0))
    wide, rows, by = _candidate_table(table, code, image_set, n_all, n_top, attribute, n_reference, seed, red_code)
    df, note = wide.head(int(n_candidates)), ""
    if by == "response" and not (df["response"] > 0).any() and len(wide) > len(df):
        note = (f"none of the {n_candidates} most relevant benign latents rises under more red "
                f"(responses {', '.join(f'{v:+.2f}' for v in df['response'])}); searched the top {max_candidates}")
        df = wide
    best = df.loc[df[by].idxmax()]
    j = int(best["latent"])
    return RedLatent(j, int(best["rank"]), [int(i) for i in rows[j]], df,
                     None if attribute is None else float(best["purity"]), note)


def red_candidates(table: pd.DataFrame, code: EncoderOutput, image_set: Any, red_latent: int,
                   n_candidates: int = 10, min_frac: float = 0.5, n_top: int = 20,
                   seed: int = 0, n_reference: int = 200,
                   red_code: EncoderOutput | None = None) -> tuple[list[int], pd.DataFrame]:
    """The latents that may give Eq. 33's direction for "robust_val": among the
    ``n_candidates`` latents most relevant for the benign class, the red ones by the same
    measure as :func:`find_red_latent` (the red response given ``red_code``, else the
    redness of their top ``n_top`` images), positive and at least ``min_frac`` of the
    largest. The red latent comes first (always included); the others follow by benign rank.

    Returns the latent ids and the candidate table (with ``redness``, ``response`` where
    computed, and ``kept``)."""
    if not 0.0 <= min_frac <= 1.0:
        raise ValueError(f"red_candidates: min_frac must be in [0, 1], got {min_frac}")
    df, _, by = _candidate_table(table, code, image_set, n_candidates, n_top, None, n_reference, seed, red_code)
    top = float(df[by].max())
    df["kept"] = (df[by] > 0) & (df[by] >= min_frac * top) if top > 0 else False
    df.loc[df["latent"] == int(red_latent), "kept"] = True
    latents = [int(red_latent)] + [int(j) for j in df.loc[df["kept"], "latent"] if int(j) != int(red_latent)]
    return latents, df


def given_red_latent(table: pd.DataFrame, code: EncoderOutput, latent: int, n_top: int = 20,
                     attribute: Sequence[float] | None = None) -> RedLatent:
    """A :class:`RedLatent` for a latent chosen by hand (e.g. by inspecting the grids on
    ISIC): its benign rank (-1 when it has no benign relevance), top images and purity."""
    j = int(latent)
    rows = top_activating_rows(code, [j], n=int(n_top))[j]
    if not rows:
        raise ValueError(f"red latent {j} is not active on any image of the pool; choose another")
    ben = table[(table["class"] == CLASSES[0]) & (table["latent"] == j)]
    rank = int(ben["rank"].iloc[0]) if not ben.empty else -1
    purity = None if attribute is None else float((np.asarray(attribute, dtype=np.float64)[rows] > 0).mean())
    return RedLatent(j, rank, [int(i) for i in rows], ben.reset_index(drop=True), purity)


# ------------------------------------------------------------------------------- the data


class CaseData:
    """Class tokens of one pool under each condition, their embeddings, labels and the SAE code.

    Args:
        tokens: {condition: (N, d_pre) tensor or FeatureCache}, same rows in every condition;
            must contain "none".
        labels: (N,) 1 = melanoma, 0 = other.
        ids: the N sample ids (for the summary).
        tint: ground-truth tint strength per sample (sandbox), or None.
    """

    def __init__(self, tokens: Mapping[str, Any], labels: Sequence[int], head: Head, sae: TopKSAE,
                 ids: Sequence[str] | None = None, tint: Sequence[float] | None = None):
        if "none" not in tokens:
            raise ValueError(f"CaseData: tokens need a 'none' condition, got {list(tokens)}")
        self.tokens = {c: (t.read() if hasattr(t, "read") else torch.as_tensor(t)).float() for c, t in tokens.items()}
        n = self.tokens["none"].shape[0]
        for c, t in self.tokens.items():
            if t.shape != self.tokens["none"].shape:
                raise ValueError(f"CaseData: condition {c!r} has shape {tuple(t.shape)}, "
                                 f"'none' {tuple(self.tokens['none'].shape)}")
        self.labels = np.asarray(labels, dtype=np.int64)
        if self.labels.shape != (n,) or not set(np.unique(self.labels).tolist()) <= {0, 1}:
            raise ValueError(f"CaseData: labels must be (N={n},) zeros and ones")
        self.ids = [str(i) for i in ids] if ids is not None else [f"{i:06d}" for i in range(n)]
        self.tint = None if tint is None else np.asarray(tint, dtype=np.float64)
        self.head, self.sae = head, sae.eval()
        self.emb = {c: pr.embed(head, t) for c, t in self.tokens.items()}
        self._codes: dict[str, EncoderOutput] = {}
        self.code = self.code_of("none")

    def code_of(self, condition: str) -> EncoderOutput:
        """The SAE code of the tokens under ``condition`` (on the CPU; cached)."""
        if condition not in self.tokens:
            raise ValueError(f"CaseData.code_of: no condition {condition!r}; have {self.conditions}")
        if condition not in self._codes:
            with torch.no_grad():
                c = self.sae.encode(self.tokens[condition].to(next(self.sae.parameters()).device))
            self._codes[condition] = EncoderOutput(c.indices.cpu(), c.values.detach().cpu())
        return self._codes[condition]

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def conditions(self) -> list[str]:
        return list(self.tokens)


# ------------------------------------------------------------------------------ one seed


def _rng(seed: int, alpha: float, tag: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), 34, tag, int(round(alpha * 1e6))]))


def robust_probe(data: CaseData, rows: np.ndarray, u: torch.Tensor, alpha: float, rng: np.random.Generator,
                 space: str = "token", n_aug: int = 1, C: float = 1.0):
    """The robust probe: logistic regression on Eq. 34-augmented training samples ``rows``
    (``u`` a token direction for ``space="token"``, an embedding direction otherwise)."""
    y = np.tile(data.labels[rows], n_aug)
    if space == "token":
        x = data.tokens["none"][rows]
        z = np.concatenate([pr.embed(data.head, dr.latent_augment(x, u, alpha, rng)) for _ in range(n_aug)])
    else:
        x = torch.from_numpy(data.emb["none"][rows])
        z = np.concatenate([dr.latent_augment(x, u.double(), alpha, rng).numpy() for _ in range(n_aug)])
    return pr.fit_probe(z, y, C=C)


def _accuracy_records(clf: Any, data: CaseData, test: np.ndarray, **keys: Any) -> list[dict]:
    out = []
    for cond in data.conditions:
        acc = pr.class_accuracy(clf, data.emb[cond][test], data.labels[test])
        for label, name in enumerate(CLASSES):
            out.append({**keys, "condition": cond, "class": name, "accuracy": 100.0 * acc[label]})
    return out


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.double()[None], b.double()[None]))


def _direction(data: CaseData, ben: np.ndarray, red_latent: int, cfg: CaseConfig) -> tuple[dr.Direction, torch.Tensor]:
    acts = dr.dense_activation((data.code.indices[ben], data.code.values[ben]), red_latent)
    space_x = data.tokens["none"] if cfg.space == "token" else torch.from_numpy(data.emb["none"])
    return dr.red_direction(space_x[ben], acts, red_latent, cfg.threshold_mode, cfg.threshold_params), acts


def _clean_and_shifted(clf: Any, data: CaseData, rows: np.ndarray,
                       condition: str = "more_red") -> tuple[dict[int, float], dict[int, float]]:
    """Per-class accuracy ({0: benign, 1: melanoma}) of ``clf`` on ``rows``: clean and under ``condition``."""
    y = data.labels[rows]
    return (pr.class_accuracy(clf, data.emb["none"][rows], y),
            pr.class_accuracy(clf, data.emb[condition][rows], y))


def _drop_and_clean(clf: Any, data: CaseData, rows: np.ndarray) -> tuple[float, float]:
    """(melanoma drop under more red, clean balanced accuracy), in points."""
    clean, shifted = _clean_and_shifted(clf, data, rows)
    return 100.0 * (clean[1] - shifted[1]), 50.0 * (clean[0] + clean[1])


def validation_parts(labels: Sequence[int], train: np.ndarray, seed: int, val_frac: float = 0.25,
                     folds: int = 1) -> list[np.ndarray]:
    """Validation parts of the training rows ``train``, stratified by label and drawn with
    ``seed``: ``folds`` > 1 disjoint parts covering ``train`` (cross-validation), else one
    part of ``val_frac`` of each class."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 25]))
    y = np.asarray(labels)[train]
    if folds <= 1:
        return [np.sort(np.concatenate([rng.choice(train[y == c], max(1, int(round(val_frac * (y == c).sum()))),
                                                   replace=False) for c in (0, 1)]))]
    parts: list[list[np.ndarray]] = [[] for _ in range(int(folds))]
    for c in (0, 1):
        rows = rng.permutation(train[y == c])
        if len(rows) < folds:
            raise ValueError(f"validation_parts: {len(rows)} training samples of label {c} for {folds} folds")
        for k, chunk in enumerate(np.array_split(rows, int(folds))):
            parts[k].append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def choose_direction(data: CaseData, train: np.ndarray, latents: Sequence[int], seed: int,
                     cfg: CaseConfig) -> tuple[int, float, pd.DataFrame]:
    """Eq. 33's latent and Eq. 34's alpha for the robust probe from the training samples alone.

    Validation on the training samples (:func:`validation_parts`: ``cfg.val_folds``-fold
    cross-validation, or one held-out ``cfg.val_frac``): on the rest, the standard probe and,
    for every latent of ``latents`` (Eq. 33 on the remaining benign samples) and every alpha
    of ``cfg.alphas``, a robust probe are fitted; on the validation part each probe's melanoma
    drop under more red (Eq. 32, delta -1, applied to those training images) and its clean
    balanced accuracy are measured (averaged over the folds). Per latent, alpha is the
    smallest one whose drop is cut by ``cfg.min_cut`` at a clean cost of at most
    ``cfg.max_cost`` points. The latent: of those that reach the cut, the one with the
    largest cut at its alpha; if none does, the (latent, alpha) with the largest cut within
    the cost (alpha 0 where none is within it). Returns the latent, the alpha and the
    validation table (one row per latent and alpha: drop, cut, clean_cost).
    """
    if "more_red" not in data.emb:
        raise ValueError("choose_direction needs the 'more_red' condition")
    latents = [int(j) for j in latents]
    if not latents:
        raise ValueError("choose_direction: no latents")
    rows = []
    for k, val in enumerate(validation_parts(data.labels, train, seed, cfg.val_frac, cfg.val_folds)):
        fit = np.setdiff1d(train, val)
        drop0, clean0 = _drop_and_clean(pr.fit_probe(data.emb["none"][fit], data.labels[fit], C=cfg.C), data, val)
        for j in latents:
            try:
                d, _ = _direction(data, fit[data.labels[fit] == 0], j, cfg)
            except ValueError:  # the latent's high and low sets are not both non-empty here
                continue
            for a in cfg.alphas:
                if a == 0 and cfg.n_aug == 1:  # Eq. 34 adds nothing: the standard probe of this fold
                    drop, clean = drop0, clean0
                else:
                    clf = robust_probe(data, fit, d.u, a, _rng(seed, a, 2 + k), cfg.space, cfg.n_aug, cfg.C)
                    drop, clean = _drop_and_clean(clf, data, val)
                rows.append({"fold": k, "latent": j, "alpha": a, "drop": drop, "drop_standard": drop0,
                             "clean_cost": clean - clean0})
    cols = ["latent", "alpha", "drop", "drop_standard", "clean_cost"]
    per_fold = pd.DataFrame(rows, columns=["fold"] + cols)
    table = per_fold.groupby(["latent", "alpha"], sort=False)[cols[2:]].mean().reset_index()
    d0 = table["drop_standard"]
    table["cut"] = np.where(d0 > 0, 1.0 - table["drop"] / d0.where(d0 > 0, 1.0), np.nan)
    table = table[["latent", "alpha", "drop", "cut", "clean_cost"]]
    ok = table[table["clean_cost"] >= -cfg.max_cost]
    reach = ok[ok["cut"] >= cfg.min_cut]
    if not reach.empty:
        first = reach.sort_values("alpha", kind="stable").groupby("latent", sort=False).head(1)
        best = first.loc[first["cut"].idxmax()]
        return int(best["latent"]), float(best["alpha"]), table
    if not ok.empty and ok["cut"].notna().any():
        best = ok.loc[ok["cut"].idxmax()]
        return int(best["latent"]), float(best["alpha"]), table
    return latents[0], 0.0, table


def choose_alpha(data: CaseData, train: np.ndarray, red_latent: int, seed: int,
                 cfg: CaseConfig) -> tuple[float, pd.DataFrame]:
    """:func:`choose_direction` with the red latent only: the alpha and the validation table."""
    _, alpha, table = choose_direction(data, train, [red_latent], seed, cfg)
    return alpha, table.drop(columns="latent")


@dataclass
class SeedResult:
    seed: int
    split: Split
    accuracy: list[dict]
    relevance: list[dict]
    direction: dict
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)


def run_seed(data: CaseData, red_latent: int, seed: int, cfg: CaseConfig, keep_tables: bool = False,
             direction_latents: Sequence[int] | None = None) -> SeedResult:
    """Steps 1-6 of the module docstring for one seed. ``direction_latents``: further latents
    (e.g. :func:`red_candidates`) that "robust_val" may take Eq. 33's direction from."""
    split = split_indices(data.labels, seed, cfg.train_frac, cfg.n_train_other, cfg.n_test_other)
    tr, te = split.train, split.test
    y = data.labels
    standard = pr.fit_probe(data.emb["none"][tr], y[tr], C=cfg.C)

    # Eq. 33 on the benign training samples.
    ben = tr[y[tr] == 0]
    d, acts = _direction(data, ben, red_latent, cfg)
    space_x = data.tokens["none"] if cfg.space == "token" else torch.from_numpy(data.emb["none"])
    info = {"seed": int(seed), **d.info(), "space": cfg.space, "n_train": int(len(tr)), "n_test": int(len(te))}
    # Diagnostics: does u point where Eq. 32 moves the training samples, and (sandbox) where the tint does?
    if "more_red" in data.tokens:
        more = data.tokens["more_red"] if cfg.space == "token" else torch.from_numpy(data.emb["more_red"])
        info["cos_u_more_red_shift"] = _cos(d.u, (more[tr] - space_x[tr]).mean(0))
        info["u_over_more_red_shift"] = float(d.u.norm() / (more[tr] - space_x[tr]).mean(0).norm())
    tinted = None
    if data.tint is not None:
        tinted = data.tint[ben] > 0
        if tinted.any() and (~tinted).any():
            u_true = space_x[ben][tinted].double().mean(0) - space_x[ben][~tinted].double().mean(0)
            info["cos_u_true_tint"] = _cos(d.u, u_true)
            hi, lo = (acts >= d.t_high).numpy(), (acts <= d.t_low).numpy()
            info["tinted_share_high"] = float(tinted[hi].mean())
            info["tinted_share_low"] = float(tinted[lo].mean())
        else:
            tinted = None

    accuracy = _accuracy_records(standard, data, te, seed=seed, probe="standard", alpha=0.0)
    robust = robust_probe(data, tr, d.u, cfg.alpha, _rng(seed, cfg.alpha, 0), cfg.space, cfg.n_aug, cfg.C)
    accuracy += _accuracy_records(robust, data, te, seed=seed, probe="robust", alpha=cfg.alpha)
    sweep = {}  # alpha -> the robust probe along the red latent (reused by "robust_val" below)
    for a in cfg.alphas:
        sweep[a] = robust if a == cfg.alpha else \
            robust_probe(data, tr, d.u, a, _rng(seed, a, 0), cfg.space, cfg.n_aug, cfg.C)
        accuracy += _accuracy_records(sweep[a], data, te, seed=seed, probe="sweep", alpha=a)
    probes = [("standard", standard), ("robust", robust)]
    if cfg.select_alpha and "more_red" in data.emb:
        cands = [int(red_latent)] + [int(j) for j in (direction_latents or ()) if int(j) != int(red_latent)]
        j_val, a_val, _ = choose_direction(data, tr, cands, seed, cfg)
        info["alpha_validation"], info["latent_validation"] = a_val, j_val
        u_val = d.u if j_val == int(red_latent) else _direction(data, ben, j_val, cfg)[0].u
        if j_val != int(red_latent):
            info["cos_u_validation_more_red_shift"] = _cos(u_val, (more[tr] - space_x[tr]).mean(0))
        if j_val == int(red_latent) and a_val in sweep:  # the same fit as the sweep's at a_val
            clf = sweep[a_val]
        else:
            clf = robust_probe(data, tr, u_val, a_val, _rng(seed, a_val, 0), cfg.space, cfg.n_aug, cfg.C)
        accuracy += _accuracy_records(clf, data, te, seed=seed, probe="robust_val", alpha=a_val)
        probes.append(("robust_val", clf))
    if cfg.oracle and tinted is not None:
        for a in cfg.alphas:
            clf = robust_probe(data, tr, u_true.float(), a, _rng(seed, a, 1), cfg.space, cfg.n_aug, cfg.C)
            accuracy += _accuracy_records(clf, data, te, seed=seed, probe="oracle_sweep", alpha=a)

    relevance, tables = [], {}
    for name, clf in probes:
        attr = pr.probe_relevance(data.tokens["none"][tr], data.sae, data.head, clf)
        table = pr.class_relevance(attr, y[tr], data.sae.d_sae, CLASSES)
        tables[name] = table
        for cls in CLASSES:
            rec = pr.relevance_of(table, red_latent, cls)
            rec["rank"] = np.nan if rec["rank"] is None else rec["rank"]
            relevance.append({"seed": int(seed), "probe": name, "class": cls, "latent": int(red_latent), **rec})
    return SeedResult(int(seed), split, accuracy, relevance, info, tables if keep_tables else {})


# ----------------------------------------------------------------------------- all seeds


def sem(values: Sequence[float]) -> float:
    """Standard error of the mean (ddof=1); 0 for fewer than two values."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0


@dataclass
class CaseResult:
    """Every seed's numbers, with the summaries the notebook writes."""

    config: CaseConfig
    red_latent: int
    seeds: list[int]
    accuracy: pd.DataFrame
    """One row per (seed, probe, alpha, condition, class): accuracy in percent. Probes:
    "standard", "robust" (alpha = config.alpha), "sweep" (every alpha of config.alphas) and,
    on the sandbox, "oracle_sweep" (the ground-truth tint direction)."""
    relevance: pd.DataFrame
    """The red latent's relevance, share and rank per (seed, probe, class)."""
    directions: pd.DataFrame
    """Eq. 33 per seed: thresholds, set sizes, |u| and diagnostics."""
    tables: dict[str, pd.DataFrame]
    """The first seed's full class-relevance tables, by probe."""

    def accuracy_summary(self, probes: Sequence[str] = ("standard", "robust", "robust_val")) -> pd.DataFrame:
        """Records ``probe, condition, class, mean, sem`` (percent) over the seeds."""
        df = self.accuracy[self.accuracy["probe"].isin(probes)]
        g = df.groupby(["probe", "condition", "class"], sort=False)["accuracy"]
        return g.agg(mean="mean", sem=sem, n_seeds="count").reset_index()

    def sweep_summary(self, probe: str = "sweep") -> pd.DataFrame:
        """Fig. 15: mean and SEM per (alpha, condition, class) for ``probe``."""
        df = self.accuracy[self.accuracy["probe"] == probe]
        return df.groupby(["alpha", "condition", "class"])["accuracy"].agg(mean="mean", sem=sem).reset_index()

    def _per_seed(self, probe: str, alpha: float | None = None) -> pd.DataFrame:
        df = self.accuracy[self.accuracy["probe"] == probe]
        if alpha is not None:
            df = df[np.isclose(df["alpha"], alpha)]
        return df.pivot_table(index="seed", columns=["condition", "class"], values="accuracy")

    def drops(self, probe: str = "standard", alpha: float | None = None) -> pd.DataFrame:
        """Per seed: each class's accuracy change (points) from "none" to every other
        condition (positive = the accuracy fell)."""
        p = self._per_seed(probe, alpha)
        out = {}
        for cond in [c for c in p.columns.get_level_values(0).unique() if c != "none"]:
            for cls in CLASSES:
                out[(cond, cls)] = p[("none", cls)] - p[(cond, cls)]
        return pd.DataFrame(out)

    def clean_accuracy(self, probe: str = "standard", alpha: float | None = None) -> pd.Series:
        """Per seed: balanced accuracy (mean of the class accuracies) without red-hue change."""
        p = self._per_seed(probe, alpha)
        return (p[("none", CLASSES[0])] + p[("none", CLASSES[1])]) / 2

    def clean_cost(self, probe: str = "robust") -> float:
        """``probe`` minus standard clean balanced accuracy, points, mean over seeds."""
        return float((self.clean_accuracy(probe) - self.clean_accuracy("standard")).mean())

    def target(self, probe: str = "robust", min_cut: float = 0.5, max_cost: float = 2.0) -> dict[str, Any]:
        """The issue's criterion: the standard probe's melanoma accuracy drops under more
        red, and the robust probe (``probe``) cuts that drop by >= ``min_cut`` at a clean
        cost of at most ``max_cost`` points."""
        ds = self.drops("standard")[("more_red", "melanoma")]
        dr_ = self.drops(probe)[("more_red", "melanoma")]
        d_std, d_rob = float(ds.mean()), float(dr_.mean())
        cut = 1.0 - d_rob / d_std if d_std > 0 else float("nan")
        cost = self.clean_cost(probe)
        alphas = sorted(set(self.accuracy.loc[self.accuracy["probe"] == probe, "alpha"].round(6)))
        return {"probe": probe, "alpha": alphas, "drop_standard": d_std, "drop_standard_sem": sem(ds),
                "drop_robust": d_rob, "drop_robust_sem": sem(dr_), "cut": cut, "clean_cost": cost,
                "standard_drops": bool(d_std > 0), "met": bool(d_std > 0 and cut >= min_cut and cost >= -max_cost),
                "min_cut": min_cut, "max_cost": max_cost}

    def sweep_tradeoff(self, probe: str = "sweep", condition: str = "more_red") -> pd.DataFrame:
        """Per alpha: the melanoma drop under ``condition`` (points), its cut relative to the
        standard probe, and the clean cost (points), means over seeds."""
        d_std = float(self.drops("standard")[(condition, "melanoma")].mean())
        c_std = self.clean_accuracy("standard")
        rows = []
        for a in sorted(self.accuracy.loc[self.accuracy["probe"] == probe, "alpha"].unique()):
            d = self.drops(probe, a)[(condition, "melanoma")]
            cost = self.clean_accuracy(probe, a) - c_std
            rows.append({"alpha": float(a), "drop": float(d.mean()), "drop_sem": sem(d),
                         "cut": 1.0 - float(d.mean()) / d_std if d_std > 0 else float("nan"),
                         "clean_cost": float(cost.mean()), "clean_cost_sem": sem(cost)})
        return pd.DataFrame(rows)

    def relevance_summary(self) -> pd.DataFrame:
        """The red latent's relevance and share per (probe, class): mean and SEM over seeds."""
        g = self.relevance.groupby(["probe", "class"], sort=False)
        return g.agg(relevance=("relevance", "mean"), relevance_sem=("relevance", sem), share=("share", "mean"),
                     share_sem=("share", sem), median_rank=("rank", "median")).reset_index()


def run_case(data: CaseData, red_latent: int, seeds: Sequence[int], cfg: CaseConfig | None = None,
             progress: bool = True, direction_latents: Sequence[int] | None = None) -> CaseResult:
    """:func:`run_seed` for every seed (features are shared; each seed costs a few fits).
    ``direction_latents``: see :func:`run_seed` (None: the red latent only)."""
    cfg = cfg or CaseConfig()
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("run_case: no seeds")
    results = [run_seed(data, red_latent, s, cfg, keep_tables=(i == 0), direction_latents=direction_latents)
               for i, s in enumerate(tqdm(seeds, desc="seeds", disable=not progress))]
    return CaseResult(cfg, int(red_latent), seeds,
                      pd.DataFrame([r for res in results for r in res.accuracy]),
                      pd.DataFrame([r for res in results for r in res.relevance]),
                      pd.DataFrame([res.direction for res in results]), results[0].tables)


def standard_drops(data: CaseData, seeds: Sequence[int], cfg: CaseConfig | None = None,
                   condition: str = "more_red") -> pd.DataFrame:
    """The standard probe alone, per seed (App. E's split, fit on the clean training
    embeddings): its clean test accuracy per class, its melanoma accuracy under
    ``condition`` and the drop (points). No red latent, Eq. 33 or 34 is involved, so it runs
    on any pool, e.g. the sandbox pool rendered without its tint: the drop that remains there
    was not learned from the probe's data (it comes with the backbone's embedding or with
    what Eq. 32 does to the lesions themselves), and no augmentation of the probe's training
    data can remove it."""
    cfg = cfg or CaseConfig()
    if condition not in data.emb:
        raise ValueError(f"standard_drops: condition {condition!r} not in the data's conditions {data.conditions}")
    rows = []
    for s in seeds:
        split = split_indices(data.labels, int(s), cfg.train_frac, cfg.n_train_other, cfg.n_test_other)
        clf = pr.fit_probe(data.emb["none"][split.train], data.labels[split.train], C=cfg.C)
        clean, shifted = _clean_and_shifted(clf, data, split.test, condition)
        rows.append({"seed": int(s), "condition": condition, "benign_clean": 100.0 * clean[0],
                     "melanoma_clean": 100.0 * clean[1], "melanoma_shifted": 100.0 * shifted[1],
                     "drop": 100.0 * (clean[1] - shifted[1])})
    if not rows:
        raise ValueError("standard_drops: no seeds")
    return pd.DataFrame(rows)


def compare_latents(data: CaseData, latents: Sequence[int], seeds: Sequence[int], cfg: CaseConfig | None = None,
                    conditions: Sequence[str] = ("more_red",), progress: bool = True) -> pd.DataFrame:
    """Investigation: the alpha sweep with Eq. 33's direction taken from each of ``latents``
    in turn (e.g. the other red candidates). One row per (latent, condition, alpha): the
    melanoma drop under the condition, its cut and the clean cost (means over seeds), with
    the direction's diagnostics (cosine with the Eq. 32 shift and, on the sandbox, with the
    true tint)."""
    cfg = CaseConfig(**{**asdict(cfg or CaseConfig()), "select_alpha": False, "oracle": False})
    frames = []
    for j in tqdm(list(latents), desc="latents", disable=not progress):
        res = run_case(data, int(j), seeds, cfg, progress=False)
        for cond in conditions:
            t = res.sweep_tradeoff("sweep", cond)
            t.insert(0, "condition", cond)
            t.insert(0, "latent", int(j))
            for col in ("cos_u_more_red_shift", "cos_u_true_tint", "tinted_share_high", "tinted_share_low"):
                if col in res.directions:
                    t[col] = float(res.directions[col].mean())
            frames.append(t)
    return pd.concat(frames, ignore_index=True)


def build_summary(result: CaseResult, red: RedLatent, ids: Sequence[str], **extra: Any) -> dict[str, Any]:
    """The notebook's ``summary.json``: the red latent (id, rank among the benign class's most
    relevant latents, the sample ids of its top images, purity), accuracy records
    (``probe, condition, class, mean, sem``, percent), ``clean_cost`` (points), the target
    check, the sweep, the red latent's relevance per probe and the Eq. 33 diagnostics."""
    def records(df: pd.DataFrame) -> list[dict]:
        return json_safe(df.to_dict(orient="records"))

    out = {
        "red_latent": int(red.latent),
        "red_latent_rank": int(red.rank),
        "red_latent_top_samples": [ids[i] for i in red.top_rows],
        "red_latent_purity": red.purity,
        "red_latent_note": red.note,
        "red_latent_candidates": records(red.candidates),
        "seeds": list(result.seeds),
        "accuracy": records(result.accuracy_summary()),
        "accuracy_unit": "percent",
        "clean_cost": round(result.clean_cost("robust"), 9),
        "clean_cost_definition": "robust minus standard balanced accuracy (mean of the two class accuracies) "
                                 "without red-hue change, points, mean over seeds",
        "target": json_safe(result.target("robust")),
        "red_latent_relevance": records(result.relevance_summary()),
        "sweep": records(result.sweep_summary()),
        "sweep_tradeoff": records(result.sweep_tradeoff()),
        "directions": records(result.directions),
        "config": config_dict(result.config),
        "conditions": {k: v for k, v in CONDITIONS.items()},
    }
    if (result.accuracy["probe"] == "robust_val").any():
        tv = result.target("robust_val")
        if "latent_validation" in result.directions:
            tv["latent"] = sorted({int(j) for j in result.directions["latent_validation"]})
        out["target_validation_alpha"] = json_safe(tv)
        out["clean_cost_validation_alpha"] = result.clean_cost("robust_val")
    if (result.accuracy["probe"] == "oracle_sweep").any():
        out["oracle_sweep_tradeoff"] = records(result.sweep_tradeoff("oracle_sweep"))
    extra_conditions = [c for c in result.accuracy["condition"].unique() if c not in CONDITIONS]
    for cond in extra_conditions:
        out[f"sweep_tradeoff_{cond}"] = records(result.sweep_tradeoff("sweep", cond))
        if (result.accuracy["probe"] == "oracle_sweep").any():
            out[f"oracle_sweep_tradeoff_{cond}"] = records(result.sweep_tradeoff("oracle_sweep", cond))
    out.update(json_safe(extra))
    return out


def json_safe(obj: Any) -> Any:
    """numpy scalars -> Python, NaN -> None, recursively (for ``write_json_atomic``)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def config_dict(cfg: CaseConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["alphas"], d["threshold_params"] = list(cfg.alphas), list(cfg.threshold_params)
    return d


__all__ = ["CLASSES", "CONDITIONS", "CaseConfig", "Split", "split_indices", "redness", "red_response", "RedLatent",
           "find_red_latent", "red_candidates", "given_red_latent", "explain_standard", "CaseData", "robust_probe",
           "validation_parts", "choose_direction", "choose_alpha", "SeedResult",
           "run_seed", "sem", "CaseResult", "run_case", "compare_latents", "build_summary", "json_safe", "config_dict"]
