"""Mutation check of the core formulas: does some fast test fail on each wrong version?

Each mutant is one small wrong change to a formula (a sign, a dropped term, a tie-break, the
wrong set of rows), given as an exact snippet of the source and its replacement, with the
fast test files that should notice it. The script copies the package and the tests, as they
are in the working tree (uncommitted changes included), into a temporary folder; for every
mutant it applies the change there (the working tree is never touched), runs the listed tests
with ``pytest -x -q`` and reports whether they failed ("killed") or passed ("survived": a
wrong formula no test notices). The unmutated tests run first: a failure there would make
every "killed" meaningless.

    nice -n 15 .venv/bin/python tests/mutants.py            # all mutants (~5 min), a table at the end
    .venv/bin/python tests/mutants.py -k top -k auc          # mutants whose name contains these
    .venv/bin/python tests/mutants.py -k "1 top" --tests tests/test_labeling_top.py::test_x --show
                                                             # does this one test kill it, and how
    .venv/bin/python tests/mutants.py --list                 # names only

Exit status 1 when a mutant survives, its snippet is missing from the source (the code moved:
update the mutant), or the unmutated tests fail.
Not collected by pytest (no ``test_`` prefix) and not run by ``make test``: it takes minutes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 900


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    """Path relative to the repository root."""
    old: str
    """Exact snippet of the source; must occur exactly once in ``file``."""
    new: str
    tests: tuple[str, ...]
    """Fast test files (or node ids) run against the mutant."""


M = Mutant
TOP, FAITH, MINING, TABLE, WIDGETS, MEL = ("tests/test_labeling_top.py", "tests/test_faithfulness.py",
                                          "tests/test_mining.py", "tests/test_labeling_table.py",
                                          "tests/test_widgets.py", "tests/test_melanoma.py")
SPATIAL = "tests/test_spatial.py"
ATTR, TRAIN, SPARSE, ALIGN, KEY = ("tests/test_attribution.py", "tests/test_sae_train.py", "tests/test_sae_sparse.py",
                                   "tests/test_labeling_align.py", "tests/test_cache_key.py")

MUTANTS: list[Mutant] = [
    # ---- the six of issue 26
    M("1 top: merge without the tie-break by row", "clipattr_utils/labeling/top.py",
      "    o = torch.sort(r, dim=1, stable=True).indices\n"
      "    v, r, src, pos = (t.gather(1, o) for t in (v, r, src, pos))\n", "", (TOP,)),
    M("2 faithfulness: AUC as the plain mean of the curve", "clipattr_utils/faithfulness.py",
      "return (curves[:, 1:] + curves[:, :-1]).sum(1) / (2 * s)", "return curves.mean(1)", (FAITH,)),
    M("3 mining: Eq. 8 without the class mean", "clipattr_utils/mining/outliers.py",
      "mu, sd = expected.mean[c], guarded_std(", "mu, sd = 0 * expected.mean[c], guarded_std(", (MINING,)),
    M("4 diversity: unique labels pooled over all bases", "clipattr_utils/labeling/diversity.py",
      'unique_labels=("label", lambda s: s.dropna().nunique())',
      'unique_labels=("label", lambda s: comp["label"].dropna().nunique())', (TABLE,)),
    M("5 widgets: classes least relevant first", "clipattr_utils/widgets.py",
      "class_relevance[int(latent)].sort_values(ascending=False",
      "class_relevance[int(latent)].sort_values(ascending=True", (WIDGETS,)),
    M("6 melanoma: Eq. 33 on all training rows, not the benign ones", "clipattr_utils/melanoma/experiment.py",
      "    ben = tr[y[tr] == 0]\n", "    ben = tr\n", (MEL,)),
    # ---- attribution
    M("attribution: exact Act x Grad without the LayerNorm-beta term", "clipattr_utils/attribution/exact.py",
      "g = torch.stack([(-Pz + s_d * p1z) * aq, -s_d * aq, -vx_d * aq], dim=2)",
      "g = torch.stack([(-Pz + s_d * p1z) * aq, -s_d * aq, 0 * vx_d * aq], dim=2)", (ATTR,)),
    M("attribution: exact Act x Grad without the mean(h) term", "clipattr_utils/attribution/exact.py",
      "g = torch.stack([(-Pz + s_d * p1z) * aq, -s_d * aq, -vx_d * aq], dim=2)",
      "g = torch.stack([-Pz * aq, 0 * s_d * aq, -vx_d * aq], dim=2)", (ATTR,)),
    M("attribution: Energy without the decoder row norm", "clipattr_utils/attribution/baselines.py",
      "lambda prep, idx, a: a * prep.vnorm[idx]", "lambda prep, idx, a: a", (ATTR,)),
    # ---- SAE training
    M("SAE: normalised loss divides by the norm of x, not its square", "clipattr_utils/sae/train.py",
      "loss = (err / x.square().sum(1).clamp_min(tiny)).mean()", "loss = (err / x.norm(dim=1).clamp_min(tiny)).mean()",
      (TRAIN,)),
    M("SAE: AuxK denominator without centring the residual", "clipattr_utils/sae/train.py",
      "denom = (residual - residual.mean(0)).pow(2).sum()", "denom = residual.pow(2).sum()", (TRAIN,)),
    M("SAE: decoder gradient not projected before the step", "clipattr_utils/sae/train.py",
      "    sae.project_decoder_grad_()\n    opt.step()", "    opt.step()", (TRAIN,)),
    M("SAE: lr decays one epoch late", "clipattr_utils/sae/train.py",
      "sum(epoch >= m for m in self.milestones())", "sum(epoch > m for m in self.milestones())", (TRAIN,)),
    # ---- labeling
    M("labeling Eq. 2: no empty-prompt baseline", "clipattr_utils/labeling/align.py",
      "top_s[s:s + chunk] = val - base[s:s + chunk, None]", "top_s[s:s + chunk] = val", (ALIGN,)),
    M("labeling clarity: diagonal counted in the mean", "clipattr_utils/labeling/quality.py",
      "out = ((s * s).sum(1) - k) / (k * (k - 1)).clamp_min(1)", "out = (s * s).sum(1) / (k * k).clamp_min(1)",
      (ALIGN,)),
    M("labeling Eq. 7: strict inequality for the alignment", "clipattr_utils/labeling/table.py",
      "keep = strong & (al <= float(tau_align))", "keep = strong & (al < float(tau_align))", (TABLE,)),
    M("labeling Eq. 7: strict inequality for the activation proxy", "clipattr_utils/labeling/table.py",
      'strong = table["top20_mean"].to_numpy(dtype=np.float64) >= float(tau_act)',
      'strong = table["top20_mean"].to_numpy(dtype=np.float64) > float(tau_act)', (TABLE,)),
    M("labeling top: mean activation over all rows, not the firing ones", "clipattr_utils/labeling/top.py",
      "self.total / self.count.clamp_min(1).double()", "self.total / max(self.n_rows, 1)", (TOP,)),
    # ---- mining
    M("mining: outsiders above mean + k std", "clipattr_utils/mining/outliers.py",
      "(y_c > out_mean - out_k * out_std)", "(y_c > out_mean + out_k * out_std)", (MINING,)),
    M("mining: outsiders include the class's own samples", "clipattr_utils/mining/outliers.py",
      "np.flatnonzero((labels != c) & (y_c >", "np.flatnonzero((labels >= 0) & (y_c >", (MINING,)),
    M("mining: flagged needs more than min_count outsiders", "clipattr_utils/mining/outliers.py",
      "hit = np.flatnonzero((cnt >= min_count) & (mean_z > z_thr))",
      "hit = np.flatnonzero((cnt > min_count) & (mean_z > z_thr))", (MINING,)),
    # ---- melanoma
    M("melanoma Eq. 32: red times 1 + delta", "clipattr_utils/melanoma/hue.py",
      "out[..., 0] = np.clip(arr[..., 0] * (1.0 - delta), 0.0, 1.0)",
      "out[..., 0] = np.clip(arr[..., 0] * (1.0 + delta), 0.0, 1.0)", (MEL,)),
    M("melanoma Eq. 33: low minus high", "clipattr_utils/melanoma/direction.py",
      "u = (xd[high].mean(0) - xd[low].mean(0))", "u = (xd[low].mean(0) - xd[high].mean(0))", (MEL,)),
    M("melanoma Eq. 34: p not centred", "clipattr_utils/melanoma/direction.py",
      "return x + float(alpha) * (p - 0.5)[:, None] * u[None, :]", "return x + float(alpha) * p[:, None] * u[None, :]",
      (MEL,)),
    # ---- faithfulness
    M("faithfulness: deletion adds the removed latents", "clipattr_utils/faithfulness.py",
      "pts = xs[:, None, :] - cum", "pts = xs[:, None, :] + cum", (FAITH,)),
    M("faithfulness: local order ranks inactive latents by score", "clipattr_utils/faithfulness.py",
      "    scores[~active.to(scores.device)] = -torch.inf\n", "", (FAITH,)),
    # ---- feature cache key
    M("cache key: preprocessing left out", "clipattr_utils/features.py",
      '        "preprocess": describe_transform(clip.preprocess),\n', "", (KEY,)),
    M("cache key: lambdas keyed by name only", "clipattr_utils/transform_key.py",
      '    if "<lambda>" in fn.__qualname__:\n        out["code"]', '    if False:\n        out["code"]', (KEY,)),
    M("cache key: closure values left out", "clipattr_utils/transform_key.py",
      "    if fn.__closure__:\n", "    if False:\n", (KEY,)),
    M("cache key: file token without the modification time", "clipattr_utils/data.py",
      'return f"{st.st_size}:{st.st_mtime_ns}:{h.hexdigest()[:16]}"', 'return f"{st.st_size}:{h.hexdigest()[:16]}"',
      ("tests/test_data.py::test_fingerprint_notices_an_edit_between_the_hashed_ends",)),
    M("cache key: file token without the content hash", "clipattr_utils/data.py",
      'return f"{st.st_size}:{st.st_mtime_ns}:{h.hexdigest()[:16]}"', 'return f"{st.st_size}:{st.st_mtime_ns}"',
      ("tests/test_data.py::test_fingerprint_notices_a_replaced_file_of_the_same_size",)),
    # ---- where in the image (issue 23)
    M("heatmap: gradient x input without the input", "clipattr_utils/spatial/maps.py",
      '            heat = (g * leaves["e"]).sum(-1)\n', '            heat = g.sum(-1)\n', (SPATIAL,)),
    M("heatmap: IG from alpha 0 to 1 on a left grid", "clipattr_utils/spatial/maps.py",
      "alphas = (torch.arange(steps, dtype=e_full.dtype, device=e_full.device) + 0.5) / steps",
      "alphas = torch.arange(steps, dtype=e_full.dtype, device=e_full.device) / steps", (SPATIAL,)),
    M("heatmap: IG from a baseline, heat times the input instead of the difference", "clipattr_utils/spatial/maps.py",
      "        heat = (mean_grad * delta).sum(-1)", "        heat = (mean_grad * e_full).sum(-1)", (SPATIAL,)),
    M("heatmap: IG path from zero even with a baseline", "clipattr_utils/spatial/maps.py",
      "leaf = (e_base[None] + alphas[:, None, None, None] * delta[None])",
      "leaf = (alphas[:, None, None, None] * delta[None])", (SPATIAL,)),
    M("heatmap: a baseline set's rows not the image set's", "clipattr_utils/spatial/maps.py",
      "[baseline_set.load_image(int(i)) for i in rows]", "[baseline_set.load_image(k) for k in range(len(rows))]",
      (SPATIAL,)),
    M("lesion hue: where ignored", "clipattr_utils/sandbox/render.py",
      "scale_red(pixels, 1.0 + 2.0 * float(strength) * where)", "scale_red(pixels, 1.0 + 2.0 * float(strength))",
      ("tests/test_sandbox_world.py",)),
    M("heatmap: relevance without dy/da_j", "clipattr_utils/spatial/maps.py",
      "heat, value = heat * scale[:, None, None], value * scale", "heat, value = heat, value", (SPATIAL,)),
    M("heatmap: energy share counts negative heat", "clipattr_utils/spatial/score.py",
      "pos = heat.clamp_min(0).flatten(1).double()", "pos = heat.abs().flatten(1).double()", (SPATIAL,)),
    M("masks: the flame not cut out of the object", "clipattr_utils/sandbox/render.py",
      '            layer["object"].paste(0, (0, 0), layer["companion"])\n', "", (SPATIAL,)),
    M("patch tokens: the class token kept among them", "clipattr_utils/features.py",
      "store[\"x\"] = tokens[:, tokens.shape[1] - n_patches:].reshape(tokens.shape[0], -1)",
      "store[\"x\"] = tokens[:, tokens.shape[1] - n_patches - 1:-1].reshape(tokens.shape[0], -1)",
      ("tests/test_features.py::test_patch_tokens_are_open_clips_and_a_full_disk_is_refused",)),
    M("challenge: taking a value away from every image", "clipattr_utils/challenge/images.py",
      "    if not has.any():\n        return images\n    rows, rest", "    has[:] = True\n    rows, rest",
      ("tests/test_challenge.py",)),
]


def _copy_tree(dest: Path) -> None:
    """The package, the tests and the pytest config, without bytecode caches; data and the
    shared folder beside the checkout as links (read only by the tests)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in ("clipattr_utils", "tests"):
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    shutil.copy2(REPO / "pyproject.toml", dest / "pyproject.toml")
    if (REPO / "data").exists():
        (dest / "data").symlink_to(REPO / "data")
    shared = REPO.parent / "shared"
    if shared.exists():
        (dest.parent / "shared").symlink_to(shared)


