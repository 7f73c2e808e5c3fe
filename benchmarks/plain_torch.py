"""Baseline 1: the plain single-process PyTorch loop a user would write first.

Pillow decode, torchvision's Resize(256) + CenterCrop(224) + Normalize, batches of 32, the same
ResNet-18 weights, every core given to torch, predictions written to Parquet.
Usage: python benchmarks/plain_torch.py CORPUS_DIR MODEL_DIR OUT.parquet
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main(corpus: str, model: str, out: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    import torchvision
    from PIL import Image
    from safetensors.torch import load_file
    from torchvision import transforms as T

    torch.set_num_threads(os.cpu_count())
    card = json.loads((Path(model) / "model_card.json").read_text())
    prep = card["preprocess"]
    net = torchvision.models.get_model(card["architecture"], num_classes=len(card["labels"]))
    net.load_state_dict(load_file(str(Path(model) / "model.safetensors")))
    net.eval()
    tf = T.Compose([T.Resize(prep["resize"]), T.CenterCrop(prep["crop"]), T.ToTensor(),
                    T.Normalize(prep["mean"], prep["std"])])
    files = sorted(str(p) for p in Path(corpus).rglob("*.jpg"))
    labels, scores = [], []
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(files), 32):
            batch = torch.stack([tf(Image.open(f).convert("RGB")) for f in files[start:start + 32]])
            probs = torch.softmax(net(batch), 1)
            best = probs.max(1)
            labels += [card["labels"][i] for i in best.indices.tolist()]
            scores += best.values.tolist()
    pq.write_table(pa.table({"uri": files, "label": labels, "score": scores}), out)
    Path(out + ".timing.json").write_text(json.dumps({"loop_seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
