"""Failure mining (paper Sec. 4.2b, 5.3, App. D): expected relevance per class, high-confidence
outsiders, z-scored outlier latents, their distractor sets, sandbox ground truth, the
App. D.2 robustness evaluation and a review widget."""

from . import evaluate, ground_truth, review
from .describe import distractor_labels
from .classes import (MiningClass, class_labels, prompts, sandbox_classes, sandbox_mining_pool,
                      sandbox_reference_labels)
from .imagenet import imagenet_classes, imagenet_mining_pool
from .outliers import (CONFIDENCES, MiningConfig, MiningResult, class_outputs, confidence_scores, distractor_rows,
                       flag_class, guarded_std, mine, outsiders, save_result, with_output_stats, zscores)
from .relevance import ExpectedRelevance, RunningMoments, expected_relevance
from .review import ReviewView

__all__ = ["distractor_labels", "evaluate", "ground_truth", "review", "ReviewView", "save_result", "sandbox_reference_labels",
           "MiningClass", "class_labels", "prompts", "sandbox_classes", "sandbox_mining_pool", "MiningConfig",
           "MiningResult", "distractor_rows", "flag_class", "guarded_std", "mine", "outsiders", "zscores",
           "ExpectedRelevance", "RunningMoments", "expected_relevance", "CONFIDENCES", "class_outputs",
           "confidence_scores", "with_output_stats", "imagenet_classes", "imagenet_mining_pool"]
