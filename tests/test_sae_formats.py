"""Published SAE layouts: SAELens (load + export), sparsify, ViT-Prisma; layout detection; checks.

Every folder here is written by hand in the library's own layout (file names, tensor names
and shapes, every cfg.json / config.json key it writes), and every accepted load is compared
with an encoder computed independently from the stored tensors with that library's formula.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from clipattr_utils import storage
from clipattr_utils.models import LoadedCLIP
from clipattr_utils.sae import TopKSAE
from clipattr_utils.sae import io as sae_io
from clipattr_utils.sae.formats import FormatError, UnknownLayoutError
from clipattr_utils.sae.formats_saelens import save_saelens
from clipattr_utils.sae.published import check_compatible, open_clip_identity

D_IN, D_SAE, K = 6, 16, 3
REPO = Path(__file__).resolve().parents[1]
PRISMA_MODEL = "open-clip:laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K"


def _weights(seed=0, d_in=D_IN, d_sae=D_SAE, unit=True):
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    if unit:
        W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
    return {"W_enc": torch.randn(d_in, d_sae, generator=g), "b_enc": 0.3 * torch.randn(d_sae, generator=g),
            "W_dec": W_dec, "b_dec": torch.randn(d_in, generator=g)}


def _x(n=11, d_in=D_IN, seed=1):
    return torch.randn(n, d_in, generator=torch.Generator().manual_seed(seed))


def _pre(w, x):
    return (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]


def _topk_then_relu(pre, k):
    """SAELens' and Prisma's TopK: top k pre-activations, then ReLU on them, scattered dense."""
    vals, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, vals.relu())


def _relu_then_topk(pre, k):
    """sparsify's encoder: ReLU, then top k, scattered dense."""
    vals, idx = pre.relu().topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, vals)


def _dense(sae, x):
    code = sae.encode(x)
    return torch.zeros(x.shape[0], sae.d_sae).scatter(-1, code.indices, code.values)


# --------------------------------------------------------------------------------------------- SAELens

def _saelens_v6_cfg(k=K, d_in=D_IN, d_sae=D_SAE, **over):
    """Exactly the keys SAELens 6 TopKSAEConfig.to_dict() writes."""
    cfg = {"d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"sae_lens_version": "6.5.0", "sae_lens_training_version": "6.5.0",
                        "model_name": "ViT-B-32/datacomp_xl_s13b_b90k", "hook_name": "blocks.11.hook_resid_post",
                        "context_size": 1, "dataset_path": "imagenet"},
           "k": k, "rescale_acts_by_decoder_norm": False, "architecture": "topk"}
    cfg.update(over)
    return cfg


def _saelens_v5_cfg(k=K, **over):
    """The pre-6.0 layout: architecture 'standard' + activation_fn_str 'topk', metadata at top level."""
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cuda",
           "model_name": "gpt2-small", "hook_name": "blocks.8.hook_resid_pre", "hook_layer": 8,
           "hook_head_index": None, "activation_fn_str": "topk", "activation_fn_kwargs": {"k": k},
           "apply_b_dec_to_input": True, "finetuning_scaling_factor": False, "sae_lens_training_version": "5.3.0",
           "prepend_bos": True, "dataset_path": "Skylion007/openwebtext", "dataset_trust_remote_code": True,
           "context_size": 128, "normalize_activations": None, "neuronpedia_id": None,
           "model_from_pretrained_kwargs": {}, "seqpos_slice": [None]}
    cfg.update(over)
    return cfg


def _write_saelens(folder, cfg, tensors):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "sae_weights.safetensors"))
    return folder


def test_saelens_v6_folder_loads_and_encodes_like_saelens(tmp_path):
    w = _weights()
    folder = _write_saelens(tmp_path / "lens", _saelens_v6_cfg(), w)
    sae = TopKSAE.load(folder, d_in=D_IN)
    assert (sae.d_in, sae.d_sae, sae.k, sae.relu) == (D_IN, D_SAE, K, True)
    x = _x()
    torch.testing.assert_close(_dense(sae, x), _topk_then_relu(_pre(w, x), K))
    assert sae.meta["source_format"] == "saelens" and sae.meta["layer"] == 11
    assert sae.meta["hook_name"] == "blocks.11.hook_resid_post"


def test_saelens_few_positive_preacts_match(tmp_path):
    """Fewer than k positive pre-activations: top-k-then-ReLU and ReLU-then-top-k agree as dense codes."""
    w = _weights()
    w["b_enc"] = torch.full((D_SAE,), -50.0)
    w["b_enc"][:2] = 50.0
    folder = _write_saelens(tmp_path / "lens", _saelens_v6_cfg(), w)
    sae = TopKSAE.load(folder)
    x = _x()
    dense = _dense(sae, x)
    torch.testing.assert_close(dense, _topk_then_relu(_pre(w, x), K))
    assert ((dense > 0).sum(1) <= 2).all()
    torch.testing.assert_close(sae(x), dense @ w["W_dec"] + w["b_dec"])


def test_saelens_pre6_schema_is_migrated_like_saelens(tmp_path):
    w = _weights(seed=3)
    sae = TopKSAE.load(_write_saelens(tmp_path / "v5", _saelens_v5_cfg(k=2), w))
    assert sae.k == 2 and sae.meta["model_name"] == "gpt2-small"
    assert sae.meta["hook_name"] == "blocks.8.hook_resid_pre" and "layer" not in sae.meta
    x = _x()
    torch.testing.assert_close(_dense(sae, x), _topk_then_relu(_pre(w, x), 2))
    # 'normalize_activations': false is SAELens' old spelling of 'none'
    TopKSAE.load(_write_saelens(tmp_path / "v5b", _saelens_v5_cfg(normalize_activations=False), w))


