"""WebDataset tar shards (source.webdataset): one part per sample key, with its label."""

from __future__ import annotations

import io
import json
import math
from typing import Optional

from imgclf_ray.containers.base import Part, over_member
from imgclf_ray.imaging.limits import DecodeError  # our own message: shown as it is
from imgclf_ray.registry import CONTAINERS, Container
from imgclf_ray.spec import DecodeSpec, SourceSpec


HEADER_RECORD_LIMIT = 1 << 20  # a GNU long name or a pax header record: a path and a few keywords
GLOBAL_HEADER_LIMIT = 64 << 10  # a pax global header (copied into every member after it; git archive's: 52 bytes)
CHAIN_LIMIT = 8  # header records one after another before a member (each read whole, recursively)
MEMBER_COST = 1024  # bytes a member is counted at least (its header, its entry here): empty ones add up


def _bounded_info():
    """tarfile's TarInfo, refusing what tarfile would read whole before it yields a member (so that
    a compressed shard of a few MB made it hold gigabytes before any limit here saw a member): a
    header record (GNU long name or link, pax) over HEADER_RECORD_LIMIT, a pax global header over
    GLOBAL_HEADER_LIMIT, more than CHAIN_LIMIT records in a row, a sparse member (its map read
    block after block, as many as the file says: 2 million in a 3.7 MB shard held 9 GB; pax
    sparse 0.x maps are inside a pax record, bounded by it). What the records declare is counted
    on the archive (``header_bytes``, ``global_bytes``) for the shard's total."""
    import tarfile

    records = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
               tarfile.SOLARIS_XHDTYPE)

    class Bounded(tarfile.TarInfo):
        def _proc_member(self, tar):
            if self.type not in records:
                tar.chain = 0
                return super()._proc_member(tar)
            tar.chain = getattr(tar, "chain", 0) + 1
            limit = GLOBAL_HEADER_LIMIT if self.type == tarfile.XGLTYPE else HEADER_RECORD_LIMIT
            if self.size > limit:
                raise DecodeError(f"a tar header record (long name or pax) declares {self.size:,} bytes, over {limit:,}")
            if tar.chain > CHAIN_LIMIT:
                raise DecodeError(f"more than {CHAIN_LIMIT} tar header records (long name or pax) in a row")
            tar.header_bytes = getattr(tar, "header_bytes", 0) + self.size
            if self.type == tarfile.XGLTYPE:
                tar.global_bytes = getattr(tar, "global_bytes", 0) + self.size
            return super()._proc_member(tar)

        def _proc_sparse(self, tar):
            raise DecodeError("a sparse tar member (GNU sparse format): not read")

        def _proc_gnusparse_10(self, next, pax_headers, tar):
            raise DecodeError("a sparse tar member (pax GNU.sparse 1.0): not read")

    return Bounded


def split(data: bytes, source: SourceSpec, decode: DecodeSpec, side: Optional[int] = None) -> list[Part]:
    """Image bytes, metadata (JSON: the sample key) and label of every sample of a tar shard."""
    import tarfile

    wds = source.webdataset
    samples: dict[str, dict[str, bytes]] = {}
    too_big: dict[str, dict[str, int]] = {}  # sample key -> extension -> size of a member not read
    total, raw = 0, io.BytesIO(data)
    with tarfile.open(fileobj=raw, mode="r:*", tarinfo=_bounded_info()) as tar:
        # A compressed shard (gzip, bz2, xz) is read forward: skipping a member inflates it (a 24 KB
        # bz2 shard whose member declares 30 GiB took 75 s of CPU to pass over it unread).
        compressed = tar.fileobj is not raw
        while (member := tar.next()) is not None:
            tar.members.clear()  # (tarfile keeps every member, each with its copy of the global pax header)
            # Sizes come from the member headers: nothing over the limits is read.
            read = member.isfile() and member.size <= decode.max_member_bytes
            total += MEMBER_COST + (member.size if read or compressed else 0) + getattr(tar, "global_bytes", 0)
            if total + getattr(tar, "header_bytes", 0) > decode.max_container_bytes:
                raise DecodeError(f"the shard expands past decode.max_container_bytes "
                                  f"({decode.max_container_bytes / 2**20:,.0f} MiB)")
            if not member.isfile():
                continue
            # WebDataset's convention: the key is the path up to the first dot of the file name
            # (a name not in UTF-8, as tarfile gives it, shown with \x escapes: valid text).
            folder, _, name = member.name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") \
                .rpartition("/")
            stem, _, ext = name.partition(".")
            key = f"{folder}/{stem}" if folder else stem
            files = samples.setdefault(key, {})
            if not read:
                too_big.setdefault(key, {})[ext.lower()] = member.size
                continue
            files[ext.lower()] = tar.extractfile(member).read()
    parts = []
    for key, files in samples.items():
        metadata, big = json.dumps({"key": key}), too_big.get(key, {})
        image = next((files[e] for e in wds.image_extensions if e in files), None)
        if image is None:
            size = next((big[e] for e in wds.image_extensions if e in big), None)
            if size is not None:
                parts.append(Part(len(parts), metadata=metadata, error=f"read: {over_member(size, decode)}"))
            continue  # a sample without an image member (e.g. metadata only) is not an image
        if wds.label_extension in big:
            label, why = None, f"is a {over_member(big[wds.label_extension], decode)}"
        else:
            label, why = _label(files.get(wds.label_extension) if wds.label_extension else None,
                                wds.label_extension, wds.label_field)
        if why is not None:  # this sample only: the shard's other samples are read
            parts.append(Part(len(parts), metadata=metadata,
                              error=f"read: the sample's label member (.{wds.label_extension}) {why}"))
            continue
        parts.append(Part(len(parts), image, metadata=metadata, label=label))
    return parts


def _label(raw: Optional[bytes], extension: Optional[str], field: str) -> tuple[Optional[str], Optional[str]]:
    """A sample's label from its label member (text, or a field of a JSON object), or why it has
    none that can be read (None, None: no member, or an empty or null label)."""
    if raw is None:
        return None, None
    if extension != "json":
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            return None, "is not UTF-8 text"
        return text or None, None
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deep, a number too long, NaN
        return None, "is not valid JSON"
    if not isinstance(value, dict):
        return None, f"is a JSON {_JSON_TYPES[type(value)]}, not an object with a '{field}' field"
    label = value.get(field)
    if label is None or isinstance(label, str):
        return (label.strip() or None) if label else None, None
    if isinstance(label, bool):
        return json.dumps(label), None  # true / false, as the file spells them
    if isinstance(label, int) or (isinstance(label, float) and math.isfinite(label)):
        return str(label), None
    if isinstance(label, float):  # 1e400: JSON's number read as infinity
        return None, f"has a number too large in its '{field}' field"
    return None, f"has an {_JSON_TYPES[type(label)]} in its '{field}' field, not a string, number or boolean"


_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")  # Python's json reads NaN and Infinity; JSON has neither



CONTAINERS.register("webdataset")(Container(split))
