"""The part of CLIP after the SAE: class token -> LayerNorm -> projection -> cosine (Eq. 4).

Everything downstream of the cached class token is this tiny, exactly known map, so SAE
training, attribution and faithfulness all run on cached features plus a `Head` — no
backbone pass. The head reads gamma, beta, eps and W_proj from the model itself rather than
re-deriving them, so it reproduces ``model.encode_image`` to float precision.

A head comes in two kinds:

- ``Head.from_model(model)`` (what `models.load_clip` builds) *follows the model*: it holds no
  copy; gamma, beta, eps and W_proj are read from ``model.visual.ln_post`` and
  ``model.visual.proj`` on every use. In-place updates (``model.load_state_dict(...)``,
  optimiser steps) are seen because the tensors are shared, and replaced objects
  (``model.visual.proj = nn.Parameter(...)``, a new ``ln_post``, a new ``visual``) are seen
  because they are looked up again each time. A replacement that no longer is a class-token
  head (not a LayerNorm, a projection of the wrong shape) is an error at the next use.
- ``Head(gamma, beta, proj, eps)`` is a standalone frozen head holding its own copies.
  ``head.frozen()`` turns a following head into one (a snapshot of the current values).

Converting a following head to another dtype or device (``head.double()``,
``head.to("cuda")`` while the model stays where it is) cannot keep following the model, so it
becomes a standalone frozen copy in the new dtype/device, with a `HeadDetachedWarning`.
Conversions that change nothing (``head.to(model's device)``) leave it following.

The tensors a following head hands out are ``detach()``-ed views of the model's parameters:
same storage and same autograd version counter, so caches keyed on ``data_ptr()`` and
``_version`` (`attribution.core.prepare`) are invalidated by ``load_state_dict``. Writes through
``param.data`` bypass the version counter (a PyTorch property), so such caches cannot see them.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_TENSORS = ("gamma", "beta", "proj")


class HeadDetachedWarning(UserWarning):
    """A model-following head was converted to another dtype/device and is now a frozen copy."""


class Head(nn.Module):
    """z = LayerNorm_{gamma,beta,eps}(x) @ W_proj  and  y(x, t) = cos(z, t)  (paper Eq. 4).

    Tensors (frozen: never parameters, gradients do not flow into them):
        gamma: (d_pre,) LayerNorm scale.
        beta:  (d_pre,) LayerNorm bias (the paper's Eq. 6 assumes it is 0; we never do).
        proj:  (d_pre, d_post) W_proj.
        eps:   LayerNorm epsilon, part of sigma = sqrt(var(x) + eps).

    ``Head(gamma, beta, proj, eps)`` copies the given tensors into buffers (a standalone head);
    ``Head.from_model(model)`` follows the model (see the module docstring).
    """

    def __init__(self, gamma: torch.Tensor, beta: torch.Tensor, proj: torch.Tensor, eps: float):
        super().__init__()
        self.__dict__["_source"] = None  # not a submodule: the head must not own the model
        gamma, beta, proj = (torch.as_tensor(t).detach().clone() for t in (gamma, beta, proj))
        _check_shapes(gamma, beta, proj, "Head")
        # Written straight into _buffers: `gamma`/`beta`/`proj` are properties of the class.
        self._buffers.update(gamma=gamma, beta=beta, proj=proj)
        self._eps = float(eps)

    @classmethod
    def from_model(cls, model: nn.Module) -> "Head":
        """The head of an open_clip CLIP model (or its ``.visual`` tower), following the model.

        Nothing is copied: every use reads ``visual.ln_post`` and ``visual.proj`` afresh.
        """
        _read_model(model, "model")  # fail now, not at the first use
        head = cls.__new__(cls)
        nn.Module.__init__(head)
        head.__dict__["_source"] = model
        head._eps = None
        return head

    # ------------------------------------------------------------------ the tensors

    @property
    def follows_model(self) -> bool:
        """True for a head built by `from_model` (and not converted since)."""
        return self._source is not None

    @property
    def source(self) -> nn.Module | None:
        """The model a following head reads from (None for a standalone head)."""
        return self._source

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """(gamma, beta, proj, eps) as used now; checked once (cheaper than four properties)."""
        if self._source is None:
            return self._buffers["gamma"], self._buffers["beta"], self._buffers["proj"], self._eps
        return _read_model(self._source, "the head's model")

    @property
    def gamma(self) -> torch.Tensor:
        return self.tensors()[0]

    @property
    def beta(self) -> torch.Tensor:
        return self.tensors()[1]

    @property
    def proj(self) -> torch.Tensor:
        return self.tensors()[2]

    @property
    def eps(self) -> float:
        return self.tensors()[3]

    @eps.setter
    def eps(self, value: float) -> None:
        if self._source is not None:
            raise AttributeError("This head follows its model's ln_post; set model.visual.ln_post.eps instead, "
                                 "or change the eps of a standalone copy (head.frozen()).")
        self._eps = float(value)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _TENSORS and self.__dict__.get("_source") is not None:
            raise AttributeError(f"This head follows its model; assign model.visual's tensors instead of head.{name}, "
                                 "or modify a standalone copy (head.frozen()).")
        super().__setattr__(name, value)

    def frozen(self) -> "Head":
        """A standalone head holding copies of the current gamma, beta, proj and eps."""
        gamma, beta, proj, eps = self.tensors()
        return Head(gamma, beta, proj, eps)

    # ------------------------------------------------------------------ nn.Module plumbing

    def _apply(self, fn, recurse: bool = True):
        if self._source is None:
            return super()._apply(fn, recurse)
        gamma, beta, proj, eps = self.tensors()
        converted = [fn(t) for t in (gamma, beta, proj)]
        if all(new is old for new, old in zip(converted, (gamma, beta, proj))):
            return self  # e.g. .to(the model's device): nothing changes, keep following
        new = converted[2]
        warnings.warn(
            f"Converting a head that follows its model to {new.dtype} on {new.device}: it is now a standalone "
            "frozen copy and will not see later changes to the model. Convert the model instead, or write "
            "head.frozen().to(...) to make the copy explicit.", HeadDetachedWarning, stacklevel=3)
        self.__dict__["_source"] = None
        self._buffers.update({name: t.detach().clone() for name, t in zip(_TENSORS, converted)})
        self._eps = eps
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if self._source is None:
            return super()._save_to_state_dict(destination, prefix, keep_vars)
        for name, t in zip(_TENSORS, self.tensors()[:3]):
            destination[prefix + name] = t if keep_vars else t.detach()

    def extra_repr(self) -> str:
        kind = "follows its model" if self._source is not None else "standalone"
        return f"d_pre={self.d_pre}, d_post={self.d_post}, eps={self.eps:g}, {kind}"

    # ------------------------------------------------------------------ the map

    @property
    def d_pre(self) -> int:
        return self.proj.shape[0]

    @property
    def d_post(self) -> int:
        return self.proj.shape[1]

    def layer_norm(self, x: torch.Tensor) -> torch.Tensor:
        gamma, beta, proj, eps = self.tensors()
        return F.layer_norm(x, (proj.shape[0],), gamma.to(x.dtype), beta.to(x.dtype), eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d_pre) pre-LayerNorm class tokens -> (N, d_post) unnormalised image embeddings."""
        gamma, beta, proj, eps = self.tensors()
        if x.shape[-1] != proj.shape[0]:
            raise ValueError(f"Head expects class tokens of width d_pre={proj.shape[0]}, got shape {tuple(x.shape)}")
        return F.layer_norm(x, (proj.shape[0],), gamma.to(x.dtype), beta.to(x.dtype), eps) @ proj.to(x.dtype)

    def cosine(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """y(x, t): (N, d_pre) class tokens, (T, d_post) text embeddings -> (N, T) cosines."""
        if text.ndim != 2 or text.shape[-1] != self.d_post:
            raise ValueError(f"text embeddings must be (T, d_post={self.d_post}), got {tuple(text.shape)}")
        z = F.normalize(self(x), dim=-1)
        return z @ F.normalize(text.to(z.dtype), dim=-1).T


def _check_shapes(gamma: torch.Tensor, beta: torch.Tensor, proj: torch.Tensor, where: str) -> None:
    if gamma.ndim != 1 or beta.shape != gamma.shape:
        raise ValueError(f"{where}: gamma and beta must both be (d_pre,), "
                         f"got {tuple(gamma.shape)} and {tuple(beta.shape)}")
    if proj.ndim != 2 or proj.shape[0] != gamma.shape[0]:
        raise ValueError(f"{where}: proj must be (d_pre={gamma.shape[0]}, d_post), got {tuple(proj.shape)}")


def _read_model(model: nn.Module, what: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(gamma, beta, proj, eps) of ``model.visual`` now, as detached views sharing the model's storage."""
    visual = getattr(model, "visual", model)
    ln, proj = getattr(visual, "ln_post", None), getattr(visual, "proj", None)
    if not isinstance(ln, nn.LayerNorm) or not isinstance(proj, torch.Tensor):
        raise TypeError(
            f"{what} ({type(visual).__name__}) has no LayerNorm `ln_post` and tensor `proj` (found "
            f"ln_post={type(ln).__name__}, proj={type(proj).__name__}); the head needs an open_clip "
            "VisionTransformer with a class-token pool."
        )
    if len(ln.normalized_shape) != 1:
        raise TypeError(f"{what}: ln_post normalizes over {tuple(ln.normalized_shape)}, expected one dimension")
    d = ln.normalized_shape[0]
    ref = proj.detach()
    gamma = ln.weight.detach() if ln.weight is not None else torch.ones(d, dtype=ref.dtype, device=ref.device)
    if ln.bias is not None:
        beta = ln.bias.detach()
    else:
        beta = torch.zeros(d, dtype=ref.dtype, device=ref.device)
    try:
        _check_shapes(gamma, beta, ref, f"{what}: visual.ln_post / visual.proj")
    except ValueError as err:
        raise ValueError(f"{err} (were ln_post or proj replaced by ones of another width?)") from None
    return gamma, beta, ref, float(ln.eps)
