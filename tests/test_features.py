"""Feature cache: real photos, skipped files, keys, atomic finish, resume after interrupt and kill."""

import collections
import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipattr_utils import features
from clipattr_utils.data import ImageFolder, ImageNetFolder, TensorImageSet
from clipattr_utils.features import FeatureCache, SkippedImagesWarning

from _tiny import InterruptAt, tiny_clip


def _reference_tokens(clip, image_set, indices):
    """Independent path: decode + preprocess by hand, run the blocks, take token 0."""
    visual = clip.model.visual
    images = torch.stack([clip.preprocess(image_set.load_image(i)) for i in indices])
    with torch.no_grad():
        x = visual.transformer(visual._embeds(images))
    return x[:, 0]


def test_extract_real_photos(clip_tiny, imagenet_sample, tmp_path):
    images = ImageNetFolder(imagenet_sample)
    cache = features.extract(clip_tiny, images, tmp_path, batch_size=16, num_workers=0, progress=False)
    assert (cache.n, cache.d) == (105, 48)
    assert cache.ids == [images.sample_id(i) for i in range(105)]
    assert cache.labels.tolist() == images.labels()
    assert cache.meta["skipped"] == [] and cache.meta["complete"] is True
    ref = _reference_tokens(clip_tiny, images, [0, 50, 104])
    torch.testing.assert_close(cache.take([0, 50, 104]), ref, atol=1e-5, rtol=1e-5)
    # The head on cached tokens gives open_clip's own image embeddings.
    batch = torch.stack([clip_tiny.preprocess(images.load_image(i)) for i in range(4)])
    torch.testing.assert_close(clip_tiny.head(cache.read(0, 4)), clip_tiny.encode_image(batch), atol=1e-5, rtol=1e-5)
    chunks = list(cache.iter_chunks(40))
    assert [s for s, _ in chunks] == [0, 40, 80] and torch.equal(torch.cat([c for _, c in chunks]), cache.read())
    assert torch.equal(cache.take([3, 1, 2]), cache.read()[[3, 1, 2]])


def test_cache_reused_only_for_identical_key(clip_tiny, tmp_path):
    rng = np.random.default_rng(0)
    pics = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(6)]
    images = TensorImageSet(pics, labels=[0, 1, 0, 1, 0, 1])
    first = features.extract(clip_tiny, images, tmp_path, batch_size=4, num_workers=0, progress=False)
    again = features.extract(clip_tiny, images, tmp_path, batch_size=4, num_workers=0, progress=False)
    assert again.path == first.path
    other_layer = features.extract(clip_tiny, images, tmp_path, batch_size=4, layer=0, num_workers=0, progress=False)
    other_model = features.extract(tiny_clip(seed=1), images, tmp_path, batch_size=4, num_workers=0, progress=False)
    changed = TensorImageSet(pics[:5] + [255 - pics[5]], labels=[0, 1, 0, 1, 0, 1])
    other_data = features.extract(clip_tiny, changed, tmp_path, batch_size=4, num_workers=0, progress=False)
    relabeled = TensorImageSet(pics, labels=[1, 1, 0, 1, 0, 1])
    other_labels = features.extract(clip_tiny, relabeled, tmp_path, batch_size=4, num_workers=0, progress=False)
    paths = {c.path for c in (first, other_layer, other_model, other_data, other_labels)}
    assert len(paths) == 5
    assert not torch.equal(first.read(), other_layer.read())
    assert torch.equal(first.read(0, 5), other_data.read(0, 5)) and not torch.equal(first.read(5, 6), other_data.read(5, 6))


