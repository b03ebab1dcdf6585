"""Attribution of a linear readout of the image embedding (a logistic-regression logit,
the melanoma case of Sec. 5.4) instead of a cosine with a text embedding.

Every method accepts a :class:`Readout` in place of ``text``; these helpers only build one::

    ro = readout_from_sklearn(clf, normalize=True)   # clf fitted on unit-norm head(x)
    attr = act_grad(x, sae, head, ro)                 # values (N, n_classes_or_1, k)
    # or
    attr = readout_act_grad(x, sae, head, clf.coef_, clf.intercept_)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..head import Head
from ..sae.model import TopKSAE
from .core import Readout
from .exact import act_grad
from .result import Attribution


def make_readout(weight: Any, bias: Any = 0.0, normalize: bool = False) -> Readout:
    """A :class:`Readout` from array-likes: weight (T, d_post) or (d_post,), bias scalar or (T,)."""
    w = torch.as_tensor(np.asarray(weight) if not isinstance(weight, torch.Tensor) else weight)
    if not w.dtype.is_floating_point:
        w = w.double()
    b = bias if bias is None or isinstance(bias, torch.Tensor) else torch.as_tensor(np.asarray(bias, dtype=np.float64))
    return Readout(w, b, bool(normalize))


def readout_from_sklearn(model: Any, normalize: bool = False) -> Readout:
    """Readout of a fitted linear sklearn classifier (``coef_``, ``intercept_``): its decision
    function (the logit for logistic regression). ``normalize`` says whether it was fitted on
    L2-normalised embeddings z/|z| (True) or on z = head(x) (False)."""
    if not hasattr(model, "coef_") or not hasattr(model, "intercept_"):
        raise TypeError(f"{type(model).__name__} has no coef_/intercept_; fit a linear classifier first")
    return make_readout(model.coef_, model.intercept_, normalize)


def readout_act_grad(x: Any, sae: TopKSAE, head: Head, weight: Any, bias: Any = 0.0, normalize: bool = False,
                     **opts: Any) -> Attribution:
    """Exact Act x Grad of y = w . z + c (or w . z/|z| + c); options as :func:`act_grad`."""
    return act_grad(x, sae, head, make_readout(weight, bias, normalize), **opts)


def readout_attribution(method: Callable[..., Attribution], x: Any, sae: TopKSAE, head: Head, weight: Any,
                        bias: Any = 0.0, normalize: bool = False, **opts: Any) -> Attribution:
    """Any attribution method (e.g. ``integrated_gradients``, ``logit_lens``) on a readout."""
    return method(x, sae, head, make_readout(weight, bias, normalize), **opts)


def output_row(text: Any, t: int) -> Any:
    """Output ``t`` alone, as the same kind of target: ``text[t:t+1]`` for text embeddings, the
    readout's row t (weight and intercept) for a :class:`Readout`. Lets per-class loops (the
    expected relevance and failure mining of Sec. 4.2b) run on prompts and classifiers alike."""
    if isinstance(text, Readout):
        w = torch.as_tensor(text.weight)
        w = w[None] if w.ndim == 1 else w
        if not 0 <= t < w.shape[0]:
            raise IndexError(f"output_row: readout has {w.shape[0]} outputs, asked for {t}")
        b = text.bias
        if b is not None and torch.as_tensor(b).numel() > 1:
            b = torch.as_tensor(b).reshape(-1)[t:t + 1]
        return Readout(w[t:t + 1], b, text.normalize)
    return text[t:t + 1]


def target_outputs(x: torch.Tensor, head: Head, text: Any) -> torch.Tensor:
    """(N, T) outputs y_t(x) the attribution explains: cosines with text embeddings, or a
    :class:`Readout`'s values (e.g. a probe's logits), computed without gradients."""
    from .core import as_target

    with torch.no_grad():
        z = head(x)
        return as_target(text, z.shape[-1], z.dtype, z.device).output(z)


def n_outputs(text: Any) -> int:
    """How many outputs T a target has: rows of text embeddings, or of a readout's weight."""
    w = torch.as_tensor(text.weight) if isinstance(text, Readout) else torch.as_tensor(text)
    return 1 if w.ndim == 1 else int(w.shape[0])
