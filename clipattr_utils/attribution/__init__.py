"""Instance-wise attribution of SAE latents to CLIP outputs (paper Sec. 4.1, App. B).

All methods share one call shape and return scores for the k active latents only::

    attr = act_grad(x, sae, head, text)      # Attribution(indices (N, k), values (N, T, k))

``x`` is (N, d_pre) cached class tokens (or a FeatureCache), ``text`` (T, d_post) text
embeddings or a :class:`Readout`. Options common to all: ``code``, ``chunk_n``, ``chunk_t``,
``top_n``, ``on_chunk``, ``dtype``, ``device``, ``progress`` (see :func:`act_grad`).
"""

from .baselines import act_logit_lens, energy, logit_lens, random_scores
from .core import Readout, prepare
from .exact import act_grad, act_grad_paper
from .integrated import integrated_gradients, quadrature
from .readout import (make_readout, n_outputs, output_row, readout_act_grad, readout_attribution, readout_from_sklearn,
                      target_outputs)
from .result import Attribution, MeanRelevance, TopAttribution, mean_relevance, to_frame, top_n

METHODS = {
    "act_grad": act_grad,
    "act_grad_paper": act_grad_paper,
    "integrated_gradients": integrated_gradients,
    "act_logit_lens": act_logit_lens,
    "logit_lens": logit_lens,
    "energy": energy,
    "random": random_scores,
}
"""Every method by name, all with the call shape ``method(x, sae, head, text, **opts)``."""

__all__ = [
    "Attribution", "TopAttribution", "MeanRelevance", "Readout", "METHODS",
    "act_grad", "act_grad_paper", "integrated_gradients", "logit_lens", "act_logit_lens", "energy",
    "random_scores", "make_readout", "readout_act_grad", "readout_attribution", "readout_from_sklearn",
    "n_outputs", "output_row", "target_outputs",
    "mean_relevance", "top_n", "to_frame", "prepare", "quadrature",
]
