"""The widgets and the run report in a real browser: headless Chromium (Debian's) driven by
Playwright.

A. JupyterLab serves a copy of ``02_labeling.ipynb`` with small parameters; the browser runs it
   (Run > Run All Cells), drags the τ_align slider of the hidden-concepts view and checks that
   the table shown changes to what the thresholds select in the notebook's own ``latents.csv``.
B. A run folder with notebook 02 (run by the series runner) gets its ``index.html``
   (``clipattr_utils.report.write_index``); the browser opens it from disk and checks that its
   images load and the notebook's numbers are on the page.

Screenshots go to ``test-artifacts/`` (and pytest's tmp dir). Without Chromium or the
``playwright`` package the tests skip, or fail under CI=true; `make test` installs both.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from _browser import REPO, chromium, clear_artifacts, jupyter_lab, require_chromium_and_playwright, save_screenshot

NOTEBOOK = REPO / "notebooks" / "02_labeling.ipynb"
WEIGHTS = REPO / "data" / "sandbox" / "sandbox-labeler.safetensors"

# Notebook 02 small enough to run in about half a minute (the sizes tests/test_notebook_02.py
# uses; the sandbox-fast preset's 02 trains a full-size SAE when run on its own, minutes here).
# tau_act = 1.0 so that the small SAE has hidden concepts to show.
SMALL_02 = dict(n_pool=600, n_calibration=300, n_train=600, sae_d_sae=128, sae_k=8, sae_epochs=3, n_top=30,
                min_count=5, tau_act=1.0, tau_align=0.0, seed=1)
RUN_ALL_TIMEOUT_S = 420
WIDGET_TIMEOUT_S = 90

pytestmark = [pytest.mark.slow, pytest.mark.browser]


@pytest.fixture(scope="module")
def browser_env():
    return require_chromium_and_playwright()


# Tests A and C run their notebooks on the session's shared feature cache (conftest.py), with
# the sizes of tests/test_notebook_02.py and test_notebook_06.py. B runs the series runner,
# which holds a lock on its cache while it runs, so it gets a cache of its own: on the shared
# one it could be refused while the series test runs on another worker.
@pytest.fixture(scope="module")
def series_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("browser-series-cache")


def _require_weights():
    if not WEIGHTS.is_file():
        pytest.skip(f"the shipped labeler {WEIGHTS.relative_to(REPO)} is missing")


# --------------------------------------------------------------------------- A: the live widget

# JavaScript run in the page.
JS_PROMPTS = "() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')].map(e => e.innerText.trim())"
JS_ERRORS = """() => [...document.querySelectorAll('.jp-Notebook .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
    .map(e => e.innerText).filter(t => /Traceback|Error:/.test(t))"""
JS_IMAGES_LOADED = """(root) => {
    const imgs = [...root.querySelectorAll('img')];
    return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);
}"""
JS_PAINTED = """async (root) => {
    await Promise.all([...root.querySelectorAll('img')].map(i => i.decode()));
    await new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)));
}"""
JS_LATENT_COLUMN = """(root) => {
    const table = root.querySelector('table');
    if (!table) return null;
    const head = [...table.querySelectorAll('thead tr:last-child th')].map(th => th.innerText.trim());
    const col = head.indexOf('latent');
    if (col < 0) return null;
    return [...table.querySelectorAll('tbody tr')].map(tr => tr.children[col].innerText.trim());
}"""


def _wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _accept_kernel_dialog(page, wait_s: float = 3.0) -> None:
    """Answer JupyterLab's "Select Kernel" dialog with its preselected kernel when it comes up
    (the kernel is started beforehand, so it normally does not)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    try:
        dialog.wait_for(timeout=wait_s * 1000)
    except PlaywrightTimeout:  # no dialog
        return
    dialog.locator(".jp-mod-accept").click()
    dialog.wait_for(state="detached")


def _open_notebook(page, lab, name: str) -> None:
    """Open ``name`` in JupyterLab and wait until its (pre-started) kernel is idle."""
    page.goto(lab.url(name))
    page.locator(".jp-Notebook .jp-CodeCell").first.wait_for()
    _accept_kernel_dialog(page)
    page.wait_for_function(
        "() => document.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status === 'idle'")


