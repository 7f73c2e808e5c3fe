"""Baseline: the plain single-process loop a scikit-learn user writes first for the classical path.

Pillow decode, greyscale, resize the shorter side + centre crop (the artifact's sizes), scikit-image's
HOG, ``predict_proba`` in batches of 256 with the same fitted estimator (loaded with skops), labels
and scores written to Parquet. One process, one core.
Usage: python benchmarks/plain_classical.py CORPUS_DIR MODEL_DIR OUT.parquet
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(corpus: str, model: str, out: str) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import skops.io as sio
    from PIL import Image
    from skimage.feature import hog

    card = json.loads((Path(model) / "model_card.json").read_text())
    prep = card["preprocess"]
    path = Path(model) / card["weights"]["file"]
    estimator = sio.load(path, trusted=sio.get_untrusted_types(file=path))
    files = sorted(str(p) for p in Path(corpus).rglob("*.jpg"))
    labels, scores = [], []
    started = time.perf_counter()

    def features(f: str) -> np.ndarray:
        img = Image.open(f).convert("L")
        w, h = img.size
        side = prep["resize"]
        img = img.resize((side, round(h * side / w)) if w < h else (round(w * side / h), side), Image.BILINEAR)
        left, top = round((img.width - prep["crop"]) / 2), round((img.height - prep["crop"]) / 2)
        img = img.crop((left, top, left + prep["crop"], top + prep["crop"]))
        return hog(np.asarray(img, np.float32) / 255.0, orientations=9, pixels_per_cell=(8, 8),
                   cells_per_block=(2, 2), block_norm="L2-Hys", feature_vector=True)

    for start in range(0, len(files), 256):
        probs = estimator.predict_proba(np.stack([features(f) for f in files[start:start + 256]]))
        best = probs.argmax(1)
        labels += [card["labels"][i] for i in best]
        scores += probs[np.arange(len(best)), best].tolist()
    pq.write_table(pa.table({"uri": files, "label": labels, "score": scores}), out)
    Path(out + ".timing.json").write_text(json.dumps({"loop_seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