def test_replaced_photo_of_the_same_size_is_extracted_again(clip_tiny, tmp_path):
    """A photo replaced by another of the same byte size, its modification time kept (cp -p),
    used to get the stale cache's features back."""
    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / f"{i}.jpg", quality=95)
    first = features.extract(clip_tiny, ImageFolder(root), tmp_path / "c", num_workers=0, progress=False)
    path, st = root / "1.jpg", (root / "1.jpg").stat()
    Image.new("RGB", (32, 32), (9, 9, 9)).save(path, quality=95)
    path.write_bytes(path.read_bytes().ljust(st.st_size, b"\0"))  # bytes after the end marker are ignored
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size
    again = features.extract(clip_tiny, ImageFolder(root), tmp_path / "c", num_workers=0, progress=False)
    assert again.path != first.path
    assert torch.equal(again.take([0, 2]), first.take([0, 2])) and not torch.equal(again.take([1]), first.take([1]))


def _folder_with_bad_files(root: Path) -> Path:
    root.mkdir()
    for i in range(5):
        Image.new("RGB", (40, 40), (40 * i, 100, 200)).save(root / f"good{i}.jpg", quality=95)
    Image.new("RGB", (64, 64), (1, 2, 3)).save(root / "full.jpg")
    data = (root / "full.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "full.jpg").unlink()
    (root / "text.png").write_text("this is not an image")
    (root / "empty.jpg").write_bytes(b"")
    return root


def test_bad_files_are_skipped_and_listed(clip_tiny, tmp_path):
    images = ImageFolder(_folder_with_bad_files(tmp_path / "imgs"))
    assert len(images) == 8
    with pytest.warns(SkippedImagesWarning, match="3 of 8 images"):
        cache = features.extract(clip_tiny, images, tmp_path / "cache", batch_size=3, num_workers=0, progress=False)
    assert cache.n == 5 and cache.ids == [f"good{i}.jpg" for i in range(5)]
    assert sorted(s["id"] for s in cache.meta["skipped"]) == ["empty.jpg", "text.png", "truncated.jpg"]
    good = [images.sample_id(i) for i in range(len(images))]
    ref = _reference_tokens(clip_tiny, images, [good.index(f"good{i}.jpg") for i in range(5)])
    torch.testing.assert_close(cache.read(), ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="strict=True.*(empty|text|truncated)"):
        features.extract(clip_tiny, images, tmp_path / "strict", batch_size=3, num_workers=0, strict=True,
                         progress=False)


def test_a_folder_where_no_image_decodes_is_an_error_not_an_empty_cache(clip_tiny, tmp_path):
    """It used to be cached as an empty feature set, with a warning only."""
    root = _folder_with_bad_files(tmp_path / "imgs")
    for good in root.glob("good*.jpg"):
        good.unlink()
    images = ImageFolder(root)
    for _ in range(2):  # and again: nothing was cached, nothing half-made stays in the way
        with pytest.raises(ValueError, match=r"none of the 3 images .* could be decoded \(e.g. [a-z]+\.(jpg|png): "):
            features.extract(clip_tiny, images, tmp_path / "cache", batch_size=2, num_workers=0, progress=False)
        assert list((tmp_path / "cache").iterdir()) == []


def _cache_bytes(path: Path) -> dict:
    return {f: (path / f).read_bytes() for f in features.DATA_FILES}


@pytest.mark.parametrize("name", features.DATA_FILES)
def test_truncated_cache_file_is_named_and_extract_rebuilds_it(clip_tiny, tmp_path, name):
    """A truncated file used to raise numpy's or json's error without the path, and extract
    kept returning the broken cache."""
    rng = np.random.default_rng(4)
    images = TensorImageSet([rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(5)], labels=range(5))
    first = features.extract(clip_tiny, images, tmp_path, batch_size=2, num_workers=0, progress=False)
    good = _cache_bytes(first.path)
    broken = first.path / name
    broken.write_bytes(good[name][: len(good[name]) // 2])
    with pytest.raises(features.CacheIntegrityError, match=rf"{re.escape(str(broken))} should have "
                                                           rf"{len(good[name])} bytes, it has {len(good[name]) // 2}"):
        FeatureCache(first.path)
    with pytest.warns(features.RebuiltCacheWarning, match=re.escape(str(broken))):
        again = features.extract(clip_tiny, images, tmp_path, batch_size=2, num_workers=0, progress=False)
    assert again.path == first.path and _cache_bytes(again.path) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.path.name], "the damaged copy is gone"


def test_cache_files_are_checked_by_size_and_hash(tmp_path):
    x = torch.randn(6, 4)
    cache = features.write_cache(tmp_path / "c", x, ids=[f"img{i}" for i in range(6)])
    ids = cache.path / "ids.json"
    ids.write_text(ids.read_text().replace("img3", "img9"))  # same size: the hash tells
    with pytest.raises(features.CacheIntegrityError, match=rf"{re.escape(str(ids))} does not match the sha256"):
        FeatureCache(cache.path)
    ids.write_text(ids.read_text().replace("img9", "img3"))
    rows = cache.path / "features.npy"
    data = bytearray(rows.read_bytes())
    data[-1] ^= 0xFF  # same size; features.npy is re-hashed only by verify(), not on every open
    rows.write_bytes(bytes(data))
    assert not torch.equal(FeatureCache(cache.path).read(), x)
    with pytest.raises(features.CacheIntegrityError, match=rf"{re.escape(str(rows))} does not match the sha256"):
        FeatureCache(cache.path).verify()
    # A cache written before the record existed: unreadable files are still named.
    meta = json.loads((cache.path / "meta.json").read_text())
    del meta["files"]
    (cache.path / "meta.json").write_text(json.dumps(meta))
    rows.write_bytes(bytes(data[:100]))
    with pytest.raises(features.CacheIntegrityError, match=rf"{re.escape(str(rows))} is unreadable"):
        FeatureCache(cache.path)


def test_extract_verify_rebuilds_altered_rows(clip_tiny, tmp_path):
    images = TensorImageSet([np.full((32, 32, 3), v, np.uint8) for v in (0, 100, 200)])
    first = features.extract(clip_tiny, images, tmp_path, num_workers=0, progress=False)
    good = _cache_bytes(first.path)
    rows = first.path / "features.npy"
    rows.write_bytes(good["features.npy"][:-4] + bytes(4))
    assert features.extract(clip_tiny, images, tmp_path, num_workers=0, progress=False).path == first.path
    with pytest.warns(features.RebuiltCacheWarning, match="does not match the sha256"):
        again = features.extract(clip_tiny, images, tmp_path, num_workers=0, progress=False, verify=True)
    assert _cache_bytes(again.path) == good


def test_resume_after_interrupt_equals_uninterrupted(clip_tiny, tmp_path):
    rng = np.random.default_rng(1)
    pics = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(37)]
    whole = features.extract(clip_tiny, TensorImageSet(pics), tmp_path / "a", batch_size=8, num_workers=0,
                             progress=False)
    broken = InterruptAt(pics)
    broken.at = 21
    with pytest.raises(KeyboardInterrupt):
        features.extract(clip_tiny, broken, tmp_path / "b", batch_size=8, num_workers=0, progress=False)
    partial = next((tmp_path / "b").iterdir())
    assert partial.name.endswith(".partial")
    assert json.loads((partial / "progress.json").read_text())["next_row"] == 16
    with pytest.raises(ValueError, match="unfinished"):
        FeatureCache(partial)
    broken.at = None
    with pytest.warns(UserWarning, match="original batch_size=8"):
        resumed = features.extract(clip_tiny, broken, tmp_path / "b", batch_size=5, num_workers=0, progress=False)
    assert not partial.exists() and resumed.meta["batch_size"] == 8
    assert torch.equal(resumed.read(), whole.read())


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np
    sys.path.insert(0, {tests!r})
    from _tiny import InterruptAt, tiny_clip
    from clipattr_utils import features
    from clipattr_utils.data import TensorImageSet

    class Slow(TensorImageSet):
        def load_image(self, i):
            time.sleep(float(sys.argv[2]))
            return super().load_image(i)

    rng = np.random.default_rng(2)
    pics = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(48)]
    features.extract(tiny_clip(), Slow(pics), sys.argv[1], batch_size=8, num_workers=0, progress=False)
