"""Labeling SAE latents with text: what each component encodes (paper Sec. 3.2, 4.2a, 5.2, App. C).

The flow, one module per concern::

    top = top_activating(features, sae, n=100)                     # top.py: top samples + App. C stats
    labeler = load_clip("sandbox-labeler", role="labeler")          # or ("MobileCLIP-S2", "datacompdr")
    emb = labeler_embeddings(labeler, image_set)                    # labeler.py: unit final embeddings (cached)
    x_bar = component_embeddings(top, emb, n_used=20)               # labeler.py: x_bar_j of Eq. 2
    vocab = Vocabulary.build(labeler, sandbox_vocabulary(colour_objects=True),
                             templates=("{}", "a photo of {}"))      # vocabulary.py: T and t_empty
    table = label_latents(top, x_bar, vocab, labeler_embeddings=emb,
                          expected_labels=labels_naming(vocab, "object"))   # table.py: Eq. 2 label, clarity, ...
    label_support(top, emb, vocab, latents)                         # support.py: does a label fit most top images?
    hidden = hidden_concepts(table, tau_act=3.0, tau_align=0.0)    # table.py: Eq. 7 / App. C.2
    basis_diversity(features, sae, emb, vocab, top_samples=top)     # diversity.py: Sec. 5.2
    interpretability_vs_activation(table)                           # diversity.py: App. C.1, Fig. 9
    score_labels(table, top, image_set.attributes, vocab)           # ground_truth.py: sandbox truth
    labeler_zero_shot(emb, image_set.attributes, vocab)             # ground_truth.py: the labeler's own quality

Rows everywhere are rows of the labeling pool: the explained model's features, the labeler's
embeddings and (on the sandbox) the attribute table must come from one image set, in one order
(checked through sample ids where both sides have them).
"""

from . import outputs, pool
from .align import Alignment, align, align_chunk, alignment_scores, expected_alignment, label_names
from .diversity import (Diversity, basis_diversity, interpretability_vs_activation,
                        plot_interpretability_vs_activation)
from .ground_truth import (GT_ATTRIBUTES, LabelScores, attribute_values, hidden_purity, labeler_zero_shot,
                           labels_naming, misnamed_objects, pure_attributes, purity, score_labels)
from .labeler import component_embeddings, iter_top_embeddings, labeler_embeddings
from .quality import clarity, clarity_of, polysemanticity, polysemanticity_of
from .support import GUARDED_ATTRIBUTES, label_support
from .table import TABLE_COLUMNS, hidden_concepts, label_latents, latent_relevance
from .top import TopSamples, merge, top_activating
from .vocabulary import (PAPER_TEMPLATES, Vocabulary, encode_vocabulary, imagenet1k_names, imagenet21k_names,
                         sandbox_vocabulary)

__all__ = [
    "TopSamples", "top_activating", "merge",
    "labeler_embeddings", "component_embeddings", "iter_top_embeddings",
    "Vocabulary", "encode_vocabulary", "imagenet21k_names", "imagenet1k_names", "sandbox_vocabulary",
    "PAPER_TEMPLATES",
    "Alignment", "align", "align_chunk", "alignment_scores", "expected_alignment", "label_names",
    "clarity", "polysemanticity", "clarity_of", "polysemanticity_of",
    "label_latents", "GUARDED_ATTRIBUTES", "label_support", "hidden_concepts", "latent_relevance", "TABLE_COLUMNS",
    "Diversity", "basis_diversity", "interpretability_vs_activation", "plot_interpretability_vs_activation",
    "GT_ATTRIBUTES", "LabelScores", "attribute_values", "purity", "pure_attributes", "score_labels",
    "hidden_purity", "labeler_zero_shot", "labels_naming", "misnamed_objects",
]
