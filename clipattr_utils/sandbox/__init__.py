"""The sandbox world: a procedurally rendered CLIP world with planted failure modes.

See `world` for the classes, the planted modes and their rates, `render` for the pixels,
`captions` for the caption rules, `train` for the small CLIP trained on it and `shortcuts`
for measuring each planted mode in a trained model.
"""

from .render import BACKGROUNDS, COLOURS, RENDERER_VERSION, red_tint
from .world import (CLASSNAMES, COMPOUND_CLASS, COMPOUND_HEAD, LESION_CLASSNAMES, LESION_TINT_RATE,
                    NEUTRAL_WORDS, POLYSEMOUS_SPRITES, POLYSEMOUS_WORD, SPURIOUS_BACKGROUND,
                    SPURIOUS_BACKGROUND_OTHER_RATE, SPURIOUS_CLASS, SPURIOUS_RATE, TEXT_OTHER_CLASS_SHARE,
                    TEXT_RATE, TINT_RATE, TYPO_WORDS, WATERMARK_RATE, LesionRecipe, ObjectRecipe,
                    SandboxImageSet, make_dataset, make_lesion_dataset)

__all__ = [
    "BACKGROUNDS", "COLOURS", "RENDERER_VERSION", "red_tint", "CLASSNAMES", "COMPOUND_CLASS", "COMPOUND_HEAD",
    "LESION_CLASSNAMES", "LESION_TINT_RATE", "NEUTRAL_WORDS", "POLYSEMOUS_SPRITES", "POLYSEMOUS_WORD",
    "SPURIOUS_BACKGROUND", "SPURIOUS_BACKGROUND_OTHER_RATE", "SPURIOUS_CLASS", "SPURIOUS_RATE",
    "TEXT_OTHER_CLASS_SHARE", "TEXT_RATE", "TINT_RATE", "TYPO_WORDS", "WATERMARK_RATE", "LesionRecipe",
    "ObjectRecipe", "SandboxImageSet", "make_dataset", "make_lesion_dataset",
]