def _run_all_cells(page) -> list[str]:
    """Run > Run All Cells, as a user does; returns the input prompts once every cell ran."""
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-item", has_text=re.compile(r"^Run All Cells$")).click()

    def finished():
        if page.locator(".jp-Dialog").count():
            raise AssertionError(f"JupyterLab asks: {page.locator('.jp-Dialog').first.inner_text()}")
        prompts = page.evaluate(JS_PROMPTS)
        started = any(re.fullmatch(r"\[\d+\]:", p) for p in prompts)
        return prompts if started and not any("*" in p for p in prompts) else None

    return _wait_for(finished, RUN_ALL_TIMEOUT_S, "Run All Cells to finish", interval=1.0)


def _assert_drawn(output, when: str) -> None:
    """The view's image grid is a drawn figure, not a blank PNG (the live view once showed an
    empty image while the drawn one went elsewhere)."""
    import base64
    import io

    from PIL import Image

    src = output.locator("img").first.get_attribute("src") or ""
    assert src.startswith("data:image/png;base64,"), f"unexpected image source {src[:60]!r}"
    img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("L")
    lo, hi = img.getextrema()
    assert hi - lo > 64 and sum(1 for n in img.histogram() if n) > 16, \
        f"the hidden concepts' image grid {when} is blank ({img.size}, grey levels {lo}..{hi})"


def _expected_hidden(latents: pd.DataFrame, tau_act: float, tau_align: float) -> pd.DataFrame:
    """Eq. 7 recomputed from latents.csv, as the view's table should show it."""
    align = latents["expected_alignment"] if "expected_alignment" in latents else latents["alignment"]
    keep = (latents["top20_mean"] >= tau_act) & (align <= tau_align)
    return latents[keep].sort_values("top20_mean", ascending=False, kind="stable")


def _shown(output) -> tuple[str, int | None, list[int] | None]:
    """(text, count in "N hidden concepts", latent ids of the table) of the view's output."""
    text = output.inner_text()
    m = re.search(r"(\d+) hidden concepts", text)
    ids = output.evaluate(JS_LATENT_COLUMN)
    return text, (int(m.group(1)) if m else None), ([int(float(i)) for i in ids] if ids is not None else None)


