"""WebDataset tar shards (source.webdataset): one part per sample key, with its label."""

from __future__ import annotations

import io
import json
from typing import Optional

from imgclf_ray.containers.base import Part, over_member
from imgclf_ray.registry import CONTAINERS, Container
from imgclf_ray.spec import DecodeSpec, SourceSpec


def split(data: bytes, source: SourceSpec, decode: DecodeSpec, side: Optional[int] = None) -> list[Part]:
    """Image bytes, metadata (JSON: the sample key) and label of every sample of a tar shard."""
    import tarfile

    wds = source.webdataset
    samples: dict[str, dict[str, bytes]] = {}
    too_big: dict[str, str] = {}  # sample key -> why its image was not read
    total = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            # WebDataset's convention: the key is the path up to the first dot of the file name.
            folder, _, name = member.name.rpartition("/")
            stem, _, ext = name.partition(".")
            key = f"{folder}/{stem}" if folder else stem
            files = samples.setdefault(key, {})
            # Sizes come from the member headers: nothing over the limits is read.
            if member.size > decode.max_member_bytes:
                too_big[key] = over_member(member.size, decode)
                continue
            total += member.size
            if total > decode.max_container_bytes:
                raise ValueError(f"the shard expands past decode.max_container_bytes "
                                 f"({decode.max_container_bytes / 2**20:,.0f} MiB)")
            files[ext.lower()] = tar.extractfile(member).read()
    parts = []
    for key, files in samples.items():
        image = next((files[e] for e in wds.image_extensions if e in files), None)
        if image is None:
            if key in too_big:
                parts.append(Part(len(parts), metadata=json.dumps({"key": key}), error=f"read: {too_big[key]}"))
            continue  # a sample without an image member (e.g. metadata only) is not an image
        label = None
        if wds.label_extension and wds.label_extension in files:
            raw = files[wds.label_extension]
            if wds.label_extension == "json":
                label = json.loads(raw).get(wds.label_field)
            else:
                label = raw.decode("utf-8").strip()
        parts.append(Part(len(parts), image, metadata=json.dumps({"key": key}),
                          label=None if label is None else str(label)))
    return parts



CONTAINERS.register("webdataset")(Container(split))
