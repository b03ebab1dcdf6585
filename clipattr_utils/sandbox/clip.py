"""The sandbox CLIP as an ordinary open_clip model named ``sandbox``.

The architecture lives in ``data/sandbox/sandbox.json`` (open_clip's model-config format),
the weights in ``data/sandbox/sandbox.safetensors``. Registering the JSON with
``open_clip.add_model_config`` makes ``create_model_and_transforms("sandbox")`` and
``get_tokenizer("sandbox")`` work like for any built-in name, with no network.

`load_sandbox` loads it exactly the way `models.load_clip("sandbox")` does (config ->
model -> float32 weights -> *val* preprocess + tokenizer), so training, tests and the
notebooks all see the same pixels and tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import open_clip
import torch

from ..storage import write_text_atomic

MODEL_NAME = "sandbox"
LABELER_NAME = "sandbox-labeler"

# The architecture: a class-token ViT (pool_type 'tok') on 64x64 images, 8x8 patches.
# Text width stays small because open_clip's 49408-token embedding dominates the file.
SANDBOX_CONFIG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 96, "layers": 4, "head_width": 32,
                   "mlp_ratio": 4.0},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2,
                 "mlp_ratio": 4.0},
}


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def default_dir() -> Path:
    """``data/sandbox`` of this checkout (where the shipped weights live)."""
    return repo_root() / "data" / "sandbox"


class SandboxCLIP(NamedTuple):
    model: torch.nn.Module
    """open_clip ``CLIP`` in eval mode, float32."""
    preprocess: Any
    """open_clip's *val* transform: PIL RGB -> normalised (3, 64, 64) tensor."""
    tokenizer: Any
    """open_clip tokenizer for the config (context length from ``text_cfg``)."""
    name: str
    """Registered model name ("sandbox", "sandbox-labeler" or "sandbox-derm")."""


def write_config(path: str | Path, config: dict | None = None) -> Path:
    """Write an open_clip model config JSON atomically; the file stem is the model name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, json.dumps(config or SANDBOX_CONFIG, indent=2) + "\n")


def register(config_path: str | Path) -> str:
    """Register a config JSON with open_clip; returns the model name (the file stem)."""
    config_path = Path(config_path)
    if not config_path.is_file():
        raise FileNotFoundError(f"sandbox model config not found: {config_path}")
    open_clip.add_model_config(config_path)
    return config_path.stem


def load_sandbox(name: str = MODEL_NAME, directory: str | Path | None = None, device: str = "cpu") -> SandboxCLIP:
    """Load ``<directory>/<name>.json`` + ``<name>.safetensors`` (default: the shipped ones)."""
    from safetensors.torch import load_file

    directory = default_dir() if directory is None else Path(directory)
    config_path = directory / f"{name}.json"
    weights_path = directory / f"{name}.safetensors"
    if not weights_path.is_file():
        raise FileNotFoundError(
            f"sandbox weights not found: {weights_path} (train them with `python -m clipattr_utils.sandbox.train`)")
    register(config_path)
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    state = {k: v.float() for k, v in load_file(str(weights_path)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights_path} does not match {config_path}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    model.to(device).eval()
    return SandboxCLIP(model, preprocess, open_clip.get_tokenizer(name), name)


@torch.no_grad()
def encode_text(clip: SandboxCLIP, texts: list[str], device: str = "cpu") -> torch.Tensor:
    """(T, embed_dim) L2-normalised text embeddings."""
    tokens = clip.tokenizer(list(texts)).to(device)
    return torch.nn.functional.normalize(clip.model.encode_text(tokens).float(), dim=-1)


@torch.no_grad()
def encode_images(clip: SandboxCLIP, images, batch_size: int = 256, device: str = "cpu") -> torch.Tensor:
    """(N, embed_dim) L2-normalised image embeddings of an image set (or list of PIL images),
    through the model's own val preprocess."""
    n = len(images)
    load = images.load_image if hasattr(images, "load_image") else images.__getitem__
    out = []
    for start in range(0, n, batch_size):
        batch = torch.stack([clip.preprocess(load(i)) for i in range(start, min(n, start + batch_size))])
        out.append(torch.nn.functional.normalize(clip.model.encode_image(batch.to(device)).float(), dim=-1))
    return torch.cat(out) if out else torch.empty(0, 0)
