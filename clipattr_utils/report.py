"""``index.html`` of a run folder: every notebook's headline numbers, figures and status.

``write_index(run_dir)`` reads what the notebooks wrote into their ``NN_name/`` folders (and
``series.json``, the runner's record of failures) and links each section to the notebook's HTML
export; it also (re)builds the latent atlas (:mod:`clipattr_utils.atlas`). It only reads files,
so it can be rerun on any run folder: ``python -m clipattr_utils.report runs/<run>``.
"""

from __future__ import annotations

import html
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from .storage import write_text_atomic

TITLES = {
    "00": "The sandbox world: planted failure modes",
    "01": "SAE training",
    "02": "Labeling latents",
    "03": "Faithfulness (deletion / insertion)",
    "04": "Failure mining",
    "05": "The melanoma case",
    "06": "Find the shortcut (hidden-shortcut challenge)",
}


def _e(v: Any) -> str:
    return html.escape(str(v))


def _num(v: Any, digits: int = 3) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return _e(v)
    return "n/a" if math.isnan(f) else f"{f:.{digits}f}"


def _table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return ""
    columns = columns or list(rows[0])
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{r.get(c, '') if isinstance(r.get(c), _Html) else _e(r.get(c, ''))}</td>"
                                    for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


class _Html(str):
    """Already-escaped cell content."""


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


# One reader per notebook: its out folder -> HTML with the headline numbers (raises when the
# files are missing or unreadable; the section then says so).
def _nb00(d: Path) -> str:
    m = _json(d / "sandbox_measurements.json")
    rows = [{"mode": r["mode"], "measured": r["measured"], "criterion": r["criterion"],
             "shown": "yes" if r.get("shown") else "NO"} for r in m["summary"]]
    return "<p>Planted failure modes as the explained CLIP shows them:</p>" + _table(rows)


def _nb01(d: Path) -> str:
    m = _json(d / "metrics.json")
    rows = [{"features": name, "FVU": _num(v["fvu"]), "cos(x, x_hat)": _num(v["cosine"]), "L0": _num(v["l0"], 1),
             "dead share": f"{100 * v['dead_frac']:.1f} % ({v['dead']})", "samples": v["n"]} for name, v in m.items()]
    return _table(rows)


def _nb02(d: Path) -> str:
    latents = pd.read_csv(d / "latents.csv", keep_default_na=False)
    parts = [f"<p>{len(latents)} labelled latents, {int((latents['hidden'].astype(str) == 'True').sum())} hidden "
             f"concepts. <a href='atlas/index.html'>Open the latent atlas</a>.</p>"]
    gt = _json(d / "ground_truth.json")
    if gt:
        rows = [{"attribute": r["attribute"], "latents >= purity": r["n_pure"],
                 "share labelled with the pure value": _num(r["share_named"])} for r in gt["labels"]]
        parts.append(f"<p>Labeling recovery on the sandbox (latents whose top images are &ge; "
                     f"{_num(gt.get('purity'), 2)} pure in an attribute):</p>" + _table(rows))
    div = _json(d / "diversity.json")
    if div:
        parts.append("<p>Basis diversity:</p>" + _table(
            [{"basis": r["basis"], "components": r["components"], "unique labels": r["unique_labels"],
              "mean clarity": _num(r.get("mean_clarity"))} for r in div["bases"]]))
    return "".join(parts)


def _nb03(d: Path) -> str:
    s = _json(d / "summary.json")
    auc = pd.DataFrame(s["auc"])
    auc["cell"] = [f"{a:.3f} ± {e:.3f}" for a, e in zip(auc["auc"], auc["sem"])]
    table = auc.pivot(index="method", columns="experiment", values="cell")
    table = table.reindex(auc["method"].drop_duplicates())[list(auc["experiment"].drop_duplicates())]
    rows = [{"method": m, **row} for m, row in table.to_dict("index").items()]
    return (f"<p>AUC ± SEM over {s['config']['n_subsets']} subsets, {s['n_images']} images "
            f"(deletion: lower is better; insertion: higher):</p>" + _table(rows))


