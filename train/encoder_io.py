"""The encoder alone: out of any checkpoint (this tool's or the field's released ones), into a file, back as a module.

    train export-encoder runs/s1/last.pt --out encoder.safetensors            # this tool's format (the default)
    train export-encoder runs/s2/last.pt --format point-mae --out s2.pth      # + s2.yaml, for Point-MAE's own code
    from train import load_encoder
    encoder = load_encoder("encoder.safetensors")   # or runs/s1/last.pt, or Point-MAE's pretrain.pth
    tokens, global_feature = encoder(points)        # (B, G, C), (B, encoder.global_dim)

A safetensors file holds the encoder's tensors and its record ``{"name": family, "config": {...}}`` as JSON in
the metadata; nothing is pickled, so loading it runs no code from the file. Released checkpoints are read with
``weights_only=True`` and mapped by the family's key map (``train/models/encoders/official.py``).
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter

import torch
from safetensors.torch import load_file, safe_open, save_file

from train import checkpoint
from train.models.encoders import PointEncoder, encoder_from_record
from train.models.encoders.official import NotOfficialError, read_official, write_official
from train.tasks import ENCODER_TASKS

FORMAT = "teacher-cache/encoder"
POINT_MAE_FORMAT = "teacher-cache/point-mae-encoder"  # files exported before the registry: Point-MAE's config only
EXPORT_FORMATS = ("safetensors", "point-mae", "point-m2ae")
INIT_HELP = ("Encoder to start from: a stage-1 / stage-2 / finetune checkpoint, an exported .safetensors, a released "
             "Point-MAE / Point-M2AE checkpoint, or random.")  # every run's --init that takes start_from's files


def _safetensors_state(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for what is not its format
        raise checkpoint.CheckpointError(f"{path} is not a safetensors file ({type(e).__name__}: {e})") from None
    if meta.get("format") == FORMAT:
        record = json.loads(meta["encoder"])
    elif meta.get("format") == POINT_MAE_FORMAT:
        record = {"name": "point-mae", "config": json.loads(meta["config"])}
        return record, checkpoint.rename_legacy_mlp(load_file(path))
    else:
        raise checkpoint.CheckpointError(f"{path} is not an encoder exported by `train export-encoder`")
    return record, load_file(path)


def encoder_state(path: str) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """``(record, weights, report)``: the encoder's ``{"name", "config"}``, its tensors (encoder names) and where
    they came from (``report["left_out"]``: tensors of the file that are not the encoder's, e.g. a head).

    ``path``: an exported ``.safetensors``, a checkpoint of this tool with an encoder, or a released Point-MAE /
    Point-M2AE checkpoint."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no encoder file at {path}")
    if path.endswith(".safetensors"):
        record, weights = _safetensors_state(path)
        return record, weights, {"source": "exported encoder", "left_out": []}
    obj = checkpoint.read(path)
    if isinstance(obj, dict) and "stage" in obj:
        state = checkpoint.check_stage(obj, path, ENCODER_TASKS)
        prefix = "encoder."  # every stage's model holds its encoder as ``encoder``
        weights = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
        # the run's heads and decoders are its own business: only what the encoder lacks is worth saying
        return checkpoint.encoder_record(state), weights, {"source": f"{state['stage']} checkpoint", "left_out": []}
    try:
        return read_official(obj, path)
    except NotOfficialError as e:
        raise checkpoint.CheckpointError(str(e)) from None


def build_from(path: str, recipe: str | None = None, **overrides) -> tuple[PointEncoder, dict]:
    """The encoder of ``path`` with its weights (``overrides``: config changes no weight depends on, e.g. grouping)
    after the family's ``recipe``, and the load report: ``missing`` (kept as initialised, e.g. a cls token a
    pre-training state lacks), ``left_out`` (tensors of the file the encoder does not use, e.g. a decoder, a head,
    or norms the recipe's model has no use for)."""
    record, weights, report = encoder_state(path)
    encoder = encoder_from_record(record, recipe, **overrides)
    own = encoder.state_dict()
    result = encoder.load_state_dict({k: v for k, v in weights.items() if k in own}, strict=False)
    unused = [k for k in weights if k not in own]
    return encoder, {**report, "missing": list(result.missing_keys), "left_out": report["left_out"] + unused}


def describe_load(path: str, report: dict) -> str | None:
    """One line saying what did not come from ``path`` or was not used, or None when the file was the encoder."""
    parts = []
    if report["missing"]:
        parts.append(f"not in the file, kept as initialised: {', '.join(report['missing'])}")
    if report["left_out"]:
        groups = Counter(k.split(".")[0] for k in report["left_out"])
        parts.append("in the file, not the encoder's: " + ", ".join(f"{g}.* ({n})" if n > 1 else g
                                                                     for g, n in groups.items()))
    if not parts:
        return None
    return f"{path} ({report['source']}): " + "; ".join(parts)


def start_from(path: str, option: str, recipe: str | None = None, **overrides) -> PointEncoder:
    """:func:`build_from` for a run's ``--init`` / ``--teacher``: what the file lacks or holds besides the encoder
    is printed once (by rank 0 under torchrun), prefixed with the option."""
    encoder, report = build_from(path, recipe, **overrides)
    note = describe_load(path, report)
    if note and int(os.environ.get("RANK", "0")) == 0:
        print(f"{option} {note}", file=sys.stderr)
    return encoder


def load_encoder(path: str, device: str | torch.device = "cpu", verbose: bool = True) -> PointEncoder:
    """An encoder in eval mode: ``tokens, global_feature = encoder(points)``.

    ``path``: an exported ``.safetensors`` file, any checkpoint of this tool with an encoder, or a released
    Point-MAE / Point-M2AE checkpoint. What the file lacks or holds besides the encoder is printed to stderr."""
    encoder, report = build_from(path)
    note = describe_load(path, report)
    if note and verbose:
        print(note, file=sys.stderr)
    return encoder.to(device).eval()


def export_encoder(ckpt: str, out: str, fmt: str = "safetensors") -> dict:
    """Write the encoder of ``ckpt`` to ``out``: this tool's safetensors (record in the metadata) or, with
    ``fmt`` = its family's name, the official fine-tuning code's format (``out`` + a ``.yaml`` beside it)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"--format is one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    record, weights, _ = encoder_state(ckpt)
    if fmt != "safetensors":
        if fmt != record["name"]:
            raise ValueError(f"{ckpt} holds a {record['name']} encoder; it exports as {record['name']} or "
                             f"safetensors, not {fmt}")
        encoder = encoder_from_record(record)
        encoder.load_state_dict(weights)
        return {**write_official(encoder, out), "encoder": record}
    tmp = f"{out}.tmp"
    save_file({k: v.contiguous() for k, v in weights.items()}, tmp,
              metadata={"format": FORMAT, "encoder": json.dumps(record), "source": os.path.abspath(ckpt)})
    os.replace(tmp, out)
    return {"out": out, "tensors": len(weights), "parameters": int(sum(v.numel() for v in weights.values())),
            "encoder": record}
