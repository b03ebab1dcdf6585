"""mining.ground_truth.label_names_planted: do a found pair's labels name its planted attribute?"""

import pandas as pd

from clipattr_utils.labeling import sandbox_vocabulary
from clipattr_utils.mining import ground_truth as gt
from clipattr_utils.mining.classes import sandbox_classes


def test_label_names_planted_per_mode():
    truth = pd.DataFrame({"class": ["boat", "boat", "car", "fire truck", "bat (animal)", "star"],
                          "latent": [1, 2, 3, 4, 5, 6],
                          "mode": ["a_spurious", "a_spurious", "b_typography", "d_compound", "c_polysemy", ""]})
    flagged = pd.DataFrame({"class": truth["class"], "latent": truth["latent"],
                            "label": ["water", "red boat", "the word 'car'", "orange fire", "bat (club)", "star"]})
    out = gt.label_names_planted(truth, flagged, sandbox_vocabulary(colour_objects=True), sandbox_classes())
    # The pair without a planted mode is left out; each other row says whether its label
    # names the planted attribute: water yes, "red boat" no (the class, not the background),
    # the written word yes, "orange fire" yes (names fire), the other bat sense yes.
    assert out["latent"].tolist() == [1, 2, 3, 4, 5]
    assert out["names_planted"].tolist() == [True, False, True, True, True]
    # A word other than the class's own, or the class's own sense, does not count.
    flagged.loc[2, "label"] = "the word 'fish'"
    flagged.loc[4, "label"] = "bat (animal)"
    out = gt.label_names_planted(truth, flagged, sandbox_vocabulary(colour_objects=True), sandbox_classes())
    assert out["names_planted"].tolist() == [True, False, False, True, False]
    # Labels read back from notebook 02's vocabulary.csv (strings) behave the same.
    csv = sandbox_vocabulary(colour_objects=True)[["label", "attribute", "value"]].astype(str)
    assert gt.label_names_planted(truth, flagged, csv, sandbox_classes())["names_planted"].tolist() == \
        [True, False, False, True, False]
