"""Baseline 2: the Ray Data documentation's batch-inference pattern for images.

``read_images`` -> ``map_batches`` preprocessing (torchvision transforms per image) -> an actor
pool running the model -> Parquet. The pool is one actor: on a 2-CPU machine a pool of two 1-CPU
actors holds every CPU and the read tasks never run (the pipeline hangs).
Usage: python benchmarks/ray_data_docs.py CORPUS_DIR MODEL_DIR OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main(corpus: str, model: str, out: str) -> None:
    import numpy as np
    import ray
    import torch
    import torchvision
    from ray.data import ActorPoolStrategy
    from safetensors.torch import load_file
    from torchvision import transforms as T

    card = json.loads((Path(model) / "model_card.json").read_text())
    prep = card["preprocess"]
    ray.init(address="local", include_dashboard=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    transform = T.Compose([T.ToTensor(), T.Resize(prep["resize"]), T.CenterCrop(prep["crop"]),
                           T.Normalize(prep["mean"], prep["std"])])

    def preprocess(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"transformed": np.stack([transform(img).numpy() for img in batch["image"]]),
                "path": batch["path"]}

    class Predictor:
        def __init__(self):
            torch.set_num_threads(1)
            self.net = torchvision.models.get_model(card["architecture"], num_classes=len(card["labels"]))
            self.net.load_state_dict(load_file(str(Path(model) / "model.safetensors")))
            self.net.eval()

        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            with torch.inference_mode():
                probs = torch.softmax(self.net(torch.as_tensor(batch["transformed"])), 1)
            best = probs.max(1)
            return {"path": batch["path"], "label": best.indices.numpy(), "score": best.values.numpy()}

    started = time.perf_counter()
    ds = ray.data.read_images(corpus, mode="RGB", include_paths=True, file_extensions=["jpg"])
    ds = ds.map_batches(preprocess, batch_format="numpy")
    ds = ds.map_batches(Predictor, compute=ActorPoolStrategy(size=1), batch_size=32, num_cpus=1,
                        batch_format="numpy")
    ds.write_parquet(out)
    Path(out.rstrip("/") + ".timing.json").write_text(json.dumps({"loop_seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    main(*sys.argv[1:4])
