"""index.html and the latent atlas, built from a run folder constructed by hand: every
headline number appears as text, figures as <img>, latents as cards with their images."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from clipattr_utils.report import write_index

# Backgrounds independent of the class (the mining pool's recipe), so non-boats stand on water.
POOL = {"n": 80, "split": "val", "seed": 0, "recipe": {"spurious_rate": 0.125, "spurious_background_other_rate": 0.125}}


def _write(path: Path, content) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, pd.DataFrame):
        content.to_csv(path, index=False)
    elif isinstance(content, (bytes, bytearray)):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(json.dumps(content))


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def run_dir(tmp_path):
    from clipattr_utils.labeling.pool import rebuild_sandbox_pool

    run = tmp_path / "20990101-000000-sandbox"
    pool = rebuild_sandbox_pool(POOL)
    att = pool.attributes
    water = att[(att["background"] == "water") & (att["object"] != "boat")]["sample_id"].tolist()[:3]
    assert len(water) == 3, "the test pool needs three non-boat images on water"
    _write(run / "00_sandbox_world" / "sandbox_measurements.json", {"summary": [
        {"mode": "(a) spurious", "measured": "AUROC vs water 0.812 / vs others 0.977", "criterion": "gap",
         "shown": True}]})
    _write(run / "01_sae_training" / "metrics.json", {"held-out": {
        "fvu": 0.0431, "cosine": 0.982, "l0": 32.0, "dead": 17, "dead_frac": 0.0111, "n": 2000}})
    _write(run / "02_labeling" / "latents.csv", pd.DataFrame({
        "latent": [7, 9], "label": ["water", "red car"], "alignment": [0.21, -0.02], "clarity": [0.61, 0.4],
        "polysemanticity": [0.1, 0.2], "firing_rate": [0.0123, 0.02], "mean_activation": [1.0, 2.0],
        "top5_mean": [3.0, 4.0], "hidden": [True, False], "top20_mean": [2.5, 3.5], "count": [55, 66],
        "support": [float("nan"), 0.55], "eq2_label": ["boat", "red car"]}))
    _write(run / "02_labeling" / "top_samples.csv", pd.DataFrame({
        "latent": [7, 7, 7, 9], "rank": [0, 1, 2, 0], "sample_id": water + [pool.sample_id(0)],
        "activation": [5.0, 4.0, 3.0, 2.0]}))
    _write(run / "02_labeling" / "top_labels.csv", pd.DataFrame({
        "latent": [7, 7, 9], "rank": [0, 1, 0], "label": ["water", "blue boat", "red car"],
        "score": [0.21, 0.173, 0.3]}))
    _write(run / "02_labeling" / "vocabulary.csv", pd.DataFrame({
        "label": ["water", "red car", "blue boat"], "attribute": ["background", "colour+object", "colour+object"],
        "value": ["water", "red+car", "blue+boat"]}))
    _write(run / "02_labeling" / "class_relevance.csv", "latent,rank,class,relevance\n7,0,boat,0.125\n9,0,car,0.25\n")
    _write(run / "02_labeling" / "pool.json", {"kind": "sandbox.make_dataset", "kwargs": POOL})
    _write(run / "02_labeling" / "ground_truth.json", {"purity": 0.9, "labels": [
        {"attribute": "object", "n_pure": 116, "share_named": 0.98}]})
    _write(run / "03_faithfulness" / "summary.json", {"n_images": 360, "config": {"n_subsets": 9}, "auc": [
        {"experiment": "deletion_local", "method": "Act x Grad", "auc": 0.6311, "sem": 0.0031},
        {"experiment": "deletion_local", "method": "Random", "auc": 0.701, "sem": 0.002}]})
    _write(run / "03_faithfulness" / "faithfulness.png", _png())
    _write(run / "04_failure_mining" / "ground_truth.json", {"n_flagged": 21, "precision_at_10": 0.8, "recall": {
        "a_spurious": 1.0, "b_typography": 0.0}})
    _write(run / "04_failure_mining" / "flagged.csv", pd.DataFrame({
        "class": ["boat"], "latent": [7], "label": ["water"], "n_samples": [3], "mean_z": [6.23]}))
    _write(run / "04_failure_mining" / "flagged_samples.csv", pd.DataFrame({
        "class": ["boat"] * 3, "latent": [7] * 3, "sample_id": water}))
    _write(run / "04_failure_mining" / "pool.json", {"make_dataset": POOL})
    target = {"alpha": [0.5], "drop_standard": 57.9, "drop_standard_sem": 1.0, "drop_robust": 56.5,
              "drop_robust_sem": 0.7, "cut": 0.024, "clean_cost": 0.1, "met": False}
    _write(run / "05_melanoma_case" / "summary.json", {"red_latent": 69, "red_latent_rank": 1,
                                                        "red_latent_purity": 0.95, "target": target})
    sae = str(run / "01_sae_training" / "sae")
    nbs = [{"number": n[:2], "name": n, "status": "ok", "seconds": 60.0,
            "parameters": {"sae_dir": sae} if n[:2] in ("02", "04") else {}}
           for n in ("00_sandbox_world", "01_sae_training", "02_labeling", "03_faithfulness", "04_failure_mining")]
    nbs.append({"number": "05", "name": "05_melanoma_case", "status": "failed", "seconds": 3.0, "cell": 12,
                "execution_count": 7, "error": "RuntimeError: planted"})
    _write(run / "series.json", {"preset": "sandbox", "seconds": 540.0, "notebooks": nbs})
    for n in nbs:
        _write(run / f"{n['name']}.html", "<html></html>")
    return run


def test_index_shows_every_notebooks_numbers(run_dir):
    index = write_index(run_dir)
    assert index == run_dir / "index.html"
    page = index.read_text()
    text = re.sub(r"<[^>]+>", " ", page)
    for number in ("AUROC vs water 0.812", "0.043", "1.1 %", "116", "0.980", "0.631 ± 0.003", "0.701 ± 0.002",
                   "21 flagged", "precision among the top 10: 0.80", "a_spurious 1.00", "57.9 ± 1.0", "56.5 ± 0.7",
                   "Red latent 69"):
        assert number in text, number
    assert "<img src='03_faithfulness/faithfulness.png'" in page
    assert "href='02_labeling.html'" in page and "href='atlas/index.html'" in page
    assert "failed at cell 12 (In [7]): RuntimeError: planted" in text
    assert "9.0 min" in text


def test_atlas_cards(run_dir):
    write_index(run_dir)
    page = (run_dir / "atlas" / "index.html").read_text()
    cards = re.findall(r"<div class='card'.*?</div></div>", page, flags=re.S)
    assert len(cards) == 2
    water = next(c for c in cards if "latent 7:" in c)
    assert water.count("<img") == 3 and "hidden concept" in water
    for src in re.findall(r'src="([^"]+)"', water):
        assert (run_dir / "atlas" / src).stat().st_size > 100, "thumbnails are files beside the page"
    text = re.sub(r"<[^>]+>", " ", water)
    for fragment in ("blue boat", "0.173", "clarity", "0.610", "0.0123", "most relevant classes: boat (0.125)",
                     "class boat, mean z 6.2", "type  spurious"):
        assert fragment in text, fragment
    assert 'data-search="7 water water blue boat background"' in water
    # Which attribute the label names (vocabulary.csv), and a label that fits no better than
    # the empty prompt (Eq. 2 score <= 0) marked as weak.
    assert "<span class='kind'>background</span>" in water and "weak label" not in water
    car = next(c for c in cards if "latent 9:" in c)
    assert "weak label" in car and "<span class='kind'>colour+object</span>" in car
    # the label guard set Eq. 2's own argmax aside on latent 7 (and not on 9): the card says so
    assert "not boat" in water and "not " not in re.sub(r"<[^>]+>", " ", car).replace("no better", "")
    assert "filter by label" in page and "addEventListener" in page


def test_atlas_without_images_says_so(run_dir):
    _write(run_dir / "02_labeling" / "pool.json", {"kind": "ImageNetFolder", "root": str(run_dir / "missing")})
    (run_dir / "02_labeling" / "class_relevance.csv").unlink()
    write_index(run_dir)
    page = (run_dir / "atlas" / "index.html").read_text()
    assert "Cards show no images" in page and "is not on this machine" in page and "<i>no images</i>" in page
    assert "No class_relevance.csv" in page


def test_index_of_a_partial_run(tmp_path):
    run = tmp_path / "run"
    _write(run / "03_faithfulness" / "summary.json", "{broken")
    page = write_index(run).read_text()
    assert "No headline numbers: JSONDecodeError" in page and "No latent atlas" in page


def test_labeling_outputs_carry_top_labels_and_class_relevance(tmp_path):
    """What notebook 02 writes for the atlas: top-m labels with scores, class relevance."""
    from clipattr_utils.labeling import Vocabulary, top_activating
    from clipattr_utils.labeling.outputs import write_outputs
    from clipattr_utils.sae.model import TopKSAE

    torch.manual_seed(0)
    top = top_activating(torch.randn(50, 8), TopKSAE(8, 12, k=3), n=5, ids=[f"i{i}" for i in range(50)],
                         progress=False)
    table = pd.DataFrame({"latent": [1, 4], "label": ["a", "b"], "alignment": 0.1, "clarity": 0.5,
                          "polysemanticity": 0.2, "firing_rate": 0.1, "mean_activation": 1.0, "top5_mean": 2.0,
                          "top_labels": [[("a", 0.3), ("b", 0.2)], [("b", 0.5)]]})
    vocab = Vocabulary(pd.DataFrame({"label": ["a", "b"], "attribute": "object", "value": ["a", "b"]}),
                       torch.eye(2, 4), torch.ones(4) / 2)
    rel = pd.DataFrame([[0.1, 0.2], [0.3, -0.1]], index=["cat", "dog"], columns=[1, 4])
    paths = write_outputs(tmp_path, table=table, top=top, vocabulary=vocab, pool={}, class_relevance=rel)
    assert pd.read_csv(paths["top_labels"]).values.tolist() == [[1, 0, "a", 0.3], [1, 1, "b", 0.2], [4, 0, "b", 0.5]]
    # long: each latent's positive classes, best first (latent 1: dog 0.3, cat 0.1; latent 4: cat 0.2)
    assert pd.read_csv(paths["class_relevance"]).values.tolist() == [[1, 0, "dog", 0.3], [1, 1, "cat", 0.1],
                                                                     [4, 0, "cat", 0.2]]


def test_atlas_reads_an_imagenet_pool(tmp_path, imagenet_sample):
    """Real photos become thumbnails beside the page, at most THUMB pixels on a side."""
    from PIL import Image

    from clipattr_utils.atlas import THUMB
    from clipattr_utils.data import ImageNetFolder

    pool = ImageNetFolder(imagenet_sample)
    run = tmp_path / "run"
    _write(run / "02_labeling" / "latents.csv", pd.DataFrame({
        "latent": [3], "label": ["tench"], "alignment": [0.2], "clarity": [0.5], "polysemanticity": [0.1],
        "firing_rate": [0.01], "mean_activation": [1.0], "top5_mean": [2.0], "hidden": [False]}))
    _write(run / "02_labeling" / "top_samples.csv", pd.DataFrame({
        "latent": [3, 3], "rank": [0, 1], "sample_id": [pool.sample_id(0), pool.sample_id(1)], "activation": [2, 1]}))
    _write(run / "02_labeling" / "pool.json", {"kind": "ImageNetFolder", "root": str(imagenet_sample),
                                               "max_per_class": None})
    write_index(run)
    page = (run / "atlas" / "index.html").read_text()
    srcs = re.findall(r'src="([^"]+)"', page)
    assert len(srcs) == 2 and "Cards show no images" not in page
    assert max(Image.open(run / "atlas" / srcs[0]).size) <= THUMB
    assert f"classes of the top images: {pool.classnames[pool.label(0)]}" in page


def test_rebuilt_pool_maps_only_the_ids_asked_for(imagenet_sample):
    """Issue 24: the atlas looks up the top images it shows, so its id -> row map holds those
    ids only, not one entry per pool image (1.28 M for an ImageNet-train pool)."""
    from clipattr_utils.atlas import rebuild_pool
    from clipattr_utils.data import ImageNetFolder

    spec = {"kind": "ImageNetFolder", "root": str(imagenet_sample), "max_per_class": None}
    images = ImageNetFolder(imagenet_sample)
    want = [images.sample_id(i) for i in (3, 17, 40)]
    pool = rebuild_pool(spec, wanted=want + ["not/in/the/pool.JPEG"])
    assert pool.rows == {sid: i for sid, i in zip(want, (3, 17, 40))}
    assert len(rebuild_pool(spec).rows) == len(images)


def test_atlas_draws_heatmaps_with_the_runs_sae_and_says_when_it_cannot(run_dir):
    import numpy as np
    from PIL import Image

    from _notebooks import SANDBOX_WEIGHTS, require_weights
    from clipattr_utils.sae.model import TopKSAE

    write_index(run_dir)   # no SAE at the recorded sae_dir: plain images and the reason
    page = (run_dir / "atlas" / "index.html").read_text()
    assert "Heatmaps are not shown: the SAE notebook 02 labelled is not at" in page and "img.heat" in page
    assert "class=\"heat\"" not in page
    require_weights(SANDBOX_WEIGHTS)
    torch.manual_seed(0)
    TopKSAE(96, 64, k=8).save(run_dir / "01_sae_training" / "sae")
    write_index(run_dir)
    page = (run_dir / "atlas" / "index.html").read_text()
    assert "Heatmaps are not shown" not in page and "id='heat' checked" in page
    pairs = re.findall(r'src="([^"]+)" class="heat" data-plain="([^"]+)" data-heat="([^"]+)"', page)
    assert len(pairs) == 4   # every image of both cards
    for src, plain, hot in pairs:
        assert src == hot and hot != plain and "-heat-" in hot
        a = np.asarray(Image.open(run_dir / "atlas" / plain).convert("RGB"))
        b = np.asarray(Image.open(run_dir / "atlas" / hot).convert("RGB"))
        assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).sum() > 0
    from clipattr_utils.atlas import write_atlas

    torch.manual_seed(1)   # another SAE in the same folder: new overlays, never the old files
    TopKSAE(96, 64, k=8).save(run_dir / "01_sae_training" / "sae")
    write_atlas(run_dir)
    again = re.findall(r'data-heat="([^"]+)"', (run_dir / "atlas" / "index.html").read_text())
    assert len(again) == 4 and not set(again) & {hot for _, _, hot in pairs}
    write_atlas(run_dir, heat_cards=1)   # only the best card gets overlays
    assert len(re.findall(r'class="heat"', (run_dir / "atlas" / "index.html").read_text())) == 3
