"""The part of CLIP after the SAE: class token -> LayerNorm -> projection -> cosine (Eq. 4).

Everything downstream of the cached class token is this tiny, exactly known map, so SAE
training, attribution and faithfulness all run on cached features plus a `Head` — no
backbone pass. The head copies gamma, beta, eps and W_proj from the model itself rather than
re-deriving them, so it reproduces ``model.encode_image`` to float precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Head(nn.Module):
    """z = LayerNorm_{gamma,beta,eps}(x) @ W_proj  and  y(x, t) = cos(z, t)  (paper Eq. 4).

    Buffers (not parameters: the head is frozen):
        gamma: (d_pre,) LayerNorm scale.
        beta:  (d_pre,) LayerNorm bias (the paper's Eq. 6 assumes it is 0; we never do).
        proj:  (d_pre, d_post) W_proj.
    Attributes:
        eps:   LayerNorm epsilon, part of sigma = sqrt(var(x) + eps).
    """

    def __init__(self, gamma: torch.Tensor, beta: torch.Tensor, proj: torch.Tensor, eps: float):
        super().__init__()
        gamma, beta, proj = (torch.as_tensor(t).detach().clone() for t in (gamma, beta, proj))
        if gamma.ndim != 1 or beta.shape != gamma.shape:
            raise ValueError(f"Head: gamma and beta must both be (d_pre,), got {tuple(gamma.shape)} and {tuple(beta.shape)}")
        if proj.ndim != 2 or proj.shape[0] != gamma.shape[0]:
            raise ValueError(f"Head: proj must be (d_pre={gamma.shape[0]}, d_post), got {tuple(proj.shape)}")
        self.register_buffer("gamma", gamma)
        self.register_buffer("beta", beta)
        self.register_buffer("proj", proj)
        self.eps = float(eps)

    @classmethod
    def from_model(cls, model: nn.Module) -> "Head":
        """Build the head from an open_clip CLIP model (or its ``.visual`` tower)."""
        visual = getattr(model, "visual", model)
        ln, proj = getattr(visual, "ln_post", None), getattr(visual, "proj", None)
        if not isinstance(ln, nn.LayerNorm) or proj is None:
            raise TypeError(
                f"{type(visual).__name__} has no LayerNorm `ln_post` and projection `proj`; "
                "the head needs an open_clip VisionTransformer with a class-token pool."
            )
        d = ln.normalized_shape[-1]
        gamma = ln.weight if ln.weight is not None else torch.ones(d)
        beta = ln.bias if ln.bias is not None else torch.zeros(d)
        return cls(gamma, beta, proj, ln.eps)

    @property
    def d_pre(self) -> int:
        return self.proj.shape[0]

    @property
    def d_post(self) -> int:
        return self.proj.shape[1]

    def layer_norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.d_pre,), self.gamma.to(x.dtype), self.beta.to(x.dtype), self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d_pre) pre-LayerNorm class tokens -> (N, d_post) unnormalised image embeddings."""
        if x.shape[-1] != self.d_pre:
            raise ValueError(f"Head expects class tokens of width d_pre={self.d_pre}, got shape {tuple(x.shape)}")
        return self.layer_norm(x) @ self.proj.to(x.dtype)

    def cosine(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """y(x, t): (N, d_pre) class tokens, (T, d_post) text embeddings -> (N, T) cosines."""
        if text.ndim != 2 or text.shape[-1] != self.d_post:
            raise ValueError(f"text embeddings must be (T, d_post={self.d_post}), got {tuple(text.shape)}")
        z = F.normalize(self(x), dim=-1)
        return z @ F.normalize(text.to(z.dtype), dim=-1).T
