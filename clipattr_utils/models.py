"""Load a CLIP by name: open_clip ViTs with a class-token pool, local checkpoints, the sandbox.

One entry point, `load_clip(name, pretrained=None, device="cpu")`, returns a `LoadedCLIP`
bundling the open_clip model, its validation preprocessing, tokenizer, the `Head` after the
class token (LayerNorm + projection) and batched text encoding.

Only towers whose image embedding is ``ln_post(class token) @ proj`` are accepted: that is
the map the SAE and the attribution formulas sit in front of. Attention-pooled, average-pooled
and timm towers are refused with the list of what is supported.

Roles. The model being *explained* needs that class-token head (``role="explain"``, the
default). A *labeler* (the paper's MobileCLIP-S2 in Eq. 2, Sec. 3.2) only needs its FINAL image
embedding and its text tower, so ``load_clip(name, pretrained, role="labeler")`` accepts any
open_clip model (timm towers such as FastViT/MobileCLIP, attention pooling, ResNets). Such a
`LoadedCLIP` has no class-token head when its tower has none: reading ``clip.head`` then raises
`HeadUnavailableError` instead of building a head that would not reproduce the model.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import hashlib
import os
import threading
import urllib.error
import urllib.request
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from .head import Head

DATA_DIR = Path(__file__).resolve().parent.parent / "data"

# Models shipped with the repo: open_clip config + safetensors weights under data/.
# For these, `pretrained=None` means the shipped weights (there is no hub to fall back on).
LOCAL_MODELS: dict[str, Path] = {
    "sandbox": DATA_DIR / "sandbox" / "sandbox.json",
    "sandbox-labeler": DATA_DIR / "sandbox" / "sandbox-labeler.json",
    "sandbox-derm": DATA_DIR / "sandbox" / "sandbox-derm.json",
}
RANDOM = "random"  # pretrained tag asking a local model for random init explicitly
HUB_TIMEOUT_S = 5.0


class RandomWeightsWarning(UserWarning):
    """A model was built with random weights (``pretrained=None``)."""


class HubUnreachableError(RuntimeError):
    """Weights are not cached locally and the hub cannot be reached."""


class HeadUnavailableError(AttributeError):
    """This model has no class-token head (a labeler-role load of a non-class-token tower)."""


ROLES = ("explain", "labeler")


@dataclass
class LoadedCLIP:
    """A CLIP ready for the features-first flow.

    ``head`` follows ``model`` (`Head.from_model`): loading other weights into ``model``
    (``clip.model.load_state_dict(...)``) or replacing its ``visual.ln_post`` / ``visual.proj``
    changes the head too. Assigning a new ``clip.model`` rebinds a head that followed the old one.

    ``head=None`` (what ``load_clip(..., role="labeler")`` gives for a tower without a class
    token, e.g. MobileCLIP's FastViT): the model can embed images and text (a labeler) but cannot
    be explained; reading ``clip.head`` raises `HeadUnavailableError`. ``has_head`` tells.

    Attributes:
        role: ``"explain"`` (a class-token ViT, the model the SAE sits in) or ``"labeler"``
            (only the final image embedding and the text tower are used).
        embed_dim: width of the final image/text embedding (d_post); None means the head's.
    """

    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable
    head: Head | None = field(repr=False, compare=False)  # a property below; None -> reading raises
    name: str
    pretrained: str | None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    role: str = "explain"
    embed_dim: int | None = None
    # (fingerprint of the vision tensors, sha256 of their values) as last hashed; see `identity`.
    _identity: tuple | None = field(default=None, repr=False, compare=False)

    def __setattr__(self, name: str, value: Any) -> None:
        old = self.__dict__.get("model")
        object.__setattr__(self, name, value)
        if name == "model" and old is not None and value is not old:
            head = self.__dict__.get("_head")
            if isinstance(head, Head) and head.source is old:
                object.__setattr__(self, "head", Head.from_model(value))

    @property
    def has_head(self) -> bool:
        """True when ``head`` is usable (a class-token tower); False for head-less labelers."""
        return self.__dict__.get("_head") is not None

    @property
    def identity(self) -> dict[str, Any]:
        """What determines the image features: name, weights source and a hash of the vision weights.

        The hash makes random-init models, retrained local files and weights loaded later
        (``clip.model.load_state_dict(...)``) distinct cache keys. It is recomputed whenever the
        vision tower's tensors changed since the last hash: a tensor replaced or moved (new
        ``data_ptr``), updated in place (autograd's ``_version``: ``load_state_dict``, optimiser
        steps, ``with torch.no_grad(): p.mul_(...)``), added or removed. Writes through
        ``p.data`` bypass the version counter; call ``clip.refresh_identity()`` after those.
        """
        state = self.model.visual.state_dict(keep_vars=True)  # the live tensors, not copies
        if self._identity is None or not _same_state(self._identity[0], state):
            h = hashlib.sha256()
            for key, tensor in sorted(state.items()):
                h.update(key.encode())
                h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._identity = (_state_fingerprint(state), h.hexdigest())
        return {"name": self.name, "pretrained": self.pretrained, "visual_sha256": self._identity[1]}

    def refresh_identity(self) -> dict[str, Any]:
        """Hash the vision weights again (after writes the version counters cannot see)."""
        self._identity = None
        return self.identity

    @property
    def d_pre(self) -> int:
        return self.head.d_pre

    @property
    def d_post(self) -> int:
        """Width of the final image/text embedding."""
        if self.embed_dim is not None:
            return int(self.embed_dim)
        return self.head.d_post

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256, progress: bool | None = None) -> torch.Tensor:
        """(T,) prompts -> (T, d_post) L2-normalised text embeddings (float32, on CPU).

        A progress bar appears for lists longer than a few batches (or when ``progress=True``).
        """
        if isinstance(texts, str):
            raise TypeError("encode_text expects a list of prompts, got a single string")
        texts = list(texts)
        if not texts:
            return torch.empty(0, self.d_post)
        from tqdm.auto import tqdm

        show = progress if progress is not None else len(texts) > 4 * batch_size
        chunks = range(0, len(texts), batch_size)
        out = []
        for start in tqdm(chunks, desc="encode_text", unit="batch", disable=not show):
            tokens = self.tokenizer(texts[start:start + batch_size]).to(self.device)
            with _autocast(self.device):
                emb = self.model.encode_text(tokens)
            out.append(F.normalize(emb.float(), dim=-1).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images -> (N, d_post) unnormalised embeddings (open_clip's own path)."""
        return self.model.encode_image(images.to(self.device)).float()


