"""The hidden-shortcut challenge: a classifier with a shortcut nobody planted by hand.

``c = challenge.make(seed)`` draws from the seed alone one hidden shortcut (a target class
and an attribute value its training images carry far more often than other classes'), or
none (one challenge in five, a control); ``investigate(c, sae)`` is the automated detective
(failure mining on the classifier's logits, labels, counterfactual edits); ``check`` and
``reveal`` answer a guess; ``score`` grades the detective. Notebook 06 walks a learner
through one; ``python -m clipattr_utils.challenge --seeds 0-39`` is the benchmark.
"""

from .detective import (NO_SHORTCUT_FOUND, DetectiveConfig, Investigation, detective_sae, edit_of, investigate,
                        latent_labels, mine_classifier)
from .encoding import encodability
from .game import CLASSIFIER_C, Challenge, check, describe, fit_classifier, make, reveal, with_sealed
from .images import PublicImages, carries, confounded_training_set, test_set
from .scoring import PURITY, latent_purity, score
from . import views
from .spec import DRAWN_VALUES, NO_SHORTCUT, SHORTCUT_KINDS, Shortcut, draw

__all__ = ["NO_SHORTCUT_FOUND", "DetectiveConfig", "Investigation", "detective_sae", "edit_of", "investigate",
           "latent_labels", "mine_classifier", "views",
           "encodability", "CLASSIFIER_C", "Challenge", "check", "describe", "fit_classifier", "make", "reveal",
           "with_sealed", "PublicImages", "carries", "confounded_training_set", "test_set", "PURITY",
           "latent_purity", "score", "DRAWN_VALUES", "NO_SHORTCUT", "SHORTCUT_KINDS", "Shortcut", "draw"]
