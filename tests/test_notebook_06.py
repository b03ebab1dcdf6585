"""Notebook 06 runs headless with small parameters, answers the guess it is given, and
writes challenge.json, suspects.csv and verdict.json that agree with the challenge itself."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from _notebooks import LABELER_WEIGHTS, SANDBOX_WEIGHTS, require_weights, run_notebook


@pytest.mark.slow
def test_notebook_06_runs_a_challenge_and_writes_its_files(tmp_path, feature_cache):
    require_weights(SANDBOX_WEIGHTS)
    require_weights(LABELER_WEIGHTS)
    import nbformat

    from clipattr_utils import challenge as ch

    out, cache = tmp_path / "out", feature_cache
    answer = ch.spec.draw(0)
    executed = run_notebook("06_find_the_shortcut", tmp_path, challenge_seed=0, n_per_class=60, n_test=960,
                            sae_n_train=2000, sae_epochs=5, out_dir=str(out), cache_dir=str(cache), guess_class=answer.target,
                            guess_kind=answer.kind, guess_value=answer.value, reveal_answer=True)
    public = json.loads((out / "challenge.json").read_text())
    assert public["seed"] == 0 and public["n_test"] == 960 and public["n_train"] == 60 * 12
    assert answer.target not in json.dumps({k: v for k, v in public.items() if k != "classes"})
    suspects = pd.read_csv(out / "suspects.csv")
    assert list(suspects.columns) == ["rank", "class", "latent", "label", "score"]
    assert list(suspects["rank"]) == list(range(1, len(suspects) + 1))
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["answer"] == ch.describe(answer) and isinstance(verdict["correct"], bool)
    if verdict["found"] is not None:   # the verdict is the top suspect's
        assert verdict["found"]["class"] == suspects["class"].iloc[0]
    text = "".join(o.get("text", "") for c in nbformat.read(executed, as_version=4).cells
                   if c.cell_type == "code" for o in c.get("outputs", []))
    assert "Right: your guess was" in text and "The answer: " + ch.describe(answer) in text
