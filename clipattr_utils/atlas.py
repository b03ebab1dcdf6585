"""The latent atlas: static HTML, one card per labelled latent, built from a run folder.

Reads what notebook 02 wrote (``latents.csv``, ``top_samples.csv``, ``pool.json`` and, when
present, ``top_labels.csv`` / ``class_relevance.csv``) and notebook 04's flagged pairs, re-renders
the top images from the pool description (sandbox images are deterministic in their ids; an
ImageNet folder is read when it is still at its recorded path) and writes
``atlas/index.html`` with thumbnails under ``atlas/img/``. No kernel, no server: the page
filters its cards with a few lines of inline JavaScript.
"""

from __future__ import annotations

import hashlib
import html
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .storage import atomic_write, write_text_atomic

N_SHOW = 8  # top images per card
THUMB = 96  # largest thumbnail side in pixels (sandbox images are 64 px and stay as they are)
HEAT_CARDS = 48  # cards (best alignment first) whose images also get a heatmap overlay
HEAT_METHOD = "integrated_gradients"  # benchmarks/RESULTS.md, "Where in the image"


@dataclass
class Pool:
    """A rebuilt image set and its sample-id -> row map, or why there is none."""
    images: Any = None
    rows: dict[str, int] = field(default_factory=dict)
    reason: str = ""


def rebuild_pool(spec: dict, wanted: Iterable[str] | None = None) -> Pool:
    """The image set a ``pool.json`` describes (sandbox worlds, ImageNet-style folders).

    ``wanted``: the sample ids the caller will look up; the id -> row map then holds only those
    (one pass over the pool's ids, not a 1.28 M-entry dict for an ImageNet-train pool)."""
    kind = spec.get("kind")
    try:
        if kind == "sandbox.make_dataset" or "make_dataset" in spec:
            from .labeling.pool import rebuild_sandbox_pool

            images = rebuild_sandbox_pool(spec.get("kwargs", spec.get("make_dataset")))
        elif kind == "ImageNetFolder":
            from .data import ImageNetFolder

            root = Path(spec["root"])
            if not root.is_dir():
                return Pool(reason=f"the image folder {root} recorded in pool.json is not on this machine")
            images = ImageNetFolder(root, max_per_class=spec.get("max_per_class"), every=spec.get("every", 1))
        else:
            return Pool(reason=f"pool.json describes a {kind!r} pool, which the atlas cannot rebuild")
    except Exception as e:  # a report should still come out when images cannot be made
        return Pool(reason=f"the pool could not be rebuilt ({type(e).__name__}: {e})")
    if wanted is None:
        return Pool(images, {images.sample_id(i): i for i in range(len(images))})
    wanted = set(map(str, wanted))
    rows = {}
    for i in range(len(images)):
        sid = images.sample_id(i)
        if sid in wanted:
            rows[sid] = i
    return Pool(images, rows)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _notebook_param(run_dir: Path, stem: str, name: str) -> Any:
    """A parameter the run gave notebook ``stem``: from series.json, else the executed notebook."""
    status = _read_json(run_dir / "series.json")
    for r in (status or {}).get("notebooks", []):
        if r.get("name") == stem:
            return r.get("parameters", {}).get(name)
    path = run_dir / f"{stem}.ipynb"
    if path.is_file():
        meta = json.loads(path.read_text()).get("metadata", {}).get("papermill", {})
        return meta.get("parameters", {}).get(name)
    return None


def _top_labels(folder: Path) -> dict[int, list[tuple[str, float]]]:
    if not (folder / "top_labels.csv").is_file():
        return {}
    t = pd.read_csv(folder / "top_labels.csv", keep_default_na=False).sort_values(["latent", "rank"])
    return {int(j): list(zip(g["label"].astype(str), g["score"].astype(float))) for j, g in t.groupby("latent")}


def _label_kinds(folder: Path) -> dict[str, str]:
    """label -> the attribute it names ("background", "text", ...), from ``vocabulary.csv``."""
    if not (folder / "vocabulary.csv").is_file():
        return {}
    v = pd.read_csv(folder / "vocabulary.csv", keep_default_na=False)
    if "attribute" not in v.columns:
        return {}
    return {str(lab): str(a) for lab, a in zip(v["label"], v["attribute"]) if str(a)}


