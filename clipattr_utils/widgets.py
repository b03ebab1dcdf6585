"""Interactive views for the notebooks: live thresholds and a component browser.

Each view is a thin ipywidgets shell around plain functions that take the thresholds or the
query and return tables and figures; those functions are what the tests call, no browser
needed. Without a live frontend (papermill by any route, nbconvert, CI) a view shows its static
result for the default thresholds instead of controls: ``interactive=None`` decides by
:func:`interactive_default`, which detects the batch run from inside the kernel, no environment
variable needed.

    view = HiddenConceptsView(table, top, image_set, expected_labels=classnames)
    view.show()                                   # sliders for tau_act (or tau_rel) and tau_align
    browser = ComponentBrowser(table, top, image_set, class_relevance=rel)
    browser.show()                                # search by latent id or label
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from .gallery import latent_grid
from .labeling.table import per_latent_values, hidden_concepts
from .labeling.top import TopSamples

STATIC_ENV = "CLIPATTR_STATIC"
"""Explicit override: "1" (or any value but "" and "0") renders every view statically, "0" shows
live controls in any kernel. Unset, :func:`interactive_default` decides from the kernel."""

def batch_client(shell: Any) -> str | None:
    """Why the code now running in ``shell``'s kernel has no frontend to show live widgets to, or
    None when it may have one.

    The signal is the execute request itself: nbclient, which papermill (its CLI and Python API),
    ``clipattr_utils.series``, ``jupyter nbconvert --execute`` and testbook all run notebooks
    with, sends ``allow_stdin=False``, since nobody is there to type; JupyterLab, Notebook, VS
    Code and consoles send ``True``. Voila also runs through nbclient but serves live widgets;
    its kernels carry ``VOILA_*`` variables, so they stay live. Papermill's injected-parameters
    cell is no signal: the executed notebook, reopened in JupyterLab, runs the same cell.
    """
    kernel = getattr(shell, "kernel", None)
    if kernel is None:
        return "no kernel"
    allow_stdin = None
    try:
        allow_stdin = kernel.get_parent("shell").get("content", {}).get("allow_stdin")
    except Exception:  # ipykernel < 6, or no request yet
        pass
    if allow_stdin is None:
        allow_stdin = getattr(kernel, "_allow_stdin", None)
    if allow_stdin is False and not any(k.startswith("VOILA_") for k in os.environ):
        return "execute request without stdin (nbclient: papermill, nbconvert --execute)"
    return None


def interactive_default() -> bool:
    """Whether views should show live controls: inside an IPython kernel with a frontend. A run
    by papermill (CLI, Python API, the series), nbconvert or any other nbclient-based executor
    renders statically (:func:`batch_client`), so it never waits on a frontend that is not there.
    ``$CLIPATTR_STATIC`` overrides: "1" static, "0" live."""
    forced = os.environ.get(STATIC_ENV, "")
    if forced not in ("", "0"):
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return False
    if forced == "0":
        return True
    return batch_client(shell) is None


def _display(*objects: Any) -> None:
    try:
        from IPython.display import display
    except ImportError:  # plain Python: print what can be printed
        for obj in objects:
            print(obj)
        return
    display(*objects)


def _top_rows(top: TopSamples, latent: int, n: int) -> list[int]:
    rows = top.rows[int(latent), :n]
    return [int(r) for r in rows if int(r) >= 0]


# --------------------------------------------------------------------------- hidden concepts


class HiddenConceptsView:
    """Eq. 7 with live thresholds: latents that matter (relevance >= tau_rel, or top-20 mean
    activation >= tau_act without a relevance) but align with no expected label
    (expected alignment <= tau_align), as a table and an image grid of their top samples.

    Args:
        table: `labeling.label_latents` output (with ``expected_alignment`` when the expected
            labels were given there).
        top: the `TopSamples` the table was built from (rows index ``image_set``).
        image_set: anything with ``load_image(row)`` (the labeling pool).
        relevance: optional per-latent relevance (Series by latent or (d_sae,) vector, e.g.
            `labeling.latent_relevance`); switches the first slider to tau_rel.
        caption: row -> short text under each image (e.g. its class or attributes).
        n_latents, n_images: size of the grid (latents shown, images per latent).
    """

    COLUMNS = ("latent", "label", "alignment", "hidden_alignment", "clarity", "top20_mean", "firing_rate")

    def __init__(self, table: pd.DataFrame, top: TopSamples, image_set: Any, *, relevance: Any = None,
                 caption: Callable[[int], str] | None = None, n_latents: int = 6, n_images: int = 6):
        missing = {"latent", "top20_mean", "alignment"} - set(table.columns)
        if missing:
            raise ValueError(f"HiddenConceptsView: table lacks columns {sorted(missing)}; pass label_latents' output")
        self.table, self.top, self.image_set = table, top, image_set
        self.relevance, self.caption = relevance, caption
        self.n_latents, self.n_images = int(n_latents), int(n_images)
        self.shown: pd.DataFrame | None = None
        """The table the live view shows now (updated by every slider move)."""

    @property
    def uses_relevance(self) -> bool:
        return self.relevance is not None

    def compute(self, tau: float, tau_align: float) -> pd.DataFrame:
        """The hidden concepts at these thresholds (``tau`` is tau_rel or tau_act)."""
        if self.uses_relevance:
            return hidden_concepts(self.table, relevance=self.relevance, tau_rel=tau, tau_align=tau_align)
        return hidden_concepts(self.table, tau_act=tau, tau_align=tau_align)

    def summary(self, hidden: pd.DataFrame) -> pd.DataFrame:
        """The columns worth reading, rounded."""
        cols = [c for c in ("relevance", *self.COLUMNS) if c in hidden.columns]
        return hidden[cols].round(3).reset_index(drop=True)

    def figure(self, hidden: pd.DataFrame):
        """Top images of the first ``n_latents`` hidden concepts (None when there are none)."""
        if hidden.empty:
            return None
        rows = {int(j): _top_rows(self.top, int(j), self.n_images) for j in hidden["latent"].head(self.n_latents)}
        fig = latent_grid(self.image_set, rows, caption=self.caption, n=self.n_images, scale=1.2)
        labels = dict(zip(hidden["latent"], hidden["label"]))
        for ax, j in zip(fig.axes[:: self.n_images], rows):
            ax.set_ylabel(f"{j}\n{labels.get(j, '')}", fontsize=7)
        return fig

    def default_thresholds(self) -> tuple[float, float]:
        """(tau, tau_align): tau_act = 3.0 (App. C's top-20 mean activation) or, with a
        relevance, its 90th percentile over the table; tau_align at the median alignment."""
        align_col = "expected_alignment" if "expected_alignment" in self.table else "alignment"
        tau_align = float(np.nanmedian(self.table[align_col])) if len(self.table) else 0.0
        if self.uses_relevance:
            rel = per_latent_values(self.relevance, self.table["latent"].to_numpy(), "relevance")
            return (float(np.nanquantile(rel, 0.9)) if rel.size else 0.0), tau_align
        return 3.0, tau_align

    def render(self, tau: float, tau_align: float) -> tuple[pd.DataFrame, Any]:
        """(summary table, figure) at these thresholds: what the view displays."""
        hidden = self.compute(tau, tau_align)
        return self.summary(hidden), self.figure(hidden)

    def show(self, tau: float | None = None, tau_align: float | None = None, interactive: bool | None = None):
        """Display the view; returns the ipywidgets box (interactive) or the summary table."""
        import matplotlib.pyplot as plt

        d_tau, d_align = self.default_thresholds()
        tau = d_tau if tau is None else float(tau)
        tau_align = d_align if tau_align is None else float(tau_align)
        interactive = interactive_default() if interactive is None else interactive
        if not interactive:
            table, fig = self.render(tau, tau_align)
            name = "tau_rel" if self.uses_relevance else "tau_act"
            print(f"Hidden concepts at {name} = {tau:.3g}, tau_align = {tau_align:.3g}: {len(table)} latents "
                  "(static view; open the notebook in JupyterLab to move the thresholds)")
            _display(table.head(20))
            if fig is not None:
                plt.show()
            return table
        import ipywidgets as W

        hi = float(np.nanmax(self.table["top20_mean"])) if not self.uses_relevance else max(tau * 3, 1e-6)
        s_tau = W.FloatSlider(value=tau, min=0.0, max=max(hi, tau), step=max(hi, tau) / 200,
                              description="τ_rel" if self.uses_relevance else "τ_act", continuous_update=False)
        s_align = W.FloatSlider(value=tau_align, min=-1.0, max=1.0, step=0.005, description="τ_align",
                                continuous_update=False)
        out = W.Output()

        def redraw(*_):
            table, fig = self.render(s_tau.value, s_align.value)
            png = _png(fig)
            self.shown = table
            with out:
                out.clear_output(wait=True)
                print(f"{len(table)} hidden concepts")
                _display(table.head(20))
                if png is not None:
                    _display(png)

        s_tau.observe(redraw, names="value")
        s_align.observe(redraw, names="value")
        box = W.VBox([W.HBox([s_tau, s_align]), out])
        redraw()
        _display(box)
        return box


# --------------------------------------------------------------------------- component browser


class ComponentCard(NamedTuple):
    """Everything the browser shows about one latent."""

    latent: int
    label: str | None
    """Its label (argmax of Eq. 2) and the alignment s_j of that label."""
    alignment: float
    top_labels: list
    """[(label, s_j), ...] best first."""
    clarity: float
    polysemanticity: float
    firing_rate: float
    top20_mean: float
    rows: list
    """Rows of its top-activating samples (best first)."""
    activations: list
    """Their activations."""
    relevant_classes: list
    """[(class, mean relevance), ...] most relevant first (empty without class relevance)."""


def find_components(table: pd.DataFrame, query: str | int, limit: int = 20) -> pd.DataFrame:
    """Rows of ``table`` matching a latent id (an int or a string of digits) or a label
    substring (case-insensitive, also searched in the top labels), most aligned first."""
    q = str(query).strip()
    if q.isdigit():
        return table[table["latent"] == int(q)]
    if not q:
        return table.head(0)
    ql = q.lower()
    in_label = table["label"].astype(str).str.lower().str.contains(ql, regex=False)
    in_top = table["top_labels"].map(lambda tl: any(ql in str(lab).lower() for lab, _ in tl)) \
        if "top_labels" in table else False
    hits = table[in_label | in_top]
    return hits.sort_values("alignment", ascending=False, kind="stable").head(limit)


def component_card(table: pd.DataFrame, top: TopSamples, latent: int, *, class_relevance: pd.DataFrame | None = None,
                   n_images: int = 8, n_classes: int = 5) -> ComponentCard:
    """The card of one latent. ``class_relevance``: a (classes x latents) frame of mean
    relevance (e.g. ``latent_relevance(..., reduce=None)`` as a frame indexed by class name)."""
    row = table[table["latent"] == int(latent)]
    if row.empty:
        raise KeyError(f"latent {latent} is not in the table (fewer activations than min_count, or out of range)")
    r = row.iloc[0]
    values = top.values[int(latent), :n_images]
    rows = _top_rows(top, int(latent), n_images)
    classes: list = []
    if class_relevance is not None and int(latent) in class_relevance.columns:
        col = class_relevance[int(latent)].sort_values(ascending=False, kind="stable").head(n_classes)
        classes = [(str(c), float(v)) for c, v in col.items()]
    get = lambda name: float(r[name]) if name in r and pd.notna(r[name]) else float("nan")  # noqa: E731
    return ComponentCard(int(latent), r.get("label"), get("alignment"), list(r.get("top_labels", []) or []),
                         get("clarity"), get("polysemanticity"), get("firing_rate"), get("top20_mean"), rows,
                         [float(v) for v in values[: len(rows)]], classes)


def card_html(card: ComponentCard) -> str:
    """A small HTML summary of a card (labels, scores, relevant classes)."""
    import html

    tops = ", ".join(f"{html.escape(str(lab))} ({s:.3f})" for lab, s in card.top_labels[:5])
    classes = ", ".join(f"{html.escape(c)} ({v:.3g})" for c, v in card.relevant_classes) or "–"
    return (f"<b>latent {card.latent}</b>: <b>{html.escape(str(card.label))}</b> (s = {card.alignment:.3f})<br>"
            f"top labels: {tops}<br>clarity {card.clarity:.3f} · polysemanticity {card.polysemanticity:.3f} · "
            f"firing rate {card.firing_rate:.4f} · top-20 mean activation {card.top20_mean:.3f}<br>"
            f"most relevant classes: {classes}")


class ComponentBrowser:
    """Search latents by id or label; show a latent's top images, labels, clarity, firing rate
    and the classes it is most relevant for."""

    def __init__(self, table: pd.DataFrame, top: TopSamples, image_set: Any, *,
                 class_relevance: pd.DataFrame | None = None, caption: Callable[[int], str] | None = None,
                 n_images: int = 8, heat: Callable[[int, Sequence[int]], Any] | None = None):
        self.table, self.top, self.image_set = table, top, image_set
        self.class_relevance, self.caption, self.n_images = class_relevance, caption, int(n_images)
        self.heat = heat
        """``(latent, rows) -> maps`` drawn over the images (`spatial.heat_source`), or None."""
        self.show_heat = heat is not None
        """Whether the figures draw the heatmaps now (the live browser's checkbox)."""
        self.shown: ComponentCard | None = None
        """The card the live browser shows now."""

    def search(self, query: str | int, limit: int = 20) -> pd.DataFrame:
        return find_components(self.table, query, limit)

    def card(self, latent: int) -> ComponentCard:
        return component_card(self.table, self.top, latent, class_relevance=self.class_relevance,
                              n_images=self.n_images)

    def figure(self, card: ComponentCard):
        if not card.rows:
            return None
        fig = latent_grid(self.image_set, {card.latent: card.rows}, caption=self.caption, n=self.n_images, scale=1.3,
                          heat=self.heat if self.show_heat else None)
        fig.suptitle(f"latent {card.latent}: {card.label}", fontsize=9)
        return fig

    def show(self, query: str | int | Sequence[int] = "", interactive: bool | None = None):
        """Display the browser; statically, the cards of ``query``'s matches (at most 3)."""
        import matplotlib.pyplot as plt

        interactive = interactive_default() if interactive is None else interactive
        if not interactive:
            latents = list(query) if isinstance(query, (list, tuple)) else \
                list(self.search(query)["latent"].head(3)) if str(query) else list(self.table["latent"].head(3))
            for j in latents:
                card = self.card(int(j))
                _display(_html(card_html(card)))
                if self.figure(card) is not None:
                    plt.show()
            return latents
        import ipywidgets as W

        box_q = W.Text(value=str(query), description="latent / label", continuous_update=False)
        pick = W.Dropdown(options=[], description="match")
        heat_box = W.Checkbox(value=self.show_heat, description="heatmaps", disabled=self.heat is None,
                              tooltip="where in each image the latent's activation comes from")
        out = W.Output()

        def on_query(*_):
            hits = self.search(box_q.value)
            before = pick.value
            pick.options = [(f"{int(r.latent)}: {r.label} ({r.alignment:.3f})", int(r.latent)) for r in hits.itertuples()]
            pick.value = pick.options[0][1] if pick.options else None  # show the best match at once
            if pick.value == before:
                on_pick()

        def on_pick(*_):
            self.shown = None if pick.value is None else self.card(pick.value)
            with out:
                out.clear_output(wait=True)
                if pick.value is None:
                    print("no match")
                    return
                card = self.card(pick.value)
                _display(_html(card_html(card)))
                png = _png(self.figure(card))
                if png is not None:
                    _display(png)

        def on_heat(*_):
            self.show_heat = bool(heat_box.value) and self.heat is not None
            on_pick()

        box_q.observe(on_query, names="value")
        pick.observe(on_pick, names="value")
        heat_box.observe(on_heat, names="value")
        on_query()
        widget = W.VBox([W.HBox([box_q, pick, heat_box]), out])
        _display(widget)
        return widget


def _png(fig):
    """``fig`` rendered to a PNG image here and closed (None for None).

    The live views show their figures this way rather than with ``plt.show()``: a widget
    callback runs while the frontend syncs the Output widget's state, and the inline backend
    then sent an empty image into the view and the drawn one outside it (seen in JupyterLab 4.6
    with ipykernel 7.4; tests/test_browser.py checks the grid in a real browser).
    """
    if fig is None:
        return None
    import io

    import matplotlib.pyplot as plt
    from IPython.display import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return Image(data=buf.getvalue(), format="png")


def _html(text: str):
    try:
        from IPython.display import HTML
    except ImportError:
        return text
    return HTML(text)


__all__ = ["HiddenConceptsView", "ComponentBrowser", "ComponentCard", "find_components", "component_card",
           "card_html", "interactive_default", "batch_client", "STATIC_ENV"]