def _pytest(root: Path, tests: tuple[str, ...], python: str) -> tuple[bool, float, str]:
    """(passed, seconds, output tail) of ``pytest -x -q`` on ``tests`` inside ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests], cwd=root,
                              env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:  # a mutant that makes a loop run forever is noticed too
        return False, time.perf_counter() - t0, f"timed out after {TIMEOUT_S} s"
    out = (proc.stdout + proc.stderr).strip().splitlines()
    return proc.returncode == 0, time.perf_counter() - t0, "\n".join(out[-15:])


def _check_import(root: Path, python: str) -> None:
    """The copy, not the editable install of the working tree, must be what the tests import."""
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    where = subprocess.run([python, "-c", "import clipattr_utils; print(clipattr_utils.__file__)"], cwd=root, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not Path(where).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"mutants: the tests would import {where}, not the copy in {root}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", action="append", default=[], help="run the mutants whose name contains this (repeatable)")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--no-baseline", action="store_true", help="skip running the unmutated tests first")
    ap.add_argument("--tests", nargs="+", help="run these test files / node ids instead of each mutant's own")
    ap.add_argument("--show", action="store_true", help="print the end of pytest's output for each mutant")
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.k or any(s.lower() in m.name.lower() for s in args.k)]
    if args.tests:
        chosen = [Mutant(m.name, m.file, m.old, m.new, tuple(args.tests)) for m in chosen]
    if args.list:
        for m in chosen:
            print(f"{m.name}  [{m.file}; {' '.join(m.tests)}]")
        return 0
    bad = []
    with tempfile.TemporaryDirectory(prefix="clipattr-mutants-") as tmp:
        root = Path(tmp) / "repo"
        root.mkdir()
        _copy_tree(root)
        _check_import(root, args.python)
        if not args.no_baseline:
            files = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            ok, sec, tail = _pytest(root, files, args.python)
            verdict = "pass" if ok else "FAIL"
            print(f"baseline ({len(files)} test files, unmutated): {verdict} in {sec:.0f} s", flush=True)
            if not ok:
                print(tail)
                return 1
        rows = []
        for m in chosen:
            path = root / m.file
            source = path.read_text()
            if source.count(m.old) != 1:
                rows.append((m.name, f"snippet found {source.count(m.old)} times", 0.0))
                bad.append(m.name)
                continue
            path.write_text(source.replace(m.old, m.new))
            try:
                ok, sec, tail = _pytest(root, m.tests, args.python)
            finally:
                path.write_text(source)
            rows.append((m.name, "no (survived)" if ok else "yes", sec))
            if ok:
                bad.append(m.name)
            print(f"{m.name}: {rows[-1][1]} ({sec:.0f} s)", flush=True)
            if args.show:
                print(tail + "\n", flush=True)
    width = max(len(r[0]) for r in rows) if rows else 6
    print(f"\n| {'mutant':<{width}} | killed | seconds |\n|{'-' * (width + 2)}|--------|---------|")
    for name, killed, sec in rows:
        print(f"| {name:<{width}} | {killed:<6} | {sec:7.1f} |")
    print(f"\n{len(rows) - len(bad)} of {len(rows)} mutants killed" + (f"; not killed: {bad}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