def _relevant_classes(folder: Path, n: int = 3) -> dict[int, list[tuple[str, float]]]:
    """latent -> its ``n`` classes with the largest positive mean relevance (notebook 02's
    ``class_relevance.csv``: ``latent, rank, class, relevance``)."""
    path = folder / "class_relevance.csv"
    if not path.is_file():
        return {}
    t = pd.read_csv(path, keep_default_na=False).sort_values(["latent", "rank"])
    t = t[(t["rank"] < n) & (t["relevance"] > 0)]
    return {int(j): list(zip(g["class"].astype(str), g["relevance"].astype(float))) for j, g in t.groupby("latent")}


def _flagged(run_dir: Path) -> tuple[dict[int, list[dict]], str]:
    """latent -> notebook 04's flagged pairs for it (with the sandbox's planted type when the
    mining pool can be rebuilt), and a note when 04's SAE is not 02's."""
    folder = run_dir / "04_failure_mining"
    if not (folder / "flagged.csv").is_file():
        return {}, "notebook 04's flagged.csv is not in this run"
    sae02, sae04 = _notebook_param(run_dir, "02_labeling", "sae_dir"), _notebook_param(run_dir, "04_failure_mining",
                                                                                        "sae_dir")
    if not sae02 or sae02 != sae04:
        return {}, "notebooks 02 and 04 explained different SAEs in this run, so 04's flags are not shown"
    flagged = pd.read_csv(folder / "flagged.csv", keep_default_na=False)
    types: dict[tuple[str, int], str] = {}
    samples_path, pool_spec = folder / "flagged_samples.csv", _read_json(folder / "pool.json")
    if samples_path.is_file() and pool_spec and "make_dataset" in pool_spec:
        try:
            from .mining import sandbox_classes
            from .mining.ground_truth import pair_truth

            samples = pd.read_csv(samples_path)
            pool = rebuild_pool(pool_spec, wanted=samples["sample_id"])
            if pool.images is not None:
                samples["row"] = samples["sample_id"].map(pool.rows)
                truth = pair_truth(flagged, samples.dropna(subset=["row"]).astype({"row": int}),
                                   pool.images.attributes, sandbox_classes())
                types = {(c, int(j)): t for c, j, t in zip(truth["class"], truth["latent"], truth["true_type"])}
        except Exception:  # the type is a courtesy; the flag itself is shown regardless
            types = {}
    out: dict[int, list[dict]] = {}
    for r in flagged.to_dict("records"):
        key = (str(r["class"]), int(r["latent"]))
        out.setdefault(key[1], []).append({"class": key[0], "mean_z": float(r["mean_z"]), "type": types.get(key, "")})
    return out, ""


def _thumbnail(pool: Pool, sample_id: str, img_dir: Path) -> str | None:
    """Relative path of the sample's thumbnail (written once), or None."""
    row = pool.rows.get(sample_id)
    if row is None:
        return None
    name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in sample_id) + ".png"
    target = img_dir / name
    if not target.is_file():
        image = pool.images.load_image(row).convert("RGB")
        image.thumbnail((THUMB, THUMB))
        atomic_write(target, lambda tmp: image.save(tmp, format="PNG", compress_level=1))
    return f"img/{name}"