@pytest.mark.parametrize("over, extra, key", [
    ({"apply_b_dec_to_input": "yes"}, {}, "apply_b_dec_to_input"),
    ({"normalize_activations": "layer_norm"}, {}, "normalize_activations"),
    ({"normalize_activations": "expected_average_only_in"}, {}, "normalize_activations"),
    ({"normalize_activations": "constant_norm_rescale"}, {}, "normalize_activations"),
    ({"reshape_activations": "hook_z"}, {}, "reshape_activations"),
    ({"architecture": "jumprelu"}, {}, "threshold"),
    ({"architecture": "jumprelu"}, {"threshold": torch.full((D_SAE,), -0.1)}, "negative"),
    ({"architecture": "jumprelu", "activation_fn_str": "tanh-relu"}, {"threshold": torch.zeros(D_SAE)},
     "architecture 'jumprelu'"),
    ({"architecture": "standard"}, {}, "architecture"),
    ({"architecture": "gated"}, {"b_gate": torch.zeros(D_SAE), "r_mag": torch.zeros(D_SAE)}, "architecture"),
    ({"architecture": "batchtopk"}, {}, "BatchTopK training checkpoint"),
    ({}, {"threshold": torch.zeros(D_SAE)}, "threshold"),
    ({}, {"scaling_factor": torch.full((D_SAE,), 2.0)}, "scaling_factor"),
    ({"finetuning_scaling_factor": True}, {}, "finetuning_scaling_factor"),
])
def test_saelens_unreproducible_settings_refused(tmp_path, over, extra, key):
    folder = _write_saelens(tmp_path / "lens", _saelens_v6_cfg(**over), {**_weights(), **extra})
    with pytest.raises(FormatError, match=key) as err:
        TopKSAE.load(folder)
    assert "cfg.json" in str(err.value) or "sae_weights.safetensors" in str(err.value)


def _jumprelu_code(pre, theta):
    """SAELens' JumpReLU: ReLU(pre) where pre > theta."""
    return torch.where(pre > theta, pre.relu(), torch.zeros_like(pre))


@pytest.mark.parametrize("apply_b_dec, param, rescale", [
    (True, "threshold", False), (False, "threshold", False), (True, "log_threshold", False),
    (False, "threshold", True)])
def test_saelens_jumprelu_encodes_like_saelens(tmp_path, apply_b_dec, param, rescale):
    """JumpReLU folders, as SAELens writes them (Gemma Scope encodes x itself:
    apply_b_dec_to_input false; training checkpoints store log_threshold), give SAELens' codes
    and reconstruction: the b_dec fold and the decoder-norm fold are exact."""
    w = _weights(seed=5, unit=not rescale)
    theta = 0.2 + torch.rand(D_SAE, generator=torch.Generator().manual_seed(6))
    stored = {param: theta.log() if param == "log_threshold" else theta}
    cfg = _saelens_v6_cfg(architecture="jumprelu", apply_b_dec_to_input=apply_b_dec,
                          rescale_acts_by_decoder_norm=rescale)
    cfg.pop("k", None)
    sae = TopKSAE.load(_write_saelens(tmp_path / "jr", cfg, {**w, **stored}), max_active=D_SAE)
    assert sae.architecture == "jumprelu" and sae.k == D_SAE
    x = _x(n=40)
    pre = (x - w["b_dec"] * apply_b_dec) @ w["W_enc"] + w["b_enc"]
    if rescale:  # SAELens: hidden_pre * ||W_dec_j|| before the activation, W_dec_j / ||W_dec_j|| after
        norms = w["W_dec"].norm(dim=1)
        want = _jumprelu_code(pre * norms, theta * norms)
        x_hat = want @ (w["W_dec"] / norms[:, None]) + w["b_dec"]
    else:
        want = _jumprelu_code(pre, theta)
        x_hat = want @ w["W_dec"] + w["b_dec"]
    assert (want > 0).sum(1).min() < (want > 0).sum(1).max(), "the test needs a varying L0"
    torch.testing.assert_close(_dense(sae, x), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae(x), x_hat, rtol=1e-5, atol=1e-5)
    # Without max_active the width is the default (at most d_sae); on a top-k SAE it is an error.
    assert TopKSAE.load(tmp_path / "jr").k == D_SAE
    with pytest.raises(ValueError, match="applies to JumpReLU"):
        TopKSAE.load(_write_saelens(tmp_path / "tk", _saelens_v6_cfg(), w), max_active=4)


def test_saelens_topk_without_b_dec_on_the_input_is_folded(tmp_path):
    w = _weights(seed=7)
    sae = TopKSAE.load(_write_saelens(tmp_path / "nb", _saelens_v6_cfg(apply_b_dec_to_input=False), w))
    x = _x()
    torch.testing.assert_close(_dense(sae, x), _topk_then_relu(x @ w["W_enc"] + w["b_enc"], K), rtol=1e-5, atol=1e-5)
    assert sae.meta["folded_b_dec_into_b_enc"] is True


@pytest.mark.parametrize("over, key", [
    ({"activation_fn_str": "relu", "activation_fn_kwargs": {}}, "activation_fn_str"),
    ({"activation_fn_kwargs": {}}, "activation_fn_kwargs"),
    ({"activation_fn_kwargs": {"k": 3, "postact_fn": "tanh"}}, "activation_fn_kwargs"),
    ({"normalize_activations": True}, "normalize_activations"),
])
def test_saelens_pre6_refusals_name_the_key(tmp_path, over, key):
    folder = _write_saelens(tmp_path / "v5", _saelens_v5_cfg(**over), _weights())
    with pytest.raises(FormatError, match=key):
        TopKSAE.load(folder)


def test_saelens_unit_scaling_factor_is_dropped(tmp_path):
    w = _weights()
    folder = _write_saelens(tmp_path / "lens", _saelens_v6_cfg(), {**w, "scaling_factor": torch.ones(D_SAE)})
    assert torch.equal(TopKSAE.load(folder).W_dec, w["W_dec"])


def test_saelens_rescale_by_decoder_norm_is_folded_exactly(tmp_path):
    """SAELens: hidden_pre * ||W_dec_j||, top-k + ReLU, then (acts / ||W_dec_j||) @ W_dec + b_dec."""
    w = _weights(seed=5, unit=False)
    folder = _write_saelens(tmp_path / "lens", _saelens_v6_cfg(rescale_acts_by_decoder_norm=True), w)
    sae = TopKSAE.load(folder)
    x = _x()
    norms = w["W_dec"].norm(dim=1)
    acts = _topk_then_relu(_pre(w, x) * norms, K)
    torch.testing.assert_close(_dense(sae, x), acts)
    torch.testing.assert_close(sae(x), (acts / norms) @ w["W_dec"] + w["b_dec"])
    torch.testing.assert_close(sae.decoder_norms(), torch.ones(D_SAE))
    assert sae.meta["folded_decoder_norm"] is True


