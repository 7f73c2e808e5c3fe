"""Bundled example data sets: real images that a dependency ships, written as PNG files.

Nothing is downloaded. ``example: {dataset: ...}`` writes scikit-learn's digits, scikit-image's
lfw_subset faces or its texture photographs into the source folder (one folder per class) when it
holds no images yet; the models that learn them are in :mod:`imgclf_ray.training.example_models`.
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np

from imgclf_ray.io.storage import filesystem, is_local, join
from imgclf_ray.spec import SourceSpec, StorageSpec

# Attributes of a digit (the multilabel example's labels) and the groups of the tree example.
DIGIT_ATTRIBUTES = {"even": {0, 2, 4, 6, 8}, "large": {5, 6, 7, 8, 9}, "prime": {2, 3, 5, 7},
                    "closed-loop": {0, 4, 6, 8, 9}}
DIGIT_GROUPS = {"small": ["0", "1", "2", "3", "4"], "large": ["5", "6", "7", "8", "9"]}
LABEL_TABLES = "_labels"  # inside the archive: listing skips "_" folders
WRITING = "_example-writing"  # in an archive being written where there is no rename (listing skips it)

def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, "L").save(buf, format="PNG")
    return buf.getvalue()


def write_digits_archive(uri: str, storage: StorageSpec = StorageSpec()) -> int:
    """scikit-learn's 1,797 digits as 8x8 greyscale PNGs, ``<uri>/<digit>/digit-NNNN.png``, and two
    label tables under ``<uri>/_labels/``: attributes.parquet (the digit's attributes joined by
    "|", multilabel) and groups.parquet (small/3, hierarchical)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.datasets import load_digits

    digits = load_digits()
    fs, root = filesystem(uri, storage)
    keys = []
    for i, (pixels, target) in enumerate(zip(digits.images, digits.target)):
        key = f"{target}/digit-{i:04d}.png"
        fs.makedirs(join(root, str(target)), exist_ok=True)
        fs.pipe_file(join(root, key), _png(np.rint(pixels * (255.0 / 16.0)).astype(np.uint8)))
        keys.append(key)
    group_of = {d: g for g, members in DIGIT_GROUPS.items() for d in members}
    tables = {
        "attributes": ["|".join(a for a, members in DIGIT_ATTRIBUTES.items() if int(t) in members)
                       for t in digits.target],
        "groups": [f"{group_of[str(t)]}/{t}" for t in digits.target],
    }
    fs.makedirs(join(root, LABEL_TABLES), exist_ok=True)
    for name, labels in tables.items():
        with fs.open(join(root, LABEL_TABLES, f"{name}.parquet"), "wb") as fh:
            pq.write_table(pa.table({"uri": keys, "label": labels}), fh)
    return len(keys)


def write_textures_archive(uri: str, storage: StorageSpec = StorageSpec()) -> int:
    """scikit-image's brick, grass and gravel photographs (512x512 greyscale) cut into 64x64
    patches: ``<uri>/<texture>/patch-NN.png``, 64 per texture."""
    from skimage import data

    fs, root = filesystem(uri, storage)
    n = 0
    for name in ("brick", "grass", "gravel"):
        image = getattr(data, name)()
        fs.makedirs(join(root, name), exist_ok=True)
        for k, (i, j) in enumerate((i, j) for i in range(0, 512, 64) for j in range(0, 512, 64)):
            fs.pipe_file(join(root, name, f"patch-{k:02d}.png"), _png(image[i:i + 64, j:j + 64]))
            n += 1
    return n


def write_faces_archive(uri: str, storage: StorageSpec = StorageSpec()) -> int:
    """scikit-image's lfw_subset (100 faces, 100 non-faces, 25x25 greyscale) as PNG files:
    ``<uri>/face/`` and ``<uri>/non-face/``."""
    from skimage.data import lfw_subset

    images = lfw_subset()
    fs, root = filesystem(uri, storage)
    for i, img in enumerate(images):
        folder = "face" if i < 100 else "non-face"
        fs.makedirs(join(root, folder), exist_ok=True)
        fs.pipe_file(join(root, folder, f"{folder}-{i:03d}.png"), _png(np.rint(img * 255).astype(np.uint8)))
    return len(images)


WRITERS: dict[str, Callable[[str, StorageSpec], int]] = {
    "digits": write_digits_archive, "faces": write_faces_archive, "textures": write_textures_archive}
NOUNS = {"digits": "digit images", "faces": "face / non-face images", "textures": "texture patches"}


def ensure_example_archive(dataset: str, source: SourceSpec, storage: StorageSpec = StorageSpec(),
                           moved: bool = False) -> int:
    """Write the bundled data set into ``source.uri`` unless images are there; how many were written.
    Only where nothing is (no such folder or prefix, or one holding only folder markers; never a
    glob), and never where ``moved`` (the location was set on the command line, not the spec's own,
    without example.anywhere): else the listing's error, and the way out."""
    from imgclf_ray.errors import NothingThere, SourceError
    from imgclf_ray.io.listing import list_archive

    fs, root = filesystem(source.uri, storage)
    if fs.exists(join(root, WRITING)):  # an earlier write was interrupted: its images are not all there
        return _write_whole(dataset, source.uri, storage)
    try:
        list_archive(source, storage)
        return 0
    except NothingThere as missing:
        if moved:
            raise SourceError(f"{missing}; the spec's example: writes its {NOUNS[dataset]} only to the spec's own "
                              "location, and this one was set on the command line (--set example.anywhere=true "
                              "writes them there too)") from None
        return _write_whole(dataset, source.uri, storage)
    except SourceError as missing:
        raise SourceError(f"{missing}; the spec's example: writes its {NOUNS[dataset]} only where there is nothing "
                          "yet: --set example=null runs the job on this archive as it is (with source.extensions "
                          "and a model.uri that fit it)") from None


def _write_whole(dataset: str, uri: str, storage: StorageSpec) -> int:
    """The data set written at ``uri`` so that an interrupted write (a stopped `make demo`) leaves
    no half archive for the next run to take as the example: a local folder is written beside it,
    then renamed into place; where there is no rename (S3 ...), a ``WRITING`` marker is put first
    and taken away last, and the next run that finds it writes the data set again."""
    import os
    import shutil

    fs, root = filesystem(uri, storage)
    root = root.rstrip("/")
    if not is_local(fs) or os.path.islink(root):  # (a link to an empty folder: written where it points)
        fs.pipe_file(join(root, WRITING), b"")
        written = WRITERS[dataset](uri, storage)
        fs.rm_file(join(root, WRITING))
        return written
    staging = f"{root}.writing"  # (an interrupted earlier write's is replaced)
    shutil.rmtree(staging, ignore_errors=True)
    written = WRITERS[dataset](staging, storage)
    try:
        if os.path.isdir(root):
            os.rmdir(root)  # empty (NothingThere): the rename needs its place
        os.replace(staging, root)
    except OSError as exc:
        from imgclf_ray.errors import SourceError
        from imgclf_ray.io.storage import describe_os_error

        raise SourceError(f"{uri}: cannot put the example's images in place ({describe_os_error(exc)})") from None
    return written


def moved(spec, key: str) -> bool:
    """Whether a spec's example data would go where the command line (--set) put ``key``
    (source.uri, data.uri), not where the spec says, without example.anywhere."""
    return not spec.example.anywhere and any(k in (key.split(".")[0], key) for k in spec._overridden)
