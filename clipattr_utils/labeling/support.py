"""Does a label describe most of a latent's top images? A guard on Eq. 2's argmax.

Eq. 2 scores a label against x_bar_j, the *mean* labeler embedding of latent j's top images. A
latent whose top images fall in two clusters (white fire trucks and white flowers) has a mean
that lies between them, and the label nearest that mean can name neither ("boat": the labeler
names each of the 20 images right, yet the average of two clusters lands nearest a third
object). No per-image vote changes Eq. 2's ranking, since it ranks by the mean of the single-image
scores; the guard asks a second question of the same labeler instead.

For an attribute every image has exactly one value of (the sandbox's object; a user's own
vocabulary may name others through its ``attribute`` column), the labeler classifies each top
image zero-shot among that attribute's labels (the argmax of cos(x_i, t) over them, the
classification its report card scores). The **support** of a label that names value v of that
attribute is the share of the latent's top ``n_used`` images classified as v:

    support_j(t) = (1 / |S_j|) * sum_{i in S_j} [ argmax_{t' in T_a} cos(x_i, t') names v ]

A label is *supported* when ``support_j(t) >= min_support`` (0.5: a majority of the images the
label stands for). `label_latents` then keeps Eq. 2's argmax among the labels that are either
supported or name no guarded attribute, so "boat" on fire trucks gives way to the next label
Eq. 2 ranks (on the sandbox usually what the images do share: "water", "a small fire", a
colour). Vocabularies without an ``attribute`` column (ImageNet-21k names) have nothing to
guard and keep Eq. 2's label unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .vocabulary import Vocabulary

GUARDED_ATTRIBUTES: tuple[str, ...] = ("object",)
"""Attributes `label_latents` checks by default: on the sandbox, every image shows exactly one
object and its labeler names it (report card: 0.87 single-image accuracy)."""


class GuardedValues(NamedTuple):
    """Which labels name which value of the guarded attributes (`guarded_values`)."""

    reference: dict[str, torch.Tensor]
    """attribute -> indices of the vocabulary rows that name only that attribute: the labels
    each image is classified among."""

    reference_value: dict[str, np.ndarray]
    """attribute -> value index (into ``values[a]``) of each reference label."""

    values: dict[str, list[Any]]
    """attribute -> its values, in first-seen order."""

    label_value: dict[str, np.ndarray]
    """attribute -> (L,) value index each vocabulary label names (-1: names no value of it)."""

    @property
    def guarded(self) -> np.ndarray:
        """(L,) bool: labels that name a value of a guarded attribute."""
        out = np.zeros(len(next(iter(self.label_value.values()))) if self.label_value else 0, dtype=bool)
        for v in self.label_value.values():
            out |= v >= 0
        return out


def guarded_values(vocabulary: Vocabulary, attributes: Sequence[str] = GUARDED_ATTRIBUTES) -> GuardedValues:
    """Map the vocabulary's labels to the guarded attributes' values through its ``attribute``
    and ``value`` columns (`ground_truth.named_pairs`: "red ball" names object ball, "bat (club)"
    names object bat). The companion label ("a small fire", beside another object) names what
    is *beside* the object, so it is not guarded as an object.

    Raises ValueError when a guarded attribute has labels that name it but fewer than two labels
    naming it alone: each image could not be classified among its values."""
    from .ground_truth import named_pairs

    frame = vocabulary.frame
    L = len(frame)
    reference, reference_value, values, label_value = {}, {}, {}, {}
    pairs = [named_pairs(a, v) if str(a) != "companion" else set() for a, v in zip(frame["attribute"], frame["value"])]
    for a in attributes:
        named = [[v for pa, v in p if pa == a] for p in pairs]
        if not any(named):
            continue
        ref = [i for i in range(L) if str(frame["attribute"].iloc[i]) == a]
        if len(ref) < 2:
            raise ValueError(f"label guard: the vocabulary names {a!r} in {sum(map(bool, named))} labels but has "
                             f"{len(ref)} label(s) with attribute {a!r} alone; the guard classifies each image among "
                             f"those, so it needs at least two (or pass guard=None)")
        vals: list[Any] = []
        for i in ref:
            if frame["value"].iloc[i] not in vals:
                vals.append(frame["value"].iloc[i])
        where = {v: k for k, v in enumerate(vals)}
        lv = np.full(L, -1, dtype=np.int64)
        for i, nv in enumerate(named):
            if nv:
                if nv[0] not in where:
                    raise ValueError(f"label guard: label {frame['label'].iloc[i]!r} names {a} {nv[0]!r}, which no "
                                     f"label with attribute {a!r} alone names")
                lv[i] = where[nv[0]]
        reference[a] = torch.as_tensor(ref, dtype=torch.int64)
        reference_value[a] = np.asarray([where[frame["value"].iloc[i]] for i in ref], dtype=np.int64)
        values[a] = vals
        label_value[a] = lv
    return GuardedValues(reference, reference_value, values, label_value)


def value_shares(E: torch.Tensor, mask: torch.Tensor, label_emb: torch.Tensor, reference: torch.Tensor,
                 reference_value: np.ndarray, n_values: int) -> torch.Tensor:
    """(B, n_values) share of each latent's valid top images that the labeler classifies as each
    value: E (B, m, d) labeler embeddings, mask (B, m) valid slots, label_emb (L, d) unit text
    embeddings, ``reference`` the rows classified among, ``reference_value`` their values."""
    cos = F.normalize(E.float(), dim=-1) @ label_emb[reference].T  # (B, m, R)
    value = torch.as_tensor(reference_value)[cos.argmax(-1)]  # (B, m)
    onehot = F.one_hot(value, n_values).float() * mask[..., None].float()
    n = mask.sum(1, keepdim=True).clamp_min(1).float()
    return onehot.sum(1) / n


def label_support(top: Any, labeler_embeddings: Any, vocabulary: Vocabulary, latents: Sequence[int] | torch.Tensor, *,
                  attributes: Sequence[str] = GUARDED_ATTRIBUTES, n_used: int = 20,
                  progress: bool = False) -> torch.Tensor:
    """(n_latents, L) support_j(t) (module docstring) for every label; NaN for labels that name
    no guarded attribute. Small vocabularies only (it holds n_latents x L); `label_latents`
    computes the same thing block by block for the labels it needs."""
    from .labeler import iter_top_embeddings

    gv = guarded_values(vocabulary, attributes)
    t = F.normalize(vocabulary.embeddings.float(), dim=1)
    ids = torch.as_tensor(latents, dtype=torch.int64)
    out = torch.full((len(ids), len(vocabulary)), float("nan"))
    pos = 0
    for lat, E, mask in iter_top_embeddings(top, labeler_embeddings, n_used, latents=ids, progress=progress):
        block = block_support(E, mask, t, gv)
        out[pos:pos + len(lat)] = torch.where(torch.isinf(block), torch.tensor(float("nan")), block)
        pos += len(lat)
    return out


def block_support(E: torch.Tensor, mask: torch.Tensor, label_emb: torch.Tensor, gv: GuardedValues) -> torch.Tensor:
    """(B, L) support_j(t) of every label for a block of latents (E (B, m, d), mask (B, m));
    +inf for labels that name no guarded attribute (so they never fall below a bar)."""
    block = torch.full((len(E), label_emb.shape[0]), float("inf"))
    for a in gv.values:
        shares = value_shares(E, mask, label_emb, gv.reference[a], gv.reference_value[a], len(gv.values[a]))
        lv = gv.label_value[a]
        named = torch.as_tensor(np.flatnonzero(lv >= 0))
        # a label naming values of several guarded attributes is as supported as its weakest
        block[:, named] = torch.minimum(block[:, named], shares[:, torch.as_tensor(lv[lv >= 0])])
    return block
