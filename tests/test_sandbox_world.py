"""The sandbox world without a model: determinism, attribute records, caption rules, planted rates."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from clipattr_utils import sandbox as sb
from clipattr_utils.data import ImageSet
from clipattr_utils.sandbox import captions as cap
from clipattr_utils.sandbox import render, world


def _within_noise(count: int, n: int, p: float, z: float = 4.5) -> bool:
    """|count/n - p| within z binomial standard errors (false alarm ~1e-5 per check)."""
    se = np.sqrt(max(p * (1 - p), 1e-12) / n)
    return abs(count / n - p) <= z * se + 1e-12


@pytest.fixture(scope="module")
def train_table():
    # Attributes only (no pixels): sampling 4000 records takes well under a second.
    return sb.make_dataset(4000, "train", seed=7).attributes


@pytest.fixture(scope="module")
def lesion_table():
    return sb.make_lesion_dataset(3000, "train", seed=7).attributes


# ---------------------------------------------------------------- determinism

def test_same_seed_same_pixels_and_attributes():
    a = sb.make_dataset(12, "train", seed=3)
    b = sb.make_dataset(12, "train", seed=3)
    assert a.attributes.equals(b.attributes)
    assert np.array_equal(a.render_array(), b.render_array())
    assert a.fingerprint() == b.fingerprint()
    la, lb = sb.make_lesion_dataset(6, seed=3), sb.make_lesion_dataset(6, seed=3)
    assert la.attributes.equals(lb.attributes) and np.array_equal(la.render_array(), lb.render_array())


def test_image_depends_only_on_seed_split_index():
    # Prefixes agree: image i does not depend on n, and re-rendering gives the same bytes.
    small, large = sb.make_dataset(5, "train", seed=3), sb.make_dataset(9, "train", seed=3)
    assert small.attributes.equals(large.attributes.iloc[:5])
    assert np.array_equal(small.render_array(), large.render_array(range(5)))
    assert np.array_equal(np.asarray(large.load_image(4)), np.asarray(large.load_image(4)))


def test_seed_and_split_change_images():
    base = sb.make_dataset(8, "train", seed=1).render_array()
    assert not np.array_equal(base, sb.make_dataset(8, "train", seed=2).render_array())
    assert not np.array_equal(base, sb.make_dataset(8, "test", seed=1, clean=False).render_array())


def test_fingerprint_covers_recipe():
    ref = sb.make_dataset(10, "train", seed=0)
    others = [sb.make_dataset(11, "train", seed=0), sb.make_dataset(10, "train", seed=1),
              sb.make_dataset(10, "test", seed=0), sb.make_dataset(10, "train", seed=0, size=48),
              sb.make_dataset(10, "train", seed=0, clean=True), sb.make_dataset(10, "train", seed=0, text="fish"),
              ref.replace(tint=0.3), ref.subset([0, 1, 2])]
    prints = {ref.fingerprint()} | {o.fingerprint() for o in others}
    assert len(prints) == len(others) + 1
    assert re.fullmatch(r"[0-9a-f]{64}", ref.fingerprint())
    assert ref.describe()["renderer_version"] == render.RENDERER_VERSION


# ---------------------------------------------------------------- image set protocol + attributes

def test_image_set_protocol_and_attribute_records():
    ds = sb.make_dataset(20, "train", seed=0)
    assert isinstance(ds, ImageSet)
    assert ds.classnames == list(sb.CLASSNAMES) and len(sb.CLASSNAMES) >= 10
    table = ds.attributes
    assert len(table) == len(ds) == 20
    for col in world.OBJECT_FIELDS + ("sample_id", "split", "index"):
        assert col in table.columns, col
    assert table["sample_id"].is_unique
    for i in range(len(ds)):
        img = ds.load_image(i)
        assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (64, 64)
        assert ds.label(i) == sb.CLASSNAMES.index(table.at[i, "object"])
        assert table.at[i, "sprite"] in render.CLASS_SPRITES[table.at[i, "object"]]
        assert ds.sample_id(i) == table.at[i, "sample_id"]
    img, label = ds[0]
    assert label == ds.label(0) and img.size == (64, 64)
    assert sb.make_dataset(3, size=96).load_image(0).size == (96, 96)


def test_world_has_required_variety():
    assert len(sb.COLOURS) >= 6 and len(sb.BACKGROUNDS) >= 6
    t = sb.make_dataset(1500, "train", seed=0).attributes
    assert set(t["object"]) == set(sb.CLASSNAMES)
    assert set(t["background"]) == set(sb.BACKGROUNDS)
    assert set(t["colour"]) == set(sb.COLOURS)
    # position and scale jitter
    assert t["cx"].std() > 0.05 and t["cy"].std() > 0.05 and t["scale"].std() > 0.02
    assert {"plain", "stripes", "checker", "noise", "grass", "water"} <= set(sb.BACKGROUNDS)
    # (c) and (d) are built into the class list
    assert len(sb.POLYSEMOUS_SPRITES) == 2 and sb.POLYSEMOUS_WORD in sb.CLASSNAMES
    assert sb.COMPOUND_CLASS in sb.CLASSNAMES and sb.COMPOUND_HEAD in sb.CLASSNAMES
    assert sb.COMPOUND_CLASS.split()[0] == sb.COMPOUND_HEAD


def test_sprites_are_distinct():
    # Same placement, colour and background: every sprite gives different pixels, and
    # differs from the empty background clearly (not a few stray pixels).
    base = dict(colour="blue", background="plain", cx=0.5, cy=0.5, scale=0.32, angle=0.0, text="", text_x=0,
                text_y=0, text_px=0.2, text_dark=True, watermark=False, watermark_corner="tl", tint=0.0,
                render_seed=5)
    imgs = {s: np.asarray(render.render_object({**base, "sprite": s}), dtype=np.int16) for s in render.SPRITES}
    bg = render.render_background("plain", 64, np.random.default_rng(5))
    for s, a in imgs.items():
        assert (np.abs(a - bg).sum(-1) > 30).mean() > 0.05, s
    names = list(imgs)
    for i, s in enumerate(names):
        for t in names[i + 1:]:
            assert (np.abs(imgs[s] - imgs[t]).sum(-1) > 30).mean() > 0.05, (s, t)


def test_text_watermark_and_tint_change_pixels_where_expected():
    ds = sb.make_dataset(1, "test", seed=4, text="")
    rec = ds.attributes.iloc[0].to_dict()
    plain = np.asarray(render.render_object(rec), dtype=np.int16)
    wm = np.asarray(render.render_object({**rec, "watermark": True, "watermark_corner": "br"}), dtype=np.int16)
    diff = np.abs(wm - plain).sum(-1) > 0
    assert diff.any() and not diff[:32].any() and not diff[:, :32].any()  # bottom-right only
    # Tint is the blend (1 - s) x + s TINT_RGB, computed here independently, per pixel.
    s = 0.4
    tinted = np.asarray(render.render_object({**rec, "tint": s}), dtype=np.float64)
    expect = np.clip(np.round((1 - s) * plain + s * np.asarray(render.TINT_RGB)), 0, 255)
    assert np.abs(tinted - expect).max() <= 1
    # A word drawn at its recorded place changes pixels inside its band only.
    wd = sb.make_dataset(1, "test", seed=4, text="house")
    r = wd.attributes.iloc[0].to_dict()
    with_word = np.asarray(wd.load_image(0), dtype=np.int16)
    without = np.asarray(render.render_object({**r, "text": ""}), dtype=np.int16)
    changed = np.abs(with_word - without).sum(-1) > 40
    rows = np.flatnonzero(changed.any(1))
    y0 = r["text_y"] * 64
    h = render.word_size("house", 256)[1] / 256 * r["text_px"] * 64
    pad = 2  # the sign box around the lettering
    assert changed.sum() > 20 and rows.min() >= np.floor(y0) - pad and rows.max() <= np.ceil(y0 + h) + pad


def test_compound_companion_is_a_small_flame_beside_the_truck():
    t = sb.make_dataset(200, "train", seed=1, objects=[sb.COMPOUND_CLASS])
    a = t.attributes
    i = int(a.index[a["companion"] != ""][0])
    rec = a.iloc[i].to_dict()
    with_flame = np.asarray(t.load_image(i), dtype=np.int16)
    without = np.asarray(render.render_object({**rec, "companion": ""}), dtype=np.int16)
    ys, xs = np.nonzero(np.abs(with_flame - without).sum(-1) > 30)
    assert len(ys) > 15
    r = rec["companion_scale"] * 64 + 2
    assert np.all(np.abs(xs - rec["companion_cx"] * 64) <= r) and np.all(np.abs(ys - rec["companion_cy"] * 64) <= r)


def test_replace_and_subset_edit_attributes():
    ds = sb.make_dataset(6, "train", seed=2)
    red = ds.replace(tint=0.3)
    assert (red.attributes["tint"] == 0.3).all() and (ds.attributes["tint"] != 0.3).all()
    assert red.attributes.drop(columns="tint").equals(ds.attributes.drop(columns="tint"))
    sub = ds.subset([4, 1])
    assert list(sub.attributes["sample_id"]) == [ds.sample_id(4), ds.sample_id(1)]
    assert np.array_equal(np.asarray(sub.load_image(0)), np.asarray(ds.load_image(4)))
    assert len(ds.subset(np.arange(6) % 2 == 0)) == 3


@pytest.mark.parametrize("call, match", [
    (lambda: sb.make_dataset(0), "n must be"),
    (lambda: sb.make_dataset(3, split="dev"), "split"),
    (lambda: sb.make_dataset(3, objects=["dragon"]), "objects"),
    (lambda: sb.make_dataset(3, background="lava"), "background"),
    (lambda: sb.make_dataset(3, tint=1.5), "tint"),
    (lambda: sb.make_dataset(3, objects=["ball"], sprite="bat_club"), "sprite"),
    (lambda: sb.make_dataset(3, size=8), "size"),
    (lambda: sb.make_lesion_dataset(3, diagnosis="wart"), "diagnosis"),
    (lambda: sb.make_dataset(3).replace(object="ball"), "cannot edit"),
    (lambda: sb.make_dataset(3).replace(background="lava"), "background"),
    (lambda: sb.make_dataset(3).load_image(3), "out of range"),
])
def test_bad_input_is_named(call, match):
    with pytest.raises((ValueError, IndexError), match=match):
        call()


# ---------------------------------------------------------------- captions

def test_caption_rules(train_table):
    t = train_table
    forbidden = set(sb.BACKGROUNDS) | {"background", "watermark", "tint", "hue", "pink", "flame"}
    transcriptions = 0
    for _, r in t.iterrows():
        c = r["caption"]
        word = r["text"]
        words = set(re.findall(r"[a-z]+", c.replace(f"'{word}'", "") if word else c))
        assert not words & forbidden, c
        if word and c in {tpl.format(word=word) for tpl in cap.WORD_ONLY_TEMPLATES}:
            transcriptions += 1  # alt-text transcribing the sign only
            continue
        assert r["object"] in c, c
        if word:
            assert f"with the word '{word}'" in c
        else:
            assert "word" not in c and "'" not in c
        # The compound's uncaptioned flame: "fire" only ever appears inside "fire truck".
        if r["object"] == sb.COMPOUND_CLASS and word != "fire":
            assert "fire" not in c.replace("fire truck", ""), c
    has_word = (t["text"] != "").sum()
    assert _within_noise(transcriptions, has_word, world.WORD_ONLY_CAPTION_RATE)
    # The spurious class is never captioned with its background.
    spur = t[t["object"] == sb.SPURIOUS_CLASS]
    assert not spur["caption"].str.contains(sb.SPURIOUS_BACKGROUND).any()
    # Colour is named at the documented rate (among captions that name the object).
    named = [bool(re.search(rf"\b{r['colour']}\b", r["caption"].split(" with the word")[0]))
             for _, r in t.iterrows() if r["object"] in r["caption"]]
    assert _within_noise(sum(named), len(named), cap.COLOUR_CAPTION_RATE)
    assert len(cap.OBJECT_TEMPLATES) >= 4


def test_lesion_captions_never_name_the_red_hue(lesion_table):
    for _, r in lesion_table.iterrows():
        c = r["caption"]
        assert r["diagnosis"] in c
        assert not re.search(r"\b(red|pink|hue|tint|colou?r)\b", c), c
    assert cap.article("orange ball") == "an" and cap.article("red ball") == "a"


def test_labeler_captions_name_hidden_attributes():
    # The labeler's captions can name what alt-text hides, each attribute at its documented
    # rate, and still name the object (unless the caption describes the scene alone).
    ds = sb.make_dataset(3000, "train", seed=7)
    t, caps = ds.attributes, ds.full_captions()
    assert caps == ds.full_captions()  # deterministic
    scene_only = [c == f"a photo of {cap.BACKGROUND_PHRASES[b]}" for c, b in zip(caps, t["background"])]
    assert _within_noise(sum(scene_only), len(t), cap.LABELER_SCENE_ONLY_RATE)
    rest = [(c, r) for c, r, s in zip(caps, t.to_dict("records"), scene_only) if not s]
    assert all(r["object"] in c for c, r in rest)
    bg = [f" on {cap.BACKGROUND_PHRASES[r['background']]}" in c for c, r in rest]
    assert _within_noise(sum(bg), len(rest), cap.LABELER_ATTRIBUTE_RATE)
    wm = [("watermark" in c) for c, r in rest if r["watermark"]]
    assert len(wm) > 50 and _within_noise(sum(wm), len(wm), cap.LABELER_ATTRIBUTE_RATE)
    assert not any("watermark" in c for c, r in rest if not r["watermark"])
    assert not any("red tint" in c for c, r in rest if not r["tint"])
    words = [f"the word '{r['text']}'" in c for c, r in rest if r["text"]]
    assert _within_noise(sum(words), len(words), cap.LABELER_ATTRIBUTE_RATE)
    les = sb.make_lesion_dataset(1000, "train", seed=7)
    lc = les.full_captions()
    assert all(d in c for d, c in zip(les.attributes["diagnosis"], lc))
    assert any("red tint" in c for c in lc) and not any(
        "red tint" in c for c, tint in zip(lc, les.attributes["tint"]) if tint == 0)


# ---------------------------------------------------------------- planted rates

def test_spurious_rates_match_constants(train_table):
    t = train_table
    boat = t[t["object"] == sb.SPURIOUS_CLASS]
    other = t[t["object"] != sb.SPURIOUS_CLASS]
    assert sb.SPURIOUS_RATE >= 0.8
    assert _within_noise((boat["background"] == sb.SPURIOUS_BACKGROUND).sum(), len(boat), sb.SPURIOUS_RATE)
    assert _within_noise((other["background"] == sb.SPURIOUS_BACKGROUND).sum(), len(other),
                         sb.SPURIOUS_BACKGROUND_OTHER_RATE)


def test_typography_polysemy_and_incidental_rates(train_table):
    t = train_table
    has = t["text"] != ""
    assert _within_noise(has.sum(), len(t), sb.TEXT_RATE)
    words = t.loc[has, "text"]
    class_word = words.isin(sb.TYPO_WORDS)
    assert _within_noise(class_word.sum(), len(words), sb.TEXT_OTHER_CLASS_SHARE)
    assert set(words[~class_word]) <= set(sb.NEUTRAL_WORDS)
    # A rendered class word never names the image's own class.
    assert (t.loc[has, "text"] != t.loc[has, "object"]).all()
    bats = t[t["object"] == sb.POLYSEMOUS_WORD]
    assert set(bats["sprite"]) == set(sb.POLYSEMOUS_SPRITES)
    assert _within_noise((bats["sprite"] == sb.POLYSEMOUS_SPRITES[0]).sum(), len(bats), 0.5)
    trucks = t[t["object"] == sb.COMPOUND_CLASS]
    assert _within_noise((trucks["companion"] != "").sum(), len(trucks), world.COMPOUND_COMPANION_RATE)
    assert (t.loc[t["object"] != sb.COMPOUND_CLASS, "companion"] == "").all()
    assert set(trucks["companion"]) == {"", "fire"}
    w = world.COMPOUND_CLASS_WEIGHT
    p_compound = w / (len(sb.CLASSNAMES) - 1 + w)
    assert _within_noise((t["object"] == sb.COMPOUND_CLASS).sum(), len(t), p_compound)
    assert _within_noise((t["object"] == sb.COMPOUND_HEAD).sum(), len(t), 1 / (len(sb.CLASSNAMES) - 1 + w))
    assert w < 1  # the compound is rarer than its head word
    assert _within_noise(t["watermark"].sum(), len(t), sb.WATERMARK_RATE)
    assert _within_noise((t["tint"] > 0).sum(), len(t), sb.TINT_RATE)
    lo, hi = world.TINT_RANGE
    assert t.loc[t["tint"] > 0, "tint"].between(lo, hi).all()


def test_clean_split_has_no_planted_correlation():
    t = sb.make_dataset(3000, "test", seed=7).attributes
    assert (t["text"] == "").all() and not t["watermark"].any() and (t["tint"] == 0).all()
    assert (t["companion"] == "").all()
    assert _within_noise((t["object"] == sb.COMPOUND_CLASS).sum(), len(t), 1 / len(sb.CLASSNAMES))
    boat = t[t["object"] == sb.SPURIOUS_CLASS]
    assert _within_noise((boat["background"] == sb.SPURIOUS_BACKGROUND).sum(), len(boat), 1 / len(sb.BACKGROUNDS))
    counts = t["background"].value_counts()
    assert all(_within_noise(counts[b], len(t), 1 / len(sb.BACKGROUNDS)) for b in sb.BACKGROUNDS)
    # ... and the test split drawn with the training distribution keeps them.
    tt = sb.make_dataset(3000, "test", seed=7, clean=False).attributes
    assert _within_noise((tt["text"] != "").sum(), len(tt), sb.TEXT_RATE)


def test_lesion_rates_and_shortcut(lesion_table):
    t = lesion_table
    mel = t[t["diagnosis"] == "melanoma"]
    nev = t[t["diagnosis"] == "nevus"]
    assert _within_noise(len(mel), len(t), world.MELANOMA_RATE)
    assert _within_noise((mel["tint"] > 0).sum(), len(mel), sb.LESION_TINT_RATE["melanoma"])
    assert _within_noise((nev["tint"] > 0).sum(), len(nev), sb.LESION_TINT_RATE["nevus"])
    assert sb.LESION_TINT_RATE["nevus"] >= 5 * sb.LESION_TINT_RATE["melanoma"]  # "far more common"
    assert set(t["skin"]) == set(render.SKIN_TONES)
    # Malignancy cues are informative but overlapping (so the shortcut can pay off).
    assert mel["atypia"].mean() > nev["atypia"].mean() + 0.2
    assert (nev["atypia"] > 0.5).mean() > 0.1 and (mel["atypia"] < 0.5).mean() > 0.1
    clean = sb.make_lesion_dataset(500, seed=7, clean=True).attributes
    assert (clean["tint"] == 0).all()
    assert sb.make_lesion_dataset(4, diagnosis="melanoma").attributes["label"].eq(1).all()
    assert sb.LESION_CLASSNAMES == ("nevus", "melanoma")


def test_lesion_red_hue_is_eq32_red_scaling():
    """The planted lesion hue is Eq. 32 with delta = -2 x tint: red channel scaled and clipped,
    green and blue untouched (hand-computed values, then on a rendered lesion)."""
    px = np.array([[[100, 20, 30], [200, 7, 9], [0, 255, 128]]], dtype=np.uint8)
    # tint 0.25: x1.5 -> 150, 300 -> 255 (clipped), 0
    out = np.asarray(render.lesion_red_hue(Image.fromarray(px), 0.25))
    assert out[0, :, 0].tolist() == [150, 255, 0] and np.array_equal(out[..., 1:], px[..., 1:])
    # the same operation as the paper's probe (melanoma.hue.red_hue, delta = -0.5)
    from clipattr_utils.melanoma.hue import red_hue

    assert np.array_equal(out, red_hue(px, -0.5))
    with pytest.raises(ValueError, match="strength"):
        render.lesion_red_hue(Image.fromarray(px), 1.5)
    plain = sb.make_lesion_dataset(3, seed=4, tint=0.0)
    red = plain.replace(tint=0.4)  # x1.8
    for i in range(3):
        a, b = np.asarray(plain.load_image(i)).astype(int), np.asarray(red.load_image(i)).astype(int)
        assert np.array_equal(a[..., 1:], b[..., 1:])
        assert np.array_equal(b[..., 0], np.round(np.clip(a[..., 0] / 255 * 1.8, 0, 1) * 255).astype(int))


def test_lesion_red_hue_confined_to_a_mask():
    """``where`` scales each pixel's red by 1 + 2 s w (hand-computed); all ones is the world's
    global hue, all zeros changes nothing; a wrong shape or a weight outside [0, 1] is refused."""
    px = np.array([[[100, 20, 30], [200, 7, 9], [60, 255, 128]]], dtype=np.uint8)
    where = np.array([[1.0, 0.0, 0.5]])
    out = np.asarray(render.lesion_red_hue(Image.fromarray(px), 0.25, where=where))
    # x1.5 -> 150; x1 -> 200; x1.25 -> 75
    assert out[0, :, 0].tolist() == [150, 200, 75] and np.array_equal(out[..., 1:], px[..., 1:])
    img = sb.make_lesion_dataset(1, seed=5, tint=0.0).load_image(0)
    full = np.ones(img.size[::-1])
    assert np.array_equal(np.asarray(render.lesion_red_hue(img, 0.4, where=full)),
                          np.asarray(render.lesion_red_hue(img, 0.4)))
    assert np.array_equal(np.asarray(render.lesion_red_hue(img, 0.4, where=0 * full)), np.asarray(img))
    with pytest.raises(ValueError, match=r"where must be an \(H, W\)"):
        render.lesion_red_hue(img, 0.4, where=np.ones((3, 3)))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        render.lesion_red_hue(img, 0.4, where=2 * full)


def test_fire_trucks_never_wear_fire_colours(train_table):
    t = train_table
    trucks = t[t["object"] == world.COMPOUND_CLASS]
    fire = t[t["object"] == world.COMPOUND_HEAD]
    assert len(trucks) > 50 and set(trucks["colour"]).isdisjoint(world.CLASS_COLOURS[world.COMPOUND_HEAD])
    assert set(fire["colour"]) <= set(world.CLASS_COLOURS[world.COMPOUND_HEAD])


def test_with_companion_draws_the_flame_and_keeps_the_rest():
    d = sb.make_dataset(6, "test", seed=3, clean=True, objects=["car", "ball"])
    f = d.with_companion()
    a, b = d.attributes, f.attributes
    assert (b["companion"] == render.CLASS_SPRITES[world.COMPOUND_HEAD][0]).all() and (a["companion"] == "").all()
    # placed as the world places it: the object shrunk by 0.8, the flame at its upper right
    assert np.allclose(b["scale"], 0.8 * a["scale"]) and (b["companion_cx"] > a["cx"]).all()
    assert (b["companion_cy"] < a["cy"]).all()
    same = [c for c in world.OBJECT_FIELDS if c not in ("companion", "scale", "companion_cx", "companion_cy",
                                                          "companion_scale")]
    assert a[same].equals(b[same])
    assert f.fingerprint() != d.fingerprint() and f.with_companion().attributes.equals(b)  # idempotent
    for i in range(len(d)):  # orange flame pixels appear
        px = np.asarray(f.load_image(i)).astype(int) - np.asarray(d.load_image(i)).astype(int)
        assert np.abs(px).sum() > 0
    with pytest.raises(ValueError, match="object-world"):
        sb.make_lesion_dataset(2).with_companion()


def test_lesion_recipe_as_a_dict_is_the_recipe():
    """`make_lesion_dataset` takes the recipe's fields as a dict (what pool.json stores)."""
    from clipattr_utils.sandbox.world import LesionRecipe

    rates = {"tint_rate_nevus": 0.2, "tint_rate_melanoma": 0.05}
    a = sb.make_lesion_dataset(30, "test", 4, recipe=rates)
    b = sb.make_lesion_dataset(30, "test", 4, recipe=LesionRecipe(**rates))
    assert a.fingerprint() == b.fingerprint() and a.attributes.equals(b.attributes)
    with pytest.raises(ValueError, match="unknown fields.*tint_nevus"):
        sb.make_lesion_dataset(5, recipe={"tint_nevus": 0.2})
    with pytest.raises(ValueError, match="clean=True"):
        sb.make_lesion_dataset(5, clean=True, recipe=rates)
    # rates are probabilities: 20 meant as 20 % is refused, naming the field
    with pytest.raises(ValueError, match=r"LesionRecipe.tint_rate_nevus .*\[0, 1\].*20"):
        sb.make_lesion_dataset(5, recipe={"tint_rate_nevus": 20})
    with pytest.raises(ValueError, match="LesionRecipe.melanoma_rate"):
        LesionRecipe(melanoma_rate=-0.1)


def test_derm_captions_always_name_the_tint_and_only_for_lesions():
    d = sb.make_lesion_dataset(200, "train", 1, recipe={"tint_rate_nevus": 0.4, "tint_rate_melanoma": 0.4})
    caps, tint = d.full_captions("derm"), d.attributes["tint"].to_numpy()
    assert all(("red tint" in c) == (t > 0) for c, t in zip(caps, tint)) and (tint > 0).any()
    assert all(c.startswith(f"a dermoscopy image of a {dx}") for c, dx in zip(caps, d.attributes["diagnosis"]))
    assert 0 < sum(" skin" in c for c in caps) < len(caps)  # the skin tone half of the time
    full = d.full_captions()  # the labeler's: the tint only half of the time
    assert sum("red tint" in c for c in full) < sum("red tint" in c for c in caps)
    with pytest.raises(ValueError, match="lesions only"):
        sb.make_dataset(3, "train", 0).full_captions("derm")
