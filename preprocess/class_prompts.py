"""Class-prompt text embeddings for a finished cache, so zero-shot runs on it (points caches above all).

    preprocess class-prompts caches/modelnet40-resampled.zarr --teacher clip-vit-b16

Writes ``teachers/<name>/class_text`` (one embedding per class name, through
the CLIP teacher's prompt templates, as the mesh builds do) and adds the
teacher to the root ``teachers`` with the one role ``class_text``. Zero-shot
with a stage-1 model needs the teacher whose head it trained: the same name.
The store gets a new fingerprint.
"""

from __future__ import annotations

from cache_schema import CacheWriter, objects_layout
from preprocess.build_common import coordinator_teacher
from preprocess.teachers import ClipTeacher


def add_class_prompts(url: str, name: str) -> str:
    """Embed the class names of ``url`` with CLIP teacher ``name``; returns a one-line summary."""
    teacher = coordinator_teacher(name)
    if not isinstance(teacher, ClipTeacher):
        raise ValueError(f"{name!r} has no text tower; class prompts need a CLIP teacher (e.g. clip-vit-b16)")
    with CacheWriter.open_existing(url) as writer:
        attrs = dict(writer.group.attrs)
        if attrs["kind"] != "objects":
            raise ValueError(f"{url} is a {attrs['kind']} cache; class prompts are for objects caches")
        names = list(attrs.get("label_names", []))
        if not names:
            raise ValueError(f"{url} has no class names")
        known = attrs.get("teachers", {})
        path = f"teachers/{name}/class_text"
        if name in known:
            if "class_text" in known[name]["roles"] and path in writer.group:
                return f"{url} already has {name!r} class prompts; nothing to do."
            raise ValueError(f"{url} already has teacher {name!r} without class prompts; add-teacher rebuilds it")
        from dataclasses import replace

        record = replace(teacher.record, roles=("class_text",))
        spec = objects_layout(writer.layout.num_rows, 1, 0, 0, {name: record}, num_classes=len(names)).arrays
        writer.add_arrays([s for s in spec if s.path == path], {"teachers": {**known, name: record.to_dict()}})
        writer.write_fixed(path, teacher.encode_classes(names))
        fingerprint = writer.finalize()
    return f"added {name!r} class prompts for {len(names)} classes to {url}; fingerprint {fingerprint}"
