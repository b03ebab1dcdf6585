"""Notebook 03 runs headless with tiny parameters and writes results that an independent
brute-force computation reproduces."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _notebooks import SANDBOX_WEIGHTS, require_weights, run_notebook




def _brute_deletion(x_n, sae, head, t, latents):
    """y after removing each listed latent, from a dense activation vector through the head."""
    with torch.no_grad():
        idx, vals = sae.encode(x_n[None])
        dense = torch.zeros(sae.d_sae).scatter(0, idx[0], vals[0])
        eps = x_n - (dense @ sae.W_dec + sae.b_dec)
        ys = []
        for s in range(len(latents) + 1):
            if s:
                dense[latents[s - 1]] = 0.0
            z = torch.nn.functional.layer_norm(dense @ sae.W_dec + sae.b_dec + eps, (head.d_pre,), head.gamma,
                                               head.beta, head.eps) @ head.proj
            ys.append(float(torch.nn.functional.cosine_similarity(z, t, dim=0)))
    return np.array(ys)


@pytest.mark.slow
def test_notebook_03_runs_with_tiny_parameters_from_the_repo_root(tmp_path):
    require_weights(SANDBOX_WEIGHTS)
    from safetensors.numpy import load_file

    import clipattr_utils as ca

    out = tmp_path / "out"
    params = dict(n_per_class=3, n_train=600, sae_d_sae=256, sae_k=16, sae_epochs=3, steps=5, n_random_ref=20,
                  ig_steps=4, seed=3, cache_dir=str(tmp_path / "cache"), out_dir=str(out))
    run_notebook("03_faithfulness", tmp_path, **params)

    summary = json.loads((out / "summary.json").read_text())
    n_cls = summary["n_classes"]
    assert summary["n_images"] == 3 * n_cls and n_cls >= 3 and summary["seed"] == 3
    auc = summary["auc"]
    assert len(auc) == 4 * 8  # seven methods plus the firing-frequency order
    assert all(np.isfinite(r["auc"]) and r["sem"] > 0 and r["subset_size"] == summary["n_images"] // 9 for r in auc)
    assert [r["experiment"] for r in summary["ordering"]] == ["deletion_local", "insertion_local"]
    assert {r["experiment"] for r in summary["versus_random"]} == {"deletion_local", "deletion_global",
                                                                   "deletion_random", "insertion_local"}
    # The paper form differs from the exact one only through beta and the LayerNorm eps.
    assert summary["eq31_error"]["median_rel_error_beta0_eps0"] < 1e-4
    assert (out / "faithfulness.png").stat().st_size > 10_000
    assert (out / "example_latents.png").stat().st_size > 5_000

    # Independent check of the written curves: rebuild the evaluated images' class tokens
    # and the SAE the notebook saved, and recompute curves from the saved orders by brute force.
    clip = ca.load_clip("sandbox")
    sae = ca.TopKSAE.load(out / "sae", d_in=clip.head.d_pre)
    pool = ca.sandbox.make_dataset(4 * 3 * n_cls, "test", 3)
    eval_set = pool.subset(ca.faithfulness.balanced_indices(pool.labels(), 3, classes=range(n_cls)))
    x = ca.extract(clip, eval_set, tmp_path / "cache", progress=False).read()
    text = clip.encode_text([f"a photo of a {c}" for c in eval_set.classnames])
    curves = load_file(str(out / "curves.safetensors"))
    labels = curves["labels"]
    for e in ("deletion_local", "deletion_global", "deletion_random"):
        for m in ("Act x Grad", "Random", "Firing frequency"):
            order, cur = curves[f"order/{e}/{m}"], curves[f"{e}/{m}"]
            assert cur.shape == (3 * n_cls, 6)
            for n in (0, len(x) - 1):
                np.testing.assert_allclose(cur[n], _brute_deletion(x[n], sae, clip.head, text[labels[n]],
                                                                    order[n].tolist()), atol=2e-5)
    # The exact attribution removes more of the output than a random order of the same latents.
    d = {r["method"]: r["auc"] for r in auc if r["experiment"] == "deletion_local"}
    assert d["Act x Grad"] < d["Random"]
