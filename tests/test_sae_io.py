"""TopKSAE.save / TopKSAE.load: layout, round trip, strict errors, sparsify layout, hub path."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from clipattr_utils.sae import TopKSAE
from clipattr_utils.sae import io as sae_io


def _sae(seed=0, relu=True):
    sae = TopKSAE(12, 40, k=5, relu=relu, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.b_dec.normal_()
        sae.W_enc.add_(0.1)
    sae.meta["trained_on"] = {"kind": "feature_cache", "key": "abc123", "model": {"name": "sandbox"}}
    return sae


def test_round_trip(tmp_path):
    sae = _sae(relu=False)
    out = sae.save(tmp_path / "sae", metrics={"fvu": 0.1})
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae.safetensors"]
    cfg = json.loads((out / "cfg.json").read_text())
    assert (cfg["d_in"], cfg["d_sae"], cfg["k"], cfg["relu"]) == (12, 40, 5, False)
    assert cfg["trained_on"]["key"] == "abc123" and cfg["metrics"] == {"fvu": 0.1}
    tensors = load_file(str(out / "sae.safetensors"))
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        "W_enc": (12, 40), "W_dec": (40, 12), "b_enc": (40,), "b_dec": (12,)}

    back = TopKSAE.load(out, d_in=12)
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.equal(getattr(back, name), getattr(sae, name)), name
    assert back.relu is False and back.k == 5
    assert back.W_enc.stride() == (1, 12), "loaded encoder keeps the latent-major layout"
    assert back.meta["trained_on"] == sae.meta["trained_on"]
    x = torch.randn(9, 12)
    assert torch.equal(back(x), sae(x))
    # no stray temp files from the atomic writes
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_width_mismatch_names_both_shapes(tmp_path):
    _sae().save(tmp_path / "sae")
    with pytest.raises(ValueError, match=r"d_in=12.*\(40, 12\).*d_in=768"):
        TopKSAE.load(tmp_path / "sae", d_in=768)


def test_tensor_shape_disagreeing_with_cfg_is_an_error(tmp_path):
    out = _sae().save(tmp_path / "sae")
    tensors = load_file(str(out / "sae.safetensors"))
    tensors["W_dec"] = torch.zeros(41, 12)
    save_file(tensors, str(out / "sae.safetensors"))
    with pytest.raises(ValueError, match=r"W_dec of shape \(41, 12\).*\(40, 12\)"):
        TopKSAE.load(out)


def test_missing_pieces_are_errors(tmp_path):
    out = _sae().save(tmp_path / "sae")
    tensors = load_file(str(out / "sae.safetensors"))
    del tensors["b_enc"]
    save_file(tensors, str(out / "sae.safetensors"))
    with pytest.raises(ValueError, match="lacks tensors.*b_enc"):
        TopKSAE.load(out)
    (out / "cfg.json").unlink()
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        TopKSAE.load(out)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        TopKSAE.load(tmp_path / "nowhere")


def test_truncated_weights_name_the_file(tmp_path):
    """safetensors' own error ("incomplete metadata, file not fully covered") named no file."""
    out = _sae().save(tmp_path / "sae")
    weights = out / "sae.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(sae_io.FormatError, match=rf"{re.escape(str(weights))}: not a readable safetensors file "
                                                 r"\(\d+ bytes; truncated or damaged\?\)"):
        TopKSAE.load(out)


def test_sparsify_layout_loads(tmp_path):
    """sparsify folders: encoder.weight (d_sae, d_in), num_latents / expansion_factor in cfg.json."""
    sae = _sae()
    folder = tmp_path / "layers.11"
    folder.mkdir()
    save_file({"encoder.weight": sae.W_enc.detach().T.contiguous(), "encoder.bias": sae.b_enc.detach(),
               "W_dec": sae.W_dec.detach(), "b_dec": sae.b_dec.detach()}, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"expansion_factor": 0, "num_latents": 40, "k": 5, "d_in": 12,
                                                 "normalize_decoder": True, "multi_topk": False}))
    back = TopKSAE.load(tmp_path, subfolder="layers.11")
    x = torch.randn(7, 12)
    assert torch.equal(back(x), sae(x))


def test_hub_repo_id_goes_through_snapshot_download(tmp_path, monkeypatch):
    """The hub branch, with the download itself replaced by a local folder (no network here)."""
    sae = _sae()
    sae.save(tmp_path / "snap" / "sandbox-L-1")
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, allow_patterns))
        return str(tmp_path / "snap")

    def fake_list_repo_files(repo_id, revision=None):  # the repo as the hub lists it
        snap = tmp_path / "snap"
        return sorted(p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file()) + ["README.md"]

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", fake_list_repo_files)
    monkeypatch.chdir(tmp_path)  # the repo id must not exist as a local path
    back = TopKSAE.load("someone/clip-saes", subfolder="sandbox-L-1", revision="v1")
    assert calls == [("someone/clip-saes", "v1", ["sandbox-L-1/cfg.json", "sandbox-L-1/sae.safetensors"])]
    assert {"sandbox-L-1/sae.safetensors", "sandbox-L-1/cfg.json"} <= set(calls[0][2])
    assert torch.equal(back.W_dec, sae.W_dec)

    def failing(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", failing)
    with pytest.raises(FileNotFoundError, match=r"someone/other.*Hugging Face Hub failed.*offline"):
        TopKSAE.load("someone/other")


def test_non_unit_decoder_warns(tmp_path):
    sae = _sae()
    with torch.no_grad():
        sae.W_dec.mul_(2)
    sae.save(tmp_path / "s")
    with pytest.warns(UserWarning, match="not unit norm"):
        TopKSAE.load(tmp_path / "s")


def test_reserved_meta_keys_refused(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        _sae().save(tmp_path / "s", k=3)


def test_from_config_round_trip():
    sae = _sae(relu=False)
    shell = TopKSAE.from_config(sae.config())
    assert shell.config() == sae.config()
    with pytest.raises(ValueError, match="d_sae"):
        TopKSAE.from_config({"d_in": 3, "k": 1})
    assert sae_io.WEIGHTS_NAME == "sae.safetensors" and sae_io.CONFIG_NAME == "cfg.json"
