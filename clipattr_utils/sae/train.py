"""Training a top-k SAE on cached features: the paper's recipe (App. A), sparse and resumable.

Recipe (defaults of :class:`TrainConfig`):

* loss: the normalised MSE of App. A Eq. 10 on the class token, with both vectors divided
  by ||x||: L = mean_n || x_n/||x_n|| - x_hat_n/||x_n|| ||^2 (``loss="normalized"``).
  Eq. 10 as printed divides x_hat by its *own* norm (``loss="eq10"``); that loss is blind
  to the length of x_hat, which then drifts: on the sandbox CLIP's features the literal
  form reaches cos(x, x_hat) = 0.98 but FVU = 23 (x_hat far too long), while the
  x-normalised form reaches the same cosine at FVU = 0.05. The two agree whenever
  ||x_hat|| = ||x||.
  Plain MSE (``"mse"``) and MSE over the batch variance (``"fvu"``) are options too;
* AuxK (Gao et al. 2024; on by default): the residual e = x - x_hat (held constant) is
  reconstructed from the k_aux = d_in/2 largest pre-activations among *dead* latents (no
  non-zero activation in the last ``dead_threshold`` training samples), e_hat = sum a_j v_j,
  and L_aux = sum ||e - e_hat||^2 / sum ||e - mean(e)||^2 is added with coefficient 1/32;
* AdamW, 30 epochs, each over a fresh random 10 % of the data, learning rate x0.1 after
  epochs 24 and 28 (for another number of epochs the milestones scale: 0.8 and 14/15 of it);
* after every optimiser step the decoder rows are renormalised (Eq. 9), and before it the
  gradient component parallel to each row is removed;
* b (``b_dec``) starts at the data mean, the encoder at a copy of the decoder transpose.

The step is sparse-aware (see :mod:`.sparse`): only the encoder GEMM touches all d_sae latents.
On CUDA that GEMM runs in bfloat16 (``autocast``), everything else in float32.

Resuming: with ``checkpoint_dir``, the full state (weights, AdamW moments, dead-latent
counters, epoch, history) is written after every epoch as ``state.safetensors`` +
``state.json``. Each epoch's sample is drawn from a generator seeded by (seed, epoch), so a
resumed run replays exactly the batches an uninterrupted one would and ends bit-identical
on the same device.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from ..storage import resolve_device, save_tensors_atomic, write_json_atomic
from .metrics import SAEMetrics, evaluate
from .model import TopKSAE
from .optim import PARAM_NAMES as _PARAMS
from .optim import SAEAdamW
from .source import FeatureSource, prefetch
from .sparse import decode as sparse_decode

FAMILIES: tuple[str, ...] = ("topk", "batchtopk", "matryoshka")
Loss = Literal["normalized", "eq10", "mse", "fvu"]
LOSSES: tuple[str, ...] = ("normalized", "eq10", "mse", "fvu")
STEP_COLUMNS = ("epoch", "step", "lr", "loss", "aux_loss", "fvu", "l0", "dead_frac")
STATE_WEIGHTS, STATE_JSON = "state.safetensors", "state.json"
STATE_VERSION = 1


@dataclass
class TrainConfig:
    """How to train a top-k SAE. Defaults: the paper's recipe (App. A) at a width for ImageNet.

    Use :meth:`paper_imagenet` / :meth:`paper_isic` for the paper's exact numbers including
    its learning rates; the sandbox notebook sets a smaller ``d_sae`` / ``k``.
    """

    d_sae: int = 30000
    """Number of latents (paper: 30,000)."""
    k: int = 64
    """Active latents per sample (paper: 64)."""
    relu: bool = True
    """ReLU before top-k; False keeps the authors' raw top-k values (see model docstring)."""
    loss: Loss = "normalized"
    """"normalized" (App. A Eq. 10 with both x and x_hat over ||x||; the default), "eq10"
    (Eq. 10 as printed: x_hat over its own norm), "mse" (mean of ||x - x_hat||^2) or "fvu"
    (MSE / batch variance).

    Why not the literal Eq. 10 by default: dividing x_hat by its own norm leaves the scale of
    the reconstruction free, so x = sum_j a_j v_j + b + eps stops describing x with a small
    eps — the decomposition every attribution here relies on. On the sandbox CLIP's features
    the literal form reaches cos(x, x_hat) = 0.98 at FVU 22.9; the x-normalised form reaches
    the same cosine at FVU 0.05."""
    lr: float = 2e-4
    """AdamW learning rate. The paper reports 1e-6 (ImageNet) and 5e-5 (ISIC) with an unstated
    batch size (:meth:`paper_imagenet`); at batch 4096 the 30 x 10 % schedule is ~940 ImageNet
    steps, in which 1e-6 moves Adam's weights by ~1e-3 in all. 2e-4 is Gao et al.'s top-k SAE
    rate; it has not been tuned on ImageNet features."""
    weight_decay: float = 0.01
    """AdamW weight decay (torch's default; the paper does not state one)."""
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    epochs: int = 30
    """Epochs (paper: 30)."""
    epoch_fraction: float = 0.1
    """Fraction of the data drawn at random (without replacement) for each epoch (paper: 0.1)."""
    lr_decay_epochs: tuple[int, ...] | None = None
    """Epoch counts after which the lr is multiplied by ``lr_decay_factor``; None: (24, 28)
    for 30 epochs, scaled proportionally (round(0.8 E), round(14/15 E)) otherwise."""
    lr_decay_factor: float = 0.1
    batch_size: int = 4096
    auxk: bool = True
    """Add the AuxK dead-latent loss."""
    auxk_coef: float = 1 / 32
    k_aux: int | None = None
    """Size of the AuxK code; None: d_in // 2."""
    dead_threshold: int | None = None
    """A latent is dead once it has not fired in this many training samples; None: the
    number of samples in one epoch."""
    seed: int = 0
    device: str = "auto"
    """"auto" (CUDA when available), "cpu", "cuda", "cuda:1", ..."""
    autocast: bool = True
    """Encoder GEMM in bfloat16 on CUDA (ignored on CPU)."""
    val_every: int = 1
    """Evaluate on ``val_features`` every this many epochs (0: only at the end)."""
    family: str = "topk"
    """"topk" (the paper's), "batchtopk" (Bussmann et al. 2024: the N*k largest activations of
    each batch in training; at inference one threshold, the mean over the last epoch's batches
    of each batch's smallest kept activation, so the returned SAE is a ``jumprelu`` one with a code width of
    ``max_active``) or "matryoshka" (nested dictionaries: the top-k code, its loss averaged
    over the reconstructions from the first ``matryoshka_prefixes`` of the latents, so early
    latents learn general concepts; inference is plain top-k)."""
    matryoshka_prefixes: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)
    """Matryoshka only: the nested dictionary sizes as fractions of ``d_sae`` (increasing, the last 1)."""
    tokens: str = "class"
    """"class": one sample per image, the class token (the paper's). "patch": every patch token
    of a ``extract(..., what="patch_tokens")`` cache is a sample (the authors' spatial
    mode reads patch tokens with a class-token SAE, this trains on them), at most
    ``patch_rows`` of them drawn once as whole images' tokens, so an epoch fits in memory."""
    patch_rows: int = 1_048_576
    """``tokens="patch"``: the most patch tokens kept (about 3 GB at width 768)."""
    max_active: int | None = None
    """BatchTopK only: the code width at inference, the most latents one sample keeps over
    the threshold (None: measured on the training features at the end, the largest L0 there
    plus a quarter, at least 2 k; a sample over the width keeps its largest, with a warning)."""

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        self.matryoshka_prefixes = tuple(float(f) for f in self.matryoshka_prefixes)  # type: ignore[assignment]
        fr = self.matryoshka_prefixes
        if not fr or fr[-1] != 1.0 or any(not a < b for a, b in zip((0.0,) + fr[:-1], fr)):
            raise ValueError(f"TrainConfig: matryoshka_prefixes must increase within (0, 1] and end at 1, got {fr}")
        if self.lr_decay_epochs is not None:
            self.lr_decay_epochs = tuple(int(e) for e in self.lr_decay_epochs)
        checks = [
            (self.d_sae > 0, f"d_sae must be positive, got {self.d_sae}"),
            (0 < self.k <= self.d_sae, f"k must be in 1..d_sae={self.d_sae}, got {self.k}"),
            (self.loss in LOSSES, f"loss must be one of {LOSSES}, got {self.loss!r}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (self.epochs > 0, f"epochs must be positive, got {self.epochs}"),
            (0 < self.epoch_fraction <= 1, f"epoch_fraction must be in (0, 1], got {self.epoch_fraction}"),
            (self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}"),
            (0 < self.lr_decay_factor <= 1, f"lr_decay_factor must be in (0, 1], got {self.lr_decay_factor}"),
            (self.k_aux is None or self.k_aux > 0, f"k_aux must be positive, got {self.k_aux}"),
            (self.dead_threshold is None or self.dead_threshold > 0,
             f"dead_threshold must be positive, got {self.dead_threshold}"),
            (self.auxk_coef >= 0, f"auxk_coef must be >= 0, got {self.auxk_coef}"),
            (self.val_every >= 0, f"val_every must be >= 0, got {self.val_every}"),
            (self.family in FAMILIES, f"family must be one of {FAMILIES}, got {self.family!r}"),
            (self.family != "batchtopk" or self.relu, "family='batchtopk' needs relu=True"),
            (self.tokens in ("class", "patch"), f"tokens must be 'class' or 'patch', got {self.tokens!r}"),
            (self.patch_rows > 0, f"patch_rows must be positive, got {self.patch_rows}"),
            (self.max_active is None or self.k <= self.max_active <= self.d_sae,
             f"max_active must be in k={self.k}..d_sae={self.d_sae}, got {self.max_active}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"TrainConfig: {message}")
        if self.lr_decay_epochs is not None and any(not 0 < e < self.epochs for e in self.lr_decay_epochs):
            raise ValueError(f"TrainConfig: lr_decay_epochs {self.lr_decay_epochs} must lie in "
                             f"1..epochs-1={self.epochs - 1}")

    @classmethod
    def sandbox(cls, **overrides: Any) -> "TrainConfig":
        """The sandbox CLIP (d_pre = 96): 1536 latents (16x), k = 32, every sample in every
        epoch (the sandbox set is small), batch 512, lr 1e-3. On 8000 sandbox images:
        held-out FVU 0.05, 1 % of latents never active on 2000 held-out images.
        (k = 16 leaves 20-30 % of latents dead there.)"""
        return cls(**{**dict(d_sae=1536, k=32, lr=1e-3, epochs=30, epoch_fraction=1.0, batch_size=512),
                      **overrides})

    @classmethod
    def paper_imagenet(cls, **overrides: Any) -> "TrainConfig":
        """App. A, ImageNet SAEs: 30,000 latents, k=64, lr 1e-6, 30 epochs, decay after 24 and 28."""
        return cls(**{**dict(d_sae=30000, k=64, lr=1e-6, epochs=30, lr_decay_epochs=(24, 28)), **overrides})

    @classmethod
    def paper_isic(cls, **overrides: Any) -> "TrainConfig":
        """App. A, medical SAE: lr 5e-5, 25 epochs, decay after 17 and 23."""
        return cls(**{**dict(d_sae=30000, k=64, lr=5e-5, epochs=25, lr_decay_epochs=(17, 23)), **overrides})

    def prefix_sizes(self) -> tuple[int, ...]:
        """Matryoshka: the nested dictionary sizes in latents (the last is ``d_sae``)."""
        sizes = tuple(max(1, round(f * self.d_sae)) for f in self.matryoshka_prefixes)
        return tuple(sorted(set(sizes)))

    def milestones(self) -> tuple[int, ...]:
        if self.lr_decay_epochs is not None:
            return self.lr_decay_epochs
        raw = (round(0.8 * self.epochs), round(self.epochs * 14 / 15))
        return tuple(sorted({m for m in raw if 0 < m < self.epochs}))

    def lr_at(self, epoch: int) -> float:
        """Learning rate of 0-based ``epoch``: x factor for every milestone already passed."""
        return self.lr * self.lr_decay_factor ** sum(epoch >= m for m in self.milestones())

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"TrainConfig.from_dict: unknown fields {sorted(unknown)}")
        return cls(**d)


class TrainResult(NamedTuple):
    """What :func:`train` returns."""

    sae: TopKSAE
    """The trained SAE (``sae.meta`` holds the data identity and the config)."""
    steps: pd.DataFrame
    """One row per optimiser step: epoch, step, lr, loss (the reconstruction loss ``cfg.loss``;
    Matryoshka: its mean over the nested prefixes),
    aux_loss (L_aux before its coefficient; 0 when no latent is dead), fvu (of the batch, vs
    its mean), l0, dead_frac (by the training-time ``dead_threshold`` counter)."""
    epochs: pd.DataFrame
    """One row per epoch: means of the step columns, dead_frac at the epoch end, seconds,
    and val_* columns (SAEMetrics on ``val_features``) where evaluated."""
    metrics: SAEMetrics | None
    """Final metrics on ``val_features`` (None when none were given)."""
    config: TrainConfig


# ---------------------------------------------------------------------------------- losses


def main_loss(x: torch.Tensor, x_hat: torch.Tensor, kind: str) -> torch.Tensor:
    """The reconstruction loss of one batch (see module docstring)."""
    return _losses(x, x_hat, kind)[0]


def _losses(x: torch.Tensor, x_hat: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, per-sample ||x - x_hat||^2 detached), sharing the residual between the two."""
    tiny = torch.finfo(x_hat.dtype).tiny
    diff = x_hat - x
    err = diff.square().sum(1)
    if kind == "eq10":
        u = x / x.norm(dim=1, keepdim=True).clamp_min(tiny)
        u_hat = x_hat / x_hat.norm(dim=1, keepdim=True).clamp_min(tiny)
        loss = (u - u_hat).square().sum(1).mean()  # App. A Eq. 10 read literally (class-token term)
    elif kind == "normalized":
        # || x/||x|| - x_hat/||x|| ||^2: Eq. 10 with both sides divided by ||x||
        loss = (err / x.square().sum(1).clamp_min(tiny)).mean()
    elif kind == "mse":
        loss = err.mean()
    elif kind == "fvu":
        loss = err.sum() / _total_variance(x)
    else:
        raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
    return loss, err.detach()


def _total_variance(x: torch.Tensor) -> torch.Tensor:
    """sum_n ||x_n - mean(x)||^2 (one fused reduction)."""
    return (x.var(0, unbiased=False).sum() * x.shape[0]).clamp_min(torch.finfo(x.dtype).tiny)


def matryoshka_loss(x: torch.Tensor, code: Any, W_dec: torch.Tensor, b_dec: torch.Tensor, sizes: tuple[int, ...],
                    kind: str, full: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Nested dictionaries (Matryoshka SAEs): the mean over prefix sizes m of the loss of the
    reconstruction from the first m latents only, sum_{j < m} a_j v_j + b -- one code, its values
    masked per prefix. ``full``: the (loss, x_hat) of the whole dictionary when already computed."""
    losses = []
    for m in sizes:
        if full is not None and m == W_dec.shape[0]:
            losses.append(full[0])
            continue
        kept = code.values * (code.indices < m)
        losses.append(_losses(x, sparse_decode(code.indices, kept, W_dec, b_dec), kind)[0])
    return torch.stack(losses).mean()


def auxk_loss(residual: torch.Tensor, e_hat: torch.Tensor) -> torch.Tensor:
    """L_aux = sum ||e - e_hat||^2 / sum ||e - mean(e)||^2 (Gao et al. 2024, AuxK)."""
    denom = (residual - residual.mean(0)).pow(2).sum().clamp_min(torch.finfo(residual.dtype).tiny)
    return (residual - e_hat).pow(2).sum() / denom


# ---------------------------------------------------------------------------------- state


class _State:
    """Everything a resumed run needs besides the data and the config."""

    def __init__(self, sae: TopKSAE, opt: SAEAdamW, since_fired: torch.Tensor):
        self.sae, self.opt, self.since_fired = sae, opt, since_fired
        self.epoch = 0  # epochs completed
        self.step = 0
        self.threshold: float | None = None  # BatchTopK: the inference threshold (last epoch's mean)
        self.epoch_thresholds: list[float] = []  # BatchTopK: this epoch's batch thresholds
        self.steps: list[dict] = []
        self.epochs: list[dict] = []

    def save(self, directory: Path, cfg: TrainConfig, data_id: dict) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {name: getattr(self.sae, name) for name in _PARAMS}
        tensors.update(self.opt.state_tensors())
        tensors["since_fired"] = self.since_fired
        marker = f"{self.epoch}:{self.step}"
        # Weights first, then the JSON that names them: a crash between the two leaves the
        # JSON of the previous epoch, which the marker check then refuses to pair.
        save_tensors_atomic(directory / STATE_WEIGHTS, tensors, metadata={"marker": marker})
        write_json_atomic(directory / STATE_JSON, {
            "version": STATE_VERSION, "marker": marker, "epoch": self.epoch, "step": self.step,
            "config": cfg.to_dict(), "data": data_id, "sae": self.sae.config(),
            "steps": self.steps, "epochs": self.epochs, "threshold": self.threshold,
        })

    def load(self, directory: Path, cfg: TrainConfig, data_id: dict) -> None:
        info = json.loads((directory / STATE_JSON).read_text())
        if info.get("version") != STATE_VERSION:
            raise ValueError(f"{directory / STATE_JSON}: state version {info.get('version')} != {STATE_VERSION}")
        # Fields added since the checkpoint was written hold their defaults there.
        saved_cfg = TrainConfig.from_dict(info["config"]).to_dict()
        diff = {k: (saved_cfg.get(k), v) for k, v in cfg.to_dict().items() if saved_cfg.get(k) != v}
        if diff:
            raise ValueError(f"resume: the checkpoint in {directory} was made with another TrainConfig; "
                             f"differing fields (checkpoint, now): {diff}")
        if info["data"] != data_id:
            raise ValueError(f"resume: the checkpoint in {directory} was trained on other features: "
                             f"{info['data']} vs now {data_id}")
        from safetensors import safe_open

        with safe_open(str(directory / STATE_WEIGHTS), "pt") as f:
            marker = (f.metadata() or {}).get("marker")
        if marker != info["marker"]:
            raise ValueError(f"resume: {directory} holds {STATE_WEIGHTS} (marker {marker}) and {STATE_JSON} "
                             f"(marker {info['marker']}) from different moments; remove the folder to restart")
        tensors = load_file(str(directory / STATE_WEIGHTS), device="cpu")
        with torch.no_grad():
            for name in _PARAMS:
                param = getattr(self.sae, name)
                if tuple(tensors[name].shape) != tuple(param.shape):
                    raise ValueError(f"resume: checkpoint {name} has shape {tuple(tensors[name].shape)}, "
                                     f"the model here {tuple(param.shape)}")
                param.copy_(tensors[name])  # copy_ keeps the latent-major W_enc layout
        self.opt.load_state_tensors(tensors)
        self.since_fired.copy_(tensors["since_fired"])
        self.epoch, self.step = int(info["epoch"]), int(info["step"])
        self.steps, self.epochs = list(info["steps"]), list(info["epochs"])
        self.threshold = info.get("threshold")


# ---------------------------------------------------------------------------------- training


def _device(cfg: TrainConfig) -> torch.device:
    try:
        return resolve_device(cfg.device)
    except ValueError as err:
        raise ValueError(f"TrainConfig.device: {err}") from None


def _make_optimizer(sae: TopKSAE, cfg: TrainConfig) -> SAEAdamW:
    return SAEAdamW(sae, lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)


def epoch_indices(n: int, cfg: TrainConfig, epoch: int) -> torch.Tensor:
    """The rows of 0-based ``epoch``, in training order: a seeded random ``epoch_fraction`` of n."""
    g = torch.Generator().manual_seed(int(cfg.seed) * 1_000_003 + int(epoch))
    n_epoch = max(1, int(round(cfg.epoch_fraction * n)))
    return torch.randperm(n, generator=g)[:n_epoch]


def train(features: Any, cfg: TrainConfig | None = None, *, val_features: Any = None,
          checkpoint_dir: str | os.PathLike | None = None, resume: bool = True,
          stop_after_epoch: int | None = None, progress: bool = True,
          num_threads: int | None = None) -> TrainResult:
    """Train a top-k SAE on ``features`` with the recipe in ``cfg`` (module docstring).

    Args:
        features: (N, d_in) tensor or a `FeatureCache` (batches are read from disk).
        cfg: the :class:`TrainConfig` (default: the paper's recipe).
        val_features: held-out features for per-epoch and final :func:`evaluate`.
        checkpoint_dir: where the resumable state is written after every epoch.
        resume: continue from the state in ``checkpoint_dir`` when there is one (it must
            come from the same config and data, else an error says what differs).
        stop_after_epoch: stop once this many epochs are done (the schedule still spans
            ``cfg.epochs``); with ``checkpoint_dir`` a later call picks up from there.
        progress: show a tqdm bar with loss, FVU, L0 and dead %.
        num_threads: CPU threads for the duration of training (restored afterwards); None
            keeps torch's setting. Small SAEs on a busy CPU run far faster on one thread,
            where OpenMP's per-op synchronisation costs more than the op.
    Returns:
        :class:`TrainResult` (the SAE, per-step and per-epoch history, final metrics).
    """
    cfg = cfg or TrainConfig()
    if num_threads is None:
        return _train(features, cfg, val_features, checkpoint_dir, resume, stop_after_epoch, progress)
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(int(num_threads))
    try:
        return _train(features, cfg, val_features, checkpoint_dir, resume, stop_after_epoch, progress)
    finally:
        torch.set_num_threads(before)


def _token_rows(features: Any, cfg: TrainConfig, name: str) -> Any:
    """What the SAE trains on: the features as given (class tokens), or for ``tokens="patch"``
    the patch tokens of a patch-token cache as rows."""
    what = getattr(features, "what", None)
    if cfg.tokens == "class":
        if what == "patch_tokens":
            raise ValueError(f"train: {name} is a patch-token cache; use TrainConfig(tokens='patch') to train on "
                             "its tokens, or a class-token cache")
        return features
    if what != "patch_tokens":
        raise ValueError(f"train: TrainConfig(tokens='patch') needs {name} from extract(..., what='patch_tokens'), "
                         f"got {type(features).__name__}{'' if what is None else f' of {what} rows'}")
    from ..features import patch_token_rows

    return patch_token_rows(features, cfg.patch_rows, cfg.seed)


def _train(features: Any, cfg: TrainConfig, val_features: Any, checkpoint_dir: str | os.PathLike | None,
           resume: bool, stop_after_epoch: int | None, progress: bool) -> TrainResult:
    features = _token_rows(features, cfg, "features")
    if val_features is not None:
        val_features = _token_rows(val_features, cfg, "val_features")
    src = FeatureSource(features, "features")
    val = FeatureSource(val_features, "val_features") if val_features is not None else None
    if val is not None and val.d != src.d:
        raise ValueError(f"val_features have width {val.d} but features have width {src.d}")
    device = _device(cfg)
    d_in = src.d
    k_aux = cfg.k_aux if cfg.k_aux is not None else max(1, d_in // 2)
    n_epoch = max(1, int(round(cfg.epoch_fraction * src.n)))
    dead_threshold = cfg.dead_threshold if cfg.dead_threshold is not None else n_epoch
    data_id = src.identity()
    compute_dtype = torch.bfloat16 if (cfg.autocast and device.type == "cuda") else None

    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    resuming = ckpt is not None and resume and (ckpt / STATE_JSON).is_file()
    sae = TopKSAE(d_in, cfg.d_sae, cfg.k, cfg.relu, generator=torch.Generator().manual_seed(cfg.seed))
    if not resuming:  # a resumed run loads b; skip the extra pass over the data
        mean = src.mean()
        if not bool(torch.isfinite(mean).all()):  # some row holds NaN/inf: say which (before any step)
            src.require_finite(_NONFINITE_HINT)
        sae.init_bias_(mean)
    if val is not None:  # fail now, not after the first epoch
        val.require_finite(_NONFINITE_HINT)
    sae.to(device)
    opt = _make_optimizer(sae, cfg)
    state = _State(sae, opt, torch.zeros(cfg.d_sae, dtype=torch.int64, device=device))
    if resuming:
        state.load(ckpt, cfg, data_id)

    last_epoch = cfg.epochs if stop_after_epoch is None else min(cfg.epochs, int(stop_after_epoch))
    steps_per_epoch = math.ceil(n_epoch / cfg.batch_size)
    bar = tqdm(total=steps_per_epoch * last_epoch, initial=min(state.step, steps_per_epoch * last_epoch),
               desc=f"SAE d_sae={cfg.d_sae} k={cfg.k}", disable=not progress, unit="step")
    metrics = None
    try:
        while state.epoch < last_epoch:
            epoch, t0 = state.epoch, time.perf_counter()
            lr = cfg.lr_at(epoch)
            for group in opt.param_groups:
                group["lr"] = lr
            order = epoch_indices(src.n, cfg, epoch)
            batches = (_finite(src, src.take(order[s:s + cfg.batch_size].numpy()))
                       for s in range(0, len(order), cfg.batch_size))
            rows = []
            for xb in prefetch(batches):
                xb = xb.to(device, non_blocking=True)
                row = _step(sae, opt, state, xb, cfg, k_aux, dead_threshold, compute_dtype)
                row.update(epoch=epoch + 1, step=state.step, lr=lr)
                rows.append(row)
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4g}", fvu=f"{row['fvu']:.3f}", l0=f"{row['l0']:.1f}",
                                dead=f"{100 * row['dead_frac']:.1f}%")
            state.steps.extend(rows)
            if state.epoch_thresholds:  # BatchTopK: theta = the mean of this epoch's batch thresholds
                state.threshold = float(np.mean(state.epoch_thresholds))
                state.epoch_thresholds = []
            summary = {"epoch": epoch + 1, "step": state.step, "lr": lr,
                       **{key: float(np.mean([r[key] for r in rows])) for key in ("loss", "aux_loss", "fvu", "l0")},
                       "dead_frac": rows[-1]["dead_frac"], "seconds": time.perf_counter() - t0}
            state.epoch += 1
            is_last = state.epoch == cfg.epochs
            if val is not None and (is_last or (cfg.val_every and state.epoch % cfg.val_every == 0)):
                metrics = evaluate(inference_sae(sae, cfg, state.threshold), val_features, batch_size=cfg.batch_size,
                                   device=device, progress=False)
                summary.update({f"val_{key}": value for key, value in metrics.summary().items()
                                if key in ("fvu", "cosine", "l0", "dead_frac", "frequent")})
            state.epochs.append(summary)
            if ckpt is not None:
                state.save(ckpt, cfg, data_id)
    finally:
        bar.close()
        sae.release_buffer()
    width = None
    if cfg.family == "batchtopk" and cfg.max_active is None and state.threshold is not None:
        width = max(2 * cfg.k, math.ceil(1.25 * _max_l0(sae, src, state.threshold, cfg.batch_size)))
    final = inference_sae(sae, cfg, state.threshold, width)
    if final is not sae:  # BatchTopK: the per-epoch metrics used a provisional width; redo them
        metrics = None
    sae = final
    if val is not None and metrics is None:  # resumed at the end, or stopped between evaluations
        metrics = evaluate(sae, val_features, batch_size=cfg.batch_size, device=device, progress=False)
    sae.meta.update({"trained_on": data_id, "train_config": cfg.to_dict(), "epochs_done": state.epoch,
                     "k_aux": k_aux, "dead_threshold": dead_threshold, "family": cfg.family})
    if cfg.family == "batchtopk":
        sae.meta["batch_threshold"] = state.threshold
    if metrics is not None:
        sae.meta["val_metrics"] = metrics.summary()
    steps = pd.DataFrame(state.steps, columns=list(STEP_COLUMNS))
    epochs = pd.DataFrame(state.epochs)
    if len(epochs):  # JSON round trips sort keys: restore a fixed, readable column order
        first = ["epoch", "step", "lr", "loss", "aux_loss", "fvu", "l0", "dead_frac", "seconds"]
        epochs = epochs[first + sorted(c for c in epochs.columns if c not in first)]
    return TrainResult(sae, steps, epochs, metrics, cfg)


@torch.no_grad()
def _max_l0(sae: TopKSAE, src: FeatureSource, threshold: float, batch_size: int) -> int:
    """The largest number of latents over ``threshold`` in any row of ``src`` (one encoder pass
    over the training features, after training: what sizes a BatchTopK SAE's code width)."""
    most = 0
    for start in range(0, src.n, batch_size):
        x = src.take(np.arange(start, min(start + batch_size, src.n))).to(sae.W_enc.device)
        most = max(most, int((sae.pre_acts(x) > max(threshold, 0.0)).sum(1).max()))
    return most


def inference_sae(sae: TopKSAE, cfg: TrainConfig, threshold: float | None, width: int | None = None) -> TopKSAE:
    """The SAE as used after training: ``sae`` itself (top-k, Matryoshka), or for BatchTopK a
    jumprelu copy with the threshold for every latent and a code width of ``width`` (default
    ``cfg.max_active``, else 4 k)."""
    if cfg.family != "batchtopk":
        return sae
    if threshold is None:
        raise ValueError("BatchTopK: no threshold yet (no training step kept a positive activation)")
    width = width or cfg.max_active or 4 * cfg.k
    out = TopKSAE(sae.d_in, sae.d_sae, min(int(width), sae.d_sae), True, threshold=float(threshold))
    with torch.no_grad():
        for name in _PARAMS:
            getattr(out, name).copy_(getattr(sae, name))  # copy_ keeps W_enc's latent-major layout
    out.meta = dict(sae.meta)
    return out.to(sae.W_dec.device)


_NONFINITE_HINT = "one such row makes every SAE weight NaN; drop or repair those rows before training"


def _finite(src: FeatureSource, batch: torch.Tensor) -> torch.Tensor:
    """``batch`` when all finite; else the error of a full scan (a resumed run skips the mean
    pass that would have caught the rows at the start)."""
    if not bool(torch.isfinite(batch).all()):
        src.require_finite(_NONFINITE_HINT)
    return batch


def _step(sae: TopKSAE, opt: SAEAdamW, state: _State, x: torch.Tensor, cfg: TrainConfig,
          k_aux: int, dead_threshold: int, compute_dtype: torch.dtype | None) -> dict[str, float]:
    """One optimiser step on batch ``x``; returns its logged numbers."""
    dead = state.since_fired >= dead_threshold if cfg.auxk else None
    code = sae.encode_train(x, dead, k_aux, compute_dtype, reuse_buffer=True, batch_topk=cfg.family == "batchtopk")
    x_hat = sparse_decode(code.indices, code.values, sae.W_dec, sae.b_dec, plan=code.plan)
    loss, err = _losses(x, x_hat, cfg.loss)
    if cfg.family == "matryoshka":
        loss = matryoshka_loss(x, code, sae.W_dec, sae.b_dec, cfg.prefix_sizes(), cfg.loss, full=(loss, x_hat))
    if cfg.family == "batchtopk" and code.batch_threshold is not None:
        state.epoch_thresholds.append(code.batch_threshold)
    total = loss
    aux = torch.zeros((), device=x.device)
    if cfg.auxk and code.aux_indices.shape[1] > 0:
        residual = (x - x_hat).detach()
        e_hat = sparse_decode(code.aux_indices, code.aux_values, sae.W_dec)
        aux = auxk_loss(residual, e_hat)
        total = loss + cfg.auxk_coef * aux
    opt.zero_grad()
    total.backward()
    sae.project_decoder_grad_()
    opt.step()
    sae.normalize_decoder_()
    with torch.no_grad():
        active = code.values != 0
        state.since_fired += x.shape[0]
        state.since_fired[code.indices[active]] = 0
        stats = torch.stack([loss.detach(), aux.detach(), err.sum() / _total_variance(x),
                             active.sum() / x.shape[0], (state.since_fired >= dead_threshold).float().mean()]).tolist()
    state.step += 1
    return dict(zip(("loss", "aux_loss", "fvu", "l0", "dead_frac"), stats))