def _nb04(d: Path) -> str:
    gt = _json(d / "ground_truth.json")
    parts = []
    if gt:
        recall = ", ".join(f"{k} {_num(v, 2)}" for k, v in gt["recall"].items())
        parts.append(f"<p>{gt['n_flagged']} flagged (class, latent) pairs; precision among the top 10: "
                     f"{_num(gt['precision_at_10'], 2)}; recall per planted mode: {recall}.</p>")
    flagged = pd.read_csv(d / "flagged.csv", keep_default_na=False)
    rows = [{"class": r["class"], "latent": r["latent"], "label": r["label"], "mean z": _num(r["mean_z"], 2),
             "distractors": r["n_samples"]} for r in flagged.head(5).to_dict("records")]
    if rows:
        parts.append("<p>Top flagged pairs:</p>" + _table(rows))
    return "".join(parts) or "<p>No flagged pairs.</p>"


def _nb05(d: Path) -> str:
    s = _json(d / "summary.json")
    parts = [f"<p>Red latent {s['red_latent']} (relevance rank {s['red_latent_rank']} for the benign class, "
             f"{100 * s['red_latent_purity']:.0f} % of its top images tinted).</p>"]
    rows = []
    for name, key in (("robust probe, α from the preset", "target"),
                      ("robust probe, α chosen on validation", "target_validation_alpha")):
        t = s.get(key)
        if t:
            rows.append({"probe": name, "α": ", ".join(_num(a, 2) for a in t["alpha"]),
                         "melanoma accuracy drop, standard (points)": f"{_num(t['drop_standard'], 1)} ± "
                                                                      f"{_num(t['drop_standard_sem'], 1)}",
                         "drop, robust (points)": f"{_num(t['drop_robust'], 1)} ± {_num(t['drop_robust_sem'], 1)}",
                         "cut": f"{100 * t['cut']:.0f} %", "clean cost (points)": _num(t["clean_cost"], 2),
                         "goal met": "yes" if t.get("met") else "no"})
    parts.append("<p>Robustness to added red hue (mean over seeds):</p>" + _table(rows))
    return "".join(parts)


def _nb06(d: Path) -> str:
    ch = _json(d / "challenge.json") or {}
    v = _json(d / "verdict.json")
    parts = [f"<p>Challenge seed {_e(ch.get('seed', '?'))}: classifier test accuracy "
             f"{_num(ch.get('test_accuracy'), 3)}.</p>"]
    if v:
        parts.append(f"<p>Detective: {_e(v['verdict'])} ({'right' if v['correct'] else 'wrong'}); "
                     f"answer: {_e(v['answer'])}.</p>")
    suspects = d / "suspects.csv"
    if suspects.is_file():
        rows = pd.read_csv(suspects, keep_default_na=False).head(5).to_dict("records")
        if rows:
            parts.append("<p>Top suspects:</p>" + _table([{k: (_num(x, 3) if k == "score" else x) for k, x in r.items()}
                                                           for r in rows]))
    return "".join(parts)


READERS: dict[str, Callable[[Path], str]] = {"00": _nb00, "01": _nb01, "02": _nb02, "03": _nb03, "04": _nb04,
                                             "05": _nb05, "06": _nb06}


def _status(run_dir: Path) -> dict[str, dict]:
    data = _json(run_dir / "series.json") or {}
    return {r["name"]: r for r in data.get("notebooks", [])}


def _figures(run_dir: Path, stem: str) -> list[Path]:
    folder = run_dir / stem
    return sorted(folder.glob("*.png")) if folder.is_dir() else []


