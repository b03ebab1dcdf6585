"""Feature-cache keys are the same in every process and change with anything that changes the rows.

The preprocessing used to be keyed by ``repr()``, which holds a memory address for a bare
function (open_clip's ``_convert_to_rgb``), so a new process never found an earlier cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import open_clip
import pytest
import torch
import torchvision.transforms as T
from open_clip.transform import _convert_to_rgb
from torchvision.transforms import InterpolationMode

from clipattr_utils import features, sandbox
from clipattr_utils.features import TransformKeyError, cache_key, describe_transform, key_hash
from clipattr_utils.models import load_clip

REPO = Path(__file__).resolve().parent.parent

# Run in fresh interpreters. `custom` is how open_clip <= 2.2x built the validation transform
# (a bare function between CenterCrop and ToTensor), plus a torchvision Lambda.
SCRIPT = textwrap.dedent("""
    import json, sys
    import torchvision.transforms as T
    from open_clip.transform import _convert_to_rgb
    from clipattr_utils import features, sandbox
    from clipattr_utils.models import load_clip

    cache_dir = sys.argv[1]
    clip = load_clip("sandbox")
    images = sandbox.make_dataset(4, "test", 0)
    out = {"preprocess": features.describe_transform(clip.preprocess),
           "key": features.cache_key(clip, images, -1, "fp32")}
    out["hash"] = features.key_hash(out["key"])
    resize, crop, _, to_tensor, normalize = clip.preprocess.transforms
    clip.preprocess = T.Compose([resize, crop, _convert_to_rgb, T.Lambda(lambda im: im.convert("RGB")),
                                 to_tensor, normalize])
    out["custom_repr"] = repr(clip.preprocess)
    out["custom_preprocess"] = features.describe_transform(clip.preprocess)
    out["custom_key"] = features.cache_key(clip, images, -1, "fp32")
    before = sorted(p.name for p in __import__("pathlib").Path(cache_dir).glob("*"))
    cache = features.extract(clip, images, cache_dir, batch_size=2, num_workers=0, progress=False)
    out["cache"] = {"path": str(cache.path), "existed": cache.path.name in before}
    print("RESULT " + json.dumps(out, sort_keys=True))
""")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """The script's output from two interpreters with different string-hash seeds, one cache dir."""
    root = tmp_path_factory.mktemp("keys")
    script = root / "keys.py"
    script.write_text(SCRIPT)
    results = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run([sys.executable, str(script), str(root / "cache")], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
        results.append(json.loads(line[len("RESULT "):]))
    return root / "cache", results


def test_sandbox_key_is_equal_across_processes(two_processes):
    _, (a, b) = two_processes
    assert a["preprocess"] == b["preprocess"]
    assert a["key"] == b["key"] and a["hash"] == b["hash"]
    # ... and equal to this process's own key.
    clip = load_clip("sandbox")
    here = cache_key(clip, sandbox.make_dataset(4, "test", 0), -1, "fp32")
    assert json.loads(json.dumps(here)) == a["key"] and key_hash(here) == a["hash"]


def test_sandbox_key_describes_the_transform():
    """Checked against the model config and open_clip's constants, not against our own output."""
    clip = load_clip("sandbox")
    steps = describe_transform(clip.preprocess)["params"]["transforms"]
    by_type = {s["type"].rsplit(".", 1)[-1]: s["params"] for s in steps}
    size = clip.model.visual.image_size[0]
    assert list(by_type) == ["Resize", "CenterCrop", "MaybeConvertMode", "MaybeToTensor", "Normalize"]
    assert by_type["Resize"]["size"] == size and by_type["Resize"]["interpolation"] == "InterpolationMode.BICUBIC"
    assert by_type["CenterCrop"]["size"] == [size, size]
    assert by_type["Normalize"]["mean"] == list(open_clip.OPENAI_DATASET_MEAN)
    assert by_type["Normalize"]["std"] == list(open_clip.OPENAI_DATASET_STD)


def test_function_and_lambda_keys_have_no_address_and_match_across_processes(two_processes):
    cache_dir, (a, b) = two_processes
    assert "0x" in a["custom_repr"], "the repr of this transform holds an address: the case being tested"
    for result in (a, b):
        text = json.dumps(result["custom_key"])
        assert "0x" not in text and "_convert_to_rgb" in text and "<lambda>" in text
    assert a["custom_preprocess"] == b["custom_preprocess"] and a["custom_key"] == b["custom_key"]
    # The second process found the first one's cache instead of extracting again.
    assert a["cache"]["path"] == b["cache"]["path"]
    assert (a["cache"]["existed"], b["cache"]["existed"]) == (False, True)
    assert [p.name for p in cache_dir.iterdir()] == [Path(a["cache"]["path"]).name]


def _fn_a(image):
    return image


def _fn_b(image):
    return image


def _scaled(factor):
    return T.Lambda(lambda image: image * factor)


def _compose(resize=64, interpolation=InterpolationMode.BICUBIC, antialias=True, crop=64, fn=_convert_to_rgb,
             lam=None, mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711),
             swap=False):
    steps = [T.Resize(resize, interpolation=interpolation, antialias=antialias), T.CenterCrop(crop), fn,
             lam if lam is not None else T.Lambda(lambda image: image.convert("RGB")), T.ToTensor(),
             T.Normalize(mean, std)]
    if swap:
        steps[0], steps[1] = steps[1], steps[0]
    return T.Compose(steps)


