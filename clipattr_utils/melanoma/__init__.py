"""The melanoma case study (paper Sec. 5.4, App. E) on cached class tokens.

    from clipattr_utils import melanoma as mel

    sets = mel.make_sets(mel.sandbox_recipes())                   # or mel.isic_pool(csv, images)
    feats = mel.condition_features(clip, sets["pool"], cache)     # none / more red / less red (Eq. 32)
    data = mel.CaseData(feats, feats["none"].labels, clip.head, sae, feats["none"].ids, tint)
    clf, table, split = mel.explain_standard(data, seed)          # probe + per-class latent relevance
    red = mel.find_red_latent(table, data.code, sets["pool"],      # the top benign latent that rises
                              red_code=data.code_of("more_red"))   # most when red is added
    result = mel.run_case(data, red.latent, range(seed, seed + 5)) # standard vs robust (Eq. 33/34)
    result.accuracy_summary(); result.target(); result.sweep_summary()

Modules, in the order of the flow:

* `hue`: Eq. 32 on images, `RedHueImageSet`, one feature cache per condition;
* `probe`: the logistic-regression probe on unit embeddings and its exact Act x Grad
  relevance per class (share of the output);
* `direction`: Eq. 33 (the red direction from the red latent's high/low benign samples)
  and Eq. 34 (the latent augmentation);
* `experiment`: App. E's split, finding the red latent, the seeds, summaries;
* `sets`: the sandbox / ISIC image sets and their provenance; `plots`: Fig. 6 and Fig. 15.
"""

from . import direction, experiment, hue, plots, probe, reliance, sets
from .direction import PAPER_STD, Direction, dense_activation, latent_augment, red_direction, thresholds
from .experiment import (CLASSES, CaseConfig, CaseData, CaseResult, RedLatent, Split, build_summary, choose_alpha,
                         choose_direction, red_candidates, validation_parts,
                         compare_latents, given_red_latent, json_safe,
                         config_dict, explain_standard, find_red_latent, red_response, redness, robust_probe, run_case, run_seed,
                         standard_drops,
                         sem, split_indices)
from .hue import CONDITIONS, LESS_RED, MORE_RED, RedHueImageSet, condition_features, condition_sets, red_hue
from .plots import plot_accuracy, plot_alpha_sweep, plot_relevance
from .probe import class_accuracy, class_relevance, embed, fit_probe, probe_relevance, rank_of, relevance_of
from .reliance import reliance_report, reliance_split
from .sets import isic_pool, make_sets, sandbox_recipes

__all__ = [
    "direction", "experiment", "hue", "plots", "probe", "reliance", "sets", "reliance_split", "reliance_report",
    "red_hue", "RedHueImageSet", "condition_sets", "condition_features", "CONDITIONS", "MORE_RED", "LESS_RED",
    "embed", "fit_probe", "class_accuracy", "probe_relevance", "class_relevance", "rank_of", "relevance_of",
    "Direction", "PAPER_STD", "dense_activation", "thresholds", "red_direction", "latent_augment",
    "CLASSES", "CaseConfig", "CaseData", "CaseResult", "RedLatent", "Split", "split_indices", "redness", "red_response",
    "find_red_latent", "given_red_latent", "explain_standard", "robust_probe", "choose_alpha", "choose_direction",
    "red_candidates", "validation_parts", "run_seed", "run_case",
    "compare_latents", "standard_drops",
    "sem", "config_dict", "build_summary", "json_safe", "plot_accuracy", "plot_alpha_sweep", "plot_relevance",
    "sandbox_recipes", "make_sets",
    "isic_pool",
]