def _trained_like_sae(relu=True, seed=0):
    sae = TopKSAE(D_IN, D_SAE, K, relu=relu, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.b_dec.normal_()
        sae.W_enc.add_(0.1)
    sae.meta["trained_on"] = {"kind": "feature_cache", "key": "k1", "layer": -1,
                              "model": {"name": "ViT-B-32", "pretrained": "datacomp_xl_s13b_b90k"}}
    return sae


def test_saelens_export_import_is_bitwise(tmp_path):
    sae = _trained_like_sae()
    out = sae.save(tmp_path / "lens", format="saelens", model_name="ViT-B-32/datacomp_xl_s13b_b90k",
                   hook_name="blocks.11.hook_resid_post")
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and (cfg["d_in"], cfg["d_sae"], cfg["k"]) == (D_IN, D_SAE, K)
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert cfg["reshape_activations"] == "none" and cfg["rescale_acts_by_decoder_norm"] is False
    assert cfg["dtype"] == "float32" and cfg["metadata"]["sae_lens_version"].startswith("6.")
    assert cfg["metadata"]["model_name"] == "ViT-B-32/datacomp_xl_s13b_b90k"
    assert cfg["metadata"]["hook_name"] == "blocks.11.hook_resid_post"
    stored = load_file(str(out / "sae_weights.safetensors"))
    assert {k: tuple(v.shape) for k, v in stored.items()} == {
        "W_enc": (D_IN, D_SAE), "b_enc": (D_SAE,), "W_dec": (D_SAE, D_IN), "b_dec": (D_IN,)}

    back = TopKSAE.load(out, d_in=D_IN)
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.equal(getattr(back, name), getattr(sae, name)), name
    assert back.W_enc.stride() == (1, D_IN)
    x = _x(50)
    a, b = sae.encode(x), back.encode(x)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.values, b.values)
    assert torch.equal(back(x), sae(x))
    assert back.meta["trained_on"] == sae.meta["trained_on"] and back.meta["layer"] == 11
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    # and back to our layout: the imported meta holds no reserved key
    again = TopKSAE.load(back.save(tmp_path / "ours"))
    assert torch.equal(again.W_enc, sae.W_enc)


def test_saelens_export_defaults_from_meta_and_refuses_raw_topk(tmp_path):
    sae = _trained_like_sae()
    sae.meta["trained_on"]["layer"] = 11
    cfg = json.loads((save_saelens(sae, tmp_path / "a") / "cfg.json").read_text())
    assert cfg["metadata"]["model_name"] == "ViT-B-32/datacomp_xl_s13b_b90k"
    assert cfg["metadata"]["hook_name"] == "blocks.11.hook_resid_post"
    with pytest.raises(FormatError, match="relu=False"):
        save_saelens(_trained_like_sae(relu=False), tmp_path / "b")
    with pytest.raises(ValueError, match="format="):
        _trained_like_sae().save(tmp_path / "c", format="onnx")


# --------------------------------------------------------------------------------------------- sparsify

# SparseCoderConfig.to_dict() + d_in, as SparseCoder.save_to_disk writes it: mainline sparsify, and the
# newest fields (embed_skip / gram_lookup) switched off.
SPARSIFY_CFGS = {
    "sparsify-1": {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True, "num_latents": D_SAE,
                   "k": K, "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": D_IN},
    "sparsify-newest": {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True,
                        "num_latents": D_SAE, "k": K, "multi_topk": False, "skip_connection": False,
                        "embed_skip": False, "gram_lookup": False, "lookup_max_order": 4, "gram_table_hash": None,
                        "transcode": False, "d_in": D_IN},
    "sae-0.1": {"expansion_factor": 32, "normalize_decoder": True, "num_latents": D_SAE, "k": K,
                "multi_topk": False, "d_in": D_IN},
}


def _write_sparsify(folder, cfg, w, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    tensors = {"encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"], "W_dec": w["W_dec"],
               "b_dec": w["b_dec"], **extra}
    save_file(tensors, str(folder / "sae.safetensors"))
    return folder


def test_sparsify_multi_topk_loads_with_k_and_readme_says_what_forward_does(tmp_path):
    """Issue 27 (g): a sparsify SAE trained with multi_topk loads with its k (sparsify's
    encode() keeps k; only its forward() decodes the top 4k for the Multi-TopK loss), and README
    says so next to the published-SAE paragraph."""
    w = _weights(seed=4)
    folder = _write_sparsify(tmp_path / "mt", {**SPARSIFY_CFGS["sparsify-1"], "multi_topk": True}, w)
    sae = TopKSAE.load(folder)
    x = _x()
    assert sae.k == K
    torch.testing.assert_close(_dense(sae, x), _relu_then_topk(_pre(w, x), K))
    readme = " ".join((REPO / "README.md").read_text().split())
    assert "`multi_topk: true` loads with its k" in readme and "decodes the top 4k latents" in readme


@pytest.mark.parametrize("version", sorted(SPARSIFY_CFGS))
def test_sparsify_folder_loads_and_encodes_like_sparsify(tmp_path, version):
    w = _weights(seed=2)
    folder = _write_sparsify(tmp_path / "layers.11", SPARSIFY_CFGS[version], w)
    sae = TopKSAE.load(tmp_path, subfolder="layers.11")
    assert (sae.d_sae, sae.k, sae.relu) == (D_SAE, K, True)
    x = _x()
    torch.testing.assert_close(_dense(sae, x), _relu_then_topk(_pre(w, x), K))
    assert sae.meta["source_format"] == "sparsify" and sae.meta["hookpoint"] == "layers.11"
    assert torch.equal(sae.W_enc, w["W_enc"]) and sae.W_enc.stride() == (1, D_IN)
    assert folder.is_dir()


def test_sparsify_width_from_expansion_factor(tmp_path):
    cfg = {**SPARSIFY_CFGS["sparsify-1"], "num_latents": 0, "expansion_factor": 2}
    w = _weights(d_sae=2 * D_IN)
    assert TopKSAE.load(_write_sparsify(tmp_path / "s", cfg, w)).d_sae == 2 * D_IN


