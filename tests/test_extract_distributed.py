"""Sharded extraction on torchrun (gloo, 2 CPU processes) and the mergeable passes.

References are independent single-process runs: `features.extract` without shards, and the
single-pass `top_activating`, `mining.expected_relevance` and `sae.evaluate`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clipattr_utils as ca
from clipattr_utils import distributed, features, mining
from clipattr_utils.data import ImageFolder, TensorImageSet
from clipattr_utils.features import FeatureCache
from clipattr_utils.labeling.top import TopSamples, merge, top_activating
from clipattr_utils.sae.metrics import accumulate

REPO = Path(__file__).resolve().parent.parent
N_IMAGES, BATCH = 48, 5  # 10 batches: rank 0 rows [0, 25), rank 1 rows [25, 48)
# Class moments: a shard scores its rows in other float32 batches than a single pass does (the
# moments themselves merge in float64), so they agree to float32 rounding of the relevance.
REL_TOL = dict(rtol=1e-5, atol=1e-8)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != features.EXIT_HOOK_ENV}
    # One thread per process in every run compared, so CPU kernels reduce in the same order.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)
    return env


def _torchrun(args: list[str], **env: str) -> subprocess.CompletedProcess:
    """2 ranks on a free port (--standalone); on a timeout the whole launch, workers included, is killed."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun {args[:2]} timed out; stderr tail:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    lines = ["filename,label"]
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
        lines.append(f"{i:03d}.png,{i % 3}")
    (root.parent / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def _cli_args(root: Path, cache_dir: Path) -> list[str]:
    return ["--model", "sandbox", "--dataset", "folder", "--root", str(root), "--csv", str(root.parent / "labels.csv"),
            "--cache-dir", str(cache_dir), "--batch-size", str(BATCH), "--num-workers", "0"]


@pytest.fixture(scope="module")
def single(image_folder, tmp_path_factory) -> FeatureCache:
    """The 1-process reference, in this process, on one thread like each torchrun rank."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        clip = ca.load_clip("sandbox")
        image_set = ImageFolder(image_folder, labels_csv=image_folder.parent / "labels.csv")
        return features.extract(clip, image_set, tmp_path_factory.mktemp("single"), batch_size=BATCH, num_workers=0,
                                progress=False)
    finally:
        torch.set_num_threads(threads)


def _assert_same_cache(cache: FeatureCache, ref: FeatureCache) -> None:
    assert cache.path.name == ref.path.name  # the folder name carries the key hash
    assert cache.key == ref.key and cache.meta["key_full"] == ref.meta["key_full"]
    for name in ("features.npy", "labels.npy", "ids.json"):
        assert (cache.path / name).read_bytes() == (ref.path / name).read_bytes(), name
    assert cache.meta["n"] == ref.meta["n"] == N_IMAGES and cache.meta["skipped"] == ref.meta["skipped"] == []


def test_torchrun_kill_resume_and_sharded_passes(image_folder, single, tmp_path):
    """Two launches (each costs seconds of imports): one whose rank 1 dies mid-shard, then a
    relaunch that resumes, finishes the cache and runs the three sharded passes on it."""
    cache_dir = tmp_path / "cache"
    crashed = _torchrun(["-m", "clipattr_utils.extract", *_cli_args(image_folder, cache_dir), "--no-progress"],
                        **{features.EXIT_HOOK_ENV: "1:2"})
    assert crashed.returncode != 0
    (work,) = cache_dir.iterdir()
    assert work.name == single.path.name + ".partial", "a crashed job left something that reads as complete"
    with pytest.raises(ValueError, match="unfinished"):
        FeatureCache(work)
    shard1 = json.loads((work / "shards" / "rank-00001-of-00002" / "progress.json").read_text())
    assert (shard1["start"], shard1["next_row"], shard1["stop"]) == (25, 35, 48)  # died after 2 of its 5 batches

    resumed = _torchrun([str(REPO / "tests" / "_dist_passes.py"), str(tmp_path / "out"), "--",
                         *_cli_args(image_folder, cache_dir)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "rank 1 resumes its shard at row 35 of [25, 48)" in resumed.stderr
    assert resumed.stdout.strip() == str(cache_dir / single.path.name)  # rank 0 prints the path, rank 1 nothing
    assert [p.name for p in cache_dir.iterdir()] == [single.path.name]  # no .partial, no shards left
    _assert_same_cache(FeatureCache(cache_dir / single.path.name), single)

    # The passes, sharded over the same 2 ranks and merged, against single passes.
    torch.manual_seed(0)
    sae = ca.TopKSAE(single.d, 64, k=4).eval()
    head = ca.load_clip("sandbox").head
    text = torch.nn.functional.normalize(torch.randn(3, head.d_post, generator=torch.Generator().manual_seed(1)),
                                         dim=-1)
    top = top_activating(single, sae, 6, chunk_rows=8, progress=False)
    rel = mining.expected_relevance(single.read(), single.labels, sae, head, text, chunk_n=7, progress=False)
    met = ca.evaluate_sae(sae, single, batch_size=8, progress=False)
    for rank in (0, 1):
        got = TopSamples.load(tmp_path / "out" / f"rank{rank}")
        assert got.ranges == ((0, 24), (24, 48))  # really two shards
        _assert_same_top(got, top)
        p = np.load(tmp_path / "out" / f"rank{rank}" / "passes.npz")
        assert np.array_equal(p["count"], rel.count) and np.array_equal(p["active"], rel.active.numpy())
        np.testing.assert_allclose(p["mean"], rel.mean.numpy(), **REL_TOL)
        np.testing.assert_allclose(p["std"], rel.std.numpy(), **REL_TOL)
        np.testing.assert_allclose(p["output_mean"], rel.output_mean, **REL_TOL)
        np.testing.assert_allclose(p["output_std"], rel.output_std, **REL_TOL)
        assert np.array_equal(p["counts"], met.counts)
        np.testing.assert_allclose(p["summary"], [met.n, met.fvu, met.mse, met.cosine, met.l0], rtol=1e-12)
        mismatch = tmp_path / "out" / f"rank{rank}" / "mismatch.txt"
        assert mismatch.is_file() and "ranks computed different cache keys" in mismatch.read_text()
    assert not (tmp_path / "out" / "mismatch").exists()  # refused before anything was written


# ---------------------------------------------------------------------------- in-process shards


class _Broken(TensorImageSet):
    bad = frozenset({3, 17})

    def load_image(self, i):
        if i in self.bad:
            raise OSError(f"truncated image {i}")
        return super().load_image(i)


def test_explicit_ranks_without_a_process_group(clip_tiny, tmp_path):
    rng = np.random.default_rng(3)
    images = _Broken([rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(20)], labels=range(20))
    with pytest.warns(features.SkippedImagesWarning):
        ref = features.extract(clip_tiny, images, tmp_path / "one", batch_size=6, num_workers=0, progress=False)
    # 4 batches over 5 ranks: rank 0 owns none; the call finishing the last shard finishes the cache.
    got = {}
    with pytest.warns(features.SkippedImagesWarning):
        for rank in (4, 1, 0, 3, 2):
            got[rank] = features.extract(clip_tiny, images, tmp_path / "five", batch_size=6, num_workers=0,
                                         progress=False, rank=rank, world_size=5)
    assert [got[r] is None for r in (4, 1, 0, 3)] == [True] * 4
    cache = got[2]
    assert cache.path.name == ref.path.name and cache.n == 18
    for name in ("features.npy", "labels.npy", "ids.json"):
        assert (cache.path / name).read_bytes() == (ref.path / name).read_bytes(), name
    assert cache.meta["skipped"] == ref.meta["skipped"] and len(ref.meta["skipped"]) == 2
    assert [p.name for p in (tmp_path / "five").iterdir()] == [ref.path.name]
    # Done: any rank now just opens it.
    assert features.extract(clip_tiny, images, tmp_path / "five", batch_size=6, num_workers=0, progress=False,
                            rank=0, world_size=5).path == cache.path


def test_shard_layout_mismatches_are_errors(clip_tiny, tmp_path):
    rng = np.random.default_rng(4)
    images = TensorImageSet([rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(12)])
    kw = dict(batch_size=4, num_workers=0, progress=False)
    assert features.extract(clip_tiny, images, tmp_path, rank=0, world_size=2, **kw) is None
    with pytest.raises(RuntimeError, match="started with world_size=2"):
        features.extract(clip_tiny, images, tmp_path, rank=0, world_size=3, **kw)
    with pytest.raises(RuntimeError, match=r"sharded extraction \(world_size=2\)"):
        features.extract(clip_tiny, images, tmp_path, **kw)
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        features.extract(clip_tiny, images, tmp_path, rank=2, world_size=2, **kw)
    with pytest.raises(ValueError, match="both rank and world_size"):
        features.extract(clip_tiny, images, tmp_path, rank=1, **kw)


def test_shard_layout_is_whole_batches():
    assert features.shard_layout(48, 5, 2) == [(0, 25), (25, 48)]
    assert features.shard_layout(20, 6, 5) == [(0, 0), (0, 6), (6, 12), (12, 18), (18, 20)]
    for n, b, w in [(1, 3, 4), (100, 7, 3), (64, 8, 8)]:
        ranges = features.shard_layout(n, b, w)
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(s1 == e0 for (_, e0), (s1, _) in zip(ranges, ranges[1:]))
        assert all(s % b == 0 for s, _ in ranges if s < n)


# ---------------------------------------------------------------------------- merges


def _assert_same_top(got: TopSamples, ref: TopSamples) -> None:
    assert torch.equal(got.rows, ref.rows) and torch.equal(got.count, ref.count)
    assert torch.equal(torch.nan_to_num(got.values, nan=-1), torch.nan_to_num(ref.values, nan=-1))
    assert (got.sample_ids == ref.sample_ids).all() and got.n_rows == ref.n_rows
    torch.testing.assert_close(got.total, ref.total, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.total_sq, ref.total_sq, rtol=1e-12, atol=1e-12)
    assert got.meta == ref.meta


@pytest.fixture(scope="module")
def random_cache(tmp_path_factory):
    torch.manual_seed(5)
    x = torch.randn(203, 48) * 2 + 0.5
    return ca.write_cache(tmp_path_factory.mktemp("rc") / "cache", x, labels=np.arange(203) % 4,
                          ids=[f"img{i}" for i in range(203)])


def _sae(d_in: int, d_sae: int = 40, k: int = 5) -> ca.TopKSAE:
    torch.manual_seed(6)
    sae = ca.TopKSAE(d_in, d_sae, k=k)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.3)
    return sae.eval()


def test_sharded_top_n_merges_to_the_single_pass(random_cache):
    sae = _sae(48)
    ref = top_activating(random_cache, sae, 7, chunk_rows=16, progress=False)
    parts = [distributed.top_activating(random_cache, sae, 7, rank=r, world_size=3, chunk_rows=16, progress=False)
             for r in range(3)]
    assert [p.ranges for p in parts] == [((0, 64),), ((64, 128),), ((128, 203),)]  # whole chunks of 16
    _assert_same_top(merge(merge(parts[0], parts[1]), parts[2]), ref)
    _assert_same_top(merge(parts[2], merge(parts[1], parts[0])), ref)  # order-free


def test_merge_moments_is_chans_update():
    rng = np.random.default_rng(7)
    data = torch.as_tensor(rng.normal(2.0, 3.0, size=(91, 6)))
    a, b, empty = mining.RunningMoments(6), mining.RunningMoments(6), mining.RunningMoments(6)
    a.update(data[:30])
    b.update(data[30:])
    m = distributed.merge_moments(a, b)
    assert m.n == 91
    torch.testing.assert_close(m.mean, data.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m.std(), data.std(0), rtol=1e-12, atol=1e-12)
    same = distributed.merge_moments(empty, m)
    assert same.n == 91 and torch.equal(same.mean, m.mean) and torch.equal(same.m2, m.m2)


def test_sharded_class_statistics_merge_to_the_single_pass(clip_tiny):
    head = clip_tiny.head
    sae = _sae(head.d_pre, 32, 4)
    torch.manual_seed(8)
    x = torch.randn(61, head.d_pre)
    labels = np.array([0] * 20 + [1] * 25 + [3] + [0] * 15)  # class 2 absent, class 3 one row, -1 none
    labels[5] = -1
    text = torch.randn(4, head.d_post)
    ref = mining.expected_relevance(x, labels, sae, head, text, chunk_n=6, progress=False)
    parts = [distributed.expected_relevance(x, labels, sae, head, text, rank=r, world_size=3, chunk_n=6)
             for r in range(3)]
    got = parts[0].merge(parts[1]).merge(parts[2]).result()
    assert np.array_equal(got.count, ref.count) and torch.equal(got.active, ref.active)
    torch.testing.assert_close(got.mean, ref.mean, **REL_TOL)
    torch.testing.assert_close(got.std, ref.std, **REL_TOL)
    np.testing.assert_allclose(got.output_mean, ref.output_mean, **REL_TOL)
    np.testing.assert_allclose(got.output_std, ref.output_std, **REL_TOL)
    assert np.isnan(got.output_mean[2]) and float(got.std[3].abs().max()) == 0.0


def test_sharded_sae_metrics_merge_to_the_single_pass(random_cache):
    sae = _sae(48)
    ref = ca.evaluate_sae(sae, random_cache, batch_size=16, progress=False)
    parts = [distributed.evaluate_sae(sae, random_cache, batch_size=16, rank=r, world_size=4, progress=False)
             for r in range(4)]
    got = parts[0].merge(parts[1]).merge(parts[2].merge(parts[3])).result(ref.min_count)
    assert np.array_equal(got.counts, ref.counts) and (got.n, got.dead, got.frequent) == (ref.n, ref.dead, ref.frequent)
    for field in ("fvu", "mse", "cosine", "l0"):
        assert getattr(got, field) == pytest.approx(getattr(ref, field), rel=1e-12), field
    # and the single pass itself against brute force
    with torch.no_grad():
        idx, val = sae.encode(random_cache.read())
        x, x_hat = random_cache.read().double(), sae.decode(idx, val).double()
    fvu = float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    assert ref.fvu == pytest.approx(fvu, rel=1e-6)  # x_hat in float32, other batches
    assert accumulate(sae, random_cache, 16, progress=False, start=0, stop=0).n == 0