""")


def test_resume_after_sigkill_equals_uninterrupted(tmp_path):
    script = tmp_path / "extract.py"
    script.write_text(KILL_SCRIPT.format(tests=str(Path(__file__).parent)))
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(killed), "0.05"])
    deadline = time.monotonic() + 120
    progress = None
    while time.monotonic() < deadline:
        found = list(killed.glob("*.partial/progress.json")) if killed.exists() else []
        if found and json.loads(found[0].read_text())["next_row"] >= 16:
            progress = found[0]
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert progress is not None, "the extraction never got going"
    assert all(p.name.endswith(".partial") for p in killed.iterdir()), "a killed run left a complete-looking cache"
    done_before = json.loads(progress.read_text())["next_row"]
    assert done_before < 48
    subprocess.run([sys.executable, str(script), str(killed), "0"], check=True)
    uninterrupted = tmp_path / "whole"
    subprocess.run([sys.executable, str(script), str(uninterrupted), "0"], check=True)
    resumed_cache = FeatureCache(next(killed.iterdir()))
    whole_cache = FeatureCache(next(uninterrupted.iterdir()))
    assert torch.equal(resumed_cache.read(), whole_cache.read())
    assert resumed_cache.ids == whole_cache.ids


GATED_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import numpy as np
    sys.path.insert(0, {tests!r})
    from _tiny import tiny_clip
    from clipattr_utils import features
    from clipattr_utils.data import TensorImageSet

    class Gated(TensorImageSet):  # images from 16 on wait for the gate file (when one is given)
        def load_image(self, i):
            while i >= 16 and sys.argv[2] and not Path(sys.argv[2]).exists():
                time.sleep(0.02)
            return super().load_image(i)

    rng = np.random.default_rng(2)
    pics = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(48)]
    features.extract(tiny_clip(), Gated(pics), sys.argv[1], batch_size=8, num_workers=0, progress=False)
""")


