"""The widgets' callbacks, without a browser: thresholds -> table and grid, search -> card."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch

from clipattr_utils import widgets
from clipattr_utils.labeling import hidden_concepts, top_activating
from clipattr_utils.sae.model import TopKSAE


class Images:
    def load_image(self, i):
        return np.full((8, 8, 3), int(i) % 255, dtype=np.uint8)


@pytest.fixture(scope="module")
def world():
    torch.manual_seed(0)
    sae = TopKSAE(16, 40, k=4)
    x = torch.randn(300, 16) * 2
    top = top_activating(x, sae, n=20, progress=False)
    latents = np.flatnonzero(top.count.numpy() >= 5)
    rng = np.random.default_rng(0)
    table = pd.DataFrame({
        "latent": latents, "label": [f"label{j % 7}" for j in latents],
        "alignment": rng.uniform(0, 0.3, len(latents)), "expected_alignment": rng.uniform(0, 0.3, len(latents)),
        "clarity": rng.uniform(0, 1, len(latents)), "polysemanticity": rng.uniform(0, 1, len(latents)),
        "firing_rate": top.firing_rate[latents].numpy(), "top20_mean": top.top20_mean[latents].numpy(),
        "top_labels": [[(f"label{j % 7}", 0.3), (f"other{j % 3}", 0.2)] for j in latents],
    })
    return sae, x, top, table


def test_hidden_concepts_view_matches_the_function_and_draws_its_grid(world):
    _, _, top, table = world
    view = widgets.HiddenConceptsView(table, top, Images(), n_latents=3, n_images=4)
    tau = float(np.median(table["top20_mean"]))
    shown, fig = view.render(tau, 0.15)
    expect = hidden_concepts(table, tau_act=tau, tau_align=0.15)
    assert list(shown["latent"]) == list(expect["latent"]) and len(shown) > 0
    assert (shown["top20_mean"] >= tau - 1e-3).all() and (shown["hidden_alignment"] <= 0.15).all()
    assert len(fig.axes) == min(3, len(shown)) * 4
    first = int(shown["latent"].iloc[0])
    assert fig.axes[0].get_ylabel().startswith(f"{first}\n")
    # Raising tau_act can only remove rows; nothing passes an impossible threshold.
    assert set(view.compute(tau * 1.5, 0.15)["latent"]) <= set(shown["latent"])
    empty, no_fig = view.render(1e9, 0.15)
    assert empty.empty and no_fig is None


def test_hidden_concepts_view_with_relevance_uses_tau_rel(world):
    _, _, top, table = world
    rel = pd.Series(np.arange(top.d_sae, dtype=float), index=pd.RangeIndex(top.d_sae))
    view = widgets.HiddenConceptsView(table, top, Images())
    view.relevance = rel
    shown, _ = view.render(20.0, 1.0)
    assert set(shown["latent"]) == set(table["latent"][table["latent"] >= 20])
    tau, _ = view.default_thresholds()
    assert tau == pytest.approx(np.quantile(rel[table["latent"]].to_numpy(), 0.9))


def test_hidden_concepts_view_static_and_live(world, monkeypatch):
    _, _, top, table = world
    view = widgets.HiddenConceptsView(table, top, Images())
    monkeypatch.setenv(widgets.STATIC_ENV, "1")
    assert widgets.interactive_default() is False
    static = view.show(tau=0.0, tau_align=1.0)  # interactive=None -> static here
    assert isinstance(static, pd.DataFrame) and len(static) == len(table)
    box = view.show(tau=0.0, tau_align=1.0, interactive=True)
    sliders = box.children[0].children
    assert [s.description for s in sliders] == ["τ_act", "τ_align"]
    assert len(view.shown) == len(table)
    sliders[1].value = -1.0  # nothing aligns below -1: the live table empties
    assert view.shown.empty


def test_find_components_by_id_label_and_top_labels(world):
    _, _, _, table = world
    j = int(table["latent"].iloc[2])
    assert list(widgets.find_components(table, j)["latent"]) == [j]
    assert list(widgets.find_components(table, str(j))["latent"]) == [j]
    by_label = widgets.find_components(table, "LABEL3")
    assert len(by_label) and (by_label["label"] == "label3").all()
    assert list(by_label["alignment"]) == sorted(by_label["alignment"], reverse=True)
    by_top = widgets.find_components(table, "other1")
    assert set(by_top["latent"]) == {int(j) for j in table["latent"] if j % 3 == 1}
    assert widgets.find_components(table, "").empty


def test_component_card_and_browser(world, monkeypatch):
    _, _, top, table = world
    j = int(table["latent"].iloc[0])
    rel = pd.DataFrame(np.arange(6 * top.d_sae, dtype=float).reshape(6, top.d_sae),
                       index=["cat", "dog", "car", "bus", "sky", "sea"])
    rel[j] = [0.2, 0.9, -0.5, 0.4, 0.0, 0.7]  # latent j's relevance per class, in no particular order
    card = widgets.component_card(table, top, j, class_relevance=rel, n_images=5)
    valid = [int(r) for r in top.rows[j] if r >= 0][:5]
    assert card.rows == valid and card.activations == pytest.approx(top.values[j, :len(valid)].tolist())
    # the 5 most relevant, most relevant first; the least relevant ("car") is left out
    assert card.relevant_classes == [("dog", 0.9), ("sea", 0.7), ("bus", 0.4), ("cat", 0.2), ("sky", 0.0)]
    assert card.label == table.loc[table["latent"] == j, "label"].iloc[0]
    html = widgets.card_html(card)
    assert f"latent {j}" in html and "most relevant classes" in html
    with pytest.raises(KeyError, match="not in the table"):
        widgets.component_card(table, top, 10**6)
    browser = widgets.ComponentBrowser(table, top, Images(), class_relevance=rel)
    monkeypatch.setenv(widgets.STATIC_ENV, "1")
    assert browser.show([j]) == [j]
    live = browser.show("label", interactive=True)
    text, pick, heat_box = live.children[0].children
    assert len(pick.options) > 0 and browser.shown is not None and heat_box.disabled
    text.value = str(j)
    assert browser.shown.latent == j


def test_component_browser_draws_heatmaps_and_toggles_them(world):
    _, _, top, table = world
    j = int(table["latent"].iloc[0])
    calls = []

    def heat(latent, rows):
        calls.append((latent, list(rows)))
        return torch.ones(len(rows), 4, 4)

    browser = widgets.ComponentBrowser(table, top, Images(), heat=heat, n_images=3)
    card = browser.card(j)
    hot = browser.figure(card).axes[0].get_images()[0].get_array()
    assert calls == [(j, card.rows[:3])]
    live = browser.show(str(j), interactive=True)
    heat_box = live.children[0].children[2]
    assert heat_box.value and not heat_box.disabled
    heat_box.value = False
    assert not browser.show_heat
    plain = browser.figure(card).axes[0].get_images()[0].get_array()
    assert not np.array_equal(np.asarray(hot), np.asarray(plain))
    assert np.array_equal(np.asarray(plain), np.asarray(Images().load_image(card.rows[0])))