def _heat_source(run_dir: Path, folder: Path, pool: Pool, method: str) -> tuple[Any, str]:
    """``(latent, rows) -> maps`` for the run's CLIP and SAE (notebook 02's ``sae_dir``, else the
    SAE it trained into ``02_labeling/sae``), or None and why not (shown on the page)."""
    if pool.images is None:
        return None, ""
    sae_dir = _notebook_param(run_dir, "02_labeling", "sae_dir")
    sae_dir = Path(sae_dir) if sae_dir else folder / "sae"
    if not (sae_dir / "cfg.json").is_file():
        return None, f"Heatmaps are not shown: the SAE notebook 02 labelled is not at {sae_dir}."
    model = _notebook_param(run_dir, "02_labeling", "model_name") or "sandbox"
    pretrained = _notebook_param(run_dir, "02_labeling", "pretrained")
    try:
        from .models import load_clip
        from .sae.model import TopKSAE
        from .spatial import heat_source

        clip = load_clip(model, pretrained)
        sae = TopKSAE.load(sae_dir, d_in=clip.head.d_pre).eval()
        # The overlays' file names carry what drew them, so a rerun with another SAE, model or
        # method never shows the old ones.
        digest = hashlib.sha256(json.dumps([clip.identity, method]).encode())
        for f in sorted(sae_dir.iterdir()):
            if f.is_file():
                digest.update(f.name.encode() + f.read_bytes())
        source = heat_source(clip, sae, pool.images, method)
        source.key = digest.hexdigest()[:10]
        return source, ""
    except Exception as e:  # the atlas still comes out, with the reason on the page
        return None, f"Heatmaps are not shown: {model} or the SAE at {sae_dir} could not be loaded ({type(e).__name__}: {e})."


def _heat_thumbnails(pool: Pool, heat: Any, latent: int, sample_ids: list[str], img_dir: Path) -> dict[str, str]:
    """sample id -> relative path of its heat-overlay thumbnail for ``latent`` (written once)."""
    from .spatial import overlay

    ids = [sid for sid in sample_ids if sid in pool.rows]
    names = {sid: "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in sid) + f"-heat-{heat.key}-L{latent}.png"
             for sid in ids}
    todo = [sid for sid in ids if not (img_dir / names[sid]).is_file()]
    if todo:
        maps = heat(latent, [pool.rows[sid] for sid in todo])
        for sid, m in zip(todo, maps):
            image = overlay(pool.images.load_image(pool.rows[sid]).convert("RGB"), m)
            image.thumbnail((THUMB, THUMB))
            atomic_write(img_dir / names[sid], lambda tmp, im=image: im.save(tmp, format="PNG", compress_level=1))
    return {sid: f"img/{names[sid]}" for sid in ids}


def _fmt(v: Any, digits: int = 3) -> str:
    try:
        return f"{float(v):.{digits}f}"
    except (TypeError, ValueError):
        return html.escape(str(v))