def test_second_process_waits_for_the_first_instead_of_dying(tmp_path):
    """Two processes extracting one cache: the slower used to die with a raw FileNotFoundError
    on a temp file in the folder the faster one had just renamed."""
    script, cache_dir, gate = tmp_path / "extract.py", tmp_path / "cache", tmp_path / "gate"
    script.write_text(GATED_SCRIPT.format(tests=str(Path(__file__).parent)))
    first = subprocess.Popen([sys.executable, str(script), str(cache_dir), str(gate)])
    second = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(cache_dir.glob("*.partial/progress.json")):
            time.sleep(0.05)
        second = subprocess.Popen([sys.executable, str(script), str(cache_dir), ""], stderr=subprocess.PIPE,
                                  text=True)
        said = ""
        for line in second.stderr:  # until it says it waits (or ends without waiting)
            said += line
            if "waiting for it to finish" in line:
                break
        assert f"another process (pid {first.pid} on " in said and "waiting for it to finish" in said, said
    finally:
        gate.touch()  # the first one finishes; the second then finds its cache
        assert first.wait(timeout=120) == 0
        if second is not None:
            rest = second.communicate(timeout=120)[1]
            assert second.returncode == 0, rest[-2000:]
    (done,) = cache_dir.iterdir()
    assert not done.name.endswith(".partial") and not (done / features.LOCK_NAME).exists()
    assert FeatureCache(done).n == 48


def _disk_with_free(free):
    """A stand-in for shutil.disk_usage that reports ``free`` bytes free."""
    return lambda path: collections.namedtuple("usage", "total used free")(10**12, 10**12 - free, free)


