"""Shared machinery of the attribution methods: targets, per-(SAE, head) constants, and the
chunked driver that keeps memory bounded.

Every score in this package has the shape

    R[n, t, j] = Aq[n, j] * (M[j] . u_t) + sum_m F[n, t, m] * G[n, m, j]          (*)

for the k active latents j of sample n: one latent x output matrix product M @ u^T that
depends on neither the sample nor the point x (computed once per prompt chunk, only for
latents active somewhere in the batch), plus a rank-m correction built from per-sample
scalars. Kernels (in ``exact``, ``baselines``, ``integrated``) only say what M, Aq, F and G
are; this module loops over prompt and sample chunks.

What is materialised (documented because N=1000 x T=21,843 must fit a 24 GB machine):

* the sparse code (indices and activations, N x k) and per-sample state, about
  N x (2 d_post + 6 k) numbers (times the number of steps for integrated gradients);
* M restricted to the latents active in the batch (U x d_post) and, per prompt chunk, the
  product M_U @ u_c^T (U x chunk_t);
* per (sample chunk, prompt chunk) temporaries of chunk_n x chunk_t x k;
* the output: all of (N, T, k) by default; ``top_n=`` keeps (N, T, n); ``on_chunk=`` keeps
  nothing and hands each (chunk_n, chunk_t, k) block to a callback.

Device and precision: everything runs on the SAE's device (``device=`` overrides), so a
CUDA SAE computes on the GPU. No autocast: the scores are computed in ``dtype`` (default
x's, float32 for feature caches), since bfloat16 would lose the 1e-5 agreement with autograd
that the tests hold the closed form to.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..finite import NonFiniteRows, require_finite
from ..head import Head
from ..sae.model import EncoderOutput, TopKSAE
from .result import Attribution, TopAttribution

ChunkCallback = Callable[[slice, slice, Attribution], None]
"""``on_chunk(n_slice, t_slice, block)``: receives each (samples x outputs) block of scores."""

DEFAULT_CHUNK_BYTES = 256 * 2**20
"""Soft budget for each large temporary (M_U @ u_c^T, and one sample x prompt block)."""


# ----------------------------------------------------------------------------- targets


class Readout(NamedTuple):
    """A linear readout of the image embedding z = head(x) in place of a text prompt:

        y_t(x) = w_t . z + c_t            (normalize=False)
        y_t(x) = w_t . z / |z| + c_t      (normalize=True; a classifier on unit-norm embeddings)

    e.g. the logit of a logistic-regression probe (the melanoma case, Sec. 5.4). A cosine
    with a text embedding t is the special case w = t/|t|, c = 0, normalize=True.
    """

    weight: torch.Tensor
    """(T, d_post) or (d_post,) readout weights w_t."""

    bias: Any = 0.0
    """(T,), scalar or None: intercepts c_t (they shift y but never the scores' gradients)."""

    normalize: bool = False
    """Apply the readout to z/|z| instead of z."""


@dataclass(frozen=True)
class Target:
    """Outputs y_t(z) = u_t . (z/|z| if normalized else z) + bias_t, t = 1..T."""

    u: torch.Tensor  # (T, d_post)
    bias: torch.Tensor  # (T,)
    normalized: bool
    is_cosine: bool

    @property
    def n_outputs(self) -> int:
        return self.u.shape[0]

    def output(self, z: torch.Tensor) -> torch.Tensor:
        """(N, d_post) embeddings -> (N, T) outputs y."""
        zz = F.normalize(z, dim=-1) if self.normalized else z
        return zz @ self.u.T + self.bias


def as_target(text: torch.Tensor | Readout, d_post: int, dtype: torch.dtype, device: torch.device) -> Target:
    """Text embeddings (T, d_post) -> cosine target; a :class:`Readout` -> linear target."""
    if isinstance(text, Readout):
        w = torch.as_tensor(text.weight)
        if w.ndim == 1:
            w = w[None]
        if w.ndim != 2 or w.shape[1] != d_post:
            raise ValueError(f"Readout.weight must be (T, d_post={d_post}) or (d_post,), got {tuple(text.weight.shape)}")
        w = w.to(device, dtype)
        bias = torch.zeros(w.shape[0], dtype=dtype, device=device) if text.bias is None else \
            torch.as_tensor(text.bias).to(device, dtype).reshape(-1)
        if bias.numel() == 1:
            bias = bias.expand(w.shape[0]).clone()
        if bias.shape != (w.shape[0],):
            raise ValueError(f"Readout.bias must be a scalar or ({w.shape[0]},), got {tuple(bias.shape)}")
        return Target(w, bias, bool(text.normalize), False)
    if not isinstance(text, torch.Tensor):
        raise TypeError(f"text must be a (T, d_post) tensor of text embeddings or a Readout, got {type(text).__name__}")
    if text.ndim == 1:
        raise ValueError(f"text must be (T, d_post={d_post}); got a vector of shape {tuple(text.shape)} — use text[None]")
    if text.ndim != 2 or text.shape[1] != d_post:
        raise ValueError(f"text embeddings must be (T, d_post={d_post}), got {tuple(text.shape)}")
    t = text.detach().to(device, dtype)
    norms = t.norm(dim=1, keepdim=True)
    if (norms == 0).any():
        raise ValueError(f"text embedding {int((norms[:, 0] == 0).nonzero()[0])} is all zeros; its cosine is undefined")
    return Target(t / norms, torch.zeros(t.shape[0], dtype=dtype, device=device), True, True)


# ------------------------------------------------------------------ per (SAE, head) constants


@dataclass(eq=False)
class Prepared:
    """Constants of one (SAE, head, dtype, device): everything in (*) that depends on neither
    the sample nor the prompt. Built once and cached (see :func:`prepare`)."""

    V: torch.Tensor  # (d_sae, d) decoder rows v_j
    b: torch.Tensor  # (d,) SAE bias b
    gamma: torch.Tensor
    beta: torch.Tensor
    proj: torch.Tensor  # (d, d_post)
    ln_eps: float
    _lazy: dict = field(default_factory=dict, repr=False)

    @property
    def d(self) -> int:
        return self.V.shape[1]

    def _get(self, name: str, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        if name not in self._lazy:
            self._lazy[name] = fn()
        return self._lazy[name]

    @property
    def P(self) -> torch.Tensor:
        """(d_sae, d_post): (gamma * v_j) @ W_proj, the exact method's latent x output matrix."""
        return self._get("P", lambda: (self.V * self.gamma) @ self.proj)

    @property
    def vsum(self) -> torch.Tensor:
        """(d_sae,): sum_i v_ji (enters through the LayerNorm mean)."""
        return self._get("vsum", lambda: self.V.sum(dim=1))

    @property
    def vnorm(self) -> torch.Tensor:
        """(d_sae,): |v_j|."""
        return self._get("vnorm", lambda: self.V.norm(dim=1))

    @property
    def p1(self) -> torch.Tensor:
        """(d_post,): gamma @ W_proj."""
        return self._get("p1", lambda: self.gamma @ self.proj)

    @property
    def c_beta(self) -> torch.Tensor:
        """(d_post,): beta @ W_proj, the LayerNorm bias after projection."""
        return self._get("c_beta", lambda: self.beta @ self.proj)

    def layer_norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.d,), self.gamma, self.beta, self.ln_eps)

    @property
    def lens(self) -> torch.Tensor:
        """(d_sae, d_post): v~_j = LayerNorm_{gamma,beta}[v_j] W_proj, the Logit Lens embedding
        of each latent alone (Eq. 3, App. B Eq. 20), with the model's own LayerNorm."""
        def make() -> torch.Tensor:
            out = torch.empty(self.V.shape[0], self.proj.shape[1], dtype=self.V.dtype, device=self.V.device)
            step = max(1, DEFAULT_CHUNK_BYTES // (self.V.element_size() * self.d * 2))
            for i in range(0, self.V.shape[0], step):
                out[i:i + step] = self.layer_norm(self.V[i:i + step]) @ self.proj
            return out
        return self._get("lens", make)

    @property
    def lens_norm(self) -> torch.Tensor:
        """(d_sae,): |v~_j|."""
        return self._get("lens_norm", lambda: self.lens.norm(dim=1))

    @property
    def lens_unit(self) -> torch.Tensor:
        """(d_sae, d_post): v~_j / |v~_j|."""
        return self._get("lens_unit", lambda: self.lens / self.lens_norm.clamp_min(torch.finfo(self.V.dtype).tiny)[:, None])

    @property
    def vcentered_norm(self) -> torch.Tensor:
        """(d_sae,): |v_j - mean(v_j)| (paper Eq. 31)."""
        return self._get("vcn", lambda: (self.V - self.V.mean(dim=1, keepdim=True)).norm(dim=1))


_CACHE: "OrderedDict[tuple, tuple[weakref.ref, weakref.ref, Prepared]]" = OrderedDict()
_CACHE_SIZE = 2


def _tensor_key(t: torch.Tensor) -> tuple:
    # data_ptr catches re-assigned parameters, _version catches in-place updates (optimizer steps).
    return (t.data_ptr(), t._version, tuple(t.shape), t.dtype)


def prepare(sae: TopKSAE, head: Head, dtype: torch.dtype | None = None,
            device: torch.device | str | None = None) -> Prepared:
    """Cached per-(SAE, head) constants in ``dtype`` on ``device``.

    The cache holds the last two combinations and is invalidated when either module's
    tensors are replaced or modified in place; identity is checked through weak references,
    so a freed SAE never aliases a new one.
    """
    if not isinstance(sae, TopKSAE):
        raise TypeError(f"sae must be a TopKSAE, got {type(sae).__name__}")
    if not isinstance(head, Head):
        raise TypeError(f"head must be a clipattr_utils.head.Head, got {type(head).__name__}")
    if sae.d_in != head.d_pre:
        raise ValueError(f"SAE width d_in={sae.d_in} does not match the head's d_pre={head.d_pre}")
    dtype = dtype or sae.W_dec.dtype
    device = torch.device(device) if device is not None else sae.W_dec.device
    key = (id(sae), id(head), _tensor_key(sae.W_dec), _tensor_key(sae.b_dec), _tensor_key(head.gamma),
           _tensor_key(head.beta), _tensor_key(head.proj), head.eps, dtype, str(device))
    hit = _CACHE.get(key)
    if hit is not None and hit[0]() is sae and hit[1]() is head:
        _CACHE.move_to_end(key)
        return hit[2]
    with torch.no_grad():
        cast = lambda t: t.detach().to(device=device, dtype=dtype)  # noqa: E731
        prep = Prepared(cast(sae.W_dec), cast(sae.b_dec), cast(head.gamma), cast(head.beta), cast(head.proj), head.eps)
    _CACHE[key] = (weakref.ref(sae), weakref.ref(head), prep)
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return prep


# --------------------------------------------------------------------- sample-side state


class LNState(NamedTuple):
    """Forward quantities of the head at points x (N, d)."""

    sigma: torch.Tensor  # (N,) sqrt(var(x) + ln_eps), biased variance as torch LayerNorm
    xhat: torch.Tensor  # (N, d) (x - mean) / sigma
    zb: torch.Tensor  # (N, d_post) (gamma * xhat) @ W_proj  (= z - beta @ W_proj)
    z: torch.Tensor  # (N, d_post) head(x)
    znorm: torch.Tensor  # (N,) |z|
    zhat: torch.Tensor  # (N, d_post)


def ln_state(prep: Prepared, x: torch.Tensor) -> LNState:
    mu = x.mean(dim=1, keepdim=True)
    xc = x - mu
    sigma = torch.sqrt((xc * xc).mean(dim=1) + prep.ln_eps)
    xhat = xc / sigma[:, None]
    zb = (xhat * prep.gamma) @ prep.proj
    z = zb + prep.c_beta
    znorm = z.norm(dim=1)
    return LNState(sigma, xhat, zb, z, znorm, z / znorm[:, None])


def _rows(x: Any, start: int, stop: int) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x[start:stop]
    return x.read(start, stop)


def _n_rows(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        if x.ndim != 2:
            raise ValueError(f"x must be (N, d_pre) class tokens, got shape {tuple(x.shape)}")
        return x.shape[0]
    if hasattr(x, "read") and hasattr(x, "n"):
        return int(x.n)
    raise TypeError(f"x must be an (N, d_pre) tensor or a FeatureCache, got {type(x).__name__}")


# ----------------------------------------------------------------------------- kernels


class Kernel(Protocol):
    """One attribution method in the form (*)."""

    name: str

    def latent_matrix(self, prep: Prepared, target: Target) -> torch.Tensor | None:
        """M (d_sae, d_post), or None when scores do not depend on the prompt."""

    def state(self, prep: Prepared, target: Target, x: torch.Tensor, idx: torch.Tensor,
              a: torch.Tensor, rows: slice) -> dict[str, torch.Tensor]:
        """Per-sample tensors for a block of samples (all with leading dimension Nc)."""

    def combine(self, prep: Prepared, target: Target, t_slice: slice, st: dict[str, torch.Tensor],
                qg: torch.Tensor | None, out: torch.Tensor | None = None) -> torch.Tensor:
        """(Nc, Tc, k) scores from state and the gathered M[j] . u_t (Nc, Tc, k) block,
        written into ``out`` when given."""


def affine(qg: torch.Tensor, aq: torch.Tensor, f: torch.Tensor, g: torch.Tensor,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """qg * aq[:, None, :] + f @ g for (Nc,Tc,k), (Nc,k), (Nc,Tc,m), (Nc,m,k), written into
    ``out`` when given (reusing memory avoids page-faulting a fresh block per chunk)."""
    out = torch.mul(qg, aq[:, None, :], out=out) if out is not None else qg * aq[:, None, :]
    if f.shape[-1] <= 4:
        # A batched matmul with inner width <= 4 is slower than a few fused passes.
        for m in range(f.shape[-1]):
            out.addcmul_(f[:, :, m:m + 1], g[:, None, m, :])
        return out
    return out.baddbmm_(f, g)


# ------------------------------------------------------------------------------ driver


_NONFINITE_HINT = "a NaN row gets NaN scores on arbitrary latents (top-k of NaN); drop those rows"


def _resolve_code(x: Any, sae: TopKSAE, code: Any, n: int, chunk: int, device: torch.device,
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    if code is None:
        idx, val = [], []
        bad = NonFiniteRows()
        with torch.no_grad():
            for s in range(0, n, chunk):
                xs = _rows(x, s, min(n, s + chunk))
                bad.add(xs, s)
                enc = sae.encode(xs.to(sae.W_enc.device, sae.W_enc.dtype))
                idx.append(enc.indices.to(device))
                val.append(enc.values.to(device, dtype))
        bad.raise_if_any("x", n, _NONFINITE_HINT)
        if not idx:
            return torch.empty(0, sae.k, dtype=torch.long, device=device), torch.empty(0, sae.k, dtype=dtype, device=device)
        return torch.cat(idx), torch.cat(val)
    if isinstance(code, EncoderOutput) or (isinstance(code, tuple) and len(code) == 2):
        idx, val = code
    else:
        raise TypeError(f"code must be an EncoderOutput (indices, values), got {type(code).__name__}")
    if idx.shape != val.shape or idx.ndim != 2 or idx.shape[0] != n:
        raise ValueError(f"code must hold (N={n}, k) indices and values, got {tuple(idx.shape)} and {tuple(val.shape)}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= sae.d_sae):
        raise ValueError(f"code.indices out of range for d_sae={sae.d_sae}")
    require_finite(val.detach(), "code.values", hint=_NONFINITE_HINT)
    return idx.detach().to(device, torch.long), val.detach().to(device, dtype)


def run(
    kernel: Kernel,
    x: Any,
    sae: TopKSAE,
    head: Head,
    text: torch.Tensor | Readout,
    *,
    code: EncoderOutput | None = None,
    chunk_n: int | None = None,
    chunk_t: int | None = None,
    top_n: int | None = None,
    on_chunk: Callable[[slice, slice, Attribution], None] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Attribution | TopAttribution | None:
    """Evaluate ``kernel`` for all samples x outputs in bounded-memory chunks.

    Returns the full :class:`Attribution` (default), a :class:`TopAttribution` (``top_n``),
    or None when ``on_chunk(n_slice, t_slice, Attribution block)`` consumes the blocks.
    """
    if top_n is not None and on_chunk is not None:
        raise ValueError("pass either top_n or on_chunk, not both")
    prep, target, idx, a, dtype, device = resolve_inputs(x, sae, head, text, code, dtype, device)
    n = idx.shape[0]
    T, k, item = target.n_outputs, idx.shape[1], torch.finfo(dtype).bits // 8
    if top_n is not None and not 0 < top_n <= k:
        raise ValueError(f"top_n must be in 1..k={k}, got {top_n}")
    # Per-sample state holds a (k, d) gather plus a few (d,)-vectors per point.
    points = int(getattr(kernel, "points_per_sample", 1))
    state_chunk = max(1, DEFAULT_CHUNK_BYTES // (item * prep.d * (2 * k + 4 * points)))

    with torch.no_grad():
        parts: list[dict[str, torch.Tensor]] = []
        bad = NonFiniteRows()  # x was checked when encoded; not when the caller passed code=
        for s in range(0, n, state_chunk):
            e = min(n, s + state_chunk)
            xs = _rows(x, s, e).to(device, dtype)
            if xs.shape[1] != prep.d:
                raise ValueError(f"x must be (N, d_pre={prep.d}) class tokens, got rows of width {xs.shape[1]}")
            bad.add(xs, s)
            parts.append(kernel.state(prep, target, xs, idx[s:e], a[s:e], slice(s, e)))
        bad.raise_if_any("x", n, _NONFINITE_HINT)
        state = {key: torch.cat([p[key] for p in parts]) for key in parts[0]} if parts else {}

        M = kernel.latent_matrix(prep, target)
        pos, M_u, n_u = None, None, 1
        if M is not None and n:
            present = torch.zeros(M.shape[0], dtype=torch.bool, device=device)
            present[idx] = True
            n_u = int(present.sum())
            if 2 * n_u > M.shape[0]:
                M_u, pos = M, idx  # most latents are active: a restricted copy would not pay
            else:
                remap = torch.cumsum(present, 0) - 1
                M_u, pos = M[present], remap[idx]
                n_u = M_u.shape[0]
        width = k * 3 + int(getattr(kernel, "extra_width", 0))
        if chunk_t is None:
            chunk_t = max(1, min(T, DEFAULT_CHUNK_BYTES // (item * n_u)))
        if chunk_n is None:
            chunk_n = max(1, min(max(n, 1), DEFAULT_CHUNK_BYTES // (item * chunk_t * width)))
        if chunk_t < 1 or chunk_n < 1:
            raise ValueError(f"chunk_n and chunk_t must be >= 1, got {chunk_n}, {chunk_t}")
        chunk_n, chunk_t = min(chunk_n, max(n, 1)), min(chunk_t, max(T, 1))

        out_vals = out_ids = None
        if on_chunk is None:
            m = top_n or k
            out_vals = torch.empty(n, T, m, dtype=dtype, device=device)
            if top_n is not None:
                out_ids = torch.empty(n, T, m, dtype=torch.long, device=device)
        # Reused scratch: freshly allocated multi-100-MB blocks cost page faults every chunk.
        block = chunk_n * chunk_t * k
        gather_buf = torch.empty(block if M_u is not None else 0, dtype=dtype, device=device)
        need_obuf = on_chunk is None and (top_n is not None or chunk_t < T)
        out_buf = torch.empty(block if need_obuf else 0, dtype=dtype, device=device)
        blocks = [(t0, n0) for t0 in range(0, T, chunk_t) for n0 in range(0, n, chunk_n)]
        bar = tqdm(total=len(blocks), desc=kernel.name, disable=not progress or len(blocks) < 2)
        q_c, q_t0 = None, None
        for t0, n0 in blocks:
            t1, n1 = min(T, t0 + chunk_t), min(n, n0 + chunk_n)
            ts, ns = slice(t0, t1), slice(n0, n1)
            nc, tc = n1 - n0, t1 - t0
            qg = None
            if M_u is not None:
                if q_t0 != t0:
                    q_c, q_t0 = M_u @ target.u[ts].T, t0  # (U, Tc)
                rows = gather_buf[: nc * k * tc].view(nc * k, tc)
                torch.index_select(q_c, 0, pos[ns].reshape(-1), out=rows)
                qg = rows.view(nc, k, tc).transpose(1, 2)  # (Nc, Tc, k) view
            st = {key: v[ns] for key, v in state.items()}
            if on_chunk is not None:
                on_chunk(ns, ts, Attribution(idx[ns], kernel.combine(prep, target, ts, st, qg)))
            elif top_n is not None:
                vals = kernel.combine(prep, target, ts, st, qg, out_buf[: nc * tc * k].view(nc, tc, k))
                v, p = vals.topk(top_n, dim=-1, sorted=True)
                out_vals[ns, ts] = v
                out_ids[ns, ts] = idx[ns][:, None, :].expand(-1, tc, -1).gather(-1, p)
            elif tc == T:
                kernel.combine(prep, target, ts, st, qg, out_vals[ns])  # contiguous slice: no copy
            else:
                out_vals[ns, ts] = kernel.combine(prep, target, ts, st, qg, out_buf[: nc * tc * k].view(nc, tc, k))
            bar.update(1)
        bar.close()
    if on_chunk is not None:
        return None
    if top_n is not None:
        return TopAttribution(out_ids, out_vals)
    return Attribution(idx, out_vals)


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def constant_over_outputs(
    scores: torch.Tensor,
    idx: torch.Tensor,
    n_outputs: int,
    *,
    top_n: int | None = None,
    on_chunk: Callable[[slice, slice, Attribution], None] | None = None,
    chunk_n: int | None = None,
) -> Attribution | TopAttribution | None:
    """Emit prompt-independent (N, k) scores in the same three output modes as :func:`run`,
    as broadcast views over the T outputs (no (N, T, k) copy)."""
    n, k = scores.shape
    if top_n is not None and on_chunk is not None:
        raise ValueError("pass either top_n or on_chunk, not both")
    if on_chunk is not None:
        step = chunk_n or max(1, n)
        for s in range(0, n, step):
            ns = slice(s, min(n, s + step))
            on_chunk(ns, slice(0, n_outputs), Attribution(idx[ns], scores[ns, None, :].expand(-1, n_outputs, -1)))
        return None
    if top_n is not None:
        if not 0 < top_n <= k:
            raise ValueError(f"top_n must be in 1..k={k}, got {top_n}")
        v, p = scores.topk(top_n, dim=-1, sorted=True)
        ids = idx.gather(-1, p)
        return TopAttribution(ids[:, None, :].expand(-1, n_outputs, -1), v[:, None, :].expand(-1, n_outputs, -1))
    return Attribution(idx, scores[:, None, :].expand(-1, n_outputs, -1))


def resolve_inputs(x: Any, sae: TopKSAE, head: Head, text: torch.Tensor | Readout, code: Any,
                   dtype: torch.dtype | None, device: Any) -> tuple[Prepared, Target, torch.Tensor, torch.Tensor, torch.dtype, torch.device]:
    """Shared validation for methods that do not need :func:`run`: constants, target and code."""
    if not isinstance(sae, TopKSAE):
        raise TypeError(f"sae must be a TopKSAE, got {type(sae).__name__}")
    if not isinstance(head, Head):
        raise TypeError(f"head must be a clipattr_utils.head.Head, got {type(head).__name__}")
    n = _n_rows(x)
    if isinstance(x, torch.Tensor) and x.shape[1] != head.d_pre:
        raise ValueError(f"x must be (N, d_pre={head.d_pre}) class tokens, got {tuple(x.shape)}")
    if dtype is None:
        dtype = x.dtype if isinstance(x, torch.Tensor) and x.dtype.is_floating_point else torch.float32
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    device = torch.device(device) if device is not None else sae.W_dec.device
    prep = prepare(sae, head, dtype, device)
    target = as_target(text, head.d_post, dtype, device)
    chunk = max(1, DEFAULT_CHUNK_BYTES // ((torch.finfo(dtype).bits // 8) * sae.k * prep.d * 2))
    idx, a = _resolve_code(x, sae, code, n, chunk, device, dtype)
    return prep, target, idx, a, dtype, device


__all__ = ["ChunkCallback", "Readout", "Target", "Prepared", "prepare", "as_target", "run", "ln_state", "LNState",
           "affine", "DEFAULT_CHUNK_BYTES", "check_positive_int", "constant_over_outputs", "resolve_inputs"]