def test_changing_any_parameter_changes_the_key():
    base = describe_transform(_compose())
    assert describe_transform(_compose()) == base  # rebuilt from scratch: same key
    variants = {
        "resize": _compose(resize=72),
        "interpolation": _compose(interpolation=InterpolationMode.BILINEAR),
        "antialias": _compose(antialias=False),
        "crop": _compose(crop=60),
        "mean": _compose(mean=(0.5, 0.4578275, 0.40821073)),
        "std": _compose(std=(0.26862954, 0.26130258, 0.3)),
        "function": _compose(fn=_fn_a),
        "other function": _compose(fn=_fn_b),
        "lambda body": _compose(lam=T.Lambda(lambda image: image.convert("L"))),
        "closure value 2": _compose(lam=_scaled(2)),
        "closure value 3": _compose(lam=_scaled(3)),
        "order": _compose(swap=True),
    }
    keys = {name: json.dumps(describe_transform(t), sort_keys=True) for name, t in variants.items()}
    keys["base"] = json.dumps(base, sort_keys=True)
    assert len(set(keys.values())) == len(keys), "two different transforms got the same key"
    # repr() could not even tell the two Lambdas apart; the structural key does.
    assert repr(variants["closure value 2"]) == repr(variants["closure value 3"])


def _gray_or_rgb(gray):
    """Two lambdas with one qualname (``_gray_or_rgb.<locals>.<lambda>``) and different bodies."""
    return (lambda image: image.convert("L")) if gray else (lambda image: image.convert("RGB"))


def test_lambdas_with_one_name_are_told_apart_by_their_body():
    gray, rgb = _gray_or_rgb(True), _gray_or_rgb(False)
    assert gray.__qualname__ == rgb.__qualname__, "the case being tested: the name alone cannot tell them apart"
    assert describe_transform(T.Lambda(gray)) != describe_transform(T.Lambda(rgb))
    assert describe_transform(T.Lambda(_gray_or_rgb(True))) == describe_transform(T.Lambda(gray))


def test_full_cache_key_follows_preprocess():
    from _tiny import tiny_clip
    from clipattr_utils.data import TensorImageSet

    clip = tiny_clip()
    images = TensorImageSet([torch.zeros(32, 32, 3, dtype=torch.uint8).numpy()])
    before = cache_key(clip, images, -1, "fp32")
    normalize = clip.preprocess.transforms[-1]
    clip.preprocess.transforms[-1] = T.Normalize([m + 0.01 for m in normalize.mean], normalize.std)
    after = cache_key(clip, images, -1, "fp32")
    assert key_hash(after) != key_hash(before)
    assert {k for k in before if before[k] != after[k]} == {"preprocess"}


