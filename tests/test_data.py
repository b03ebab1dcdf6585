"""Image sets: real ImageNet photos, ISIC 2019 layout, generic folders, colour modes, bad input."""

import csv
import os
import subprocess

import numpy as np
import pytest
from PIL import Image

from clipattr_utils.data import ISIC2019, ImageFolder, ImageNetFolder, TensorImageSet, imagenet_wnids, to_rgb
from conftest import REPO, require_shared_data


def test_missing_shared_data_skips_for_users_and_fails_in_ci(tmp_path, monkeypatch):
    missing = tmp_path / "imagenet-sample"
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"imagenet-sample.*is missing.*set CI=true"):
        require_shared_data(missing, "The sample")
    for value in ("false", "0", ""):
        monkeypatch.setenv("CI", value)
        with pytest.raises(pytest.skip.Exception):
            require_shared_data(missing, "The sample")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"imagenet-sample.*CI=true requires it"):
        require_shared_data(missing, "The sample")
    missing.mkdir()
    assert require_shared_data(missing, "The sample") == missing


def test_ci_entry_point_exports_ci_and_runs_make_test(tmp_path):
    """.ci/run with a stand-in `make` on PATH: it must call `make test` with CI=true, then
    `make test-e2e` (the end-to-end and browser tests that `make test` leaves out)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "make"
    fake.write_text(f'#!/bin/sh\necho "CI=$CI args=$*" >> {tmp_path / "called"}\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("CI", None)
    subprocess.run(["bash", str(REPO / ".ci" / "run")], env=env, check=True, timeout=60)
    assert (tmp_path / "called").read_text().splitlines() == ["CI=true args=test", "CI=true args=test-e2e"]


def test_imagenet_folder_on_real_photos(imagenet_sample):
    images = ImageNetFolder(imagenet_sample)
    assert len(images) == 105
    wnids = sorted(p.name for p in imagenet_sample.iterdir())
    assert len(imagenet_wnids()) == 1000 and list(imagenet_wnids()) == sorted(imagenet_wnids())
    for i in range(len(images)):
        wnid = images.sample_id(i).split("/")[0]
        assert wnid in wnids
        assert images.label(i) == list(imagenet_wnids()).index(wnid)
    # Known anchors of the ImageNet-1k index: tench is class 0, goldfish 1.
    by_wnid = {images.sample_id(i).split("/")[0]: images.label(i) for i in range(len(images))}
    if "n01440764" in by_wnid:
        assert by_wnid["n01440764"] == 0 and images.classnames[0] == "tench"
    gray = [i for i in range(len(images)) if Image.open(images.path(i)).mode == "L"]
    assert len(gray) >= 5, "the shared sample holds single-channel JPEGs"
    for i in gray:
        img = images.load_image(i)
        assert img.mode == "RGB"
        arr = np.asarray(img)
        assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])


def test_imagenet_folder_subsets_and_errors(imagenet_sample, tmp_path):
    first = ImageNetFolder(imagenet_sample, classes=range(100))
    assert all(first.label(i) < 100 for i in range(len(first))) and 0 < len(first) < 105
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageNetFolder(tmp_path / "nope")
    (tmp_path / "not_a_wnid").mkdir()
    with pytest.raises(ValueError, match="not ImageNet-1k wnids"):
        ImageNetFolder(tmp_path)


def _jpeg(path, color=(200, 30, 30), size=(40, 30), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def _isic(tmp_path, rows, header=("image", "MEL", "NV", "BCC")):
    csv_path = tmp_path / "gt.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return csv_path


def test_isic2019_binary_and_multiclass(tmp_path):
    for name in ("ISIC_0000001", "ISIC_0000002", "ISIC_0000003"):
        _jpeg(tmp_path / "img" / f"{name}.jpg")
    csv_path = _isic(tmp_path, [("ISIC_0000001", 1.0, 0.0, 0.0), ("ISIC_0000002", 0.0, 1.0, 0.0),
                                ("ISIC_0000003", 0.0, 0.0, 1.0)])
    binary = ISIC2019(csv_path, tmp_path / "img")
    assert binary.labels() == [1, 0, 0] and binary.classnames == ["non-melanoma", "melanoma"]
    multi = ISIC2019(csv_path, tmp_path / "img", binary_melanoma=False)
    assert multi.labels() == [0, 1, 2] and multi.classnames == ["MEL", "NV", "BCC"]
    assert multi.load_image(0).size == (40, 30)


def test_isic2019_bad_input(tmp_path):
    _jpeg(tmp_path / "img" / "ISIC_1.jpg")
    with pytest.raises(FileNotFoundError, match="1 images named in the CSV.*ISIC_2.jpg"):
        ISIC2019(_isic(tmp_path, [("ISIC_1", 1, 0, 0), ("ISIC_2", 0, 1, 0)]), tmp_path / "img")
    with pytest.raises(ValueError, match="line 2 .*not one-hot"):
        ISIC2019(_isic(tmp_path, [("ISIC_1", 1, 1, 0)]), tmp_path / "img")
    with pytest.raises(ValueError, match="'MEL'"):
        ISIC2019(_isic(tmp_path, [("ISIC_1", 1, 0)], header=("image", "NV", "BCC")), tmp_path / "img")
    with pytest.raises(FileNotFoundError, match="CSV not found"):
        ISIC2019(tmp_path / "missing.csv", tmp_path / "img")


def test_image_folder_with_and_without_csv(tmp_path):
    _jpeg(tmp_path / "a" / "x.png")
    _jpeg(tmp_path / "b" / "y.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    plain = ImageFolder(tmp_path)
    assert [plain.sample_id(i) for i in range(len(plain))] == ["a/x.png", "b/y.jpg"]
    assert plain.labels() == [-1, -1]
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("filename,label\nb/y.jpg,dog\na/x.png,cat\n")
    labeled = ImageFolder(tmp_path, labels_csv=csv_path)
    assert labeled.classnames == ["cat", "dog"] and labeled.labels() == [1, 0]
    csv_path.write_text("filename,label\na/x.png,0\nc/z.jpg,1\n")
    with pytest.raises(FileNotFoundError, match="c/z.jpg"):
        ImageFolder(tmp_path, labels_csv=csv_path)
    csv_path.write_text("filename,label\na/x.png,cat\nb/y.jpg, \n")
    with pytest.raises(ValueError, match=r"labels.csv: 1 rows have a blank label: line 3 \(b/y.jpg\)"):
        ImageFolder(tmp_path, labels_csv=csv_path)  # used to make a class named ""
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image files"):
        ImageFolder(empty)


def _replace_keeping_size(path, img, keep_mtime):
    """Write ``img`` over ``path`` as a file of exactly the old byte size (zeros after the
    image's end marker, which decoders ignore); with ``keep_mtime`` as ``cp -p`` would."""
    st = path.stat()
    fmt = "BMP" if path.suffix == ".bmp" else "JPEG"
    path.write_bytes(b"")
    img.save(path, format=fmt)
    data = path.read_bytes()
    assert len(data) <= st.st_size
    path.write_bytes(data + bytes(st.st_size - len(data)))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_fingerprint_notices_a_replaced_file_of_the_same_size(tmp_path):
    """It used to hash file sizes only, so a feature cache of the old picture was reused."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.jpg", quality=95)
    _jpeg(tmp_path / "b.jpg")
    before, old = ImageFolder(tmp_path).fingerprint(), (tmp_path / "a.jpg").stat()
    assert ImageFolder(tmp_path).fingerprint() == before, "untouched files keep the key"
    # same size, same modification time (cp -p, rsync -a): the hashed ends differ
    _replace_keeping_size(tmp_path / "a.jpg", Image.new("RGB", (64, 64), (9, 9, 9)), keep_mtime=True)
    now = (tmp_path / "a.jpg").stat()
    assert (now.st_size, now.st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    assert ImageFolder(tmp_path).fingerprint() != before


def test_fingerprint_notices_an_edit_between_the_hashed_ends(tmp_path):
    """An uncompressed image edited in the middle keeps its size and both hashed ends; its
    modification time changes."""
    big = Image.new("RGB", (100, 100), (200, 200, 200))  # a 30 KB BMP: far more than 2 x 4 KiB
    big.save(tmp_path / "a.bmp")
    os.utime(tmp_path / "a.bmp", ns=(1_000_000_000, 1_000_000_000))
    before = ImageFolder(tmp_path).fingerprint()
    big.putpixel((50, 50), (0, 0, 0))
    _replace_keeping_size(tmp_path / "a.bmp", big, keep_mtime=False)
    assert ImageFolder(tmp_path).fingerprint() != before


@pytest.mark.parametrize("mode, color", [("L", 128), ("CMYK", (0, 255, 255, 0)), ("P", 3), ("RGBA", (10, 20, 30, 0)),
                                         ("LA", (50, 255)), ("I;16", 300)])
def test_to_rgb_handles_modes(mode, color):
    img = Image.new(mode, (4, 4), color)
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == (4, 4)
    if mode == "RGBA":  # fully transparent -> composited on white, not black
        assert out.getpixel((0, 0)) == (255, 255, 255)
    if mode == "CMYK":  # full magenta + yellow ink on white paper is red
        assert out.getpixel((0, 0)) == (255, 0, 0)


def test_sixteen_bit_grey_keeps_its_range(tmp_path):
    """PIL's convert("RGB") clips 16-bit values at 255: a 16-bit PNG used to come out white."""
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as img:
        assert img.mode in ("I;16", "I"), img.mode
    out = np.asarray(ImageFolder(tmp_path).load_image(0))
    assert out.shape == (64, 64, 3) and (out == (ramp >> 8)[..., None]).all()
    assert np.asarray(to_rgb(Image.fromarray(ramp.astype(">u2"))))[5, 7, 1] == ramp[5, 7] >> 8  # big-endian


@pytest.mark.parametrize("mode", ["F", "I"])
def test_modes_without_a_range_are_refused_naming_the_mode(mode):
    with pytest.raises(ValueError, match=f"image mode '{mode}'"):
        to_rgb(Image.new(mode, (4, 4), 3))


def test_tensor_image_set_reads_each_dtype_by_its_range():
    """A uint8 cast used to turn float images in [0, 1] black and wrap uint16 around."""
    g = np.random.default_rng(0)
    u8 = g.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    images = TensorImageSet([u8, u8 / 255.0, u8.astype(np.float32) / 255, u8.astype(np.uint16) * 257,
                             u8.astype(np.int64)])
    for i in range(len(images)):
        assert (np.asarray(images.load_image(i)) == u8).all(), i
    grey16 = TensorImageSet([np.full((4, 4), 40000, np.uint16)]).load_image(0)
    assert grey16.getpixel((0, 0)) == (156, 156, 156)  # 40000 >> 8
    for bad, match in [(u8 * 1.0, r"image 1: float pixels must lie in \[0, 1\], found \[0\.0, 249\.0\] \(float64\)"),
                       (u8.astype(np.int32) * 300, r"image 1: pixels of dtype int32 in \[\d+, \d+\]"),
                       (u8.transpose(2, 0, 1), r"image 1: expected an .* got shape \(3, 8, 8\)")]:
        with pytest.raises(ValueError, match="TensorImageSet " + match):
            TensorImageSet([u8, bad])


def test_imagenet_folder_every_keeps_every_nth_image_per_class(tmp_path):
    wnids = imagenet_wnids()[:2]
    for w in wnids:
        (tmp_path / w).mkdir()
        for i in range(7):
            Image.new("RGB", (4, 4), (i, 0, 0)).save(tmp_path / w / f"{w}_{i}.JPEG")
    every = ImageNetFolder(tmp_path, every=3)
    assert [every.sample_id(i) for i in range(len(every))] == [f"{w}/{w}_{i}.JPEG" for w in wnids for i in (0, 3, 6)]
    assert ImageNetFolder(tmp_path, every=3, max_per_class=2).sample_id(1) == f"{wnids[0]}/{wnids[0]}_3.JPEG"
    plain = ImageNetFolder(tmp_path)
    assert "every" not in plain.describe(), "sets made before `every` existed keep their cache key"
    assert every.describe()["every"] == 3 and every.fingerprint() != plain.fingerprint()
    with pytest.raises(ValueError, match="every"):
        ImageNetFolder(tmp_path, every=0)