@pytest.mark.parametrize("over, extra, key", [
    ({"skip_connection": True}, {"W_skip": torch.zeros(D_IN, D_IN)}, "skip_connection"),
    ({}, {"W_skip": torch.zeros(D_IN, D_IN)}, "W_skip"),
    ({"transcode": True}, {}, "transcode"),
    ({"activation": "groupmax"}, {}, "activation"),
    ({"embed_skip": True}, {}, "embed_skip"),
    ({"gram_lookup": True}, {}, "gram_lookup"),
    ({}, {"mystery": torch.zeros(3)}, "mystery"),
    ({"brand_new_option": True}, {}, "brand_new_option"),
])
def test_sparsify_unreproducible_settings_refused(tmp_path, over, extra, key):
    folder = _write_sparsify(tmp_path / "s", {**SPARSIFY_CFGS["sparsify-1"], **over}, _weights(), **extra)
    with pytest.raises(FormatError, match=key):
        TopKSAE.load(folder)


def test_sparsify_unknown_switched_off_key_is_accepted(tmp_path):
    folder = _write_sparsify(tmp_path / "s", {**SPARSIFY_CFGS["sparsify-1"], "brand_new_option": False}, _weights())
    assert TopKSAE.load(folder).k == K


# --------------------------------------------------------------------------------------------- Prisma

def _prisma_cfg(d_in=D_IN, d_sae=D_SAE, k=K, layer=11, **over):
    """config.json as VisionModelSAERunnerConfig.save_config writes it (asdict + typed dtype/device)."""
    cfg = {
        "model_class_name": "HookedViT", "model_name": PRISMA_MODEL, "vit_model_cfg": None, "model_path": None,
        "hook_point_layer": layer, "layer_subtype": "hook_resid_post", "hook_point_head_index": None,
        "context_size": 1, "use_cached_activations": False, "use_patches_only": False,
        "cached_activations_path": "activations/imagenet/x/blocks.11.hook_resid_post", "d_in": d_in,
        "activation_fn_str": "topk", "activation_fn_kwargs": {"k": k}, "cls_token_only": True,
        "max_grad_norm": 1.0, "initialization_method": "encoder_transpose_decoder", "normalize_activations": "none",
        "n_batches_in_buffer": 20, "store_batch_size": 32, "num_workers": 16, "num_epochs": 10,
        "total_training_images": 13000000, "total_training_tokens": 13000000, "image_size": 224,
        "device": {"__type__": "torch.device", "value": "cuda"}, "seed": 42,
        "dtype": {"__type__": "torch.dtype", "value": "torch.float32"}, "architecture": "standard",
        "verbose": False, "b_dec_init_method": "geometric_median", "expansion_factor": d_sae // d_in,
        "from_pretrained_path": None, "d_sae": d_sae, "l1_coefficient": 0.0002, "lp_norm": 1, "lr": 0.0004,
        "lr_scheduler_name": "cosineannealingwarmup", "lr_warm_up_steps": 200, "train_batch_size": 4096,
        "is_transcoder": False, "transcoder_with_skip_connection": False, "out_hook_point_layer": 9,
        "layer_out_subtype": "hook_mlp_out", "d_out": 768, "dataset_name": "imagenet1k", "dataset_path": "/data",
        "dataset_train_path": "/data/train", "dataset_val_path": "/data/val", "use_ghost_grads": False,
        "feature_sampling_window": 1000, "dead_feature_window": 5000, "dead_feature_threshold": 1e-08,
        "log_to_wandb": True, "wandb_project": "clip", "wandb_entity": None, "wandb_log_frequency": 10,
        "n_validation_runs": 100, "n_checkpoints": 10, "checkpoint_path": "/ckpt",
    }
    cfg.update(over)
    return cfg


def _write_prisma(folder, cfg, w, name="weights.pt", **extra):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=4))
    torch.save(OrderedDict({**w, **extra}), folder / name)
    return folder


def test_prisma_folder_loads_encodes_and_maps_the_layer(tmp_path):
    w = _weights(seed=4)
    folder = _write_prisma(tmp_path / "prisma", _prisma_cfg(), w)
    sae = TopKSAE.load(folder, d_in=D_IN)
    assert (sae.d_sae, sae.k, sae.relu) == (D_SAE, K, True)
    x = _x()
    torch.testing.assert_close(_dense(sae, x), _topk_then_relu(_pre(w, x), K))
    assert sae.meta["layer"] == 11 and sae.meta["model_name"] == PRISMA_MODEL
    assert sae.meta["open_clip"] == {"name": "ViT-B-32", "pretrained": "datacomp_xl_s13b_b90k"}
    assert sae.meta["hook_name"] == "blocks.11.hook_resid_post" and sae.meta["cls_token_only"] is True
    # a path to the weights file selects it
    assert torch.equal(TopKSAE.load(folder / "weights.pt").W_dec, w["W_dec"])


def test_prisma_resid_pre_maps_to_previous_block(tmp_path):
    sae = TopKSAE.load(_write_prisma(tmp_path / "p", _prisma_cfg(layer=5, layer_subtype="hook_resid_pre"),
                                     _weights()))
    assert sae.meta["layer"] == 4


def test_prisma_other_weight_names_and_safetensors(tmp_path):
    w = _weights()
    assert TopKSAE.load(_write_prisma(tmp_path / "a", _prisma_cfg(), w, name="n_images_2600058.pt")).k == K
    folder = tmp_path / "b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(_prisma_cfg()))
    save_file(w, str(folder / "weights.safetensors"))
    assert torch.equal(TopKSAE.load(folder).W_enc, w["W_enc"])
    _write_prisma(tmp_path / "c", _prisma_cfg(), w, name="a.pt")
    torch.save(w, tmp_path / "c" / "b.pt")
    with pytest.raises(FormatError, match=r"several.*a\.pt.*b\.pt"):
        TopKSAE.load(tmp_path / "c")
    assert TopKSAE.load(tmp_path / "c" / "b.pt").k == K


def _mark(path):  # what an unsafe unpickle of _Evil would run
    Path(path).write_text("unpickled")


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (_mark, (self.path,))


@dataclass
class _PrismaCfgObject:  # Prisma's older single-file checkpoints pickle their config object
    d_in: int = D_IN


