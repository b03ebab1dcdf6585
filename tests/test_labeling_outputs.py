"""The files notebook 02 writes: columns, rows and values as the inputs say."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch

from clipattr_utils.labeling import Vocabulary, top_activating
from clipattr_utils.labeling.outputs import LATENT_COLUMNS, write_outputs
from clipattr_utils.sae.model import TopKSAE


def test_write_outputs_round_trip(tmp_path):
    torch.manual_seed(0)
    sae = TopKSAE(8, 20, k=3)
    x = torch.randn(120, 8)
    top = top_activating(x, sae, n=10, ids=[f"img{i}" for i in range(120)], progress=False)
    latents = np.flatnonzero(top.count.numpy() >= 3)[:6]
    table = pd.DataFrame({"latent": latents, "label": [f"l{j}" for j in latents], "attribute": "object",
                          "value": "x", "alignment": 0.1, "clarity": 0.5, "polysemanticity": 0.2,
                          "count": top.count[latents].numpy(), "firing_rate": top.firing_rate[latents].numpy(),
                          "mean_activation": 1.0, "top5_mean": 2.0, "top20_mean": 1.5, "top_labels": [[]] * len(latents)})
    frame = pd.DataFrame({"label": ["a", "b"], "attribute": ["object", "background"], "value": ["a", "b"]})
    vocab = Vocabulary(frame, torch.eye(2, 4), torch.ones(4) / 2)
    hidden = table.iloc[:2]
    paths = write_outputs(tmp_path, table=table, top=top, vocabulary=vocab, pool={"kind": "test", "n": 120},
                          hidden=hidden, n_used=4, diversity=pd.DataFrame({"basis": ["SAE"], "unique_labels": [3]}),
                          ground_truth={"overall": 0.5})
    lat = pd.read_csv(paths["latents"])
    assert list(lat.columns[:len(LATENT_COLUMNS)]) == list(LATENT_COLUMNS)
    assert lat["hidden"].tolist() == [True, True] + [False] * (len(latents) - 2)
    ts = pd.read_csv(paths["top_samples"])
    assert list(ts.columns) == ["latent", "rank", "sample_id", "activation"]
    for j in latents:
        rows = ts[ts["latent"] == j].sort_values("rank")
        n = min(4, int(top.count[j]))
        assert rows["rank"].tolist() == list(range(n))
        expect_rows = top.rows[j, :n].tolist()
        assert rows["sample_id"].tolist() == [f"img{r}" for r in expect_rows]
        np.testing.assert_allclose(rows["activation"], top.values[j, :n].numpy(), rtol=1e-6)
    assert pd.read_csv(paths["vocabulary"]).to_dict("list") == frame.to_dict("list")
    assert json.loads(paths["pool"].read_text()) == {"kind": "test", "n": 120}
    assert json.loads(paths["diversity"].read_text())["bases"][0]["unique_labels"] == 3
    assert json.loads(paths["ground_truth"].read_text()) == {"overall": 0.5}