def test_notebook_02_runs_in_jupyterlab_and_the_tau_align_slider_updates_the_hidden_concepts(
        browser_env, feature_cache, tmp_path):
    _require_weights()
    pw, exe = browser_env
    clear_artifacts("browser-02-*.png")
    import papermill

    root, work = tmp_path / "lab", tmp_path / "lab-state"
    root.mkdir()
    work.mkdir()
    out = root / "out"
    copy = root / NOTEBOOK.name
    # Parameters injected without executing: the browser runs the notebook.
    papermill.execute_notebook(str(NOTEBOOK), str(copy), prepare_only=True, kernel_name="python3",
                               progress_bar=False,
                               parameters={**SMALL_02, "cache_dir": str(feature_cache), "out_dir": str(out)})
    n_code = sum(c["cell_type"] == "code" for c in json.loads(copy.read_text())["cells"])

    t0 = time.monotonic()
    # CLIPATTR_STATIC (should a user's shell set it) is kept out of the server's and the
    # kernel's environment: the browser must get live widgets.
    with jupyter_lab(root, work) as lab:
        argv0 = lab.api("kernelspecs")["kernelspecs"]["python3"]["spec"]["argv"][0]
        assert str(Path(argv0).absolute()).startswith(sys.prefix), \
            f"the python3 kernel runs {argv0}, not this environment's Python ({sys.prefix})"
        lab.start_kernel_for(copy.name)
        with chromium(pw, exe) as page:
            page.set_default_timeout(60_000)
            try:
                _open_notebook(page, lab, copy.name)
                print(f"notebook open, kernel idle after {time.monotonic() - t0:.0f} s")
                t_run = time.monotonic()
                prompts = _run_all_cells(page)
                errors = page.evaluate(JS_ERRORS)
                assert not errors and len(prompts) == n_code and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts), \
                    f"the notebook did not run through (prompts {prompts}):\n" + "\n".join(errors)[-3000:]
                print(f"Run All Cells took {time.monotonic() - t_run:.0f} s")

                # The hidden-concepts view: its τ_align slider and the output below the sliders.
                slider = page.locator(".widget-hslider").filter(
                    has=page.locator(".widget-label", has_text=re.compile(r"^τ_align$")))
                assert slider.count() == 1, "no (or more than one) τ_align slider rendered: are the widgets live?"
                view = page.locator(".widget-vbox").filter(has=slider).last
                output = view.locator(".widget-output")
                handle = slider.locator(".noUi-handle")
                # The sliders at the top of the notebook panel, the table and the grid below them.
                show_view = lambda: slider.evaluate("e => e.scrollIntoView({block: 'start'})")  # noqa: E731
                show_view()
                _wait_for(lambda: output.evaluate(JS_IMAGES_LOADED), WIDGET_TIMEOUT_S, "the hidden concepts' image grid")
                _assert_drawn(output, "as first shown")
                output.evaluate(JS_PAINTED)
                before_text, before_n, before_ids = _wait_for(
                    lambda: (s := _shown(output))[1] is not None and s, WIDGET_TIMEOUT_S, "the hidden-concepts table")
                before_value = float(handle.get_attribute("aria-valuetext"))
                assert before_value == pytest.approx(SMALL_02["tau_align"])

                latents = pd.read_csv(out / "latents.csv")  # written by the notebook's last cell
                expected = _expected_hidden(latents, SMALL_02["tau_act"], before_value)
                assert before_n == len(expected), (before_text[:500], len(expected))
                assert before_ids == expected["latent"].head(len(before_ids)).tolist()
                save_screenshot(page, "browser-02-hidden-concepts-before.png", tmp_path)

                # Drag the τ_align handle to 80 % of the track (τ_align = 0.6 on [-1, 1]).
                show_view()
                handle.hover()
                hb, track = handle.bounding_box(), slider.locator(".noUi-base").bounding_box()
                page.mouse.down()
                page.mouse.move(track["x"] + 0.8 * track["width"], hb["y"] + hb["height"] / 2, steps=12)
                page.mouse.up()
                after_value = float(handle.get_attribute("aria-valuetext"))
                assert after_value == pytest.approx(0.6, abs=0.05), f"the slider did not move ({after_value})"

                expected = _expected_hidden(latents, SMALL_02["tau_act"], after_value)
                after_text, after_n, after_ids = _wait_for(
                    lambda: (s := _shown(output))[1] == len(expected) and s, WIDGET_TIMEOUT_S,
                    f"the table to show {len(expected)} hidden concepts at τ_align = {after_value:.3f} "
                    f"(showing: {output.inner_text()[:300]!r})")
                assert after_text != before_text and after_n != before_n
                assert after_ids != before_ids, "the hidden-concept table's rows did not change"
                assert after_ids == expected["latent"].head(len(after_ids)).tolist()
                # The image grid of the hidden concepts' top samples is drawn again.
                _wait_for(lambda: output.evaluate(JS_IMAGES_LOADED), WIDGET_TIMEOUT_S, "the hidden concepts' image grid")
                time.sleep(1.0)
                assert output.evaluate(JS_IMAGES_LOADED), "the image grid went away again"
                _assert_drawn(output, "after moving τ_align")
                show_view()
                output.evaluate(JS_PAINTED)
                save_screenshot(page, "browser-02-hidden-concepts.png", tmp_path)
                print(f"τ_align {before_value:.3f} -> {after_value:.3f}: {before_n} -> {after_n} hidden concepts; "
                      f"{time.monotonic() - t0:.0f} s in all")
            except BaseException:
                save_screenshot(page, "browser-02-failure.png", tmp_path)
                print(f"--- jupyter lab log ---\n{lab.log_tail()}")
                raise


# --------------------------------------------------------------------------- B: index.html