def test_prisma_pickle_that_is_not_weights_only_is_refused(tmp_path):
    folder = _write_prisma(tmp_path / "p", _prisma_cfg(), _weights())
    marker = tmp_path / "marker"
    torch.save({"cfg": _PrismaCfgObject(), "state_dict": _weights(), "x": _Evil(str(marker))}, folder / "weights.pt")
    with pytest.raises(FormatError, match=r"weights\.pt: cannot be read safely.*weights_only=True"):
        TopKSAE.load(folder)
    assert not marker.exists(), "the checkpoint was unpickled unsafely"
    (folder / "weights.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FormatError, match=r"weights\.pt"):
        TopKSAE.load(folder)


def test_prisma_weights_only_dict_with_state_dict_is_read(tmp_path):
    w = _weights()
    folder = _write_prisma(tmp_path / "p", _prisma_cfg(), w)
    torch.save({"cfg": {"d_in": D_IN}, "state_dict": w}, folder / "weights.pt")
    assert torch.equal(TopKSAE.load(folder).b_dec, w["b_dec"])


@pytest.mark.parametrize("over, extra, key", [
    ({"activation_fn_str": "relu", "activation_fn_kwargs": {}}, {}, "activation_fn_str"),
    ({"activation_fn_kwargs": {}}, {}, "activation_fn_kwargs"),
    ({"normalize_activations": "layer_norm"}, {}, "normalize_activations"),
    ({"normalize_activations": "constant_norm_rescale"}, {}, "normalize_activations"),
    ({"architecture": "gated"}, {"b_gate": torch.zeros(D_SAE)}, "architecture"),
    ({"layer_subtype": "hook_mlp_out"}, {}, "layer_subtype"),
    ({"is_transcoder": True}, {}, "is_transcoder"),
    ({"use_patches_only": True}, {}, "use_patches_only"),
    ({"hook_point_head_index": 3}, {}, "hook_point_head_index"),
    ({"hook_point_layer": [3, 4]}, {}, "hook_point_layer"),
    ({}, {"b_gate": torch.zeros(D_SAE)}, "b_gate"),
    ({"d_sae": D_SAE * 2}, {}, r"W_enc of shape"),
])
def test_prisma_unreproducible_settings_refused(tmp_path, over, extra, key):
    folder = _write_prisma(tmp_path / "p", _prisma_cfg(**over), _weights(), **extra)
    with pytest.raises(FormatError, match=key) as err:
        TopKSAE.load(folder)
    assert "config.json" in str(err.value) or "weights.pt" in str(err.value)


def test_prisma_patch_only_sae_loads_for_patch_tokens(tmp_path):
    """A patch-token SAE (use_patches_only) is refused for class tokens, and loads with
    tokens="patch" (patch-token maps, patch-token caches), its meta saying so."""
    folder = _write_prisma(tmp_path / "p", _prisma_cfg(use_patches_only=True, cls_token_only=False), _weights())
    with pytest.raises(FormatError, match="load it with tokens='patch'"):
        TopKSAE.load(folder)
    sae = TopKSAE.load(folder, tokens="patch")
    assert sae.meta["tokens"] == "patch" and sae.d_sae == D_SAE
    with pytest.raises(ValueError, match="tokens must be"):
        TopKSAE.load(folder, tokens="cls")
    cls = TopKSAE.load(_write_prisma(tmp_path / "c", _prisma_cfg(), _weights()))
    assert cls.meta["tokens"] == "class"


def test_prisma_all_token_sae_loads_with_a_warning(tmp_path):
    folder = _write_prisma(tmp_path / "p", _prisma_cfg(cls_token_only=False, context_size=50), _weights())
    with pytest.warns(UserWarning, match="cls_token_only=False"):
        sae = TopKSAE.load(folder)
    assert sae.meta["cls_token_only"] is False


# --------------------------------------------------------------------------------------------- model checks

def test_open_clip_identity_uses_open_clips_registry():
    assert open_clip_identity(PRISMA_MODEL) == {"name": "ViT-B-32", "pretrained": "datacomp_xl_s13b_b90k"}
    assert open_clip_identity("hf-hub:laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K") == {
        "name": "ViT-L-14", "pretrained": "datacomp_xl_s13b_b90k"}
    assert open_clip_identity("ViT-B-16/openai") == {"name": "ViT-B-16", "pretrained": "openai"}
    assert open_clip_identity("openai/clip-vit-base-patch32") is None
    assert open_clip_identity(None) is None


def _fake_clip(name="ViT-B-32", pretrained="datacomp_xl_s13b_b90k", d_pre=D_IN, blocks=12, sha="abc"):
    visual = SimpleNamespace(transformer=SimpleNamespace(resblocks=[None] * blocks))
    return SimpleNamespace(name=name, pretrained=pretrained, d_pre=d_pre, model=SimpleNamespace(visual=visual),
                           identity={"name": name, "pretrained": pretrained, "visual_sha256": sha})


def test_check_compatible_names_the_disagreeing_key(tmp_path):
    sae = TopKSAE.load(_write_prisma(tmp_path / "p", _prisma_cfg(), _weights()))
    check_compatible(sae, _fake_clip())
    with pytest.raises(ValueError, match=r"config.json model_name.*ViT-B-32.*loaded CLIP is ViT-B-16"):
        check_compatible(sae, _fake_clip(name="ViT-B-16"))
    with pytest.raises(ValueError, match=r"model_name.*datacomp_xl_s13b_b90k.*laion2b_s34b_b79k"):
        check_compatible(sae, _fake_clip(pretrained="laion2b_s34b_b79k"))
    with pytest.raises(ValueError, match=r"d_in=6.*d_pre=768"):
        check_compatible(sae, _fake_clip(d_pre=768))
    with pytest.raises(ValueError, match=r"block 11.*6 blocks"):
        check_compatible(sae, _fake_clip(blocks=6))
    with pytest.raises(ValueError, match="model_name"):  # the same check through load(clip=...)
        sae_io.load_sae(tmp_path / "p", clip=_fake_clip(name="ViT-B-16"))
    assert sae_io.load_sae(tmp_path / "p", clip=_fake_clip()).meta["layer"] == 11


def test_check_compatible_unmapped_model_is_strict_by_default(tmp_path):
    sae = TopKSAE.load(_write_prisma(tmp_path / "p", _prisma_cfg(model_name="openai/clip-vit-base-patch32"),
                                     _weights()))
    with pytest.raises(ValueError, match="cannot tell which CLIP"):
        check_compatible(sae, _fake_clip())
    with pytest.warns(UserWarning, match="cannot tell which CLIP"):
        check_compatible(sae, _fake_clip(), strict=False)


def test_check_compatible_own_sae_uses_trained_on(tmp_path):
    sae = _trained_like_sae()
    sae.meta["trained_on"]["model"]["visual_sha256"] = "abc"
    check_compatible(sae, _fake_clip())
    with pytest.raises(ValueError, match="visual_sha256"):
        check_compatible(sae, _fake_clip(sha="other"))
    with pytest.raises(ValueError, match="trained_on.model"):
        check_compatible(sae, _fake_clip(name="ViT-L-14"))


def test_prisma_sae_on_a_real_open_clip_tower(tmp_path, clip_tiny):
    """End to end on a tiny open_clip ViT named like the published model: layer -> class_token_hook."""
    from clipattr_utils.features import class_token_hook

    clip = LoadedCLIP(model=clip_tiny.model, preprocess=clip_tiny.preprocess, tokenizer=clip_tiny.tokenizer,
                      head=clip_tiny.head, name="ViT-B-32", pretrained="datacomp_xl_s13b_b90k")
    d = clip.d_pre
    w = _weights(seed=7, d_in=d, d_sae=4 * d)
    folder = _write_prisma(tmp_path / "p", _prisma_cfg(d_in=d, d_sae=4 * d, k=5, layer=1), w)
    sae = sae_io.load_sae(folder, clip=clip)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), class_token_hook(clip.model, layer=sae.meta["layer"]) as store:
        clip.model.encode_image(images)
    x = store["x"]
    torch.testing.assert_close(_dense(sae, x), _topk_then_relu(_pre(w, x), 5))
    with pytest.raises(ValueError, match="model_name"):
        check_compatible(sae, clip_tiny)


