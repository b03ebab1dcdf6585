"""sae.train: planted-dictionary recovery, one step vs a dense reference, resume, streaming, schedule."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from clipattr_utils.features import write_cache
from clipattr_utils.sae import TopKSAE, TrainConfig, epoch_indices, train
from clipattr_utils.sae import source as sae_source
from clipattr_utils.sae.train import _make_optimizer, _State, _step, auxk_loss, main_loss


def planted(n, d=64, atoms=512, active=4, noise=0.01, seed=0):
    """x = sum of `active` random unit-norm atoms with coefficients in [0.5, 1.5] + noise."""
    g = torch.Generator().manual_seed(seed)
    dictionary = F.normalize(torch.randn(atoms, d, generator=g), dim=1)
    idx = torch.rand(n, atoms, generator=g).topk(active, dim=1).indices
    coef = torch.rand(n, active, generator=g) + 0.5
    x = torch.einsum("na,nad->nd", coef, dictionary[idx]) + noise * torch.randn(n, d, generator=g)
    return x, dictionary


def atoms_found(sae: TopKSAE, dictionary: torch.Tensor, threshold: float = 0.9) -> float:
    cos = F.normalize(sae.W_dec.detach(), dim=1) @ dictionary.T  # (d_sae, atoms)
    return float((cos.max(0).values >= threshold).float().mean())


def test_recovers_planted_dictionary():
    """512 unit atoms in d=64, 4 active per sample, noise 0.01 -> >= 90 % found with cosine >= 0.9.

    Plain MSE with AuxK, 2x overcomplete, lr 1e-2: about 630 steps of batch 256 (a few seconds
    on one thread). The data seed differs from the SAE's, so the init cannot coincide with the atoms.
    """
    x, dictionary = planted(20000, seed=12345)
    cfg = TrainConfig(d_sae=1024, k=4, loss="mse", lr=1e-2, epochs=8, epoch_fraction=1.0, batch_size=256, seed=0)
    init = TopKSAE(64, 1024, 4, generator=torch.Generator().manual_seed(cfg.seed))
    assert atoms_found(init, dictionary) == 0.0, "a random dictionary must not pass the criterion"
    result = train(x, cfg, progress=False, num_threads=1)
    found = atoms_found(result.sae, dictionary)
    assert found >= 0.9, f"found {found:.1%} of the 512 atoms with cosine >= 0.9"
    torch.testing.assert_close(result.sae.decoder_norms(), torch.ones(1024))
    assert len(result.steps) == 8 * 79 and list(result.epochs.epoch) == list(range(1, 9))
    assert result.steps.fvu.iloc[-20:].mean() < 0.5 * result.steps.fvu.iloc[:5].mean()


def dense_step_reference(params, opt, x, k, k_aux, dead, coef):
    """One training step written densely and independently of clipattr_utils.sae."""
    W_enc, W_dec, b_enc, b_dec = params
    pre = (x - b_dec) @ W_enc + b_enc
    val, idx = F.relu(pre).topk(k, dim=1)
    x_hat = torch.zeros_like(pre).scatter(1, idx, val) @ W_dec + b_dec
    loss = (((x - x_hat) ** 2).sum(1) / (x ** 2).sum(1)).mean()  # the default loss, "normalized"
    aval, aidx = F.relu(pre.masked_fill(~dead, float("-inf"))).topk(k_aux, dim=1)
    e = (x - x_hat).detach()
    e_hat = torch.zeros_like(pre).scatter(1, aidx, aval) @ W_dec
    loss = loss + coef * ((e - e_hat) ** 2).sum() / ((e - e.mean(0)) ** 2).sum()
    opt.zero_grad()
    loss.backward()
    with torch.no_grad():
        v = W_dec / W_dec.norm(dim=1, keepdim=True)
        W_dec.grad -= (W_dec.grad * v).sum(1, keepdim=True) * v
    opt.step()
    with torch.no_grad():
        W_dec /= W_dec.norm(dim=1, keepdim=True)


def test_training_step_matches_dense_reference():
    torch.manual_seed(0)
    d, s, k, k_aux = 10, 60, 4, 5
    sae = TopKSAE(d, s, k, generator=torch.Generator().manual_seed(1)).double()
    x = torch.randn(64, d, dtype=torch.float64) + 1.0
    sae.init_bias_(x.mean(0))
    cfg = TrainConfig(d_sae=s, k=k, lr=1e-2, auxk=True, device="cpu")
    opt = _make_optimizer(sae, cfg)
    state = _State(sae, opt, torch.zeros(s, dtype=torch.int64))
    state.since_fired[: s // 2] = 100  # half the latents count as dead (threshold 50)
    dead = state.since_fired >= 50

    ref = [getattr(sae, n).detach().clone().requires_grad_(True) for n in ("W_enc", "W_dec", "b_enc", "b_dec")]
    ref_opt = torch.optim.AdamW(ref, lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    for _ in range(3):
        dead = state.since_fired >= 50
        dense_step_reference(ref, ref_opt, x, k, k_aux, dead.clone(), cfg.auxk_coef)
        row = _step(sae, opt, state, x, cfg, k_aux, 50, None)
    assert row["aux_loss"] > 0
    for name, r in zip(("W_enc", "W_dec", "b_enc", "b_dec"), ref):
        # Adam divides by sqrt(v) + eps: gradients that are 0 in exact arithmetic come out as
        # ~1e-17 in one order of summation and ~1e-16 in another, moving weights by up to
        # lr * 1e-16 / eps = 1e-10 per step. A real error would move them by ~lr = 1e-2.
        torch.testing.assert_close(getattr(sae, name).detach(), r.detach(), rtol=0, atol=1e-7, msg=name)


def test_losses_against_hand_computation():
    x = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    x_hat = torch.tensor([[0.0, 5.0], [2.0, 0.0]])
    # eq10: rows (0.6, 0.8) vs (0, 1) -> 0.36 + 0.04; (1, 0) vs (1, 0) -> 0
    assert float(main_loss(x, x_hat, "eq10")) == pytest.approx(0.2)
    assert float(main_loss(x, 7 * x, "eq10")) == pytest.approx(0.0, abs=1e-12), "eq10 ignores the scale of x_hat"
    # normalized: ||x - x_hat||^2 / ||x||^2 -> (9 + 1) / 25 and 1 / 1
    assert float(main_loss(x, x_hat, "normalized")) == pytest.approx((0.4 + 1.0) / 2)
    assert float(main_loss(x, 7 * x, "normalized")) == pytest.approx(36.0)
    assert float(main_loss(x, x_hat, "mse")) == pytest.approx((9 + 1 + 1) / 2)
    assert float(main_loss(x, x_hat, "fvu")) == pytest.approx(11 / (1 + 1 + 4 + 4))
    e = torch.tensor([[1.0, 0.0], [-1.0, 2.0]])
    assert float(auxk_loss(e, torch.zeros_like(e))) == pytest.approx(6 / (1 + 1 + 1 + 1))


def _small_cfg(**kw):
    base = dict(d_sae=96, k=4, lr=2e-3, epochs=4, epoch_fraction=0.5, batch_size=100, dead_threshold=150, seed=3)
    return TrainConfig(**{**base, **kw})


def _assert_same_sae(a: TopKSAE, b: TopKSAE):
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_resume_equals_uninterrupted(tmp_path):
    x, _ = planted(1200, d=16, atoms=64, active=3, seed=1)
    cfg = _small_cfg()
    full = train(x, cfg, progress=False, num_threads=1)
    assert (full.steps.dead_frac > 0).any() and (full.steps.aux_loss > 0).any(), "AuxK state must be exercised"

    part = train(x, cfg, checkpoint_dir=tmp_path / "ck", stop_after_epoch=2, progress=False, num_threads=1)
    assert len(part.epochs) == 2
    state = json.loads((tmp_path / "ck" / "state.json").read_text())
    assert state["epoch"] == 2 and state["step"] == len(part.steps)
    resumed = train(x, cfg, checkpoint_dir=tmp_path / "ck", progress=False, num_threads=1)
    _assert_same_sae(full.sae, resumed.sae)
    assert resumed.steps.equals(full.steps)
    assert resumed.epochs.drop(columns="seconds").equals(full.epochs.drop(columns="seconds"))
    assert list(resumed.epochs.epoch) == [1, 2, 3, 4]


def test_resume_refuses_other_config_or_data(tmp_path):
    x, _ = planted(600, d=16, atoms=64, active=3, seed=2)
    train(x, _small_cfg(epochs=2), checkpoint_dir=tmp_path / "ck", stop_after_epoch=1, progress=False)
    with pytest.raises(ValueError, match=r"differing fields.*lr"):
        train(x, _small_cfg(epochs=2, lr=1e-3), checkpoint_dir=tmp_path / "ck", progress=False)
    with pytest.raises(ValueError, match="other features"):
        train(x + 1, _small_cfg(epochs=2), checkpoint_dir=tmp_path / "ck", progress=False)


def test_feature_cache_is_streamed_and_matches_tensor(tmp_path, monkeypatch):
    x, _ = planted(1500, d=16, atoms=64, active=3, seed=4)
    cache = write_cache(tmp_path / "cache", x, meta={"model": {"name": "planted"}})
    biggest = []

    class Watched:
        """The cache, recording the largest number of rows any single call returns."""

        n, d, key, meta = cache.n, cache.d, cache.key, cache.meta

        def read(self, start=0, stop=None):
            out = cache.read(start, stop)
            biggest.append(len(out))
            return out

        def take(self, indices):
            out = cache.take(indices)
            biggest.append(len(out))
            return out

    monkeypatch.setattr(sae_source, "STREAM_ROWS", 256)
    cfg = _small_cfg(epochs=2)
    from_cache = train(Watched(), cfg, val_features=Watched(), progress=False, num_threads=1)
    assert max(biggest) <= max(256, cfg.batch_size), "no call may load the whole cache"
    from_tensor = train(x, cfg, progress=False, num_threads=1)
    _assert_same_sae(from_cache.sae, from_tensor.sae)
    assert from_cache.sae.meta["trained_on"]["key"] == cache.key
    assert from_cache.metrics is not None and from_cache.metrics.n == 1500


def test_init_before_any_step():
    x = torch.randn(300, 8) * 2 + 5
    result = train(x, _small_cfg(d_sae=32), stop_after_epoch=0, progress=False)
    sae = result.sae
    torch.testing.assert_close(sae.b_dec.detach(), x.double().mean(0).float())
    assert torch.equal(sae.W_enc.detach(), sae.W_dec.detach().T)  # equal values ...
    assert sae.W_enc.data_ptr() != sae.W_dec.data_ptr()  # ... separate storage
    assert len(result.steps) == 0


def test_lr_schedule_and_epoch_sampling():
    cfg = TrainConfig()
    assert cfg.milestones() == (24, 28)
    lrs = [cfg.lr_at(e) for e in range(30)]
    assert lrs[:24] == [cfg.lr] * 24
    assert lrs[24:28] == pytest.approx([cfg.lr * 0.1] * 4) and lrs[28:] == pytest.approx([cfg.lr * 0.01] * 2)
    assert TrainConfig(epochs=15).milestones() == (12, 14)
    assert TrainConfig.paper_imagenet().lr == 1e-6 and TrainConfig.paper_isic().milestones() == (17, 23)

    a, b = epoch_indices(1000, cfg, 0), epoch_indices(1000, cfg, 1)
    assert len(a) == 100 and len(set(a.tolist())) == 100
    assert not torch.equal(a, b) and torch.equal(a, epoch_indices(1000, cfg, 0))

    x = torch.randn(400, 8)
    res = train(x, _small_cfg(d_sae=32, epochs=5, lr_decay_epochs=(2, 4)), progress=False)
    assert res.epochs.lr.tolist() == pytest.approx([2e-3, 2e-3, 2e-4, 2e-4, 2e-5])
    assert set(res.steps.columns) >= {"epoch", "step", "lr", "loss", "aux_loss", "fvu", "l0", "dead_frac"}


@pytest.mark.parametrize("field, value", [("k", 0), ("loss", "l1"), ("epoch_fraction", 0.0), ("batch_size", 0),
                                          ("lr_decay_epochs", (40,)), ("lr", -1.0)])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_input_errors():
    with pytest.raises(ValueError, match=r"features must be an \(N, d\) tensor"):
        train(torch.zeros(10), _small_cfg(), progress=False)
    with pytest.raises(ValueError, match="val_features have width 5"):
        train(torch.zeros(10, 4), _small_cfg(), val_features=torch.zeros(3, 5), progress=False)
    with pytest.raises(TypeError, match="features must be"):
        train([[1.0]], _small_cfg(), progress=False)


def test_nonfinite_rows_are_refused_before_any_step():
    """One NaN or inf row used to turn every weight NaN while train returned normally."""
    x, _ = planted(500, d=16, atoms=64, active=3, seed=5)
    x[7, 3], x[300, 0] = float("nan"), float("inf")
    with pytest.raises(ValueError, match=r"^features: 2 of 500 rows hold NaN or inf \(rows 7, 300\)"):
        train(x, _small_cfg(epochs=1), progress=False)
    x[7, 3], x[300, 0] = 0.0, 0.0
    val = x[:50].clone()
    val[49, 1] = float("-inf")
    with pytest.raises(ValueError, match=r"^val_features: 1 of 50 rows hold NaN or inf \(rows 49\)"):
        train(x, _small_cfg(epochs=1), val_features=val, progress=False)


def test_nonfinite_rows_are_refused_on_resume(tmp_path):
    """A resumed run skips the mean pass: its batches are checked instead. The fingerprint
    reads the first and last 256 rows, so a NaN in the middle resumes on "the same" data."""
    x, _ = planted(1000, d=16, atoms=64, active=3, seed=6)
    cfg = _small_cfg(epochs=2, epoch_fraction=1.0)  # every row in every epoch
    train(x, cfg, checkpoint_dir=tmp_path / "ck", stop_after_epoch=1, progress=False)
    x[600, 2] = float("nan")
    with pytest.raises(ValueError, match=r"^features: 1 of 1000 rows hold NaN or inf \(rows 600\)"):
        train(x, cfg, checkpoint_dir=tmp_path / "ck", progress=False)


def test_sae_adamw_equals_plain_adamw_and_updates_in_place():
    """The contiguous alias of W_enc is an implementation detail: same numbers as torch's AdamW."""
    from clipattr_utils.sae.optim import SAEAdamW

    a = TopKSAE(6, 20, 3, generator=torch.Generator().manual_seed(0))
    b = TopKSAE(6, 20, 3, generator=torch.Generator().manual_seed(0))
    assert a.W_enc.stride() == (1, 6)
    ours = SAEAdamW(a, lr=1e-2, weight_decay=0.05)
    plain = torch.optim.AdamW([b.W_enc, b.W_dec, b.b_enc, b.b_dec], lr=1e-2, weight_decay=0.05,
                              foreach=False, fused=False)
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        grads = [torch.randn(p.shape, generator=g) for p in (a.W_enc, a.W_dec, a.b_enc, a.b_dec)]
        ours.zero_grad()
        plain.zero_grad()
        for p, q, gr in zip((a.W_enc, a.W_dec, a.b_enc, a.b_dec), (b.W_enc, b.W_dec, b.b_enc, b.b_dec), grads):
            p.grad, q.grad = gr.clone(), gr.clone()
        ours.step()
        plain.step()
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-6, atol=1e-7, msg=name)
    assert a.W_enc.stride() == (1, 6), "the update happened in place, layout unchanged"
    saved = ours.state_tensors()
    assert saved["optim.W_enc.exp_avg"].shape == (6, 20)
    torch.testing.assert_close(saved["optim.W_enc.exp_avg"], plain.state[b.W_enc]["exp_avg"], rtol=1e-6, atol=1e-7)