def test_run_index_html_shows_the_numbers_and_images(browser_env, series_cache, tmp_path):
    _require_weights()
    pw, exe = browser_env
    clear_artifacts("browser-index*.png")
    clear_artifacts("browser-atlas*.png")
    try:
        from clipattr_utils.report import write_index
    except ImportError as e:  # a failure, not a skip: the report is part of the product
        pytest.fail(f"clipattr_utils.report.write_index is missing ({e}); the run report cannot be checked")
    from clipattr_utils.series import run_series

    # A run folder with notebook 02 only, by the series runner, from a small preset file.
    preset = tmp_path / "browser-small.yaml"
    preset.write_text("notebooks: [\"02\"]\n\"02\":\n" + "".join(f"  {k}: {v}\n" for k, v in SMALL_02.items()))
    run = run_series(preset, out=tmp_path / "run", cache_dir=series_cache)
    status = json.loads((run / "series.json").read_text())["notebooks"]
    assert [r["status"] for r in status] == ["ok"], f"notebook 02 did not run: {status}"
    index = write_index(run)
    assert index == run / "index.html" and index.is_file()
    results = run / "02_labeling"
    latents = pd.read_csv(results / "latents.csv")
    gt = json.loads((results / "ground_truth.json").read_text())
    diversity = json.loads((results / "diversity.json").read_text())["bases"]

    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    with chromium(pw, exe) as page:
        page.set_default_timeout(30_000)
        try:
            page.goto(index.as_uri())
            page.wait_for_load_state("load")
            images = page.evaluate("() => [...document.images].map(i => [i.getAttribute('src'), i.complete, "
                                   "i.naturalWidth])")
            assert len(images) >= 2, f"index.html shows {len(images)} images; notebook 02 saves two figures"
            broken = [src for src, complete, width in images if not (complete and width > 0)]
            assert not broken, f"images that do not load: {broken}"

            section = page.locator("#nb02")
            assert section.count() == 1, "index.html has no section for notebook 02"
            text = section.inner_text()
            wanted = [str(len(latents))]  # labelled latents
            wanted += [str(r["n_pure"]) for r in gt["labels"]]
            wanted += [f"{r['share_named']:.3f}" for r in gt["labels"] if r["share_named"] == r["share_named"]]
            wanted += [str(r["unique_labels"]) for r in diversity]
            missing = [w for w in wanted if w not in text]
            assert not missing, f"numbers of the run not on the page: {missing}\n{text[:1500]}"
            # Every relative link leads to a file of the run; the section links its notebook.
            hrefs = page.evaluate("() => [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href'))")
            local = [h for h in hrefs if not h.startswith("#") and ":" not in h]
            dangling = [h for h in local if not (run / h.split("#")[0]).exists()]
            assert not dangling, f"links to files that are not in the run folder: {dangling}"
            nb_links = section.evaluate("s => [...s.querySelectorAll('a[href]')].map(a => a.getAttribute('href'))")
            assert any(h.startswith("02_labeling.") for h in nb_links), f"no link to the notebook in {nb_links}"
            save_screenshot(page, "browser-index.png", tmp_path, full_page=True)

            # The latent atlas it links to opens from disk and shows its cards' images.
            atlas = page.locator("a[href='atlas/index.html']").first
            assert atlas.count(), "index.html does not link the latent atlas (atlas/index.html)"
            atlas.click()
            page.wait_for_load_state("load")
            # Its images load lazily: those of the first screenful must all show.
            first_screen = "[...document.images].filter(i => i.getBoundingClientRect().top < innerHeight)"
            try:
                page.wait_for_function(f"() => {{ const v = {first_screen}; "
                                       "return v.length > 0 && v.every(i => i.complete && i.naturalWidth > 0); }")
            except PlaywrightTimeout:
                states = page.evaluate(f"() => {first_screen}.map(i => [i.getAttribute('src'), i.naturalWidth])")
                raise AssertionError(f"the atlas' first images do not load: {states[:20]}") from None
            save_screenshot(page, "browser-atlas.png", tmp_path)
            # The first cards show each image with its latent's heatmap over it; the overlay
            # loads, differs from the plain image, and the checkbox switches to the plain ones.
            heat = page.evaluate("() => [...document.querySelectorAll('img.heat')].slice(0, 4).map(i => "
                                 "[i.getAttribute('src'), i.dataset.plain, i.dataset.heat, i.complete, i.naturalWidth])")
            assert heat, "the atlas shows no heatmap overlays"
            import numpy as np
            from PIL import Image

            for src, plain, hot, complete, width in heat:
                assert src == hot and complete and width > 0, (src, plain, hot, complete, width)
                a = np.asarray(Image.open(run / "atlas" / plain).convert("RGB")).astype(int)
                b = np.asarray(Image.open(run / "atlas" / hot).convert("RGB")).astype(int)
                assert a.shape == b.shape and np.abs(a - b).sum() > 0, f"{hot} shows the same pixels as {plain}"
            page.uncheck("#heat")
            page.wait_for_function("() => [...document.querySelectorAll('img.heat')].slice(0, 4).every(i => "
                                   "i.getAttribute('src') === i.dataset.plain && i.complete && i.naturalWidth > 0)")
            save_screenshot(page, "browser-atlas-plain.png", tmp_path)
        except BaseException:
            save_screenshot(page, "browser-index-failure.png", tmp_path, full_page=True)
            raise