def write_index(run_dir: Path) -> Path:
    """(Re)build ``run_dir/index.html`` and the latent atlas from a run folder; returns the index path."""
    from .atlas import write_atlas

    run_dir = Path(run_dir)
    status = _status(run_dir)
    stems = sorted({p.stem for p in run_dir.glob("[0-9][0-9]_*.ipynb")} | set(status)
                   | {p.name for p in run_dir.glob("[0-9][0-9]_*") if p.is_dir()})
    try:
        atlas = write_atlas(run_dir)
        atlas_note = "" if atlas else "no labeling results (notebook 02) in this run"
    except Exception as e:  # the index must still come out
        atlas, atlas_note = None, f"the atlas could not be built: {type(e).__name__}: {e}"
    summary_rows, sections = [], []
    for stem in stems:
        number = stem[:2]
        st = status.get(stem, {})
        state = st.get("status", "ok" if (run_dir / f"{stem}.ipynb").is_file() else "not run")
        link = f"{stem}.html" if (run_dir / f"{stem}.html").is_file() else f"{stem}.ipynb"
        where = ""
        if state == "failed":
            cell = f" at cell {st['cell']} (In [{st.get('execution_count')}])" if st.get("cell") else ""
            where = f"failed{cell}: {st.get('error', '')}"
        elif state == "skipped":
            where = st.get("error", "skipped")
        summary_rows.append({"notebook": _Html(f"<a href='#nb{number}'>{_e(stem)}</a>"),
                             "status": _Html(f"<span class='{_e(state)}'>{_e(state)}</span>"),
                             "minutes": _num(st["seconds"] / 60, 1) if st.get("seconds") else "",
                             "note": where})
        try:
            body = READERS[number](run_dir / stem) if number in READERS else ""
        except Exception as e:
            body = f"<p class='failed'>No headline numbers: {_e(type(e).__name__)}: {_e(e)}</p>"
        if where:
            body = f"<p class='failed'>{_e(where)}</p>" + body
        figs = "".join(f"<a href='{_e(p.relative_to(run_dir))}'><img src='{_e(p.relative_to(run_dir))}' "
                       f"alt='{_e(p.name)}' title='{_e(p.name)}'></a>" for p in _figures(run_dir, stem))
        inline = run_dir / "figures" / stem
        n_inline = len(list(inline.glob("*.png"))) if inline.is_dir() else 0
        more = f" &middot; <a href='figures/{_e(stem)}/'>{n_inline} inline figures</a>" if n_inline else ""
        sections.append(f"<section id='nb{number}'><h2>{_e(stem)}: {_e(TITLES.get(number, ''))}</h2>"
                        f"<p><a href='{_e(link)}'>the executed notebook</a>{more}</p>{body}"
                        f"<div class='figs'>{figs}</div></section>")
    meta = _json(run_dir / "series.json") or {}
    preset = f"preset <b>{_e(meta['preset'])}</b>, " if meta.get("preset") else ""
    total = f"{meta['seconds'] / 60:.1f} min in all" if meta.get("seconds") else ""
    atlas_html = ("<p><b><a href='atlas/index.html'>Latent atlas</a></b>: one card per labelled latent.</p>"
                  if atlas else f"<p>No latent atlas: {_e(atlas_note)}.</p>")
    page = _PAGE.format(run=_e(run_dir.name), preset=preset, total=total, summary=_table(summary_rows),
                        atlas=atlas_html, sections="\n".join(sections))
    return write_text_atomic(run_dir / "index.html", page)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>clipattr run {run}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; max-width: 80em; color: #222; }}
table {{ border-collapse: collapse; margin: .5em 0; font-size: .9em; }}
th, td {{ border: 1px solid #ccc; padding: 2px 8px; text-align: left; }}
.figs img {{ max-height: 260px; max-width: 45%; margin: 4px; border: 1px solid #eee; }}
.failed, .skipped {{ color: #b00; font-weight: bold; }} .ok {{ color: #080; }}
section {{ border-top: 1px solid #ddd; margin-top: 1.5em; }}
</style></head><body>
<h1>clipattr run {run}</h1>
<p>{preset}{total}</p>
{summary}
{atlas}
{sections}
</body></html>
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m clipattr_utils.report RUN_FOLDER", file=sys.stderr)
        return 2
    print(write_index(Path(args[0])))
    return 0


__all__ = ["write_index"]

if __name__ == "__main__":
    sys.exit(main())