def _get_head(self: LoadedCLIP) -> Head:
    head = self.__dict__.get("_head")
    if head is None:
        raise HeadUnavailableError(
            f"{self.name} (role={self.role!r}) has no class-token head: its image embedding is not "
            "ln_post(class token) @ proj, so SAE attribution through a head is undefined for it. It can "
            "serve as a labeler (clip.encode_text, features.extract(..., what='embedding')); to explain a "
            f"model, load a class-token ViT with role='explain' (see supported_models())."
        )
    return head


def _set_head(self: LoadedCLIP, value: Head | None) -> None:
    if value is not None and not isinstance(value, Head):
        raise TypeError(f"LoadedCLIP.head must be a Head or None, got {type(value).__name__}")
    self.__dict__["_head"] = value


LoadedCLIP.head = property(  # type: ignore[assignment]
    _get_head, _set_head,
    doc="The class-token head (LayerNorm + projection, `Head`); raises `HeadUnavailableError` when the "
        "model has none (``load_clip(..., role='labeler')`` of a non-class-token tower).")


def _state_fingerprint(state: dict[str, torch.Tensor]) -> list[tuple]:
    # A weak reference tells a replaced tensor from one that reuses a freed address.
    return [(key, weakref.ref(t), t.data_ptr(), t._version, tuple(t.shape), t.dtype, str(t.device))
            for key, t in state.items()]


def _same_state(fingerprint: list[tuple], state: dict[str, torch.Tensor]) -> bool:
    """True when ``state`` holds the very tensors of ``fingerprint``, unmodified since."""
    if len(fingerprint) != len(state):
        return False
    for (key, ref, ptr, version, shape, dtype, device), (key2, t) in zip(fingerprint, state.items()):
        if (key != key2 or ref() is not t or t.data_ptr() != ptr or t._version != version
                or tuple(t.shape) != shape or t.dtype != dtype or str(t.device) != device):
            return False
    return True


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return torch.autocast("cpu", enabled=False)


def supported_models() -> list[str]:
    """open_clip architectures (plus our local ones) whose image tower is a class-token ViT."""
    import open_clip

    _register_local_configs()
    return [m for m in open_clip.list_models() if _unsupported_reason(open_clip.get_model_config(m)) is None]


def _unsupported_reason(cfg: dict | None) -> str | None:
    if cfg is None:
        return "no model config"
    vision = cfg.get("vision_cfg", {})
    if "multimodal_cfg" in cfg:
        return "it is a CoCa model, whose image tower pools with attention"
    if vision.get("timm_model_name"):
        return f"its image tower is a timm model ({vision['timm_model_name']}) without ln_post/proj"
    if vision.get("attentional_pool"):
        return "its image tower pools with attention, not the class token"
    if vision.get("pool_type", "tok") != "tok":
        return f"its image tower uses pool_type={vision.get('pool_type')!r}, not the class token"
    if vision.get("layers") is None or isinstance(vision.get("layers"), (list, tuple)):
        return "its image tower is not a ViT (ResNet towers have no class token)"
    return None


