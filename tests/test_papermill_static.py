"""Papermill without surprises: a notebook run by papermill renders its views (the threshold sliders,
the component browser, the review) statically with no environment variable set, because the kernel
sees that its client (nbclient) has no frontend. (tqdm's progress bars are not views of ours:
``tqdm.auto`` still draws them as widgets in any kernel.)

The unit tests drive `widgets.batch_client` / `interactive_default` with stand-in kernels; the slow
test runs notebooks 02, 04 and 06 with the plain ``papermill`` command (a subprocess whose environment
has no ``CLIPATTR_STATIC``) under a timeout and checks that the widget cells left static output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clipattr_utils import widgets

from _notebooks import LABELER_WEIGHTS, ROOT, SANDBOX_WEIGHTS, require_weights

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


class _Kernel:
    def __init__(self, allow_stdin, with_parent=True):
        self._allow_stdin = allow_stdin
        self._with_parent = with_parent

    def get_parent(self, channel=None):
        if not self._with_parent:
            raise AttributeError("ipykernel < 6 has no get_parent")
        return {"header": {"msg_type": "execute_request"},
                "content": {"code": "view.show()", "allow_stdin": self._allow_stdin}}


class _Shell:
    def __init__(self, kernel):
        self.kernel = kernel
        self.user_ns = {}


def test_batch_client_is_the_request_without_stdin(monkeypatch):
    for key in [k for k in os.environ if k.startswith("VOILA_")]:
        monkeypatch.delenv(key)
    assert widgets.batch_client(_Shell(_Kernel(False))) is not None      # nbclient: papermill, nbconvert
    assert widgets.batch_client(_Shell(_Kernel(True))) is None           # JupyterLab, Notebook, VS Code
    assert widgets.batch_client(_Shell(_Kernel(False, with_parent=False))) is not None  # old ipykernel
    assert widgets.batch_client(_Shell(_Kernel(True, with_parent=False))) is None
    assert widgets.batch_client(_Shell(None)) == "no kernel"
    monkeypatch.setenv("VOILA_KERNEL_ID", "abc")  # Voila executes through nbclient but is live
    assert widgets.batch_client(_Shell(_Kernel(False))) is None


def test_interactive_default_and_its_override(monkeypatch):
    import IPython

    shells = {"batch": _Shell(_Kernel(False)), "lab": _Shell(_Kernel(True))}
    for key in [k for k in os.environ if k.startswith("VOILA_")]:
        monkeypatch.delenv(key)
    monkeypatch.delenv(widgets.STATIC_ENV, raising=False)
    for name, expected in (("batch", False), ("lab", True)):
        monkeypatch.setattr(IPython, "get_ipython", lambda name=name: shells[name])
        assert widgets.interactive_default() is expected, name
        monkeypatch.setenv(widgets.STATIC_ENV, "1")       # explicit: static everywhere
        assert widgets.interactive_default() is False, name
        monkeypatch.setenv(widgets.STATIC_ENV, "0")       # explicit: live in any kernel
        assert widgets.interactive_default() is True, name
        monkeypatch.delenv(widgets.STATIC_ENV)
    monkeypatch.setattr(IPython, "get_ipython", lambda: None)  # plain Python: never live
    monkeypatch.setenv(widgets.STATIC_ENV, "0")
    assert widgets.interactive_default() is False


def test_the_series_sets_no_environment_variable():
    source = (ROOT / "clipattr_utils" / "series.py").read_text(encoding="utf-8")
    assert widgets.STATIC_ENV not in source and "CLIPATTR_STATIC" not in source


def _papermill_cli(stem: str, out: Path, params: dict, timeout: float) -> tuple[Path, float]:
    exe = Path(sys.executable).with_name("papermill")
    if not exe.is_file():
        pytest.skip(f"no papermill command beside {sys.executable}")
    executed = out / f"{stem[:2]}.ipynb"
    args = [str(exe), str(ROOT / "notebooks" / f"{stem}.ipynb"), str(executed), "-k", "python3",
            "--cwd", str(ROOT), "--no-progress-bar"]
    for key, value in params.items():
        args += ["-p", key, str(value)]
    env = {k: v for k, v in os.environ.items() if k != widgets.STATIC_ENV and not k.startswith("VOILA_")}
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
    t0 = time.time()
    try:
        proc = subprocess.run(args, env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"papermill {stem} did not finish within {timeout:.0f} s (a widget waiting on a frontend?)"
                    f"\n{(err.stderr or '')[-2000:] if isinstance(err.stderr, str) else ''}")
    assert proc.returncode == 0, f"papermill {stem} failed:\n{proc.stderr[-3000:]}"
    return executed, time.time() - t0


def _widget_cells(nb: dict, calls: tuple[str, ...]) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code" and any(k in "".join(c["source"]) for k in calls)]


@pytest.mark.slow
def test_plain_papermill_cli_renders_widgets_statically(tmp_path, feature_cache):
    """``papermill`` with no CLIPATTR_STATIC: 02's threshold view and component browser, 04's
    review view and 06's answer box show tables, figures or text, not widgets, and the three
    notebooks finish in time."""
    require_weights(SANDBOX_WEIGHTS)
    require_weights(LABELER_WEIGHTS)
    cache = feature_cache  # 02 with the sizes of its own test: the features are shared
    runs = {
        "02_labeling": (dict(n_pool=600, n_calibration=300, n_train=600, sae_d_sae=128, sae_k=8, sae_epochs=3,
                             n_top=30, min_count=5, tau_act=1.0, seed=1),
                        ("view.show(", "browser.show(")),
        "04_failure_mining": (dict(n_pool=800, n_probe=300, n_train=600, sae_d_sae=128, sae_k=8, sae_epochs=2,
                                   min_count=3, seed=3),
                              ("review.show(",)),
        # 06 with the sizes of tests/test_notebook_06.py (its features are in the shared cache).
        "06_find_the_shortcut": (dict(challenge_seed=0, n_per_class=60, n_test=960, sae_n_train=2000, sae_epochs=5,
                                      run_detective=False),
                                 ("box.show(",)),
    }
    for stem, (params, calls) in runs.items():
        params = {**params, "cache_dir": str(cache), "out_dir": str(tmp_path / stem)}
        executed, seconds = _papermill_cli(stem, tmp_path, params, timeout=420)
        nb = json.loads(executed.read_text(encoding="utf-8"))
        cells = _widget_cells(nb, calls)
        assert len(cells) == len(calls), f"{stem}: the widget cells ({calls}) were not found"
        for cell in cells:
            shown = {m for o in cell["outputs"] for m in o.get("data", {})}
            shown |= {"text/plain" for o in cell["outputs"] if o.get("output_type") == "stream" and o.get("text")}
            assert WIDGET_MIME not in shown, \
                f"{stem}: {''.join(cell['source'])[:60]!r} displayed a live widget under papermill"
            assert shown & {"text/html", "image/png", "text/plain"}, \
                f"{stem}: the cell {''.join(cell['source'])[:60]!r} shows nothing static ({shown})"
        print(f"{stem}: {seconds:.0f} s with the plain papermill command")
