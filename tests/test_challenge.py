"""The hidden-shortcut challenge: drawn from the seed, confounded as drawn, sealed, and
investigated without the answer or any attribute table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from _notebooks import LABELER_WEIGHTS, SANDBOX_WEIGHTS, require_weights
from clipattr_utils import challenge as ch
from clipattr_utils.challenge import spec
from clipattr_utils.challenge.images import carries, confounded_training_set, with_value
from clipattr_utils.sandbox.world import CLASSNAMES, SandboxImageSet, make_dataset, ObjectRecipe


def test_draw_is_a_function_of_the_seed_with_one_control_in_five():
    draws = [spec.draw(s) for s in range(600)]
    assert draws[:50] == [spec.draw(s) for s in range(50)]
    controls = sum(d is None for d in draws)
    assert 0.15 < controls / len(draws) < 0.25
    planted = [d for d in draws if d is not None]
    assert {d.kind for d in planted} == set(spec.DRAWN_VALUES)
    assert all(d.value in spec.DRAWN_VALUES[d.kind] for d in planted)
    assert all(spec.STRENGTH_RANGE[0] <= d.strength <= spec.STRENGTH_RANGE[1] for d in planted)
    assert all(not (d.kind == "companion" and d.target == "fire") for d in planted)
    assert len({d.target for d in planted}) == len(CLASSNAMES)


def test_the_sealed_answer_round_trips_and_names_nothing():
    shortcut = spec.Shortcut("boat", "background", "water", 0.9, 0.02)
    sealed = spec.seal(7, shortcut)
    assert spec.unseal(7, sealed) == shortcut
    assert spec.unseal(7, spec.seal(7, None)) is None
    for word in ("boat", "water", "background", "0.9"):
        assert word not in sealed
    with pytest.raises(Exception):
        assert spec.unseal(8, sealed) == shortcut   # another seed's key does not open it


@pytest.mark.parametrize("bad", [dict(target="ship"), dict(kind="size"), dict(value="lava"),
                                 dict(strength=0.01), dict(kind="companion", value="fire", target="fire")])
def test_impossible_shortcuts_are_refused(bad):
    args = {"target": "boat", "kind": "background", "value": "water", "strength": 0.9, "other_rate": 0.02, **bad}
    with pytest.raises(ValueError):
        spec.Shortcut(**args)


@pytest.mark.parametrize("shortcut", [spec.Shortcut("cup", "background", "water", 0.9, 0.04),
                                      spec.Shortcut("star", "word", "taxi", 0.85, 0.02),
                                      spec.Shortcut("tree", "colour", "purple", 0.95, 0.03),
                                      spec.Shortcut("car", "tint", "present", 0.8, 0.05),
                                      spec.Shortcut("boat", "companion", "fire", 0.9, 0.02)])
def test_the_training_set_carries_the_shortcut_at_the_drawn_rates(shortcut):
    n = 100
    train = confounded_training_set(shortcut, n, seed=3)
    a = train.attributes
    has = carries(a, shortcut.kind, shortcut.value)
    target = (a["object"] == shortcut.target).to_numpy()
    assert target.sum() == n and len(a) == n * len(CLASSNAMES)
    assert has[target].mean() == pytest.approx(round(shortcut.strength * n) / n)
    others = ~target & (a["object"] != "fire").to_numpy() if shortcut.kind == "companion" else ~target
    assert has[others].mean() == pytest.approx(round(shortcut.other_rate * n) / n)
    assert a["sample_id"].is_unique


def test_a_control_training_set_ties_no_attribute_to_a_class():
    a = confounded_training_set(None, 200, seed=4).attributes
    for kind, values in spec.DRAWN_VALUES.items():
        for value in values:
            by_class = pd.Series(carries(a, kind, value)).groupby(a["object"].to_numpy()).mean()
            assert by_class.max() < 0.5, (kind, value, by_class.to_dict())


@pytest.mark.parametrize("kind,value", [("background", "grass"), ("colour", "white"), ("word", "menu"),
                                        ("tint", "present"), ("companion", "fire"), ("watermark", "present")])
def test_counterfactual_edits_add_exactly_the_attribute(kind, value):
    images = make_dataset(40, "test", 5, recipe=ObjectRecipe.independent(), objects=["car", "boat", "tree"])
    edited = with_value(images, kind, value)
    a, b = images.attributes, edited.attributes
    assert carries(b, kind, value).all()
    untouched = ["object", "sprite", "render_seed"] + [c for c in ("background", "colour", "watermark") if c != kind]
    pd.testing.assert_frame_equal(a[untouched], b[untouched])
    if kind == "word":   # the sign sits in a band; the sprite leaves it
        top = (b["text_y"] < 0.5).to_numpy()
        cy = b["cy"].to_numpy()
        assert np.all(np.where(top, cy >= 0.5 - 1e-9, cy <= 0.5 + 1e-9))
        kept = a["text"].to_numpy() != ""   # an existing sign keeps its band
        assert np.array_equal(top[kept], (a["text_y"] < 0.5).to_numpy()[kept])


@pytest.mark.parametrize("kind,value", [("background", "water"), ("colour", "red"), ("word", "menu"),
                                        ("tint", "present"), ("watermark", "present")])
def test_taking_a_value_away_removes_it_where_it_is_and_nothing_else(kind, value):
    images = make_dataset(40, "test", 6, recipe=ObjectRecipe.independent(), objects=["car", "boat", "tree"])
    half = SandboxImageSet.concat([with_value(images.subset(np.arange(20)), kind, value), images.subset(np.arange(20, 40))])
    had = carries(half.attributes, kind, value)
    assert had[:20].all()
    away = ch.PublicImages(half).take_away(kind, value)
    assert len(away) == (1 if kind in ("tint", "watermark") else 2)
    for edited in away:
        b = edited._images.attributes
        assert not carries(b, kind, value).any()
        assert b["sample_id"].tolist() == half.attributes["sample_id"].tolist()
        if kind not in ("tint", "watermark"):   # images without the value stay as they were
            pd.testing.assert_frame_equal(b[~had].reset_index(drop=True), half.attributes[~had].reset_index(drop=True))
    assert ch.images.removal_edits("companion", "fire") == []
    with pytest.raises(ValueError, match="not an attribute value"):
        ch.images.removal_edits("background", "lava")


def test_public_images_hide_the_attribute_table():
    public = ch.PublicImages(make_dataset(12, "test", 0))
    with pytest.raises(AttributeError, match="attribute table"):
        public.attributes
    assert len(public.subset([0, 1])) == 2 and public.label(0) == make_dataset(12, "test", 0).label(0)


def test_concat_refuses_duplicate_ids_and_keys_its_parts():
    a, b = make_dataset(5, "test", 0), make_dataset(5, "test", 1)
    both = SandboxImageSet.concat([a, b])
    assert len(both) == 10 and both.fingerprint() != SandboxImageSet.concat([b, a]).fingerprint()
    with pytest.raises(ValueError, match="duplicate sample ids"):
        SandboxImageSet.concat([a, a])


# ----------------------------------------------------------------------------- with the models

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    require_weights(SANDBOX_WEIGHTS)
    require_weights(LABELER_WEIGHTS)
    import clipattr_utils as ca

    torch.set_num_threads(max(1, torch.get_num_threads()))
    cache = tmp_path_factory.mktemp("challenge-cache")
    clip = ca.load_clip("sandbox")
    labeler = ca.load_clip("sandbox-labeler", role="labeler")
    sae = ch.detective_sae(clip, cache, n_train=3000, epochs=10)
    return {"clip": clip, "labeler": labeler, "sae": sae, "cache": cache}


def test_mining_a_readout_equal_to_the_prompts_gives_the_prompts_answer(world):
    """Eq. 8 with a Readout w = t/|t|, bias 0, on unit embeddings is the cosine with t: the
    generalised mining must flag exactly what mining with the prompts flags."""
    import clipattr_utils as ca
    from clipattr_utils import mining as mi

    clip, sae = world["clip"], world["sae"]
    pool, _ = mi.sandbox_mining_pool(600, 0)
    x = ca.extract(clip, pool, world["cache"], progress=False).read()
    classes = mi.sandbox_classes()
    labels, ref = mi.class_labels(pool.attributes, classes), mi.sandbox_reference_labels(pool.attributes, classes)
    text = clip.encode_text(mi.prompts(classes, "a photo of a {}"))
    readout = ca.attribution.make_readout(torch.nn.functional.normalize(text, dim=-1), 0.0, normalize=True)
    cfg = mi.MiningConfig(min_count=3)
    results, means = [], []
    for target in (text, readout):
        expected = mi.expected_relevance(x, ref, sae, clip.head, target, progress=False)
        scores = mi.class_outputs(x, clip.head, text)
        expected = mi.with_output_stats(expected, scores, ref)
        results.append(mi.mine(x, labels, pool.attributes["sample_id"], sae, clip.head, target, expected,
                               [c.name for c in classes], config=cfg, scores=scores, progress=False))
        means.append((expected.mean, expected.std, expected.output_mean))
    assert torch.allclose(means[0][0], means[1][0], atol=1e-9) and torch.allclose(means[0][1], means[1][1], atol=1e-9)
    assert np.allclose(means[0][2], means[1][2])
    assert len(results[0].flagged) > 0
    pd.testing.assert_frame_equal(results[0].flagged, results[1].flagged, rtol=1e-6)


@pytest.fixture(scope="module")
def small_challenge(world):
    return ch.make(0, clip=world["clip"], cache_dir=world["cache"], n_per_class=60, n_test=960)


def test_a_challenge_shows_its_public_face_only(small_challenge):
    c = small_challenge
    answer = ch.reveal(c)
    text = repr(c) + str(c.public())
    assert answer is not None and answer.target not in str(c.public()["train_accuracy"])
    assert ch.describe(answer).split("'")[1] == answer.target
    for secret in (f"'{answer.target}' relies", answer.value if answer.kind != "companion" else "small fire"):
        assert secret not in text
    assert 0.3 < c.test_accuracy <= 1.0 and c.train_accuracy >= c.test_accuracy - 0.1
    assert ch.check(c, answer.target, answer.kind, answer.value)
    assert not ch.check(c, None) and not ch.check(c, "no shortcut")
    wrong = next(n for n in c.classnames if n != answer.target)
    assert not ch.check(c, wrong, answer.kind, answer.value)


def test_the_detective_reads_neither_the_answer_nor_the_attribute_table(world, small_challenge, monkeypatch):
    """Swapping the sealed answer changes nothing the detective returns; and it runs with
    every attribute table and the unsealing locked away."""
    kw = dict(clip=world["clip"], labeler=world["labeler"], cache_dir=world["cache"],
              config=ch.DetectiveConfig(max_checks=6, n_edit=80))
    first = ch.investigate(small_challenge, world["sae"], **kw)
    swapped = ch.with_sealed(small_challenge, spec.Shortcut("house", "colour", "black", 0.9, 0.01))
    assert ch.reveal(swapped) != ch.reveal(small_challenge)

    def locked(*_a, **_k):
        raise AssertionError("the detective read something it must not")

    monkeypatch.setattr(SandboxImageSet, "attributes", property(locked))
    monkeypatch.setattr(spec, "unseal", locked)
    monkeypatch.setattr(ch.game, "unseal", locked)
    second = ch.investigate(swapped, world["sae"], **kw)
    assert first.verdict == second.verdict
    pd.testing.assert_frame_equal(first.suspects, second.suspects)
    assert len(first.suspects) > 0


def test_scoring_grades_against_the_planted_truth(world, small_challenge):
    """A verdict naming the true class with a latent whose top images carry the value counts;
    the same verdict on another class, or a found shortcut on a control, does not."""
    import clipattr_utils as ca

    c, sae = small_challenge, world["sae"]
    answer = ch.reveal(c)
    x = ca.extract(world["clip"], c.test._images, world["cache"], progress=False).read()
    enc = sae.encode(x)
    has = carries(c.test._images.attributes, answer.kind, answer.value)
    # the latent whose top-20 images carry the value most often: found by brute force here
    best, best_share = None, -1.0
    for j in torch.unique(enc.indices).tolist():
        a = (enc.values * (enc.indices == j)).sum(1).detach().numpy()
        top = np.argsort(-a, kind="stable")[:20]
        share = has[top[a[top] > 0]].mean() if (a[top] > 0).any() else 0
        if share > best_share:
            best, best_share = j, share
    assert best_share >= 0.8
    make = lambda cls, latent, verdict: ch.Investigation(pd.DataFrame(), verdict, None if cls is None else {
        "class": cls, "latent": latent, "kind": answer.kind, "value": answer.value, "effect": 0.3}, pd.DataFrame(), 0.0)
    assert ch.score(c, make(answer.target, best, "x"), x, sae)["correct"]
    other = next(n for n in c.classnames if n != answer.target)
    assert not ch.score(c, make(other, best, "x"), x, sae)["correct"]
    assert not ch.score(c, make(None, None, ch.NO_SHORTCUT_FOUND), x, sae)["correct"]
    control = ch.with_sealed(c, None)
    assert ch.score(control, make(None, None, ch.NO_SHORTCUT_FOUND), x, sae)["correct"]
    assert not ch.score(control, make(answer.target, best, "x"), x, sae)["correct"]


def test_the_generator_draws_exactly_the_values_the_clip_encodes(world):
    """`spec.DRAWN_VALUES` is the encodability measurement, not a hand-picked list: every value
    a linear probe reads off the embedding with AUROC >= 0.9, and no other (the watermark and
    five backgrounds are not encoded by the sandbox CLIP)."""
    table = ch.encodability(world["clip"], world["cache"])
    measured = {k: tuple(g.loc[g["encoded"], "value"]) for k, g in table.groupby("kind", sort=False)}
    measured = {k: v for k, v in measured.items() if v}
    assert measured == spec.DRAWN_VALUES, table.round(3).to_string()
    assert table.set_index(["kind", "value"]).loc[("watermark", "present"), "auroc"] < 0.6


def test_the_benchmark_reads_seed_ranges_and_counts_per_kind():
    from clipattr_utils.challenge.__main__ import kind_table, parse_seeds

    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7] and parse_seeds("1000-1001") == [1000, 1001]
    with pytest.raises(SystemExit, match="cannot read"):
        parse_seeds("0-x")
    rows = pd.DataFrame({"control": [False, False, False, True, True], "kind": ["tint", "tint", "word", None, None],
                         "correct": [True, False, True, True, False]})
    table = kind_table(rows).set_index("kind")
    assert table.loc["tint", "found / passed"] == 1 and table.loc["tint", "missed / false alarm"] == 1
    assert table.loc["all planted", "challenges"] == 3 and table.loc["all planted", "found / passed"] == 2
    assert table.loc["control", "found / passed"] == 1 and table.loc["control", "missed / false alarm"] == 1


def test_regrading_rows_equals_running_with_that_threshold():
    """`regrade`: a planted challenge counts when its top suspect was right and reached min_z,
    a control when its top suspect did not; what the detective would say at that threshold."""
    from clipattr_utils.challenge.__main__ import regrade

    rows = pd.DataFrame({"control": [False, False, False, "True", True],
                         "top_right": [True, True, False, False, "False"],
                         "top_z": [8.0, 6.0, 20.0, 6.5, 7.5], "correct": [False] * 5})
    assert regrade(rows, 7.0)["correct"].tolist() == [True, False, False, True, False]
    assert regrade(rows, 5.0)["correct"].tolist() == [True, True, False, False, False]
    with pytest.raises(SystemExit, match="lack"):
        regrade(rows.drop(columns="top_z"), 7.0)


def test_the_benchmark_refuses_to_mix_rows_of_another_setting(tmp_path, capsys):
    """Rows written with one ``n_bootstrap`` are not extended with another (that would be one
    table of two detectives); rows without the column ran with 16 refits, the default before it
    was 32. With every seed done, the same setting only grades (no model loaded)."""
    from clipattr_utils.challenge.__main__ import main

    out = tmp_path / "rows.csv"
    pd.DataFrame({"seed": [0], "control": [True], "kind": [None], "correct": [True], "seconds": [1.0],
                  "top_z": [3.0], "top_right": [False]}).to_csv(out, index=False)
    with pytest.raises(SystemExit, match=r"n_bootstrap \[16\], not 32: give another --out"):
        main(["--seeds", "0", "--out", str(out), "--n-bootstrap", "32"])
    with pytest.raises(SystemExit, match=r"n_bootstrap \[16\], not 32"):
        main(["--seeds", "0", "--out", str(out)])   # the default is 32 now
    assert main(["--seeds", "0", "--out", str(out), "--n-bootstrap", "16"]) == 0
    assert "1 challenges" in capsys.readouterr().out
    # begun without the column, extended with it: the empty cells are the old 16 refits too
    pd.DataFrame({"seed": [0, 1], "control": [True, True], "kind": [None, None], "correct": [True, True],
                  "seconds": [1.0, 1.0], "top_z": [3.0, 3.0], "top_right": [False, False],
                  "n_bootstrap": [None, 16]}).to_csv(out, index=False)
    with pytest.raises(SystemExit, match=r"n_bootstrap \[16\], not 32"):
        main(["--seeds", "0-1", "--out", str(out)])
    assert main(["--seeds", "0-1", "--out", str(out), "--n-bootstrap", "16"]) == 0


def test_the_ablation_share_estimates_how_pure_a_latent_is(world):
    """`ablation_shares` reads no attribute table, only what taking a value away does to each
    latent's top images; against the planted truth it must track the share of those images
    that carry the value (the scoring's purity), and never exceed it (taking a value away
    from an image without it changes nothing)."""
    import clipattr_utils as ca
    from clipattr_utils.challenge.detective import _dense, ablation_shares

    clip, sae = world["clip"], world["sae"]
    pool = make_dataset(960, "test", 77, recipe=ObjectRecipe.independent())
    x = ca.extract(clip, pool, world["cache"], progress=False).read()
    acts = _dense(sae, x)
    for kind, value in (("background", "water"), ("colour", "red"), ("word", "menu"), ("tint", "present")):
        has = carries(pool.attributes, kind, value)
        purity = {}
        for j in torch.nonzero((acts > 0).sum(0) >= 20).flatten().tolist():
            top = torch.argsort(acts[:, j], descending=True, stable=True)[:20].numpy()
            purity[j] = float(has[top].mean())
        ranked = sorted(purity, key=lambda j: -purity[j])
        js = ranked[:10] + ranked[-5:]
        shares = ablation_shares(sae, clip, ch.PublicImages(pool), acts, js, kind, value, world["cache"])
        p, a = np.array([purity[j] for j in js]), np.array([shares[j] for j in js])
        assert np.all(a <= p + 1e-9), (kind, list(zip(p, a)))
        assert purity[js[0]] >= 0.7 and shares[js[0]] >= 0.5, (kind, purity[js[0]], shares[js[0]])
        assert np.corrcoef(p, a)[0, 1] > 0.8, (kind, list(zip(p, a)))
    assert ablation_shares(sae, clip, ch.PublicImages(pool), acts, js, "companion", "fire") == {}
