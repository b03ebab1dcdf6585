"""Markdown summary of the shipped sandbox models' training records (for docs/sandbox.md / RESULTS).

    python -m clipattr_utils.sandbox.report (paste into docs/sandbox.md / benchmarks/RESULTS.md)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import world
from .clip import default_dir
from .shortcuts import CRITERIA, summary


def _rates_table() -> str:
    t = world.planted_modes_table()
    lines = ["| mode | what | rate (training split) |", "|---|---|---|"]
    cell = lambda x: str(x).replace("|", "\\|")  # noqa: E731  ("P(a | b)" inside a table cell)
    lines += [f"| {cell(r['mode'])} | {cell(r['what'])} | {cell(r['rate (training split)'])} |" for _, r in t.iterrows()]
    return "\n".join(lines)


def _model_section(rec: dict, title: str) -> str:
    s = rec["scores"]
    t = rec["time_s"]
    cfg = rec["model_config"]
    v, tx = cfg["vision_cfg"], cfg["text_cfg"]
    out = [f"### {title}", "",
           f"- command: `{rec['command']}` (seed {rec['seed']})",
           f"- architecture: ViT {v['image_size']}px / patch {v['patch_size']}, width {v['width']}, "
           f"{v['layers']} layers; text width {tx['width']}, {tx['layers']} layers, context {tx['context_length']}; "
           f"embed {cfg['embed_dim']}; {rec['n_parameters'] / 1e6:.2f} M parameters, "
           f"{rec['weights_bytes'] / 2**20:.1f} MiB ({rec['storage_dtype']})",
           f"- data: {(rec['data']['objects'] or {}).get('n', 0)} object images + "
           f"{(rec['data']['lesions'] or {}).get('n', 0)} lesion images, {rec['train_config']['captions']} captions, "
           f"{rec['steps']} steps of batch {rec['train_config']['batch_size']}",
           f"- time: {t['train'] / 60:.1f} min training + {t['data'] / 60:.1f} min rendering "
           f"(wall clock, {rec['machine']['torch_threads']} torch thread(s), {rec['machine']['device']}; "
           f"process CPU time {t.get('cpu_process_total', float('nan')) / 60:.1f} min)",
           ""]
    if rec.get("record_rebuilt"):
        out[-1:] = [f"- record rebuilt: {rec['record_rebuilt']}", ""]
    if s and "zero_shot" not in s:  # a lesion-only model (`measure_lesions`)
        le, lz = s["lesion"], s["lesion_zero_shot"]
        out[-1:] = [f"- lesions: a probe trained on the world's confounded lesions drops {le['drop_melanoma']:.1f} "
                f"+- {le['sem_melanoma']:.1f} points of melanoma accuracy with the hue; zero-shot P(melanoma) "
                f"moves {lz['mean_shift']:+.3f} with it (diagnosis AUROC {lz['auc_diagnosis']:.3f})"]
    elif s:
        if "labeler_card" in s:
            links = world.ObjectRecipe(**rec["data"]["objects"]["recipe"]).planted_links()
            out += [f"- world: {rec['train_config'].get('world', 'planted')} (planted object-attribute links: "
                    f"{'none' if not links else '; '.join(links)})", "",
                    "Report card (`sandbox.labeler_card`, single held-out independent-world images):", "",
                    "| kind | metric | score | chance | AUROC |", "|---|---|---|---|---|"]
            out += [f"| {r['kind']} | {r['metric']} | {r['score']:.3f} | {r['chance']:.3f} | "
                    f"{'' if r['auroc'] is None or r['auroc'] != r['auroc'] else format(r['auroc'], '.3f')} |"
                    for r in s["labeler_card"]]
            out += [""]
        table = summary(s)
        out += ["| mode | measured | criterion | shown |", "|---|---|---|---|"]
        out += [f"| {r['mode']} | {r['measured']} | {r['criterion']} | {'not measured' if r['shown'] is None else 'yes' if r['shown'] else 'no'} |"
                for r in table.to_dict("records")]
        if "background_zero_shot" in s:
            out += ["", f"Background named zero-shot (8 backgrounds, chance 0.125): "
                        f"{s['background_zero_shot']['accuracy']:.3f}"]
        if "zero_shot" in s:
            zs = s["zero_shot"]["per_class"]
            out += ["", "Zero-shot top-1 per class: " + ", ".join(f"{k} {v:.2f}" for k, v in zs.items())]
    return "\n".join(out)


def markdown(directory: Path | None = None) -> str:
    directory = default_dir() if directory is None else Path(directory)
    parts = ["## Sandbox world and sandbox CLIP", "",
             "Measured on a 2-core CPU (AMD EPYC, no GPU), shared with other jobs while training; "
             "all scores on held-out rendered images (`clipattr_utils.sandbox.shortcuts.measure_all`, "
             "seed 0, prompt \"a photo of a {class}\").", "",
             "Planted failure modes (constants in `clipattr_utils/sandbox/world.py`):", "", _rates_table(), "",
             "Criteria for a planted mode to count as learned: " + "; ".join(f"{k}: {v}" for k, v in CRITERIA.items()), ""]
    for name, title in (("sandbox", "`sandbox` (the explained model)"),
                        ("sandbox-labeler", "`sandbox-labeler` (the labeling model)"),
                        ("sandbox-derm", "`sandbox-derm` (the melanoma case's dermatology CLIP, lesions only)")):
        path = directory / f"{name}.record.json"
        if path.is_file():
            parts += [_model_section(json.loads(path.read_text()), title), ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m clipattr_utils.sandbox.report")
    p.add_argument("--dir", default=None, help="folder with <name>.record.json (default: data/sandbox)")
    a = p.parse_args(argv)
    print(markdown(None if a.dir is None else Path(a.dir)))


if __name__ == "__main__":
    main()