def test_rows_file_reserves_its_space_or_says_how_much_is_missing(tmp_path, monkeypatch):
    """Rows written into a sparse memmap on a full disk used to kill the process with SIGBUS
    (exit 135, no message); the space is now reserved before any row is written."""
    rows = features.rows_file(tmp_path / "a.npy", (1000, 48))
    st = (tmp_path / "a.npy").stat()
    assert st.st_size == 128 + 1000 * 48 * 4 and 512 * st.st_blocks >= st.st_size, "every block reserved"
    assert features.rows_file(tmp_path / "a.npy").shape == rows.shape  # reopening to resume
    want = r"extract: .*b.npy needs 0\.\d MiB more on disk \(192128 bytes in all\), 0\.0 MiB is free in "
    monkeypatch.setattr(features.shutil, "disk_usage", _disk_with_free(1000))
    with pytest.raises(OSError, match=want) as err:
        features.rows_file(tmp_path / "b.npy", (1000, 48))
    assert err.value.errno == errno.ENOSPC
    monkeypatch.setattr(features.shutil, "disk_usage", _disk_with_free(10**9))

    def full(fd, offset, length):  # the disk fills between the check and the reservation
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OSError, match=r"c.npy needs 0\.\d MiB more on disk \(192128 bytes in all\)"):
        features.rows_file(tmp_path / "c.npy", (1000, 48))


def test_extract_on_a_full_disk_says_so_and_resumes_after_space_is_freed(clip_tiny, tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    images = TensorImageSet([rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(200)])
    monkeypatch.setattr(features.shutil, "disk_usage", _disk_with_free(0))
    with pytest.raises(OSError, match=r"features.npy needs .* more on disk .* rerun \(rows already written are kept\)"):
        features.extract(clip_tiny, images, tmp_path / "full", batch_size=64, num_workers=0, progress=False)
    monkeypatch.undo()
    resumed = features.extract(clip_tiny, images, tmp_path / "full", batch_size=64, num_workers=0, progress=False)
    whole = features.extract(clip_tiny, images, tmp_path / "whole", batch_size=64, num_workers=0, progress=False)
    assert _cache_bytes(resumed.path) == _cache_bytes(whole.path)


def test_write_cache_roundtrip_and_errors(tmp_path):
    x = torch.randn(10, 6)
    cache = features.write_cache(tmp_path / "c", x, labels=range(10), meta={"note": "synthetic"})
    assert torch.equal(cache.read(), x) and cache.labels.tolist() == list(range(10)) and cache.meta["note"] == "synthetic"
    assert len(cache.key) == 16
    with pytest.raises(FileExistsError):
        features.write_cache(tmp_path / "c", x)
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        features.write_cache(tmp_path / "d", torch.randn(3))
    with pytest.raises(ValueError, match="10 feature rows but 3 labels"):
        features.write_cache(tmp_path / "e", x, labels=[1, 2, 3])
    with pytest.raises(FileNotFoundError, match="no meta.json"):
        FeatureCache(tmp_path)


PATCH_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from _tiny import tiny_clip
    from clipattr_utils import features
    from clipattr_utils.data import TensorImageSet

    rng = np.random.default_rng(4)
    pics = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(40)]
    features.extract(tiny_clip(), TensorImageSet(pics), sys.argv[1], batch_size=8, num_workers=0, progress=False,
                     what="patch_tokens")
