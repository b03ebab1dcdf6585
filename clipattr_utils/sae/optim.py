"""AdamW over a TopKSAE's parameters, with every tensor handed to the fused kernel contiguously.

``W_enc`` (d_in, d_sae) is stored latent-major (see `model`), i.e. it is the transpose of a
contiguous (d_sae, d_in) block. torch's fused AdamW copies non-contiguous parameters to a
contiguous buffer and back on every step (two extra passes over the largest tensor). Here
the optimiser instead updates a contiguous alias of the same storage — a leaf parameter
viewing W_enc as (d_sae, d_in) — and receives W_enc's gradient transposed, which is a view,
not a copy. The arithmetic is AdamW's, element by element, so results are identical.
"""

from __future__ import annotations

import torch
from torch import nn

from .model import TopKSAE

PARAM_NAMES = ("W_enc", "W_dec", "b_enc", "b_dec")
_STATE_KEYS = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


class SAEAdamW:
    """``torch.optim.AdamW`` (fused where available) over W_enc, W_dec, b_enc, b_dec."""

    def __init__(self, sae: TopKSAE, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        self.sae = sae
        self._alias: dict[str, nn.Parameter] = {}
        params = []
        for name in PARAM_NAMES:
            p = getattr(sae, name)
            if p.ndim == 2 and not p.is_contiguous() and p.t().is_contiguous():
                alias = nn.Parameter(p.data.t())  # shares p's storage, contiguous layout
                self._alias[name] = alias
                params.append(alias)
            else:
                params.append(p)
        kwargs = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        try:  # the fused kernel is one pass over each tensor; fall back where it is missing
            self.opt = torch.optim.AdamW(params, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            self.opt = torch.optim.AdamW(params, foreach=params[0].is_cuda, **kwargs)

    @property
    def param_groups(self) -> list[dict]:
        return self.opt.param_groups

    def _opt_param(self, name: str) -> torch.Tensor:
        return self._alias.get(name, getattr(self.sae, name))

    def zero_grad(self) -> None:
        for name in PARAM_NAMES:
            getattr(self.sae, name).grad = None
            if name in self._alias:
                self._alias[name].grad = None

    @torch.no_grad()
    def step(self) -> None:
        for name, alias in self._alias.items():
            g = getattr(self.sae, name).grad
            # a view when g is latent-major (as the sparse backward makes it); otherwise a copy,
            # since the fused kernel expects a gradient laid out like its parameter
            alias.grad = None if g is None else g.t().contiguous()
        self.opt.step()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The AdamW moments and step counts as ``optim.<param>.<key>``, in each parameter's shape."""
        out = {}
        for name in PARAM_NAMES:
            for key, value in self.opt.state.get(self._opt_param(name), {}).items():
                value = value if torch.is_tensor(value) else torch.tensor(value)
                if name in self._alias and value.ndim == 2:
                    value = value.t()
                out[f"optim.{name}.{key}"] = value
        return out

    @torch.no_grad()
    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`state_tensors` (missing entries leave a parameter's state empty)."""
        for name in PARAM_NAMES:
            param = self._opt_param(name)
            state = {}
            for key in _STATE_KEYS:
                value = tensors.get(f"optim.{name}.{key}")
                if value is None:
                    continue
                if name in self._alias and value.ndim == 2:
                    value = value.t()
                if value.ndim and tuple(value.shape) != tuple(param.shape):
                    raise ValueError(f"optimizer state optim.{name}.{key} has shape {tuple(value.shape)}, "
                                     f"parameter {name} needs {tuple(param.shape)}")
                if value.ndim:
                    like = torch.empty_like(param)  # keeps the parameter's layout
                else:  # step counts live on the parameter's device only for fused/capturable AdamW
                    on_device = self.opt.defaults.get("fused") or self.opt.defaults.get("capturable")
                    like = torch.empty_like(value, device=param.device if on_device else "cpu")
                state[key] = like.copy_(value)
            if state:
                self.opt.state[param] = state
