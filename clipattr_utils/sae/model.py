"""Top-k sparse autoencoder (paper Eq. 1 and Eq. 9).

    x = sum_j a_j(x) v_j + b + eps(x),   ||v_j|| = 1,

with a(x) = TopK(ReLU(W_enc (x - b) + b_enc)). The decoder rows ``W_dec[j]`` are the
feature vectors v_j; ``b_dec`` is b. Everything downstream uses the sparse form returned
by :meth:`TopKSAE.encode`: the k active indices and their values per sample.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


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
    """

    def __init__(self, d_in: int, d_sae: int, k: int = 64, relu: bool = True):
        super().__init__()
        if not 0 < k <= d_sae:
            raise ValueError(f"TopKSAE: need 0 < k <= d_sae, got k={k}, d_sae={d_sae}")
        self.d_in, self.d_sae, self.k, self.relu = int(d_in), int(d_sae), int(k), bool(relu)
        W_dec = torch.randn(d_sae, d_in)
        W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        # A copy, not shared storage: encoder and decoder train apart from here on.
        self.W_enc = nn.Parameter(W_dec.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        self._check_width(x)
        return (x.to(self.W_enc.dtype) - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> EncoderOutput:
        """(N, d_in) -> top-k indices and values, (N, k) each."""
        pre = self.pre_acts(x)
        if self.relu:
            pre = F.relu(pre)
        values, indices = pre.topk(self.k, dim=-1, sorted=True)
        return EncoderOutput(indices, values)

    def decode(self, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """x_hat = sum over active j of a_j v_j + b, gathering only the k active rows."""
        rows = self.W_dec[indices]  # (N, k, d_in)
        return torch.einsum("nk,nkd->nd", values.to(rows.dtype), rows) + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(*self.encode(x))

    def error(self, x: torch.Tensor) -> torch.Tensor:
        """eps(x) = x - x_hat(x), held constant by every attribution method."""
        return x.to(self.W_dec.dtype) - self(x)

    def _check_width(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.d_in:
            raise ValueError(f"TopKSAE(d_in={self.d_in}) got features of shape {tuple(x.shape)}")