""")


def test_patch_token_cache_resumes_after_a_kill_to_the_same_bytes(tmp_path):
    """Patch tokens (issue 23): one row per image with its 4 tokens side by side; a process
    killed after 2 of 5 batches (the test hook) leaves only a partial folder, and the rerun
    finishes it to the bytes of an uninterrupted run."""
    script = tmp_path / "extract.py"
    script.write_text(PATCH_SCRIPT.format(tests=str(Path(__file__).parent)))
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    env = {**os.environ, features.EXIT_HOOK_ENV: "0:2"}
    assert subprocess.run([sys.executable, str(script), str(killed)], env=env).returncode == 17
    (partial,) = killed.iterdir()
    assert partial.name.endswith(".partial") and json.loads((partial / "progress.json").read_text())["next_row"] == 16
    subprocess.run([sys.executable, str(script), str(killed)], check=True)
    subprocess.run([sys.executable, str(script), str(whole)], check=True)
    resumed, uninterrupted = FeatureCache(next(killed.iterdir())), FeatureCache(next(whole.iterdir()))
    assert _cache_bytes(resumed.path) == _cache_bytes(uninterrupted.path)
    assert resumed.what == "patch_tokens" and resumed.d == 16 * 48 and "-P1-" in resumed.path.name
    assert resumed.patches().shape == (40, 16, 48)


def test_patch_tokens_are_open_clips_and_a_full_disk_is_refused(clip_tiny, tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(6)
    images = TensorImageSet([rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(12)])
    cache = features.extract(clip_tiny, images, tmp_path / "c", batch_size=4, num_workers=0, what="patch_tokens")
    assert "16 per image" in capsys.readouterr().err   # the progress line says how much larger it is
    batch = torch.stack([clip_tiny.preprocess(images.load_image(i)) for i in range(12)])
    with torch.no_grad():
        inter = clip_tiny.model.visual.forward_intermediates(batch, indices=1, intermediates_only=True,
                                                              output_fmt="NLC")["image_intermediates"][-1]
    torch.testing.assert_close(cache.patches(), inter[:, -16:], rtol=1e-5, atol=1e-5)
    classes = features.extract(clip_tiny, images, tmp_path / "c", batch_size=4, num_workers=0, progress=False)
    assert classes.path != cache.path and classes.d == 48
    with pytest.raises(ValueError, match="not patch tokens"):
        classes.patches()
    monkeypatch.setattr(features.shutil, "disk_usage", _disk_with_free(1000))
    with pytest.raises(OSError, match=r"features.npy needs .* more on disk"):
        features.extract(clip_tiny, images, tmp_path / "full", batch_size=4, num_workers=0, progress=False,
                         what="patch_tokens")


def test_float16_storage_halves_the_rows_and_reads_back_as_float32(clip_tiny, tmp_path):
    """extract(storage="float16") (ImageNet-sized patch-token caches): the rows are the float32
    extraction's rounded to half precision, in a cache of their own, half the size on disk;
    readers, the top-activating pass and SAE training see float32."""
    from clipattr_utils.labeling.top import top_activating
    from clipattr_utils.sae import TopKSAE, TrainConfig, train

    rng = np.random.default_rng(8)
    images = TensorImageSet([rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(24)])
    kw = dict(batch_size=8, num_workers=0, progress=False)
    full = features.extract(clip_tiny, images, tmp_path, **kw)
    half = features.extract(clip_tiny, images, tmp_path, storage="float16", **kw)
    assert half.path != full.path and half.storage == "float16" and full.storage == "float32"
    assert half.read().dtype == torch.float32 and half.take([3, 1]).dtype == torch.float32
    assert torch.equal(half.read(), full.read().half().float())
    assert (half.path / "features.npy").stat().st_size < 0.6 * (full.path / "features.npy").stat().st_size
    patches = features.extract(clip_tiny, images, tmp_path, what="patch_tokens", storage="float16", **kw)
    assert patches.patches().dtype == torch.float32 and patches.patches().shape == (24, 16, 48)
    torch.manual_seed(0)
    sae = TopKSAE(48, 32, k=4)
    a, b = top_activating(half, sae, n=5, progress=False), top_activating(full.read().half().float(), sae, n=5,
                                                                          progress=False)
    assert torch.equal(a.rows, b.rows), (a.values - b.values).abs().max()
    torch.testing.assert_close(a.values, b.values, equal_nan=True)
    train(half, TrainConfig(d_sae=32, k=4, epochs=1, batch_size=8, device="cpu"), progress=False)
    written = features.write_cache(tmp_path / "w", full.read(), storage="float16")
    assert written.storage == "float16" and torch.equal(written.read(), full.read().half().float())
    with pytest.raises(ValueError, match="storage must be one of"):
        features.extract(clip_tiny, images, tmp_path, storage="bfloat16", **kw)
