"""The hidden-shortcut benchmark: the detective on many challenges, scored per attribute kind.

    python -m clipattr_utils.challenge --seeds 0-39 [--out runs/challenge-0-39.csv]

Prints one line per challenge and then the table of found / missed per kind and passed /
false alarms on controls; writes every row (resumable: seeds already in ``--out`` are kept).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from . import detective_sae, investigate, make, score
from .detective import DetectiveConfig
from .game import describe, reveal


def parse_seeds(text: str) -> list[int]:
    """"0-39", "1000-1039,5,7" -> seeds."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1) if not part.startswith("-") else (part, part)
                seeds += list(range(int(a), int(b) + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise SystemExit(f"--seeds: cannot read {part!r}; write e.g. 0-39 or 1000-1039,5") from None
    if not seeds:
        raise SystemExit("--seeds: no seeds given")
    return seeds


def kind_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per attribute kind: planted challenges, found, missed (wrong class, no verdict, or an
    impure latent); controls: passed and false alarms; and the totals."""
    out = []
    planted = rows[~rows["control"]]
    for kind, g in planted.groupby("kind"):
        out.append({"kind": kind, "challenges": len(g), "found": int(g["correct"].sum()),
                    "missed": int((~g["correct"]).sum()), "found_share": float(g["correct"].mean())})
    if len(planted):
        out.append({"kind": "all planted", "challenges": len(planted), "found": int(planted["correct"].sum()),
                    "missed": int((~planted["correct"]).sum()), "found_share": float(planted["correct"].mean())})
    controls = rows[rows["control"]]
    if len(controls):
        out.append({"kind": "control", "challenges": len(controls), "found": int(controls["correct"].sum()),
                    "missed": int((~controls["correct"]).sum()), "found_share": float(controls["correct"].mean())})
    table = pd.DataFrame(out, columns=["kind", "challenges", "found", "missed", "found_share"])
    return table.rename(columns={"found": "found / passed", "missed": "missed / false alarm"})


ROWS_WITHOUT_SETTING_RAN_WITH = 16
"""``n_bootstrap`` of rows written before the benchmark kept it in a column (the default then)."""


def regrade(rows: pd.DataFrame, min_z: float) -> pd.DataFrame:
    """The rows as a detective with threshold ``min_z`` would have scored: its verdict is the
    same top suspect when that reaches ``min_z`` (the ranking does not depend on it), so a
    planted challenge is found when its top suspect was right (``top_right``) and ``top_z >=
    min_z``, and a control passes when ``top_z < min_z``."""
    missing = {"top_z", "top_right", "control"} - set(rows.columns)
    if missing:
        raise SystemExit(f"--min-z: the rows lack {sorted(missing)} (written before the benchmark kept the top "
                         "suspect); rerun those seeds")
    out = rows.copy()
    right = out["top_right"].astype(str).str.lower().eq("true")
    control = out["control"].astype(str).str.lower().eq("true")
    reached = out["top_z"].astype(float) >= float(min_z)
    out["control"] = control
    out["correct"] = (control & ~reached) | (~control & right & reached)
    return out


def main(argv: list[str] | None = None) -> int:
    import torch

    from ..features import extract
    from ..models import load_clip
    from ..storage import write_text_atomic

    p = argparse.ArgumentParser(prog="python -m clipattr_utils.challenge", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0-39", help="challenge seeds, e.g. 0-39 or 1000-1039 (default 0-39)")
    p.add_argument("--out", type=Path, default=None, help="CSV of every challenge's score (default runs/challenge-<seeds>.csv)")
    p.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default: the series' shared cache)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--min-z", type=float, default=None,
                   help="grade the rows with this confirmation threshold instead of the one they ran with "
                        "(DetectiveConfig.min_z; see regrade)")
    p.add_argument("--n-bootstrap", type=int, default=None,
                   help="bootstrap refits of the reference probe (DetectiveConfig.n_bootstrap; default its default)")
    args = p.parse_args(argv)
    config = DetectiveConfig() if args.n_bootstrap is None else DetectiveConfig(n_bootstrap=args.n_bootstrap)
    seeds = parse_seeds(args.seeds)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or Path("runs") / f"challenge-{args.seeds.replace(',', '_')}.csv"
    done = pd.read_csv(out) if out.is_file() else pd.DataFrame()
    rows = [r for r in done.to_dict("records")] if len(done) else []
    # rows of another setting would make one table of two detectives: refuse, do not mix
    # (a file begun before the column existed and extended after has it empty on its first rows)
    ran_with = {ROWS_WITHOUT_SETTING_RAN_WITH if pd.isna(r.get("n_bootstrap")) else int(r["n_bootstrap"]) for r in rows}
    if ran_with - {config.n_bootstrap}:
        raise SystemExit(f"{out} holds rows run with n_bootstrap {sorted(ran_with)}, not {config.n_bootstrap}: "
                         "give another --out")
    have = {int(r["seed"]) for r in rows}
    todo = [seed for seed in seeds if seed not in have]
    if todo:   # (grading rows already written needs no model)
        clip = load_clip("sandbox")
        labeler = load_clip("sandbox-labeler", role="labeler")
        sae = detective_sae(clip, args.cache_dir)
    for seed in todo:
        start = time.perf_counter()
        c = make(seed, clip=clip, cache_dir=args.cache_dir)
        result = investigate(c, sae, clip=clip, labeler=labeler, cache_dir=args.cache_dir, config=config)
        x = extract(clip, c.test, args.cache_dir, progress=False).read()
        graded = score(c, result, x, sae)
        graded.update(seconds=round(time.perf_counter() - start, 1), answer=describe(reveal(c)),
                      test_accuracy=round(c.test_accuracy, 4), n_bootstrap=config.n_bootstrap)
        rows.append(graded)
        print(f"{seed:5d} {'ok ' if graded['correct'] else 'MISS'} {graded['seconds']:5.1f} s  {result.verdict:40s}  "
              f"answer: {graded['answer']}", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, pd.DataFrame(rows).to_csv(index=False))
    frame = pd.DataFrame(rows)
    frame = frame[frame["seed"].isin(seeds)]
    if args.min_z is not None:
        frame = regrade(frame, args.min_z)
        print(f"graded with min_z = {args.min_z:g}")
    print()
    print(kind_table(frame).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"\n{len(frame)} challenges, median {frame['seconds'].median():.1f} s each; rows in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