def write_atlas(run_dir: Path, n_show: int = N_SHOW, heat_cards: int = HEAT_CARDS,
                heat_method: str | None = HEAT_METHOD) -> Path | None:
    """Build ``run_dir/atlas/index.html`` from notebook 02's outputs; None when there are none.

    The first ``heat_cards`` cards (best alignment first) also get each image with the
    latent's input heatmap over it (`spatial.latent_heatmap` with ``heat_method``; None: no
    heatmaps); a checkbox on the page switches between the overlays and the plain images."""
    run_dir = Path(run_dir)
    folder = run_dir / "02_labeling"
    if not (folder / "latents.csv").is_file():
        return None
    latents = pd.read_csv(folder / "latents.csv", keep_default_na=False)
    top = pd.read_csv(folder / "top_samples.csv") if (folder / "top_samples.csv").is_file() else pd.DataFrame(
        columns=["latent", "rank", "sample_id", "activation"])
    top = top.sort_values(["latent", "rank"])
    by_latent = {int(j): g.head(n_show) for j, g in top.groupby("latent")}
    spec = _read_json(folder / "pool.json")
    shown = pd.concat(list(by_latent.values()))["sample_id"] if by_latent else []
    pool = rebuild_pool(spec, wanted=shown) if spec else Pool(reason="notebook 02 wrote no pool.json")
    top_labels = _top_labels(folder)
    kinds = _label_kinds(folder)
    relevant = _relevant_classes(folder)
    flags, flag_note = _flagged(run_dir)
    atlas = run_dir / "atlas"
    img_dir = atlas / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    notes = []
    if pool.images is None:
        notes.append(f"Cards show no images: {pool.reason}.")
    if not top_labels:
        notes.append("This run recorded only each latent's best label (no top_labels.csv).")
    if not relevant:
        notes.append("No class_relevance.csv in this run: the classes listed are those of the top images, "
                     "not the classes the latent is most relevant for.")
    if flag_note:
        notes.append(flag_note[0].upper() + flag_note[1:] + ".")
    heat, heat_note = _heat_source(run_dir, folder, pool, heat_method) if heat_method and heat_cards > 0 else (None, "")
    if heat_note:
        notes.append(heat_note)
    cards = []
    order = latents.sort_values("alignment", ascending=False, kind="stable")
    for card, r in enumerate(order.to_dict("records")):
        j = int(r["latent"])
        rows = by_latent.get(j)
        imgs, classes_seen = [], []
        if rows is not None:
            heat_src = (_heat_thumbnails(pool, heat, j, [str(sid) for sid in rows["sample_id"]], img_dir)
                        if heat is not None and card < heat_cards else {})
            for sid, act in zip(rows["sample_id"], rows["activation"]):
                src = _thumbnail(pool, str(sid), img_dir) if pool.images is not None else None
                if src:
                    hot = heat_src.get(str(sid))
                    extra = f' class="heat" data-plain="{src}" data-heat="{hot}"' if hot else ""
                    imgs.append(f'<img loading="lazy" src="{hot or src}"{extra} alt="{html.escape(str(sid))}" '
                                f'title="{html.escape(str(sid))}: activation {float(act):.2f}">')
                row = pool.rows.get(str(sid))
                if row is not None and getattr(pool.images, "classnames", None):
                    label = pool.images.label(row)
                    if label >= 0:
                        classes_seen.append(pool.images.classnames[label])
        labels = top_labels.get(j) or [(str(r["label"]), float(r["alignment"]))]
        label_text = " ".join(lab for lab, _ in labels)
        if j in relevant:
            cls = ", ".join(f"{html.escape(c)} ({v:.3f})" for c, v in relevant[j]) or "none positive"
            cls_title = "most relevant classes"
        elif classes_seen:
            counts = pd.Series(classes_seen).value_counts()
            cls = ", ".join(f"{html.escape(c)} {n}/{len(classes_seen)}" for c, n in counts.head(3).items())
            cls_title = "classes of the top images"
        else:
            cls, cls_title = "unknown", "classes"
        flag_html = ""
        if j in flags:
            flag_html = "<div class='flag'>flagged (04): " + "; ".join(
                f"class {html.escape(f['class'])}, mean z {f['mean_z']:.1f}"
                + (f", type <b>{html.escape(f['type'])}</b>" if f["type"] else "") for f in flags[j]) + "</div>"
        hidden = str(r.get("hidden")).lower() == "true"
        badges = ("<span class='badge'>hidden concept</span>" if hidden else "") + (
            "<span class='badge flagb'>flagged</span>" if j in flags else "")
        try:
            weak = not float(r["alignment"]) > 0
        except (TypeError, ValueError):
            weak = False
        if weak:  # Eq. 2 score <= 0: the label fits no better than the empty prompt
            badges = "<span class='badge weak' title='fits no better than the empty prompt (Eq. 2 score <= 0)'>" \
                     "weak label</span>" + badges
        eq2 = str(r.get("eq2_label", "") or "")
        if eq2 and eq2 != str(r["label"]):  # the label guard (labeling.support) set Eq. 2's argmax aside
            badges += (f"<span class='badge weak' title='Eq. 2 alone gives {html.escape(eq2, quote=True)}, but the "
                       f"labeler calls fewer than half of the top images that'>not {html.escape(eq2)}</span>")
        kind = kinds.get(str(r["label"]), "")
        if kind:  # which attribute the label names (vocabulary.csv): object, background, text, ...
            badges = f"<span class='kind'>{html.escape(kind)}</span>" + badges
        label_list = "".join(f"<li>{html.escape(lab)} <span class='s'>{s:.3f}</span></li>" for lab, s in labels)
        search = html.escape(f"{j} {r['label']} {label_text}{' ' + kind if kind else ''}".lower(), quote=True)
        cards.append(
            f"<div class='card' data-search=\"{search}\" data-hidden='{int(hidden)}' data-flagged='{int(j in flags)}'>"
            f"<h3>latent {j}: {html.escape(str(r['label']))} {badges}</h3>"
            f"<div class='imgs'>{''.join(imgs) or '<i>no images</i>'}</div>"
            f"<ol class='labels'>{label_list}</ol>"
            f"<table><tr><td>alignment</td><td>{_fmt(r['alignment'])}</td>"
            f"<td>clarity</td><td>{_fmt(r['clarity'])}</td></tr>"
            f"<tr><td>firing rate</td><td>{_fmt(r['firing_rate'], 4)}</td><td>top-20 mean act.</td>"
            f"<td>{_fmt(r.get('top20_mean', r.get('top5_mean')), 2)}</td></tr>"
            f"<tr><td>polysemanticity</td><td>{_fmt(r['polysemanticity'])}</td><td>count</td>"
            f"<td>{html.escape(str(r.get('count', '')))}</td></tr></table>"
            f"<div class='cls'>{cls_title}: {cls}</div>{flag_html}</div>")
    note_html = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in notes)
    n_heat = min(heat_cards, len(cards)) if heat is not None else 0
    toggle = (f"<label><input type='checkbox' id='heat' checked> heatmaps ({html.escape(str(heat_method))}, "
              f"first {n_heat} cards: where each latent's activation comes from)</label>") if n_heat else ""
    page = _PAGE.format(n=len(cards), run=html.escape(run_dir.name), notes=note_html, cards="\n".join(cards),
                        toggle=toggle)
    return write_text_atomic(atlas / "index.html", page)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Latent atlas: {run}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
