"""Captioners: K captions per shape, from templates, a JSON file or BLIP-2.

- ``template``: "a 3D model of a {category}." and variants, K of them chosen per
  shape with a seed from its id.
- ``file``: a JSON object id -> caption or list of captions (Cap3D, ULIP-2
  releases). Lists are cut or cycled to K; a shape missing from the file gets
  template captions and a note in its row.
- ``blip2``: transformers ``Blip2ForConditionalGeneration`` on K views spread
  around the shape, batched over a block. ``blip2-opt-2.7b`` loads
  Salesforce/blip2-opt-2.7b from the local cache; ``blip2-tiny`` builds the
  same classes small and random, with a word-level tokenizer made here.
"""

from __future__ import annotations

import json
import os

import numpy as np

from preprocess.points import seed_for
from preprocess.sources import MeshItem

TEMPLATES = (
    "a 3D model of a {}.", "a point cloud of a {}.", "a rendering of a {}.", "a 3D object: a {}.",
    "a CAD model of a {}.", "a {} in 3D.", "an image of a 3D {}.", "a gray {} model.",
)
CAPTIONERS = ("template", "file", "blip2-opt-2.7b", "blip2-tiny")


def template_captions(item_id: str, category: str, k: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed_for(item_id, seed))
    order = rng.permutation(len(TEMPLATES))
    return [TEMPLATES[order[i % len(TEMPLATES)]].format(category.replace("_", " ")) for i in range(k)]


class Captioner:
    """Returns (K captions, note) for each shape of a block."""

    name = "base"

    def __init__(self, k: int, seed: int = 0) -> None:
        if k < 1:
            raise ValueError(f"need at least one caption per shape, got {k}")
        self.k, self.seed = k, seed

    def describe(self) -> dict:
        return {"captioner": self.name, "num_captions": self.k}

    def caption(self, items: list[MeshItem], label_names: tuple[str, ...],
                views: list[np.ndarray]) -> list[tuple[list[str], str]]:
        raise NotImplementedError


class TemplateCaptioner(Captioner):
    name = "template"

    def caption(self, items, label_names, views):
        return [(template_captions(it.id, label_names[it.label], self.k, self.seed), "") for it in items]


class FileCaptioner(Captioner):
    name = "file"

    def __init__(self, k: int, path: str, seed: int = 0) -> None:
        super().__init__(k, seed)
        if not path or not os.path.exists(path):
            raise FileNotFoundError(f"captions file {path!r} does not exist")
        with open(path) as f:
            table = json.load(f)
        if not isinstance(table, dict):
            raise ValueError(f"captions file {path} must hold a JSON object id -> caption(s)")
        self.path = os.path.abspath(path)
        self.table = {str(key): [v] if isinstance(v, str) else [str(c) for c in v] for key, v in table.items()}

    def describe(self) -> dict:
        return {**super().describe(), "captions_file": self.path, "captions_in_file": len(self.table)}

    def caption(self, items, label_names, views):
        out = []
        for it in items:
            found = [c for c in self.table.get(it.id, []) if c.strip()]
            if found:
                out.append(([found[i % len(found)] for i in range(self.k)], ""))
            else:
                out.append((template_captions(it.id, label_names[it.label], self.k, self.seed),
                            "caption: id not in captions file, template used"))
        return out


