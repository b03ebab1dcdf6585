"""Top-k sparse autoencoder (paper Eq. 1 and Eq. 9).

    x = sum_j a_j(x) v_j + b + eps(x),   ||v_j|| = 1,

with a(x) = TopK(ReLU(W_enc^T (x - b) + b_enc)). The decoder rows ``W_dec[j]`` are the
feature vectors v_j; ``b_dec`` is b. Everything downstream uses the sparse form returned
by :meth:`TopKSAE.encode`: the k active indices and their values per sample.

Two activation variants (``relu``):

* ``relu=True`` (default): ReLU then top-k. Activations are >= 0; when fewer than k
  pre-activations are positive the remaining slots hold 0 (L0 < k is possible).
* ``relu=False``: the raw top-k pre-activations, as in the authors' released code. Exactly
  k latents are active per sample and values may be negative.

Threshold (JumpReLU) inference: with a ``threshold`` (d_sae,) the code is
a_j(x) = ReLU(pre_j) * [pre_j > theta_j] instead of the top-k -- SAELens' JumpReLU SAEs, and
BatchTopK SAEs at inference (Bussmann et al. 2024: one threshold for all latents, estimated in
training). The number of active latents then varies per sample; the code keeps the same
(N, k) shape, ``k`` being the code width (the most latents one sample may activate), with
zero values padding the unused slots, so every consumer of (indices, values) reads it as a
top-k code with ``relu=True``. A sample with more than ``k`` latents over their thresholds
keeps its ``k`` largest, with a warning naming the width: the rest go to the error term, which
every attribution holds constant. The exact attribution (Eq. 29) needs
only the active set and the decoder, so it holds unchanged.

Storage layout: ``W_enc`` has shape (d_in, d_sae) but is stored latent-major (strides
(1, d_in)), like ``W_dec``. The encoder GEMM runs at the same speed either way, and the
sparse backward (``sparse.TopKEncode``) produces its gradient latent by latent, so this
layout lets autograd take that gradient without a transposing copy (and `optim.SAEAdamW`
updates it through a contiguous alias). ``W_enc.T`` is contiguous; shapes and values are
the usual ones, so code that only reads the parameters need not care.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from .sparse import SparseCode, decode as sparse_decode, topk_encode


ARCHITECTURES = ("topk", "jumprelu")
"""What :meth:`TopKSAE.config` may name: the top-k code, or a threshold (JumpReLU) code."""


class EncoderOutput(NamedTuple):
    """Sparse code of a batch: the k active latents per sample."""

    indices: torch.Tensor
    """(N, k) int64 latent ids j, sorted by decreasing activation."""

    values: torch.Tensor
    """(N, k) activations a_j(x) at those ids (zero where fewer than k are positive)."""


class TopKSAE(nn.Module):
    """Top-k SAE on d_in-dimensional features with d_sae latents and k active per sample.

    Args:
        d_in: feature width (CLIP's d_pre).
        d_sae: number of latents (dictionary size).
        k: active latents per sample.
        relu: apply ReLU before top-k (default). With ``relu=False`` the raw top-k
            pre-activations are kept, as in the authors' code; they may be negative.
        generator: RNG for the random unit-norm decoder init (reproducible training).

    Init (Gao et al., kept by the paper): decoder rows random unit vectors, encoder a copy
    of the decoder transpose, b_enc = 0, b = 0 until :meth:`init_bias_` sets it to the data mean.

    Attributes:
        meta: free-form provenance (feature cache key, model identity, training config);
            written to ``cfg.json`` by :meth:`save` and restored by :meth:`load`.
    """

    def __init__(self, d_in: int, d_sae: int, k: int = 64, relu: bool = True,
                 generator: torch.Generator | None = None, threshold: torch.Tensor | float | None = None):
        super().__init__()
        if d_in <= 0 or d_sae <= 0:
            raise ValueError(f"TopKSAE: need d_in > 0 and d_sae > 0, got d_in={d_in}, d_sae={d_sae}")
        if not 0 < k <= d_sae:
            raise ValueError(f"TopKSAE: need 0 < k <= d_sae, got k={k}, d_sae={d_sae}")
        self.threshold: torch.Tensor | None
        if threshold is None:
            self.register_buffer("threshold", None)
        else:
            if not relu:
                raise ValueError("TopKSAE: a threshold (JumpReLU) code is a ReLU code; relu=False does not apply")
            theta = torch.as_tensor(threshold, dtype=torch.float32).detach().clone()
            theta = theta.expand(d_sae).clone() if theta.ndim == 0 else theta
            if theta.shape != (d_sae,):
                raise ValueError(f"TopKSAE: threshold must be a number or shape ({d_sae},), got {tuple(theta.shape)}")
            if not bool(torch.isfinite(theta).all()) or bool((theta < 0).any()):
                raise ValueError("TopKSAE: thresholds must be finite and >= 0 (a JumpReLU threshold gates a ReLU)")
            self.register_buffer("threshold", theta)
        self.d_in, self.d_sae, self.k, self.relu = int(d_in), int(d_sae), int(k), bool(relu)
        W_dec = torch.randn(d_sae, d_in, generator=generator)
        W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        # A copy, not shared storage: encoder and decoder train apart from here on.
        # clone().t() keeps the latent-major layout (see module docstring).
        self.W_enc = nn.Parameter(W_dec.clone().t())
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.meta: dict[str, Any] = {}

    # ------------------------------------------------------------------ config / construction

    @property
    def architecture(self) -> str:
        """``"topk"``, or ``"jumprelu"`` for a threshold code (module docstring)."""
        return "topk" if self.threshold is None else "jumprelu"

    def config(self) -> dict[str, Any]:
        """The architecture: what :meth:`from_config` needs to rebuild an identical shell
        (for ``"jumprelu"``, ``k`` is the code width; the thresholds are weights)."""
        return {"architecture": self.architecture, "d_in": self.d_in, "d_sae": self.d_sae, "k": self.k,
                "relu": self.relu}

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "TopKSAE":
        arch = cfg.get("architecture", "topk")
        if arch not in ARCHITECTURES:
            raise ValueError(f"TopKSAE.from_config: architecture {arch!r} is not one of {ARCHITECTURES}")
        missing = [key for key in ("d_in", "d_sae", "k") if key not in cfg]
        if missing:
            raise ValueError(f"TopKSAE.from_config: config lacks {missing}")
        d_sae = int(cfg["d_sae"])
        return cls(int(cfg["d_in"]), d_sae, int(cfg["k"]), bool(cfg.get("relu", True)),
                   threshold=torch.zeros(d_sae) if arch == "jumprelu" else None)

    def extra_repr(self) -> str:
        if self.threshold is not None:
            return f"d_in={self.d_in}, d_sae={self.d_sae}, jumprelu, code width k={self.k}"
        return f"d_in={self.d_in}, d_sae={self.d_sae}, k={self.k}, relu={self.relu}"

    # ------------------------------------------------------------------ forward

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Dense (N, d_sae) pre-activations W_enc^T (x - b) + b_enc (for analysis; training
        never materialises more than the top-k of them)."""
        self._check_width(x)
        return (x.to(self.W_enc.dtype) - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor, chunk_rows: int = 8192) -> EncoderOutput:
        """(N, d_in) -> top-k indices and values, (N, k) each, sorted by decreasing value.

        Large N is processed in chunks of ``chunk_rows`` so the dense pre-activation matrix
        never exceeds chunk_rows x d_sae (chunks concatenate, so autograd still works).
        """
        self._check_width(x)
        if x.shape[0] > chunk_rows:
            parts = [self.encode(x[s:s + chunk_rows], chunk_rows) for s in range(0, x.shape[0], chunk_rows)]
            return EncoderOutput(torch.cat([p.indices for p in parts]), torch.cat([p.values for p in parts]))
        if self.threshold is not None:
            return self._encode_threshold(x)
        code = topk_encode(x, self.W_enc, self.b_enc, self.b_dec, self.k, self.relu)
        return EncoderOutput(code.indices, code.values)

    def _encode_threshold(self, x: torch.Tensor) -> EncoderOutput:
        """JumpReLU: ReLU(pre) where pre > theta, as a zero-padded (N, k) code."""
        pre = self.pre_acts(x)
        acts = pre.clamp_min(0) * (pre > self.threshold)
        n_active = (acts > 0).sum(1)
        if len(n_active) and int(n_active.max()) > self.k:
            # Said once per SAE and width (the message does not change between chunks).
            warnings.warn(f"TopKSAE (jumprelu, d_sae={self.d_sae}): some samples activate more latents over their "
                          f"thresholds than the code width k={self.k}; the smallest of them are left to the error "
                          "term eps (attributions stay exact for the code used, the reconstruction is that of the "
                          "truncated code). Raise the width to keep them: sae.k = n, "
                          "TopKSAE.load(..., max_active=n) or TrainConfig(max_active=n)", RuntimeWarning,
                          stacklevel=3)
        values, indices = acts.topk(self.k, dim=1, sorted=True)
        return EncoderOutput(indices, values)

    def encode_train(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None, k_aux: int = 0,
                     compute_dtype: torch.dtype | None = None, reuse_buffer: bool = False,
                     batch_topk: bool = False) -> SparseCode:
        """Training-time encode: top-k (or, with ``batch_topk``, the N*k largest over the whole
        batch) plus the AuxK code over ``dead_mask`` latents.

        ``reuse_buffer`` keeps the (N, d_sae) pre-activation buffer between calls (see
        :meth:`release_buffer`), which saves allocating and faulting it in every step.
        """
        self._check_width(x)
        if self.threshold is not None:
            raise ValueError("TopKSAE: a jumprelu SAE is for inference here; train a top-k or BatchTopK SAE "
                             "(TrainConfig(family=...)) instead")
        ws = self._buffer(x.shape[0], compute_dtype or self.W_enc.dtype, x.device) if reuse_buffer else None
        return topk_encode(x, self.W_enc, self.b_enc, self.b_dec, self.k, self.relu, dead_mask, k_aux,
                           compute_dtype, ws, batch_topk=batch_topk)

    def _buffer(self, rows: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        buf = self.__dict__.get("_pre_buffer")
        if buf is None or buf.dtype != dtype or buf.device != device or buf.shape[0] < rows:
            self.__dict__["_pre_buffer"] = buf = torch.empty(rows, self.d_sae, dtype=dtype, device=device)
        return buf

    def release_buffer(self) -> None:
        """Free the training-time pre-activation buffer."""
        self.__dict__.pop("_pre_buffer", None)

    def decode(self, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """x_hat = sum over active j of a_j v_j + b, gathering only the k active rows."""
        return sparse_decode(indices, values, self.W_dec, self.b_dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(*self.encode(x))

    def active_mask(self, code: EncoderOutput | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """(N, k) bool: which slots of a code hold an active latent.

        With ``relu=True`` a slot is active when its value is positive (zeros pad samples
        with fewer than k positive pre-activations); with ``relu=False`` all k top-k latents
        are active, negative values included.
        """
        indices, values = code
        if self.relu or self.threshold is not None:
            return values > 0
        return torch.ones_like(indices, dtype=torch.bool)

    def error(self, x: torch.Tensor) -> torch.Tensor:
        """eps(x) = x - x_hat(x), held constant by every attribution method."""
        return x.to(self.W_dec.dtype) - self(x)

    # ------------------------------------------------------------------ constraints (Eq. 9)

    @torch.no_grad()
    def init_bias_(self, mean: torch.Tensor) -> None:
        """b <- the data mean (the paper's b in Eq. 1 starts at the mean)."""
        mean = torch.as_tensor(mean)
        if mean.shape != (self.d_in,):
            raise ValueError(f"init_bias_: mean must have shape ({self.d_in},), got {tuple(mean.shape)}")
        self.b_dec.copy_(mean.to(self.b_dec))

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every decoder row to unit norm, ||v_j|| = 1 (Eq. 9)."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(torch.finfo(self.W_dec.dtype).tiny))

    @torch.no_grad()
    def project_decoder_grad_(self) -> None:
        """Remove from each row's gradient its component along the row.

        With ||v_j|| = 1 that component only changes the norm, which the renormalisation
        after the step undoes; removing it keeps Adam's moments free of it. Assumes unit
        rows, which training maintains (init and :meth:`normalize_decoder_` after each step).
        """
        g = self.W_dec.grad
        if g is None:
            return
        w = self.W_dec.detach()
        dots = torch.bmm(g.unsqueeze(1), w.unsqueeze(2)).squeeze(2)  # (d_sae, 1) row-wise g_j . v_j
        g.addcmul_(dots, w, value=-1)  # in place: no (d_sae, d_in) temporaries

    def decoder_norms(self) -> torch.Tensor:
        """(d_sae,) ||v_j||; all ones for a trained or freshly built SAE."""
        return self.W_dec.detach().norm(dim=1)

    # ------------------------------------------------------------------ save / load

    def save(self, directory: str | os.PathLike, **meta: Any) -> Path:
        """Write ``sae.safetensors`` + ``cfg.json`` into ``directory`` (see :mod:`.io`).

        Keyword arguments are merged into :attr:`meta` before writing (e.g. ``metrics=``).
        """
        from .io import save_sae

        return save_sae(self, directory, **meta)

    @classmethod
    def load(cls, path_or_repo: str | os.PathLike, *, d_in: int | None = None, subfolder: str | None = None,
             revision: str | None = None, device: str | torch.device = "cpu",
             max_active: int | None = None, k: int | None = None, tokens: str = "class") -> "TopKSAE":
        """Load from a local folder or a Hugging Face repo id (see :func:`.io.load_sae`;
        ``max_active``: a JumpReLU SAE's code width; ``k``: for files that do not store it;
        ``tokens="patch"``: it will read patch tokens, so patch-only published SAEs load).

        ``d_in`` is the feature width the caller will feed; a mismatch is an error naming
        both shapes.
        """
        from .io import load_sae

        return load_sae(path_or_repo, d_in=d_in, subfolder=subfolder, revision=revision, device=device,
                        max_active=max_active, k=k, tokens=tokens)

    # ------------------------------------------------------------------ helpers

    def _check_width(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[-1] != self.d_in:
            raise ValueError(f"TopKSAE(d_in={self.d_in}) expects features of shape (N, {self.d_in}), "
                             f"got {tuple(x.shape)}")
