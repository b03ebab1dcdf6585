"""clipattr_utils: every computation behind the clipattr notebook series.

The flow, one module per stage::

    image --models (CLIP backbone)--> features (class token, cached) --> sae (top-k)
          --> head (LayerNorm + projection) --> cosine with text --> attribution scores

Notebooks use the flat namespace, the verbs of that flow::

    import clipattr_utils as ca

    clip = ca.load_clip("sandbox")                        # or ("ViT-B-32", "datacomp_xl_s13b_b90k")
    feats = ca.extract(clip, ca.sandbox.make_dataset(2000, "train"))   # cached class tokens
    sae = ca.train_sae(feats, ca.TrainConfig(d_sae=1024, k=32)).sae    # or ca.TopKSAE.load(folder)
    text = clip.encode_text(["a photo of a boat"])
    attr = ca.act_grad(feats.read(0, 8), sae, clip.head, text)         # exact Act x Grad (Eq. 5)

Submodules (``ca.faithfulness``, ``ca.sandbox``, ``ca.attribution``, ...) hold the rest.
"""

from . import (attribution, data, faithfulness, features, gallery, head, labeling, melanoma, mining, models, sae, sandbox,
               spatial, storage, widgets)
from .attribution import (Attribution, Readout, TopAttribution, act_grad, act_grad_paper, act_logit_lens, energy,
                          integrated_gradients, logit_lens, mean_relevance, random_scores, readout_from_sklearn)
from .data import ImageFolder, ImageNetFolder, ISIC2019, TensorImageSet
from .faithfulness import FaithfulnessConfig, FaithfulnessResult, FiringFrequency, RandomOrder
from .faithfulness import evaluate as evaluate_faithfulness
from .features import FeatureCache, extract, write_cache
from .head import Head
from .labeling import (TopSamples, Vocabulary, basis_diversity, component_embeddings, hidden_concepts, imagenet21k_names,
                       label_latents, labeler_embeddings, latent_relevance, sandbox_vocabulary, score_labels,
                       top_activating)
from .models import HeadUnavailableError, LoadedCLIP, load_clip, supported_models
from .sae import TopKSAE, TrainConfig, TrainResult, check_compatible, load_sae, save_sae, save_saelens
from .sae import evaluate as evaluate_sae
from .sae import train as train_sae
from .storage import default_cache_dir, resolve_device, resolve_out_dir

__version__ = "0.1.0"

__all__ = [
    # image -> features
    "load_clip", "LoadedCLIP", "supported_models", "ImageNetFolder", "ImageFolder", "ISIC2019", "TensorImageSet",
    "extract", "FeatureCache", "write_cache", "default_cache_dir", "resolve_device", "resolve_out_dir",
    # features -> SAE
    "TopKSAE", "TrainConfig", "TrainResult", "train_sae", "evaluate_sae", "load_sae", "save_sae", "save_saelens",
    "check_compatible",
    # SAE -> head -> scores
    "Head", "act_grad", "act_grad_paper", "integrated_gradients", "logit_lens", "act_logit_lens", "energy",
    "random_scores", "Readout", "readout_from_sklearn", "Attribution", "TopAttribution", "mean_relevance",
    # labeling
    "top_activating", "TopSamples", "labeler_embeddings", "component_embeddings", "Vocabulary", "sandbox_vocabulary",
    "imagenet21k_names", "label_latents", "hidden_concepts", "latent_relevance", "basis_diversity", "score_labels",
    "HeadUnavailableError",
    # faithfulness
    "evaluate_faithfulness", "FaithfulnessConfig", "FaithfulnessResult", "RandomOrder", "FiringFrequency",
    # submodules
    "attribution", "data", "faithfulness", "features", "gallery", "head", "labeling", "melanoma", "mining", "models", "sae",
    "sandbox", "spatial", "storage", "widgets",
]


class _Package(type(features)):
    """This package's module type: ``ca.extract`` stays the function `features.extract`.

    ``python -m clipattr_utils.extract`` needs a submodule of that name, and importing a
    submodule makes the import system bind it on its parent, which would shadow the flat API.
    """

    def __setattr__(self, name, value):
        if name == "extract" and isinstance(value, type(features)):
            return
        super().__setattr__(name, value)


import sys as _sys  # noqa: E402

_sys.modules[__name__].__class__ = _Package

from . import cli_extract, distributed  # noqa: E402  (torchrun: sharded extraction and passes)

__all__ += ["cli_extract", "distributed"]