# --------------------------------------------------------------------------- C: notebook 06's answer box

NOTEBOOK_06 = REPO / "notebooks" / "06_find_the_shortcut.ipynb"
SMALL_06 = dict(challenge_seed=0, n_per_class=60, n_test=960, sae_n_train=2000, sae_epochs=5, run_detective=False)


def test_notebook_06_answer_box_checks_a_guess_and_reveals_the_answer(browser_env, feature_cache, tmp_path):
    """Run notebook 06 in JupyterLab, choose the right class, attribute and value in the live
    answer box, press Check (it must say "Right"), then a wrong class (it must say "Not
    right"), then Reveal (the challenge's own answer must appear)."""
    _require_weights()
    pw, exe = browser_env
    clear_artifacts("browser-06-*.png")
    import papermill

    from clipattr_utils import challenge as ch

    answer = ch.spec.draw(SMALL_06["challenge_seed"])
    assert answer is not None, "challenge 0 must hide a shortcut for this test"
    root, work = tmp_path / "lab", tmp_path / "lab-state"
    root.mkdir()
    work.mkdir()
    copy = root / NOTEBOOK_06.name
    papermill.execute_notebook(str(NOTEBOOK_06), str(copy), prepare_only=True, kernel_name="python3",
                               progress_bar=False, parameters={**SMALL_06, "cache_dir": str(feature_cache),
                                                               "out_dir": str(root / "out")})
    with jupyter_lab(root, work) as lab:
        lab.start_kernel_for(copy.name)
        with chromium(pw, exe) as page:
            page.set_default_timeout(60_000)
            try:
                _open_notebook(page, lab, copy.name)
                _run_all_cells(page)
                errors = page.evaluate(JS_ERRORS)
                assert not errors, "\n".join(errors)[-3000:]

                def dropdown(label):
                    box = page.locator(".widget-dropdown").filter(
                        has=page.locator(".widget-label", has_text=re.compile(f"^{label}$")))
                    assert box.count() == 1, f"no live '{label}' dropdown: are the widgets live?"
                    return box.locator("select")

                answer_box = page.locator(".widget-vbox").filter(has=dropdown("class")).last
                output = answer_box.locator(".widget-output")
                dropdown("class").scroll_into_view_if_needed()
                dropdown("class").select_option(answer.target)
                dropdown("attribute").select_option(answer.kind)
                _wait_for(lambda: answer.value in dropdown("value").inner_text(), WIDGET_TIMEOUT_S,
                          f"the value list of {answer.kind}")
                dropdown("value").select_option(answer.value)
                answer_box.locator("button", has_text="Check").click()
                _wait_for(lambda: "Right: your guess was" in output.inner_text(), WIDGET_TIMEOUT_S,
                          f"'Right' after the right guess (showing {output.inner_text()[:200]!r})")
                save_screenshot(page, "browser-06-answer-right.png", tmp_path)

                wrong = next(n for n in ch.spec.CLASSNAMES if n != answer.target)
                dropdown("class").select_option(wrong)
                answer_box.locator("button", has_text="Check").click()
                _wait_for(lambda: "Not right: your guess was" in output.inner_text(), WIDGET_TIMEOUT_S,
                          "'Not right' after a wrong guess")
                answer_box.locator("button", has_text="Reveal").click()
                expected = "The answer: " + ch.describe(answer)
                _wait_for(lambda: expected in output.inner_text(), WIDGET_TIMEOUT_S, "the revealed answer")
                save_screenshot(page, "browser-06-answer-revealed.png", tmp_path)
            except BaseException:
                save_screenshot(page, "browser-06-failure.png", tmp_path)
                print(f"--- jupyter lab log ---\n{lab.log_tail()}")
                raise
