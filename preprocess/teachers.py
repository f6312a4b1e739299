"""Teacher registry: names -> models that embed views, depth maps and captions.

Real presets load weights from the local caches only when the hub is offline
(``HF_HUB_OFFLINE=1``; ``HF_HOME`` and open_clip's ``--cache-dir`` are
respected); a missing weight raises :class:`MissingWeightsError` naming what to
download. ``*-tiny`` presets build the same model classes small, randomly
initialised with a fixed seed, so the pipeline runs on a CPU in minutes; their
records say ``pretrained: false``.

Images are preprocessed with tensor ops that mirror the official processors
(open_clip: resize to the model's size, its mean/std; DINOv2: resize 256,
centre-crop 224, ImageNet mean/std), so batches never round-trip through PIL.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F

from cache_schema.metadata import TeacherRecord

MODEL_CONFIGS = os.path.join(os.path.dirname(__file__), "model_configs")
TINY_SEED = 0
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLASS_PROMPTS = ("a 3D model of a {}.", "a point cloud of a {}.", "a rendering of a {}.", "a photo of a {}.")


class MissingWeightsError(RuntimeError):
    """Pretrained weights are not in the local cache; the message says what to download."""


@dataclass(frozen=True)
class TeacherPreset:
    name: str
    family: str  # "clip" | "dinov2"
    library: str
    model: str
    pretrained_tag: str
    hf_repo: str | None = None  # where the weights live on the Hugging Face hub
    size: str = "base"  # architecture size when built without weights: "tiny" or "base"


PRESETS = {p.name: p for p in (
    TeacherPreset("clip-vit-b16", "clip", "open_clip", "ViT-B-16", "laion2b_s34b_b88k",
                  "laion/CLIP-ViT-B-16-laion2B-s34B-b88K"),
    TeacherPreset("dinov2-vitb14", "dinov2", "transformers", "facebook/dinov2-base", "facebook/dinov2-base",
                  "facebook/dinov2-base"),
    TeacherPreset("clip-tiny", "clip", "open_clip", "clip-tiny", "none", size="tiny"),
    TeacherPreset("dinov2-tiny", "dinov2", "transformers", "dinov2-tiny", "none", size="tiny"),
    # Full-size architectures with random weights: the real cost of inference, for benchmarks.
    TeacherPreset("clip-vit-b16-random", "clip", "open_clip", "ViT-B-16", "none"),
    TeacherPreset("dinov2-vitb14-random", "dinov2", "transformers", "dinov2-base-arch", "none"),
)}
ALIASES = {"tiny": ("clip-tiny", "dinov2-tiny"), "base": ("clip-vit-b16", "dinov2-vitb14"),
           "base-random": ("clip-vit-b16-random", "dinov2-vitb14-random")}


def resolve_names(names: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Expand aliases (``tiny``, ``base``) and check every name is known."""
    parts = names.split(",") if isinstance(names, str) else list(names)
    out: list[str] = []
    for p in (x.strip() for x in parts if x.strip()):
        for name in ALIASES.get(p, (p,)):
            if name not in PRESETS:
                raise ValueError(f"unknown teacher {name!r}; known: {sorted(PRESETS)} and aliases {sorted(ALIASES)}")
            if name not in out:
                out.append(name)
    return tuple(out)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def hub_download_command(repo: str) -> str:
    """The download command of the installed huggingface_hub: ``hf download`` (1.0 and later) or the older
    ``huggingface-cli download``."""
    try:
        from importlib.metadata import version

        major = int(version("huggingface_hub").split(".")[0])
    except Exception:  # not installed: name the current CLI
        major = 1
    return f"{'hf' if major >= 1 else 'huggingface-cli'} download {repo}"


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer, by name: two caches with equal values used equal weights."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return "sha256:" + h.hexdigest()


def _resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)