class Blip2Captioner(Captioner):
    """BLIP-2 captions of K views per shape (views spread evenly around the object)."""

    def __init__(self, k: int, model_name: str = "blip2-opt-2.7b", seed: int = 0, batch_size: int = 16,
                 max_new_tokens: int = 30, model=None, processor=None, device=None, dtype=None) -> None:
        super().__init__(k, seed)
        import torch

        self.name = model_name
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype or blip2_dtype(self.device)
        if model is None:
            model, processor = build_tiny_blip2() if model_name == "blip2-tiny" else _load_blip2(model_name,
                                                                                                 self.dtype)
        self.model, self.processor = model.to(self.device, self.dtype).eval(), processor
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens

    def describe(self) -> dict:
        return {**super().describe(), "max_new_tokens": self.max_new_tokens}

    def caption(self, items, label_names, views):
        import torch

        picks = [np.linspace(0, len(v), self.k, endpoint=False).astype(int) for v in views]
        images = [v[i] for v, idx in zip(views, picks) for i in idx]
        texts: list[str] = []
        for s in range(0, len(images), self.batch_size):
            inputs = self.processor(images=images[s:s + self.batch_size], return_tensors="pt")
            inputs = inputs.to(self.device, self.dtype)  # casts the pixels only; token ids stay integers
            with torch.inference_mode():
                ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            texts += [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]
        return [(texts[i * self.k:(i + 1) * self.k], "") for i in range(len(items))]


def blip2_dtype(device):
    """Half precision on a GPU (BLIP-2 OPT-2.7b, 3.8 B parameters: 7.7 GB of weights instead of 15.5 GB), fp32 on
    the CPU."""
    import torch

    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def _load_blip2(name: str, dtype):
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    repo = "Salesforce/blip2-opt-2.7b" if name == "blip2-opt-2.7b" else name
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    try:
        processor = Blip2Processor.from_pretrained(repo, local_files_only=offline)
        model = Blip2ForConditionalGeneration.from_pretrained(repo, local_files_only=offline, dtype=dtype)
    except Exception as e:
        from preprocess.teachers import MissingWeightsError, hub_download_command

        raise MissingWeightsError(
            f"Captioner {name!r} needs {repo} in the local Hugging Face cache (HF_HOME="
            f"{os.environ.get('HF_HOME', '~/.cache/huggingface')}). On a machine with internet access run "
            f"`{hub_download_command(repo)}` and copy the cache here, or use --captioner template. "
            f"Underlying error: {type(e).__name__}: {str(e)[:300]}") from e
    return model, processor


def build_tiny_blip2(seed: int = 0):
    """A small random BLIP-2 (same classes as the real one) and an offline word-level tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        BlipImageProcessor,
        OPTConfig,
        PreTrainedTokenizerFast,
    )

    words = ["<pad>", "</s>", "<unk>", "<image>"] + sorted({w.strip(".:,") for t in TEMPLATES for w in t.split()}
                                                         | {"chair", "table", "lamp", "car", "object"})
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", bos_token="</s>",
                                        unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    n, q = len(words), 4
    config = Blip2Config(
        vision_config=Blip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=224, patch_size=16).to_dict(),
        qformer_config=Blip2QFormerConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                          intermediate_size=64, encoder_hidden_size=32, vocab_size=n).to_dict(),
        text_config=OPTConfig(vocab_size=n, hidden_size=32, num_hidden_layers=1, ffn_dim=64, num_attention_heads=2,
                              word_embed_proj_dim=32, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                              eos_token_id=1).to_dict(),
        num_query_tokens=q, image_token_index=words.index("<image>"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Blip2ForConditionalGeneration(config)
    processor = Blip2Processor(image_processor=BlipImageProcessor(size={"height": 224, "width": 224}),
                               tokenizer=tokenizer, num_query_tokens=q)
    return model, processor


def captioner_settings(name: str, k: int, captions_file: str | None = None) -> dict:
    """What a captioner will do, for the cache's config, without loading any model."""
    if name == "file":
        return FileCaptioner(k, captions_file or "").describe()
    if name not in CAPTIONERS:
        raise ValueError(f"unknown captioner {name!r}; choose one of {CAPTIONERS}")
    return {"captioner": name, "num_captions": k}


def make_captioner(name: str, k: int, captions_file: str | None = None, seed: int = 0) -> Captioner:
    if name == "template":
        return TemplateCaptioner(k, seed)
    if name == "file":
        return FileCaptioner(k, captions_file or "", seed)
    if name.startswith("blip2"):
        return Blip2Captioner(k, name, seed)
    raise ValueError(f"unknown captioner {name!r}; choose one of {CAPTIONERS}")
