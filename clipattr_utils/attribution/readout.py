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