# --------------------------------------------------------------------------------------------- detection

def test_folder_matching_no_layout_lists_files_and_layouts(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"x")
    (folder / "README.md").write_text("hi")
    with pytest.raises(UnknownLayoutError) as err:
        TopKSAE.load(folder)
    text = str(err.value)
    assert "['README.md', 'model.bin']" in text
    for name in ("sae.safetensors", "sae_weights.safetensors", "config.json", "weights.pt", "sparsify", "SAELens",
                 "ViT-Prisma"):
        assert name in text
    assert isinstance(err.value, FileNotFoundError)


def test_each_layout_is_detected(tmp_path):
    w = _weights()
    _trained_like_sae().save(tmp_path / "ours")
    _write_sparsify(tmp_path / "sparsify", SPARSIFY_CFGS["sparsify-1"], w)
    _write_saelens(tmp_path / "saelens", _saelens_v6_cfg(), w)
    _write_prisma(tmp_path / "prisma", _prisma_cfg(), w)
    for name in ("ours", "sparsify", "saelens", "prisma"):
        layout, _ = sae_io.detect_layout(tmp_path / name)
        assert layout == {"ours": "clipattr"}.get(name, name)


def test_hub_download_fetches_every_layouts_files(tmp_path, monkeypatch):
    _write_prisma(tmp_path / "snap", _prisma_cfg(), _weights())
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append(allow_patterns)
        return str(tmp_path / "snap")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setattr(huggingface_hub, "list_repo_files",
                        lambda repo_id, revision=None: [".gitattributes", "README.md", "config.json", "weights.pt"])
    monkeypatch.chdir(tmp_path)
    sae = TopKSAE.load("Prisma-Multimodal/sae-top_k-64-cls_only-layer_11-hook_resid_post")
    assert sae.meta["layer"] == 11
    assert sae.meta["source"] == "Prisma-Multimodal/sae-top_k-64-cls_only-layer_11-hook_resid_post"
    assert calls == [["config.json", "weights.pt"]]
    for name in ("sae.safetensors", "cfg.json", "sae_weights.safetensors", "config.json", "*.pt"):
        assert name in sae_io.HUB_PATTERNS


def test_storage_writers_are_the_shared_ones():
    assert sae_io.write_json_atomic is storage.write_json_atomic
    assert sae_io.save_tensors_atomic is storage.save_tensors_atomic


def test_no_warnings_on_clean_loads(tmp_path):
    w = _weights()
    _write_saelens(tmp_path / "a", _saelens_v6_cfg(), w)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TopKSAE.load(tmp_path / "a")


# ------------------------------------------------------------------ issue 27 (a)-(c): reader edge cases

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_unit_rows_do_not_warn_but_a_real_misnorm_does(tmp_path, dtype):
    """Unit-norm decoder rows stored in bf16/fp16 are off by the dtype's rounding; that is not the
    'not unit norm' of Eq. 9 (the old 1e-3 tolerance fired on bf16). Rows at norm 1.05 still warn."""
    w = _weights(d_sae=256)
    stored = {k: v.to(dtype) for k, v in w.items()}
    rounding = (stored["W_dec"].float().norm(dim=1) - 1).abs().max().item()
    if dtype == torch.bfloat16:
        assert rounding > 1e-3  # what made the old check fire
    folder = _write_saelens(tmp_path / "half", _saelens_v6_cfg(d_sae=256, dtype=str(dtype).split(".")[1]), stored)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sae = TopKSAE.load(folder, d_in=D_IN)
    assert sae.W_dec.dtype == torch.float32 and torch.equal(sae.W_dec, stored["W_dec"].float())
    stored["W_dec"] = (1.05 * w["W_dec"]).to(dtype)
    _write_saelens(tmp_path / "off", _saelens_v6_cfg(d_sae=256), stored)
    with pytest.warns(UserWarning, match="not unit norm"):
        TopKSAE.load(tmp_path / "off", d_in=D_IN)