#q {{ font-size: 1.1em; padding: .3em; width: 22em; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 12px; }}
.card {{ border: 1px solid #ccc; border-radius: 6px; padding: 8px; width: 430px; }}
.card h3 {{ margin: 0 0 6px; font-size: 1em; }}
.imgs img {{ width: 48px; height: 48px; image-rendering: pixelated; margin: 1px; }}
.weak {{ background: #eee; color: #777; }}
.kind {{ background: #e8eef8; color: #234; border-radius: 3px; padding: 0 .4em; font-size: .75em;
         font-weight: normal; margin-left: .4em; }}
.labels {{ margin: 4px 0; padding-left: 1.4em; font-size: .9em; }}
.s {{ color: #777; }}
table {{ font-size: .85em; border-collapse: collapse; }} td {{ padding: 1px 8px 1px 0; }}
.cls, .flag {{ font-size: .85em; margin-top: 4px; }} .flag {{ color: #a40; }}
.badge {{ font-size: .7em; background: #ddf; border-radius: 3px; padding: 1px 4px; margin-left: 4px; }}
.flagb {{ background: #fdd; }} .note {{ color: #a40; }}
</style></head><body>
<h1>Latent atlas <small>({run}, {n} labelled latents)</small></h1>
<p><a href="../index.html">back to the run</a> &middot; best alignment first; hover an image for its activation.</p>
{notes}
<p><input id="q" type="search" placeholder="filter by label or latent id, e.g. water" autofocus>
<label><input type="checkbox" id="hid"> hidden concepts only</label>
<label><input type="checkbox" id="flg"> flagged only</label> {toggle} <span id="count"></span></p>
<div class="grid" id="grid">
{cards}
</div>
<script>
const q = document.getElementById('q'), hid = document.getElementById('hid'), flg = document.getElementById('flg');
const cards = Array.from(document.querySelectorAll('.card'));
function filter() {{
  const words = q.value.toLowerCase().split(/\\s+/).filter(Boolean);
  let shown = 0;
  for (const c of cards) {{
    const ok = words.every(w => c.dataset.search.includes(w)) && (!hid.checked || c.dataset.hidden === '1')
      && (!flg.checked || c.dataset.flagged === '1');
    c.style.display = ok ? '' : 'none';
    shown += ok;
  }}
  document.getElementById('count').textContent = shown + ' of ' + cards.length + ' shown';
}}
for (const el of [q, hid, flg]) el.addEventListener('input', filter);
filter();
const heat = document.getElementById('heat');
if (heat) heat.addEventListener('input', () => {{
  for (const im of document.querySelectorAll('img.heat')) im.src = heat.checked ? im.dataset.heat : im.dataset.plain;
}});
</script></body></html>
"""

__all__ = ["write_atlas", "rebuild_pool"]