def _to_float(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float() / 255.0


def depth_to_image(depth: np.ndarray) -> np.ndarray:
    """(B, H, W) metric depth -> (B, H, W, 3) uint8, near = bright, background black (per map)."""
    out = np.zeros((*depth.shape, 3), np.uint8)
    for i, d in enumerate(depth):
        fg = d > 0
        if fg.any():
            lo, hi = d[fg].min(), d[fg].max()
            g = np.zeros_like(d)
            g[fg] = 1.0 - 0.8 * (d[fg] - lo) / max(hi - lo, 1e-6)
            out[i] = (np.clip(g, 0, 1) * 255).astype(np.uint8)[..., None]
    return out


class Teacher:
    """A frozen model that embeds images (and text, for CLIP) in batches."""

    roles: tuple[str, ...] = ()

    def __init__(self, preset: TeacherPreset, device: torch.device | None = None, batch_size: int = 64,
                 cache_dir: str | None = None) -> None:
        self.preset = preset
        self.device = device or default_device()
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.pretrained = preset.pretrained_tag != "none"
        self.model = self._load().to(self.device).eval()

    def _load(self) -> torch.nn.Module:
        raise NotImplementedError

    @cached_property
    def record(self) -> TeacherRecord:
        return TeacherRecord(self.preset.name, self.preset.library, self.preset.model, self.preset.pretrained_tag,
                             weights_fingerprint(self.model), self.dim, self.roles, normalized=self.normalized,
                             pretrained=self.pretrained)

    def _batches(self, n: int):
        for s in range(0, n, self.batch_size):
            yield slice(s, min(s + self.batch_size, n))

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.float16) if self.device.type == "cuda" else contextlib.nullcontext()

    def _missing(self, what: str, err: Exception) -> MissingWeightsError:
        tiny = ("--teachers dinov2-tiny for a scenes cache, --teachers tiny for an objects cache"
                if self.preset.family == "dinov2" else "--teachers tiny")
        return MissingWeightsError(
            f"Teacher {self.preset.name!r} needs the pretrained weights {what} (Hugging Face repo "
            f"{self.preset.hf_repo}), which are not in the local cache (HF_HOME="
            f"{os.environ.get('HF_HOME', '~/.cache/huggingface')}, HF_HUB_OFFLINE="
            f"{os.environ.get('HF_HUB_OFFLINE', '0')}). On a machine with internet access run "
            f"`{hub_download_command(self.preset.hf_repo or '')}` and copy the cache folder to this machine's "
            f"HF_HOME, or build with the randomly initialised tiny teachers ({tiny}) to test the pipeline. "
            f"Underlying error: {type(err).__name__}: {str(err)[:300]}")