def _register_local_configs() -> None:
    import open_clip

    known = set(open_clip.list_models())
    for name, cfg_path in LOCAL_MODELS.items():
        if name not in known and cfg_path.is_file():
            open_clip.add_model_config(cfg_path)


def _close_matches(word: str, options: Sequence[str], n: int = 5) -> str:
    lowered = {o.lower(): o for o in options}
    matches = difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.5)
    return ", ".join(lowered[m] for m in matches) or "none"


def _hub_reachable(repo_id: str, timeout: float | None = None) -> bool:
    """One HTTP request to the hub (DNS included), bounded by ``timeout`` seconds overall.

    Any HTTP answer, even an error status, means the hub is there; no answer means it is not.
    A thread bounds the wait because DNS lookups ignore socket timeouts.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    timeout = HUB_TIMEOUT_S if timeout is None else timeout
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    answer: list[bool] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(f"{endpoint}/api/models/{repo_id}", method="HEAD"),
                                   timeout=timeout).close()
            answer.append(True)
        except urllib.error.HTTPError:
            answer.append(True)
        except Exception:
            answer.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])


def _resolve_hub_checkpoint(name: str, tag: str, cfg: dict) -> str:
    """Local file for an open_clip (name, tag): the HF cache if present, else a download."""
    hub = cfg.get("hf_hub")
    if not hub:
        raise HubUnreachableError(
            f"{name}/{tag}: this tag is only published as a URL ({cfg.get('url')}); download it yourself "
            "and pass the local file as `pretrained=`"
        )
    from huggingface_hub import hf_hub_download

    repo_id, filename = os.path.split(hub.rstrip("/") if hub.endswith("/") else hub)
    if hub.endswith("/"):
        repo_id, filename = hub.rstrip("/"), "open_clip_pytorch_model.bin"
    stem = filename.rsplit(".", 1)[0]
    candidates = [f"{stem}.safetensors", "open_clip_model.safetensors", filename]
    for candidate in dict.fromkeys(candidates):
        try:
            return hf_hub_download(repo_id, candidate, local_files_only=True)
        except Exception:
            continue
    if not _hub_reachable(repo_id):
        raise HubUnreachableError(
            f"Cannot load {name} pretrained={tag!r}: the weights (hf-hub {repo_id}) are not in the local "
            "Hugging Face cache and the hub cannot be reached. Either connect to the internet, pre-download "
            f"them on a connected machine (`huggingface-cli download {repo_id}`) and copy the cache, or pass a "
            "local checkpoint file as `pretrained=`."
        )
    last_error: Exception | None = None
    for candidate in dict.fromkeys(candidates):
        try:
            return hf_hub_download(repo_id, candidate, etag_timeout=HUB_TIMEOUT_S)
        except Exception as err:  # try the next file name; report the last failure below
            last_error = err
    raise HubUnreachableError(f"{name}/{tag}: download from {repo_id} failed: {last_error}")


def load_clip(name: str, pretrained: str | os.PathLike | None = None, device: str | torch.device = "cpu",
              role: str = "explain") -> LoadedCLIP:
    """Load an open_clip class-token ViT (or the built-in sandbox CLIP) by name.

    Args:
        name: an open_clip architecture (``"ViT-B-32"``, ``"ViT-L-14"``, ...) or a local model
            shipped with the repo (``"sandbox"``, ``"sandbox-labeler"``, ``"sandbox-derm"``: the
            melanoma case's lesion-only CLIP).
        pretrained: an open_clip pretrained tag (``"laion2b_s34b_b79k"``, ``"openai"``, ...), a path
            to a local checkpoint (.safetensors/.bin/.pt), or None. For open_clip names None
            means random weights (with a `RandomWeightsWarning`); for local models it means the
            shipped weights, and ``"random"`` asks for random init.
        device: where the model lives; features use autocast on CUDA.
        role: ``"explain"`` (default): the model the SAE explains; only class-token ViTs are
            accepted. ``"labeler"``: a model whose FINAL image embedding labels latents (Eq. 2),
            e.g. ``("MobileCLIP-S2", "datacompdr")``, the MobileCLIP2 family or the shipped
            ``"sandbox-labeler"``; any open_clip tower is accepted, and when it has no class
            token the result has no head (``clip.head`` raises `HeadUnavailableError`; a
            class-token ViT loaded as a labeler keeps its head).
    """
    import open_clip

    if role not in ROLES:
        raise ValueError(f"load_clip: role must be one of {ROLES}, got {role!r}")
    _register_local_configs()
    device = torch.device(device)
    known = open_clip.list_models()
    if name not in known:
        if name in LOCAL_MODELS:
            raise FileNotFoundError(
                f"Local model {name!r}: config {LOCAL_MODELS[name].relative_to(DATA_DIR.parent)} is missing; "
                "train it with `python -m clipattr_utils.sandbox.train`."
            )
        raise ValueError(f"Unknown model name {name!r}. Close matches: {_close_matches(name, known)}. "
                         "See clipattr_utils.models.supported_models().")
    config = open_clip.get_model_config(name)
    reason = _unsupported_reason(config)
    if reason is not None and role == "explain":
        raise ValueError(
            f"{name} is not supported: {reason}. clipattr needs image embedding = ln_post(class token) @ proj. "
            f"(As a labeler, whose final embedding only is used, load it with role='labeler'.) "
            f"Supported: {', '.join(supported_models())}"
        )

    kwargs: dict[str, Any] = {}
    source: str | None
    if name in LOCAL_MODELS:
        if pretrained is None:
            weights = LOCAL_MODELS[name].with_suffix(".safetensors")
            if not weights.is_file():
                raise FileNotFoundError(f"Local model {name!r}: shipped weights {weights.name} are missing under data/")
            source, checkpoint = "shipped", str(weights)
        elif str(pretrained) == RANDOM:
            source, checkpoint = None, None
        else:
            source, checkpoint = str(pretrained), str(pretrained)
    elif pretrained is None:
        source, checkpoint = None, None
    elif Path(pretrained).suffix in (".safetensors", ".bin", ".pt", ".pth") or Path(pretrained).exists():
        if not Path(pretrained).is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {pretrained}")
        source, checkpoint = str(pretrained), str(pretrained)
    else:
        tag = str(pretrained)
        tags = open_clip.list_pretrained_tags_by_model(name)
        if tag not in tags:
            raise ValueError(f"Unknown pretrained tag {tag!r} for {name}. Available: {', '.join(tags) or 'none'}. "
                             f"Close matches: {_close_matches(tag, tags)}")
        cfg = open_clip.get_pretrained_cfg(name, tag)
        checkpoint, source = _resolve_hub_checkpoint(name, tag, cfg), tag
        # A file path loses the tag's settings; carry them over explicitly.
        kwargs["force_quick_gelu"] = bool(cfg.get("quick_gelu", False))
        kwargs["force_preprocess_cfg"] = {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg}

    if checkpoint is None:
        warnings.warn(
            f"load_clip({name!r}): RANDOM WEIGHTS (pretrained=None). Fine for tests and shapes; "
            "meaningless for interpretation. Pass a pretrained tag or a checkpoint file.",
            RandomWeightsWarning, stacklevel=2,
        )
    with _quiet_open_clip_init():
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None, device="cpu", **kwargs)
    visual = model.visual
    class_token = reason is None and getattr(visual, "attn_pool", None) is None and \
        getattr(visual, "pool_type", "tok") == "tok"
    if not class_token and role == "explain":
        raise ValueError(f"{name} is not supported: the built image tower does not pool the class token")
    if checkpoint is not None:
        _load_weights(model, checkpoint)
    model = model.to(device).eval()
    embed_dim = (config or {}).get("embed_dim")
    return LoadedCLIP(model=model, preprocess=preprocess, tokenizer=open_clip.get_tokenizer(name),
                      head=Head.from_model(model) if class_token else None, name=name, pretrained=source,
                      device=device, role=role, embed_dim=None if embed_dim is None else int(embed_dim))


@contextlib.contextmanager
def _quiet_open_clip_init():
    """open_clip logs "initialized randomly" before we load weights ourselves; our own
    RandomWeightsWarning covers the case where that is true."""
    root = logging.getLogger()

    def drop(record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()

    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _load_weights(model: torch.nn.Module, checkpoint: str) -> None:
    """Load a checkpoint strictly (safetensors, or torch.load with weights_only=True).

    open_clip's loader applies its state-dict conversions; copying into the float32 model
    casts fp16-stored weights up.
    """
    import open_clip

    try:
        open_clip.load_checkpoint(model, checkpoint, strict=True, weights_only=True)
    except RuntimeError as err:
        raise ValueError(f"Checkpoint {checkpoint} does not fit this architecture: {err}") from err
    except Exception as err:
        raise ValueError(f"Cannot read checkpoint {checkpoint}: {err}") from err
