"""Train the sandbox CLIP contrastively on the rendered caption world.

    python -m clipattr_utils.sandbox.train                    # the shipped run -> data/sandbox/
    python -m clipattr_utils.sandbox.train --out-dir runs/x --n-objects 64 --n-lesions 16 \
        --max-steps 3 --batch-size 16 --eval none             # smoke test
    python -m clipattr_utils.sandbox.train --name sandbox-derm --n-objects 0 --n-lesions 12000 \
        --epochs 15 --captions derm --lesion-tint-rate 0.3 --eval lesion   # the dermatology CLIP

An open_clip ``CLIP`` built from the registered ``sandbox`` config, trained with open_clip's
own `ClipLoss` on object-world images (planted modes (a)-(d)) mixed with lesion-world images
(mode (e)), every image passed through exactly the val preprocess that
``create_model_and_transforms`` returns (so `models.load_clip("sandbox")` sees what training
saw); the only augmentation, a small random translation, comes before it. Seeded; uses a
GPU with autocast when present.

Writes ``<name>.json`` (open_clip config), ``<name>.safetensors`` (state dict) and
``<name>.record.json`` (command, seed, data recipe, timing, final scores measured on the
saved weights), each atomically.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from tqdm.auto import tqdm

from ..storage import resolve_device, save_tensors_atomic, write_text_atomic
from .clip import SANDBOX_CONFIG, load_sandbox, register, write_config
from .render import RENDERER_VERSION
from .world import LesionRecipe, ObjectRecipe, make_dataset, make_lesion_dataset


@dataclass
class TrainConfig:
    out_dir: str = "data/sandbox"
    """Folder for <name>.json / .safetensors / .record.json."""
    name: str = "sandbox"
    """open_clip model name (= file stem)."""
    seed: int = 0
    n_objects: int = 40000
    """Object-world training images (split "train"); 0: a lesion-only model."""
    n_lesions: int = 4000
    """Lesion-world training images (split "train")."""
    lesion_tint_rate: float | None = None
    """None: the lesion world's own tint rates (`world.LESION_TINT_RATE`, far more common on
    nevi: planted mode (e) inside the CLIP). A number: that share of the lesions of *both*
    diagnoses carries the tint, so the CLIP learns the hue without learning that it means
    "nevus" (the dermatology CLIP of the melanoma case, whose shortcut lives in the probe's
    data only)."""
    epochs: float = 10.0
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    max_steps: int | None = None
    """Stop after this many steps (smoke tests); None = epochs * steps per epoch."""
    shift: int = 2
    """Random translation augmentation in pixels (edge-replicated), applied before preprocess."""
    threads: int | None = None
    device: str = "auto"
    storage_dtype: str = "float16"
    """"float16" (default: each shipped model 7.2 MiB, the three together under 25 MiB),
    "float32", or "auto" (float16 only when float32 would exceed 20 MB)."""
    eval: str = "full"
    """"full", "small", "lesion" (the lesion measurements only; what a lesion-only model can
    be measured on) or "none": planted-mode measurements written to the record."""
    note: str = ""
    """Free text stored in the record (e.g. why this model exists)."""
    eval_every: int = 0
    """Every this many steps, log zero-shot top-1 on 120 clean test images (0 = never)."""
    captions: str = "alt"
    """"alt": alt-text captions with the planted rules (the explained model); "labeler": varied
    captions naming a few visible attributes at a time (the labeler, see
    `captions.labeler_object_caption`); "full": the first labeler's captions
    (`captions.full_object_caption`); "derm" (lesions only): dermatology captions that always
    name the red tint (`captions.derm_lesion_caption`)."""
    world: str = "planted"
    """"planted": the explained world's training recipe (modes (a)-(e)); "independent": every
    attribute independent of the object (`world.ObjectRecipe.independent`; lesions with one
    tint rate for both diagnoses, `INDEPENDENT_LESION_TINT_RATE` unless lesion_tint_rate is
    given): the labeler's world, which shares none of the explained model's shortcuts."""
    model_config: dict = field(default_factory=lambda: json.loads(json.dumps(SANDBOX_CONFIG)))


MAX_BYTES = 20 * 1024 * 1024
INDEPENDENT_LESION_TINT_RATE = 0.3


def _save_weights(model: torch.nn.Module, path: Path, storage_dtype: str) -> str:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    fp32_bytes = sum(v.numel() * 4 for v in state.values())
    if storage_dtype == "auto":
        storage_dtype = "float16" if fp32_bytes > MAX_BYTES else "float32"
    if storage_dtype not in ("float32", "float16"):
        raise ValueError(f"storage_dtype must be float32, float16 or auto, got {storage_dtype!r}")
    dtype = torch.float16 if storage_dtype == "float16" else torch.float32
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    save_tensors_atomic(path, state, metadata={"storage_dtype": storage_dtype, "format": "pt"})
    return storage_dtype


def _normalise_fn(preprocess) -> tuple[torch.Tensor, torch.Tensor]:
    """mean/std of the val preprocess's Normalize, to apply it batched on uint8 tensors."""
    norm = [t for t in getattr(preprocess, "transforms", []) if type(t).__name__ == "Normalize"]
    if len(norm) != 1:
        raise RuntimeError(f"expected exactly one Normalize in the val preprocess, got {preprocess}")
    mean = torch.tensor(norm[0].mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(norm[0].std, dtype=torch.float32).view(1, 3, 1, 1)
    return mean, std


def _check_fast_path(preprocess, images: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> None:
    """The batched path must equal the val preprocess on PIL images (same pixels as load_clip)."""
    from PIL import Image

    k = min(4, len(images))
    ref = torch.stack([preprocess(Image.fromarray(images[i])) for i in range(k)])
    fast = (torch.from_numpy(images[:k]).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    err = (ref - fast).abs().max().item()
    if err > 1e-5:
        raise RuntimeError(f"batched preprocessing differs from the val preprocess by {err}; "
                           "the image size of the config must equal the rendered size")


def _shift_batch(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    if shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (shift, shift, shift, shift), mode="replicate")
    offs = torch.randint(0, 2 * shift + 1, (n, 2), generator=gen)
    return torch.stack([padded[i, :, oy:oy + h, ox:ox + w] for i, (oy, ox) in enumerate(offs.tolist())])


@torch.no_grad()
def _quick_zero_shot(model, tokenizer, preprocess, device, image_size: int, n: int = 120) -> float:
    from .world import CLASSNAMES

    model.eval()
    ds = make_dataset(n, "test", 99, size=image_size)
    x = torch.stack([preprocess(ds.load_image(i)) for i in range(n)]).to(device)
    img = torch.nn.functional.normalize(model.encode_image(x).float(), dim=-1)
    txt = torch.nn.functional.normalize(
        model.encode_text(tokenizer([f"a photo of a {c}" for c in CLASSNAMES]).to(device)).float(), dim=-1)
    return float(((img @ txt.T).argmax(1).cpu().numpy() == np.asarray(ds.labels())).mean())


@torch.no_grad()
def _quick_word_reading(model, tokenizer, preprocess, device, image_size: int, n: int = 120) -> float:
    """Top-1 over all written words on ``n`` held-out independent-world images carrying one
    (the labeler's hardest skill, logged while it trains)."""
    from .world import NEUTRAL_WORDS, TYPO_WORDS, ObjectRecipe

    words = list(TYPO_WORDS) + list(NEUTRAL_WORDS)
    model.eval()
    ds = make_dataset(n, "test", 98, size=image_size, recipe=ObjectRecipe.independent(),
                      text=None)
    rows = [i for i, w in enumerate(ds.attributes["text"]) if w]
    x = torch.stack([preprocess(ds.load_image(i)) for i in rows]).to(device)
    img = torch.nn.functional.normalize(model.encode_image(x).float(), dim=-1)
    txt = torch.nn.functional.normalize(
        model.encode_text(tokenizer([f"the word '{w}'" for w in words]).to(device)).float(), dim=-1)
    truth = np.asarray([words.index(ds.attributes["text"].iloc[i]) for i in rows])
    return float(((img @ txt.T).argmax(1).cpu().numpy() == truth).mean())


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # As in open_clip's training: no decay on gains, biases, embeddings and logit_scale.
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n or "embedding" in n:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def train(cfg: TrainConfig, command: str | None = None) -> dict:
    """Run one training; returns the record written next to the weights."""
    if cfg.captions not in ("alt", "full", "derm", "labeler"):
        raise ValueError(f"captions must be 'alt', 'full', 'labeler' or 'derm', got {cfg.captions!r}")
    if cfg.world not in ("planted", "independent"):
        raise ValueError(f"world must be 'planted' or 'independent', got {cfg.world!r}")
    if cfg.captions == "derm" and cfg.n_objects:
        raise ValueError("captions='derm' are lesion captions: they need n_objects=0")
    if cfg.eval not in ("full", "small", "lesion", "labeler", "none"):
        raise ValueError(f"eval must be full, small, lesion, labeler or none, got {cfg.eval!r}")
    if cfg.n_objects < 0 or cfg.n_lesions < 0 or cfg.n_objects + cfg.n_lesions < 1 or cfg.batch_size < 2:
        raise ValueError(f"need n_objects >= 0, n_lesions >= 0 (not both 0), batch_size >= 2 (got {cfg.n_objects}, "
                         f"{cfg.n_lesions}, {cfg.batch_size})")
    if cfg.n_objects == 0 and (cfg.eval in ("full", "small", "labeler") or cfg.eval_every):
        raise ValueError(f"a lesion-only model (n_objects=0) has no object-world measurements: use eval='lesion' or "
                         f"'none' and eval_every=0 (got eval={cfg.eval!r}, eval_every={cfg.eval_every})")
    if cfg.lesion_tint_rate is not None and not 0.0 <= cfg.lesion_tint_rate <= 1.0:
        raise ValueError(f"lesion_tint_rate must be in [0, 1] or None, got {cfg.lesion_tint_rate}")
    # Imported before training starts: the final evaluation then runs the measuring code as
    # it was at launch, not whatever an edit made of it during a half-hour run.
    from .labeler_card import labeler_card
    from .shortcuts import measure_all, measure_lesions

    t_start = time.time()
    cpu_start = time.process_time()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = resolve_device(cfg.device)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_path = write_config(out / f"{cfg.name}.json", cfg.model_config)
    register(config_path)
    image_size = int(cfg.model_config["vision_cfg"]["image_size"])

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model, _, preprocess = open_clip.create_model_and_transforms(cfg.name)
    tokenizer = open_clip.get_tokenizer(cfg.name)
    model.to(device).train()

    # Data: deterministic from (seed, split, index); rendered once into uint8 arrays.
    parts, captions, objects, lesions = [], [], None, None
    if cfg.n_objects:
        recipe = ObjectRecipe.independent() if cfg.world == "independent" else None
        objects = make_dataset(cfg.n_objects, "train", cfg.seed, size=image_size, recipe=recipe)
        parts.append(objects.render_array(progress=True))
        captions = objects.captions if cfg.captions == "alt" else objects.full_captions(
            "labeler" if cfg.captions == "labeler" else "full")
    if cfg.n_lesions:
        rate = cfg.lesion_tint_rate
        if rate is None and cfg.world == "independent":
            rate = INDEPENDENT_LESION_TINT_RATE
        recipe = None if rate is None else LesionRecipe(tint_rate_nevus=float(rate), tint_rate_melanoma=float(rate))
        lesions = make_lesion_dataset(cfg.n_lesions, "train", cfg.seed, size=image_size, recipe=recipe)
        parts.append(lesions.render_array(progress=True))
        style = {"labeler": "full"}.get(cfg.captions, cfg.captions)
        captions = captions + (lesions.captions if cfg.captions == "alt" else lesions.full_captions(style))
    images = np.concatenate(parts)
    mean, std = _normalise_fn(preprocess)
    _check_fast_path(preprocess, images, mean, std)
    tokens = tokenizer(captions)
    t_data = time.time() - t_start

    n = len(images)
    steps_per_epoch = max(1, n // cfg.batch_size)
    total = int(math.ceil(cfg.epochs * steps_per_epoch)) if cfg.max_steps is None else int(cfg.max_steps)
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    warm = max(1, min(cfg.warmup_steps, total // 10 or 1))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
    loss_fn = open_clip.ClipLoss()
    gen = torch.Generator().manual_seed(cfg.seed)
    use_amp = device.type == "cuda"
    losses: list[float] = []
    curve: list[tuple[int, float]] = []
    word_curve: list[tuple[int, float]] = []
    step = 0
    t_train0 = time.time()
    bar = tqdm(total=total, desc=f"train {cfg.name}")
    while step < total:
        order = torch.randperm(n, generator=gen)
        for b in range(steps_per_epoch):
            if step >= total:
                break
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            x = torch.from_numpy(images[idx.numpy()]).permute(0, 3, 1, 2).float() / 255.0
            x = (_shift_batch(x, cfg.shift, gen) - mean) / std
            x, t = x.to(device, non_blocking=True), tokens[idx].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                img_f, txt_f, scale = model(x, t)
                loss = loss_fn(img_f, txt_f, scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():  # CLIP's clamp: temperature at most 100
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
            if step % 20 == 0 or step == total:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == total):
                acc = _quick_zero_shot(model, tokenizer, preprocess, device, image_size)
                curve.append((step, acc))
                read = ""
                if cfg.captions == "labeler":
                    words = _quick_word_reading(model, tokenizer, preprocess, device, image_size)
                    word_curve.append((step, words))
                    read = f", word top-1 {words:.3f}"
                tqdm.write(f"step {step}: loss {np.mean(losses[-50:]):.3f}, zero-shot top-1 (120 clean) {acc:.3f}{read}")
                model.train()
    bar.close()
    t_train = time.time() - t_train0

    weights_path = out / f"{cfg.name}.safetensors"
    storage = _save_weights(model, weights_path, cfg.storage_dtype)

    # Scores are measured on the saved file, loaded the way load_clip loads it.
    scores: dict[str, Any] = {}
    t_eval = 0.0
    if cfg.eval != "none":
        t0 = time.time()
        clip = load_sandbox(cfg.name, out, device=str(device))
        if cfg.eval == "lesion":
            scores = measure_lesions(clip, seed=0)
        elif cfg.eval == "labeler":
            from ..models import load_clip  # the labeler as notebook 02 loads it (encode_text, role="labeler")

            loaded = load_clip(cfg.name, str(weights_path), device=str(device), role="labeler")
            scores = {"labeler_card": labeler_card(loaded, n=1200, seed=0).to_dict(orient="records"),
                      **measure_all(clip, seed=0)}
        else:
            sizes = {} if cfg.eval == "full" else dict(n_zero_shot=150, n_per_group=30, n_per_word=4,
                                                             n_lesion_train=200, n_lesion_test=40)
            scores = measure_all(clip, seed=0, **sizes)
        t_eval = time.time() - t0

    record = {
        "command": command or "python -m clipattr_utils.sandbox.train " + " ".join(map(shlex.quote, sys.argv[1:])),
        "seed": cfg.seed,
        "note": cfg.note,
        "train_config": {k: v for k, v in asdict(cfg).items() if k != "model_config"},
        "model_config": cfg.model_config,
        "data": {"objects": None if objects is None else objects.describe(),
                 "objects_fingerprint": None if objects is None else objects.fingerprint(),
                 "lesions": None if lesions is None else lesions.describe(),
                 "lesions_fingerprint": None if lesions is None else lesions.fingerprint(),
                 "renderer_version": RENDERER_VERSION},
        "steps": step,
        "final_loss_mean_last_50": float(np.mean(losses[-50:])) if losses else None,
        "zero_shot_curve_120_clean": curve,
        **({"word_reading_curve": word_curve} if word_curve else {}),
        "loss_curve_every_50": [float(np.mean(losses[i:i + 50])) for i in range(0, len(losses), 50)],
        "storage_dtype": storage,
        "weights_bytes": weights_path.stat().st_size,
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "time_s": {"data": round(t_data, 1), "train": round(t_train, 1), "eval": round(t_eval, 1),
                   "total": round(time.time() - t_start, 1),
                   "cpu_process_total": round(time.process_time() - cpu_start, 1)},
        "machine": {"device": str(device), "torch_threads": torch.get_num_threads(),
                    "cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__, "open_clip": open_clip.__version__},
        "scores": scores,
    }
    write_text_atomic(out / f"{cfg.name}.record.json", json.dumps(record, indent=2, default=_jsonable) + "\n")
    return record


def _jsonable(o: Any):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON-serialisable: {type(o)}")


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m clipattr_utils.sandbox.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default=d.out_dir)
    p.add_argument("--name", default=d.name)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--n-objects", type=int, default=d.n_objects)
    p.add_argument("--n-lesions", type=int, default=d.n_lesions)
    p.add_argument("--epochs", type=float, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--shift", type=int, default=d.shift)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=d.device)
    p.add_argument("--storage-dtype", default=d.storage_dtype, choices=["auto", "float32", "float16"])
    p.add_argument("--lesion-tint-rate", type=float, default=None,
                   help="share of lesions of both diagnoses with the red tint (default: the world's nevus/melanoma rates)")
    p.add_argument("--eval", default=d.eval, choices=["full", "small", "lesion", "labeler", "none"])
    p.add_argument("--world", default=d.world, choices=["planted", "independent"],
                   help="planted: the explained world's recipe; independent: no attribute tied to the object "
                        "(the labeler's world)")
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--note", default=d.note, help="free text stored in the record")
    p.add_argument("--captions", default=d.captions, choices=["alt", "full", "derm", "labeler"],
                   help="alt: planted alt-text captions (the sandbox model); full: every attribute named (the labeler); "
                        "derm: lesion captions that always name the red tint (the dermatology CLIP)")
    p.add_argument("--model-config", default=None,
                   help="JSON file with an open_clip model config replacing the built-in sandbox architecture")
    a = p.parse_args(argv)
    model_config = d.model_config
    if a.model_config:
        path = Path(a.model_config)
        if not path.is_file():
            p.error(f"--model-config: file not found: {path}")
        model_config = json.loads(path.read_text())
        missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in model_config]
        if missing:
            p.error(f"--model-config {path}: missing keys {missing}")
    return TrainConfig(out_dir=a.out_dir, name=a.name, seed=a.seed, n_objects=a.n_objects, n_lesions=a.n_lesions,
                       lesion_tint_rate=a.lesion_tint_rate,
                       epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay,
                       warmup_steps=a.warmup_steps, max_steps=a.max_steps, shift=a.shift, threads=a.threads,
                       device=a.device, storage_dtype=a.storage_dtype, eval=a.eval, captions=a.captions, world=a.world,
                       eval_every=a.eval_every, note=a.note, model_config=model_config)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    record = train(cfg)
    print(json.dumps({"time_s": record["time_s"], "scores": record["scores"]}, indent=1, default=_jsonable))


if __name__ == "__main__":
    main()