class ClipTeacher(Teacher):
    """open_clip CLIP: view, depth-map, caption and class-prompt embeddings (L2-normalised)."""

    roles = ("image", "depth", "text", "class_text")
    normalized = True

    def _load(self) -> torch.nn.Module:
        import open_clip

        if self.pretrained:
            try:
                model = open_clip.create_model(self.preset.model, pretrained=self.preset.pretrained_tag,
                                               cache_dir=self.cache_dir, require_pretrained=True)
            except Exception as e:  # open_clip raises RuntimeError / hub errors when offline
                raise self._missing(f"{self.preset.model}/{self.preset.pretrained_tag}", e) from e
        else:
            if self.preset.model not in open_clip.list_models():
                open_clip.add_model_config(MODEL_CONFIGS)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(TINY_SEED)
                logging.disable(logging.WARNING)  # open_clip logs "initialized randomly": that is the point
                try:
                    model = open_clip.create_model(self.preset.model, pretrained=None)
                finally:
                    logging.disable(logging.NOTSET)
        self.tokenizer = open_clip.get_tokenizer(self.preset.model)
        cfg = model.visual.preprocess_cfg
        self.image_size = int(np.atleast_1d(cfg["size"])[0])
        self.mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
        return model

    @property
    def dim(self) -> int:
        return int(self.model.text_projection.shape[1]) if hasattr(self.model, "text_projection") \
            else int(self.model.visual.output_dim)

    @torch.inference_mode()
    def encode_images(self, images: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 -> (B, D) float32, L2-normalised."""
        out = []
        for sl in self._batches(len(images)):
            x = _resize_square(_to_float(images[sl], self.device), self.image_size)
            x = (x - self.mean.to(self.device)) / self.std.to(self.device)
            with self._autocast():
                out.append(F.normalize(self.model.encode_image(x).float(), dim=-1).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.dim), np.float32)

    def encode_depth(self, depth: np.ndarray) -> np.ndarray:
        return self.encode_images(depth_to_image(depth))

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """(B,) strings -> (B, D) float32, L2-normalised."""
        out = []
        for sl in self._batches(len(texts)):
            tokens = self.tokenizer(list(texts[sl])).to(self.device)
            with self._autocast():
                out.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.dim), np.float32)

    def encode_classes(self, class_names: list[str]) -> np.ndarray:
        """(C, D): mean of the prompt-template embeddings of each class, re-normalised."""
        prompts = [t.format(c.replace("_", " ")) for c in class_names for t in CLASS_PROMPTS]
        e = self.encode_texts(prompts).reshape(len(class_names), len(CLASS_PROMPTS), -1).mean(axis=1)
        return e / np.linalg.norm(e, axis=-1, keepdims=True)


class Dinov2Teacher(Teacher):
    """DINOv2 (transformers): CLS token (role ``image``) and mean patch token (``patch_mean``) per view."""

    roles = ("image", "patch_mean")
    normalized = False
    crop, resize = 224, 256

    def _load(self) -> torch.nn.Module:
        from transformers import Dinov2Config, Dinov2Model

        if self.pretrained:
            offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
            try:
                return Dinov2Model.from_pretrained(self.preset.model, local_files_only=offline,
                                                   cache_dir=self.cache_dir)
            except Exception as e:  # OSError when the files are not cached
                raise self._missing(self.preset.model, e) from e
        if self.preset.size == "tiny":
            config = Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                  patch_size=14, image_size=self.crop)
        else:  # the dinov2-base architecture (ViT-B/14)
            config = Dinov2Config(patch_size=14, image_size=518)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            return Dinov2Model(config)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        x = _resize_square(_to_float(images, self.device), self.resize)
        o = (self.resize - self.crop) // 2
        x = x[..., o:o + self.crop, o:o + self.crop]
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.inference_mode()
    def encode_images(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, H, W, 3) uint8 -> CLS (B, D) and mean patch token (B, D), float32."""
        cls, patch = [], []
        for sl in self._batches(len(images)):
            with self._autocast():
                h = self.model(pixel_values=self.preprocess(images[sl])).last_hidden_state.float()
            cls.append(h[:, 0].cpu())
            patch.append(h[:, 1:].mean(dim=1).cpu())
        if not cls:
            return np.zeros((0, self.dim), np.float32), np.zeros((0, self.dim), np.float32)
        return torch.cat(cls).numpy(), torch.cat(patch).numpy()

    @property
    def patch_size(self) -> int:
        return int(self.model.config.patch_size)

    @torch.inference_mode()
    def encode_patch_grids(self, images: list[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
        """Dense features: images of any sizes, each resized to ``size`` = (width, height), both multiples of
        the patch size (no crop) -> (B, D, height / patch, width / patch) float32 patch tokens on the CPU."""
        w, h = size
        p = self.patch_size
        if w % p or h % p:
            raise ValueError(f"feature input size {w}x{h} must be a multiple of the patch size {p}")
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        out = []
        for sl in self._batches(len(images)):
            x = torch.cat([F.interpolate(_to_float(im[None], self.device), size=(h, w), mode="bicubic",
                                         align_corners=False, antialias=True) for im in images[sl]])
            with self._autocast():
                tokens = self.model(pixel_values=(x - mean) / std).last_hidden_state[:, 1:].float()
            out.append(tokens.reshape(len(x), h // p, w // p, -1).permute(0, 3, 1, 2).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim, h // p, w // p)


FAMILIES = {"clip": ClipTeacher, "dinov2": Dinov2Teacher}


def load_teacher(name: str, device: torch.device | None = None, batch_size: int = 64,
                 cache_dir: str | None = None) -> Teacher:
    """Build the teacher registered as ``name`` (see PRESETS)."""
    preset = PRESETS[resolve_names(name)[0]]
    return FAMILIES[preset.family](preset, device, batch_size, cache_dir)
