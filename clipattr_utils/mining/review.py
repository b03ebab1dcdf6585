"""Reviewing flagged pairs (App. D.1: "flagged automatically ... manually inspected").

`ReviewView` shows one flagged (class, latent) pair at a time: its distractor images, the
latent's label, its mean z, and on the sandbox a *suggested* failure type from the
attribute table (shown, never applied). The reviewer's tags (`FAILURE_TYPES`) are kept in a
table that is saved to and reloaded from a CSV. As in ``widgets``, the plain methods
(`tag`, `save`, `load`, `card`, `figure`) are what tests call; `show` adds ipywidgets
controls in a live kernel and renders statically otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .ground_truth import FAILURE_TYPES

TAG_COLUMNS = ["class", "latent", "tag", "note"]


class ReviewView:
    """Tag flagged pairs.

    Args:
        flagged: the flagged table (class, latent, label, n_samples, mean_z, ...).
        samples: distractor sets (class, latent, sample_id, row).
        image_set: anything with ``load_image(row)`` (rows as in ``samples.row``).
        suggestions: optional table (class, latent, suggested_type, suggested_attribute,
            suggested_share), e.g. from ``ground_truth.pair_truth`` on the sandbox.
        heat: ``(latent, rows) -> maps`` drawn over the distractors (`spatial.heat_source`:
            where in each image the pair's latent fires), or None; a checkbox in the live view
            switches them off.
    """

    def __init__(self, flagged: pd.DataFrame, samples: pd.DataFrame, image_set: Any = None, *,
                 suggestions: pd.DataFrame | None = None, n_images: int = 8, heat: Any = None):
        self.heat = heat
        self.show_heat = heat is not None
        self.flagged = flagged.reset_index(drop=True)
        self.samples = samples
        self.image_set = image_set
        self.n_images = int(n_images)
        self.suggestions = {}
        if suggestions is not None:
            for r in suggestions.itertuples(index=False):
                self.suggestions[(r[0], int(r.latent))] = (r.suggested_type, r.suggested_attribute,
                                                           float(r.suggested_share))
        self.tags = pd.DataFrame({"class": self.flagged["class"].astype(str),
                                  "latent": self.flagged["latent"].astype(int),
                                  "tag": "", "note": ""})[TAG_COLUMNS]

    def _pos(self, cls: str, latent: int) -> int:
        m = np.flatnonzero((self.tags["class"] == cls).to_numpy() & (self.tags["latent"] == int(latent)).to_numpy())
        if len(m) == 0:
            raise KeyError(f"({cls!r}, {latent}) is not a flagged pair")
        return int(m[0])

    def tag(self, cls: str, latent: int, tag: str, note: str = "") -> None:
        """Set the reviewer's tag of one pair (one of `FAILURE_TYPES`)."""
        if tag not in FAILURE_TYPES:
            raise ValueError(f"tag must be one of {list(FAILURE_TYPES)}, got {tag!r}")
        i = self._pos(cls, latent)
        self.tags.at[i, "tag"] = tag
        self.tags.at[i, "note"] = str(note)

    def suggestion(self, cls: str, latent: int) -> tuple[str, str, float] | None:
        """The attribute-table suggestion for a pair (type, attribute, share), or None."""
        return self.suggestions.get((cls, int(latent)))

    def save(self, path: str | Path) -> Path:
        """Write the tags as CSV (class, latent, tag, note), atomically."""
        from ..storage import write_text_atomic

        return write_text_atomic(Path(path), self.tags.to_csv(index=False))

    def load(self, path: str | Path) -> pd.DataFrame:
        """Read tags from a CSV written by `save`. Returns the current tag table.

        The whole file is checked before any row is applied, so a bad file leaves the view as
        it was: a latent that is not an integer, a tag not in `FAILURE_TYPES`, a pair listed
        twice, and a pair not flagged here (e.g. "Boat" for "boat") are all errors naming the
        file and the rows. Unmatched pairs used to be skipped after one printed line, leaving
        a review that counted no failures; an unknown tag raised only after the rows before
        it were applied.
        """
        t = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = [c for c in TAG_COLUMNS if c not in t.columns]
        if missing:
            raise ValueError(f"{path}: tag file lacks columns {missing}")
        flagged = {(c, int(j)): i for i, (c, j) in enumerate(zip(self.tags["class"], self.tags["latent"]))}
        problems: dict[str, list[str]] = {}
        apply, seen = [], {}
        for row, r in enumerate(t[TAG_COLUMNS].itertuples(index=False, name=None), start=1):
            cls, latent, tag, note = r
            try:
                j = int(latent.strip())
            except ValueError:
                problems.setdefault("latents that are not integers", []).append(f"row {row}: {latent!r}")
                continue
            if tag and tag not in FAILURE_TYPES:
                problems.setdefault(f"tags not in {list(FAILURE_TYPES)}", []).append(f"row {row}: {tag!r}")
            if (cls, j) in seen:
                problems.setdefault("pairs listed twice", []).append(f"rows {seen[cls, j]} and {row}: ({cls!r}, {j})")
            seen[cls, j] = row
            if (cls, j) not in flagged:
                near = [c for c in dict.fromkeys(self.tags["class"])
                        if c != cls and c.strip().lower() == cls.strip().lower()]
                hint = f", did you mean {near[0]!r}?" if near else ""
                problems.setdefault("pairs not flagged here", []).append(f"row {row}: ({cls!r}, {j}){hint}")
                continue
            apply.append((flagged[cls, j], tag, note))
        if problems:
            lines = [f"{len(v)} {k}: {'; '.join(v[:5])}{'; ...' if len(v) > 5 else ''}" for k, v in problems.items()]
            raise ValueError(f"{path}: nothing loaded, the file has " + " | ".join(lines))
        for i, tag, note in apply:
            self.tags.at[i, "tag"] = tag
            self.tags.at[i, "note"] = note
        return self.tags.copy()

    def card(self, i: int) -> dict:
        """Everything shown for the i-th flagged pair."""
        r = self.flagged.iloc[int(i)]
        cls, latent = str(r["class"]), int(r["latent"])
        s = self.samples
        rows = s.loc[(s["class"] == cls) & (s["latent"] == latent), "row"].to_numpy()[: self.n_images]
        return {"class": cls, "latent": latent, "label": str(r.get("label", "")), "mean_z": float(r["mean_z"]),
                "n_samples": int(r["n_samples"]), "rows": [int(v) for v in rows],
                "suggestion": self.suggestion(cls, latent), "tag": self.tags.at[self._pos(cls, latent), "tag"]}

    def title(self, card: dict) -> str:
        sug = card["suggestion"]
        s = f"; suggested: {sug[0]} ({sug[1]}, {sug[2]:.0%} of distractors)" if sug else ""
        return (f"class {card['class']!r}, latent {card['latent']} {card['label']!r}: mean z = {card['mean_z']:.2f}, "
                f"{card['n_samples']} active outsiders{s}; tag: {card['tag'] or '-'}")

    def figure(self, i: int):
        """The image grid of the i-th pair's distractors (None without images)."""
        import matplotlib.pyplot as plt

        card = self.card(i)
        if self.image_set is None or not card["rows"]:
            return None
        n = len(card["rows"])
        maps = self.heat(card["latent"], card["rows"]) if self.heat is not None and self.show_heat else None
        fig, axes = plt.subplots(1, n, figsize=(1.4 * n, 1.7), squeeze=False)
        for c, (ax, row) in enumerate(zip(axes[0], card["rows"])):
            image = self.image_set.load_image(row)
            if maps is not None:
                from ..spatial import overlay

                image = overlay(image, maps[c])
            ax.imshow(np.asarray(image))
            ax.axis("off")
        fig.suptitle(self.title(card), fontsize=7)
        return fig

    def show(self, n: int = 5, interactive: bool | None = None):
        """Static: the first ``n`` pairs' grids and the tag table. Live: a pair selector,
        tag buttons and a save box."""
        import matplotlib.pyplot as plt

        from ..widgets import _display, interactive_default

        interactive = interactive_default() if interactive is None else interactive
        if not interactive or len(self.flagged) == 0:
            for i in range(min(n, len(self.flagged))):
                fig = self.figure(i)
                if fig is None:
                    print(self.title(self.card(i)))
                else:
                    plt.show()
            print("(static view; open the notebook in JupyterLab to tag pairs)")
            return self.tags
        import ipywidgets as W

        pick = W.Dropdown(options=[(f"{r['class']} / {int(r['latent'])} (z={r['mean_z']:.1f})", i)
                                   for i, r in self.flagged.iterrows()], description="pair")
        buttons = W.ToggleButtons(options=list(FAILURE_TYPES), value=None, description="tag")
        path = W.Text(value="review_tags.csv", description="CSV")
        save, load = W.Button(description="save"), W.Button(description="load")
        heat_box = W.Checkbox(value=self.show_heat, description="heatmaps", disabled=self.heat is None)
        out = W.Output()

        def redraw(*_):
            with out:
                out.clear_output(wait=True)
                card = self.card(pick.value)
                fig = self.figure(pick.value)
                if fig is None:
                    print(self.title(card))
                else:
                    plt.show()
            buttons.value = card["tag"] or None

        def on_tag(change):
            if change["new"]:
                c = self.card(pick.value)
                self.tag(c["class"], c["latent"], change["new"])

        def on_heat(*_):
            self.show_heat = bool(heat_box.value) and self.heat is not None
            redraw()

        pick.observe(redraw, names="value")
        buttons.observe(on_tag, names="value")
        heat_box.observe(on_heat, names="value")
        save.on_click(lambda _: self.save(path.value))
        load.on_click(lambda _: (self.load(path.value), redraw()))
        box = W.VBox([W.HBox([pick, heat_box]), buttons, W.HBox([path, save, load]), out])
        redraw()
        _display(box)
        return box


__all__ = ["ReviewView", "TAG_COLUMNS"]