def test_saelens_unknown_switched_on_key_is_refused_like_sparsify(tmp_path):
    """An option the SAELens reader does not know, set to true, is refused by name (the sparsify
    reader does the same); the same key set to false loads; an unknown string is only warned about."""
    w = _weights()
    with pytest.raises(FormatError, match=r"use_error_term=true .*this reader does not know"):
        TopKSAE.load(_write_saelens(tmp_path / "on", _saelens_v6_cfg(use_error_term=True), w), d_in=D_IN)
    with pytest.raises(FormatError, match="unknown to this reader"):
        TopKSAE.load(_write_sparsify(tmp_path / "sp", {**SPARSIFY_CFGS["sae-0.1"], "use_error_term": True}, w))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TopKSAE.load(_write_saelens(tmp_path / "off", _saelens_v6_cfg(use_error_term=False), w), d_in=D_IN)
    with pytest.warns(UserWarning, match=r"\['hf_repo'\] are unknown"):
        TopKSAE.load(_write_saelens(tmp_path / "str", _saelens_v6_cfg(hf_repo="someone/sae"), w), d_in=D_IN)


def test_sparsify_root_with_only_hookpoint_folders_lists_them(tmp_path):
    """TopKSAE.load on a sparsify checkpoint root (one folder per hookpoint) names those folders and
    says how to pick one, instead of "Files found: none"."""
    w = _weights(seed=2)
    for layer in (10, 11):
        _write_sparsify(tmp_path / f"layers.{layer}", SPARSIFY_CFGS["sae-0.1"], w)
    (tmp_path / "notes").mkdir()  # a folder without a config is not offered
    with pytest.raises(UnknownLayoutError, match=r"\['layers\.10', 'layers\.11'\]; pick one with subfolder=") as err:
        TopKSAE.load(tmp_path)
    assert "notes" not in str(err.value) and f"subfolder='layers.10'" in str(err.value)
    assert TopKSAE.load(tmp_path, subfolder="layers.10").d_sae == D_SAE


def _write_saev(path, d_vit=D_IN, exp_factor=2):
    """What saev.nn.dump writes: its config as one JSON line, then torch.save of the state dict."""
    cfg = {"d_vit": d_vit, "exp_factor": exp_factor, "sparsity_coeff": 4e-4, "n_reinit_samples": 524288,
           "ghost_grads": False, "remove_parallel_grads": True, "normalize_w_dec": True, "seed": 0}
    d_sae = d_vit * exp_factor
    state = {"W_enc": torch.randn(d_vit, d_sae), "b_enc": torch.zeros(d_sae), "W_dec": torch.randn(d_sae, d_vit),
             "b_dec": torch.zeros(d_vit)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fd:
        fd.write((json.dumps(cfg) + "\n").encode("utf-8"))
        torch.save(state, fd)
    return path


def test_saev_checkpoint_is_named_as_a_relu_sae_not_an_unknown_layout(tmp_path):
    """(e) saev's sae.pt: the error says what it is (a ReLU SAE, no fixed k) and why it is not read."""
    path = _write_saev(tmp_path / "saev" / "sae.pt")
    for target in (path.parent, path):
        with pytest.raises(FormatError, match=r"saev checkpoint .*ReLU SAEs with an L1 penalty .*6 x 2") as err:
            TopKSAE.load(target)
        assert not isinstance(err.value, UnknownLayoutError) and "exact top-k attribution" in str(err.value)
    # A plain pickle with no JSON line is still an unknown layout, listing the known ones.
    (tmp_path / "other").mkdir()
    torch.save({"W": torch.zeros(2)}, tmp_path / "other" / "x.pt")
    with pytest.raises(UnknownLayoutError, match="Known layouts"):
        TopKSAE.load(tmp_path / "other")



def _fake_hub(monkeypatch, snap, listing):
    """huggingface_hub's listing and download, served from the local folder ``snap``: a download
    copies only the files that ``allow_patterns`` matches (fnmatch, as huggingface_hub does)."""
    import shutil
    from fnmatch import fnmatch

    import huggingface_hub

    calls = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, allow_patterns))
        out = snap.parent / f"download-{len(calls)}"
        for path in snap.rglob("*"):
            rel = path.relative_to(snap).as_posix()
            if path.is_file() and any(fnmatch(rel, p) for p in allow_patterns):
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, out / rel)
        out.mkdir(exist_ok=True)
        return str(out)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo_id, revision=None: list(listing))
    return calls


def test_hub_prisma_repo_with_safetensors_weights_downloads_them(tmp_path, monkeypatch):
    """(d) A Prisma-layout repo whose weights are a *.safetensors file: the download fetches it (the
    old patterns fetched only config.json and *.pt, and the load then found no weights)."""
    w = _weights()
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "config.json").write_text(json.dumps(_prisma_cfg()))
    save_file({k: v.contiguous() for k, v in w.items()}, str(snap / "n_images_2600058.safetensors"))
    calls = _fake_hub(monkeypatch, snap, ["README.md", "config.json", "n_images_2600058.safetensors"])
    monkeypatch.chdir(tmp_path)
    sae = TopKSAE.load("Prisma-Multimodal/some-sae")
    assert calls == [("Prisma-Multimodal/some-sae", ["config.json", "n_images_2600058.safetensors"])]
    assert torch.equal(sae.W_dec, w["W_dec"]) and sae.meta["layer"] == 11


def test_hub_id_with_a_file_path_loads_that_file(tmp_path, monkeypatch):
    """(d) "owner/repo/weights.pt" (and "owner/repo/sub/weights.pt") is a repo id plus the file to
    use; the old id check refused it. Only that file and the configs beside it are downloaded."""
    w, other = _weights(seed=0), _weights(seed=5)
    snap = tmp_path / "snap"
    _write_prisma(snap / "sub", _prisma_cfg(), w, name="weights.pt")
    _write_prisma(snap / "sub", _prisma_cfg(), other, name="n_images_1.pt")
    listing = ["README.md", "sub/config.json", "sub/weights.pt", "sub/n_images_1.pt", "other/sae.safetensors"]
    calls = _fake_hub(monkeypatch, snap, listing)
    monkeypatch.chdir(tmp_path)
    sae = TopKSAE.load("Prisma-Multimodal/some-sae/sub/weights.pt")
    assert calls == [("Prisma-Multimodal/some-sae", ["sub/config.json", "sub/weights.pt"])]
    assert torch.equal(sae.W_dec, w["W_dec"])
    sae = TopKSAE.load("Prisma-Multimodal/some-sae/n_images_1.pt", subfolder="sub")
    assert torch.equal(sae.W_dec, other["W_dec"])