class _Scale:
    def __init__(self, factor):
        self.factor = factor
        self._calls = 0  # private bookkeeping is not part of the key

    def __call__(self, image):
        self._calls += 1
        return image


class _Keyed:
    def __init__(self, secret):
        self._secret = secret

    def clipattr_key(self):
        return {"secret": self._secret}

    def __call__(self, image):
        return image


class _WithLock:
    def __init__(self):
        self.lock = threading.Lock()

    def __call__(self, image):
        return image


class _WithAddress:
    def __init__(self):
        self.note = repr(object())

    def __call__(self, image):
        return image


def test_unknown_objects_are_keyed_by_class_and_public_attributes():
    two, three = describe_transform(_Scale(2)), describe_transform(_Scale(3))
    assert two == {"type": f"{__name__}._Scale", "params": {"factor": 2}} and two != three
    used = _Scale(2)
    used(None)
    assert describe_transform(used) == two
    assert describe_transform(_Keyed(1)) != describe_transform(_Keyed(2))
    assert describe_transform(_Keyed(1))["key"] == {"secret": 1}


@pytest.mark.parametrize("step, where, why", [
    (_WithLock(), r"preprocess\.transforms\[1\]\.lock", "no __dict__ or __slots__"),
    (_WithAddress(), r"preprocess\.transforms\[1\]\.note", "memory address"),
    (T.Lambda(lambda image, lock=threading.Lock(): image), r"preprocess\.transforms\[1\]\.lambd \(defaults\)\[0\]",
     "no __dict__"),
    (object(), r"preprocess\.transforms\[1\] ", "no __dict__"),
])
def test_undescribable_steps_are_named_in_the_error(step, where, why):
    with pytest.raises(TransformKeyError, match=f"{where}.*{why}"):
        describe_transform(T.Compose([T.ToTensor(), step]))


def test_new_weights_give_a_new_cache(tmp_path):
    """Loading other weights into clip.model must not reuse the cache of the old weights."""
    from clipattr_utils.features import class_token_hook

    clip = load_clip("sandbox")
    images = sandbox.make_dataset(4, "test", 0)
    first = features.extract(clip, images, tmp_path, batch_size=2, num_workers=0, progress=False)
    key_before = cache_key(clip, images, -1, "fp32")
    g = torch.Generator().manual_seed(0)
    state = {k: v + 0.05 * torch.randn(v.shape, generator=g) if k.startswith("visual.transformer") else v
             for k, v in clip.model.state_dict().items()}
    clip.model.load_state_dict(state)
    key_after = cache_key(clip, images, -1, "fp32")
    assert key_after["model"] != key_before["model"] and key_hash(key_after) != key_hash(key_before)
    second = features.extract(clip, images, tmp_path, batch_size=2, num_workers=0, progress=False)
    assert second.path != first.path
    batch = torch.stack([clip.preprocess(images.load_image(i)) for i in range(len(images))])
    with torch.no_grad(), class_token_hook(clip.model) as captured:
        clip.model.encode_image(batch)
    torch.testing.assert_close(second.read(), captured["x"], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(first.read(), captured["x"], atol=1e-3)


def test_negative_and_positive_layer_share_one_cache(tmp_path):
    from clipattr_utils import features, sandbox
    from clipattr_utils.models import load_clip

    clip = load_clip("sandbox")
    images = sandbox.make_dataset(3, "test", 0)
    n_blocks = len(clip.model.visual.transformer.resblocks)
    last = features.extract(clip, images, tmp_path, layer=-1, progress=False)
    again = features.extract(clip, images, tmp_path, layer=n_blocks - 1, progress=False)
    assert again.path == last.path and len(list(tmp_path.iterdir())) == 1
    other = features.extract(clip, images, tmp_path, layer=-2, progress=False)
    assert other.path != last.path and not torch.equal(other.read(), last.read())
    with pytest.raises(ValueError, match="out of range"):
        features.extract(clip, images, tmp_path, layer=n_blocks, progress=False)