def test_patch_token_training_reads_whole_images_tokens_and_refuses_the_wrong_cache(tmp_path):
    """TrainConfig(tokens="patch") (issue 23): every patch token a sample, drawn as whole
    images' tokens up to ``patch_rows``; a patch SAE then reconstructs held-out patch tokens
    better than the class-token SAE does (what notebook 01 reports)."""
    import numpy as np

    from _tiny import tiny_clip
    from clipattr_utils import features
    from clipattr_utils.data import TensorImageSet
    from clipattr_utils.sae import evaluate

    clip = tiny_clip()
    rng = np.random.default_rng(0)
    images = TensorImageSet([rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(160)])
    held = TensorImageSet([rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(40)])
    kw = dict(batch_size=40, num_workers=0, progress=False)
    patches = features.extract(clip, images, tmp_path, what="patch_tokens", **kw)
    classes = features.extract(clip, images, tmp_path, **kw)
    held_patches = features.patch_token_rows(features.extract(clip, held, tmp_path, what="patch_tokens", **kw), 10**6)
    rows = features.patch_token_rows(patches, 16 * 50, seed=3)
    assert rows.shape == (800, 48)
    # every 16 rows are one image's tokens, in grid order
    assert all(any(torch.equal(rows[s:s + 16], patches.patches(i, i + 1)[0]) for i in range(160)) for s in (0, 400))
    assert torch.equal(features.patch_token_rows(patches, 10**6), patches.patches().reshape(-1, 48))
    cfg = dict(d_sae=96, k=8, epochs=20, epoch_fraction=1.0, batch_size=256, lr=3e-3, device="cpu", auxk=False)
    patch_sae = train(patches, TrainConfig(tokens="patch", **cfg), progress=False).sae
    class_sae = train(classes, TrainConfig(**cfg), progress=False).sae
    assert patch_sae.d_in == 48
    fvu = lambda sae: evaluate(sae, held_patches, progress=False).fvu  # noqa: E731
    assert fvu(patch_sae) < 0.8 * fvu(class_sae), (fvu(patch_sae), fvu(class_sae))
    with pytest.raises(ValueError, match="tokens='patch'"):
        train(patches, TrainConfig(**cfg), progress=False)
    with pytest.raises(ValueError, match="what='patch_tokens'"):
        train(classes, TrainConfig(tokens="patch", **cfg), progress=False)
    with pytest.raises(ValueError, match="tokens must be"):
        TrainConfig(tokens="all")
