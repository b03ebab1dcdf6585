"""Notebook 05 (the melanoma case) runs headless with tiny parameters from the repository
root; its summary is recomputed independently (Eq. 32 by numpy on the rendered pixels, the
probe by sklearn, the red latent's top images from the saved SAE)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _notebooks import DERM_WEIGHTS, require_weights, run_notebook


@pytest.mark.slow
def test_notebook_05_runs_with_tiny_parameters_from_the_repo_root(tmp_path):
    require_weights(DERM_WEIGHTS)
    from sklearn.linear_model import LogisticRegression

    import clipattr_utils as ca
    from clipattr_utils import melanoma as mel

    out, cache = tmp_path / "out", tmp_path / "cache"
    params = dict(n_pool=240, n_sae_train=240, sae_d_sae=64, sae_k=4, sae_epochs=3, n_seeds=2, alphas=[0.0, 0.5, 2.0],
                  n_gallery=3, seed=3, device="cpu", cache_dir=str(cache), out_dir=str(out))
    run_notebook("05_melanoma_case", tmp_path, **params)

    summary = json.loads((out / "summary.json").read_text())
    pool_kwargs = json.loads((out / "pool.json").read_text())
    # the investigation splits the reliance along / across u (robust probe at the largest alpha)
    rel = summary["investigation"]["reliance"]
    assert [r["probe"] for r in rel] == ["standard", "robust"] and rel[1]["alpha"] == 2.0
    for key in ("red_latent", "red_latent_rank", "red_latent_top_samples", "accuracy", "clean_cost"):
        assert key in summary, key
    assert set(pool_kwargs) == {"pool", "pool_tinted", "pool_untinted", "sae_train"} and pool_kwargs["pool"]["seed"] == 3
    assert pool_kwargs["pool_tinted"] == {**pool_kwargs["pool"], "tint": 0.35}
    assert pool_kwargs["pool_untinted"] == {**pool_kwargs["pool"], "tint": 0.0}
    assert pool_kwargs["pool"]["recipe"] == {"tint_rate_nevus": 0.2, "tint_rate_melanoma": 0.05}
    for png in ("accuracy.png", "alpha_sweep.png", "relevance.png", "red_latent_top.png", "red_latent_hue_heat.png",
                "latents_benign.png"):
        assert (out / png).stat().st_size > 5_000, png
    assert summary["seeds"] == [3, 4] and isinstance(summary["clean_cost"], float)
    assert 1 <= summary["red_latent_rank"] <= 3  # among the candidates (the default n_candidates)
    recs = summary["accuracy"]
    assert {(r["probe"], r["condition"], r["class"]) for r in recs} >= {
        (p, c, k) for p in ("standard", "robust") for c in ("none", "more_red", "less_red")
        for k in ("benign", "melanoma")}
    assert all({"probe", "condition", "class", "mean", "sem"} <= set(r) and 0 <= r["mean"] <= 100 for r in recs)

    # Independently: rebuild the pool from pool.json, Eq. 32 by numpy on its pixels.
    pool = ca.sandbox.make_lesion_dataset(**pool_kwargs["pool"])
    assert summary["model"] == "sandbox-derm"
    clip = ca.load_clip("sandbox-derm")
    x = ca.extract(clip, pool, cache, progress=False)
    assert x.ids == [pool.sample_id(i) for i in range(len(pool))]
    pixels = pool.render_array()
    more = pixels.copy()
    more[..., 0] = np.round(np.clip(pixels[..., 0] / 255.0 * 2.0, 0, 1) * 255).astype(np.uint8)
    x_more = ca.extract(clip, ca.TensorImageSet(list(more), pool.labels(), name="more-red-by-hand"), cache,
                        progress=False).read()

    def unit(t):
        with torch.no_grad():
            return torch.nn.functional.normalize(clip.head(t), dim=-1).double().numpy()

    y = np.asarray(pool.labels())

    def standard_more_red(z, z_more):  # per seed: melanoma accuracy clean and under more red
        out = []
        for s in summary["seeds"]:
            split = mel.split_indices(y, s)
            clf = LogisticRegression(C=1.0, max_iter=5000).fit(z[split.train], y[split.train])
            mel_test = split.test[y[split.test] == 1]
            out.append((100 * np.mean(clf.predict(z[mel_test]) == 1), 100 * np.mean(clf.predict(z_more[mel_test]) == 1)))
        return np.array(out)

    accs = standard_more_red(unit(x.read()), unit(x_more))
    rec = next(r for r in recs if (r["probe"], r["condition"], r["class"]) == ("standard", "more_red", "melanoma"))
    assert rec["mean"] == pytest.approx(accs[:, 1].mean(), abs=1e-6)

    # The control: the same pool without its tint, Eq. 32 by numpy again.
    untinted = ca.sandbox.make_lesion_dataset(**pool_kwargs["pool_untinted"])
    u_pix = untinted.render_array()
    clean_rows = (pool.attributes["tint"] == 0).to_numpy()  # the same lesions: untinted images identical
    assert (untinted.attributes["tint"] == 0).all() and untinted.labels() == pool.labels()
    assert clean_rows.any() and (u_pix[clean_rows] == pixels[clean_rows]).all()
    u_more = u_pix.copy()
    u_more[..., 0] = np.round(np.clip(u_pix[..., 0] / 255.0 * 2.0, 0, 1) * 255).astype(np.uint8)
    xu = ca.extract(clip, ca.TensorImageSet(list(u_pix), pool.labels(), name="untinted-by-hand"), cache, progress=False)
    xu_more = ca.extract(clip, ca.TensorImageSet(list(u_more), pool.labels(), name="untinted-more-red-by-hand"), cache,
                         progress=False)
    ctrl = standard_more_red(unit(xu.read()), unit(xu_more.read()))
    assert summary["shortcut_control"]["drop"] == pytest.approx(float((ctrl[:, 0] - ctrl[:, 1]).mean()), abs=1e-6)

    # The red latent's top images from the SAE the notebook saved, and their tint.
    sae = ca.TopKSAE.load(out / "sae", d_in=clip.head.d_pre)
    with torch.no_grad():
        idx, vals = sae.encode(x.read())
    act = (vals * (idx == summary["red_latent"])).sum(1).numpy()
    top = summary["red_latent_top_samples"]
    assert 0 < len(top) <= 20 and len(set(top)) == len(top)
    ranked = np.argsort(-act, kind="stable")[:len(top)]
    assert act[ranked[-1]] > 0
    assert set(top) == {x.ids[i] for i in ranked} or np.allclose(sorted(act[[x.ids.index(t) for t in top]]),
                                                                  sorted(act[ranked]))
    tint = pool.attributes.set_index("sample_id")["tint"]
    assert summary["red_latent_purity"] == pytest.approx(float(np.mean([tint[t] > 0 for t in top])))