def test_hub_root_without_files_names_its_subfolders(tmp_path, monkeypatch):
    """A sparsify repo root (one folder per hookpoint) downloads nothing and says which subfolder= to pass."""
    _fake_hub(monkeypatch, tmp_path, ["README.md", "layers.10/cfg.json", "layers.10/sae.safetensors",
                                      "layers.11/cfg.json", "layers.11/sae.safetensors"])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"holds no SAE config .*\['layers\.10', 'layers\.11'\].*subfolder='layers\.10'"):
        TopKSAE.load("EleutherAI/sae-clip")


def test_notebooks_check_a_given_sae_against_their_clip_and_catch_other_random_weights():
    """Notebooks 02-04 check an SAE passed as sae_dir against the CLIP they load. Without it, a series
    run with pretrained=None (random weights, drawn anew in each kernel) explained notebook 01's SAE
    on another model's features (found by benchmarks/imagenet_rehearsal.py): same name, same tag
    (None), different weights, which only the weights hash tells apart."""
    import warnings as _w

    from clipattr_utils.models import RandomWeightsWarning, load_clip

    for stem in ("02_labeling", "03_faithfulness", "04_failure_mining"):
        nb = json.loads((REPO / "notebooks" / f"{stem}.ipynb").read_text())
        lines = [line for c in nb["cells"] if c["cell_type"] == "code" for line in "".join(c["source"]).splitlines()]
        at = next(i for i, line in enumerate(lines) if "TopKSAE.load(sae_dir" in line)
        assert "check_compatible(sae, clip" in lines[at + 1], f"{stem}: {lines[at:at + 2]}"
    with _w.catch_warnings():
        _w.simplefilter("ignore", RandomWeightsWarning)
        torch.manual_seed(0)
        clip_a = load_clip("ViT-S-32", None)
        torch.manual_seed(1)
        clip_b = load_clip("ViT-S-32", None)
    sae = TopKSAE(int(clip_a.d_pre), 32, k=4)
    sae.meta["trained_on"] = {"kind": "feature_cache", "model": dict(clip_a.identity), "layer": 11}
    check_compatible(sae, clip_a, strict=False)
    with pytest.raises(ValueError, match="visual_sha256 differs"):
        check_compatible(sae, clip_b, strict=False)


# ------------------------------------------------------------------------------------------ overcomplete


def _overcomplete_state(seed=0, d_in=D_IN, d_sae=D_SAE, multiplier=0.0, old_keys=False):
    """What torch.save(overcomplete TopKSAE(...).state_dict()) holds for the linear encoder."""
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(d_sae, d_in, generator=g)
    D = D / D.norm(dim=1, keepdim=True)
    prefix = "encoder.0" if old_keys else "encoder.final_block.0"
    return {f"{prefix}.weight": torch.randn(d_sae, d_in, generator=g), f"{prefix}.bias": torch.randn(d_sae, generator=g),
            "dictionary._weights": D, "dictionary.multiplier": torch.tensor(multiplier)}


def _overcomplete_reference(state, x, k):
    """overcomplete's eval-mode TopKSAE: z = TopK(ReLU(x W^T + c)), x_hat = z (l2-normalised D) exp(m)."""
    key = "encoder.0" if "encoder.0.weight" in state else "encoder.final_block.0"
    pre = x @ state[f"{key}.weight"].T + state[f"{key}.bias"]
    codes = pre.relu()
    top = codes.topk(k, dim=-1)
    z = torch.zeros_like(codes).scatter(-1, top.indices, top.values)
    D = state["dictionary._weights"]
    D = D / (D.norm(dim=1, keepdim=True) + 1e-8) * torch.exp(state["dictionary.multiplier"])
    return z, z @ D


@pytest.mark.parametrize("multiplier, old_keys", [(0.0, False), (0.4, False), (0.0, True)])
def test_overcomplete_state_dict_encodes_like_overcomplete(tmp_path, multiplier, old_keys):
    """The same latents and reconstruction as overcomplete's own eval-mode forward; a trained
    multiplier m scales the codes by exp(m) and leaves unit decoder rows. (Checked against the
    real overcomplete 0.3.0 too: benchmarks/RESULTS.md.)"""
    state = _overcomplete_state(multiplier=multiplier, old_keys=old_keys)
    torch.save(state, tmp_path / "sae.pt")
    sae = TopKSAE.load(tmp_path, k=K)  # a folder holding one state dict is found by its keys
    assert sae.meta["source_format"] == "overcomplete" and (sae.d_in, sae.d_sae, sae.k) == (D_IN, D_SAE, K)
    x = _x(n=25)
    z, x_hat = _overcomplete_reference(state, x, K)
    torch.testing.assert_close(_dense(sae, x), z * math.exp(multiplier), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae(x), x_hat, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.decoder_norms(), torch.ones(D_SAE), rtol=1e-5, atol=1e-5)
    assert torch.equal(sae.b_dec, torch.zeros(D_IN))


def test_overcomplete_refusals_name_what_is_wrong(tmp_path):
    path = tmp_path / "sae.pt"
    torch.save(_overcomplete_state(), path)
    with pytest.raises(FormatError, match="does not store k"):
        TopKSAE.load(path)
    bn = {**_overcomplete_state(), "encoder.final_block.1.running_mean": torch.zeros(D_SAE)}
    torch.save(bn, tmp_path / "bn.pt")
    with pytest.raises(FormatError, match="final_block.1.running_mean"):
        TopKSAE.load(tmp_path / "bn.pt", k=K)
    mlp = {key.replace("final_block.0", "mlp_blocks.0.0"): v for key, v in _overcomplete_state().items()}
    torch.save(mlp, tmp_path / "mlp.pt")
    with pytest.raises(FormatError, match="linear encoder"):
        TopKSAE.load(tmp_path / "mlp.pt", k=K)
    scaled = _overcomplete_state()
    scaled["dictionary._weights"] = scaled["dictionary._weights"] * 3
    torch.save(scaled, tmp_path / "identity.pt")
    with pytest.raises(FormatError, match="dictionary_normalization"):
        TopKSAE.load(tmp_path / "identity.pt", k=K)
    # k for a file that states its own: equal passes, different is an error.
    folder = _write_saelens(tmp_path / "lens", _saelens_v6_cfg(), _weights())
    assert TopKSAE.load(folder, k=K).k == K
    with pytest.raises(ValueError, match=f"k={K + 1} was passed"):
        TopKSAE.load(folder, k=K + 1)
