"""Baseline: the same job in Daft, written the way Daft's documentation shows it.

``from_glob_path`` -> ``download`` -> ``decode_image`` -> ``resize`` -> a ``@daft.cls`` batch method
running the network -> Parquet. Daft resizes straight to the crop size (224x224) where imgclf and
torchvision resize the shorter side and centre-crop; the model, its weights and normalisation are
the ones the other rows use. Daft (0.7.x) declares ``pyarrow<26``: the benchmark installs it into a
folder of its own (``pip install --no-deps --target``) and runs this script with that folder first on
``PYTHONPATH`` and ``DO_NOT_TRACK=1`` (Daft otherwise sends usage telemetry at import).
Usage: python benchmarks/daft_job.py CORPUS_DIR MODEL_DIR OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "1")


def main(corpus: str, model: str, out: str) -> None:
    import daft
    import numpy as np
    from daft import DataType, col
    from daft.functions import decode_image, download, resize

    card = json.loads((Path(model) / "model_card.json").read_text())
    side = card["preprocess"]["crop"]

    @daft.cls
    class Classifier:
        def __init__(self, model_dir: str):
            import torch
            import torchvision
            from safetensors.torch import load_file

            torch.set_num_threads(os.cpu_count())
            self.torch = torch
            self.net = torchvision.models.get_model(card["architecture"], num_classes=len(card["labels"]))
            self.net.load_state_dict(load_file(str(Path(model_dir) / "model.safetensors")))
            self.net.eval()
            prep = card["preprocess"]
            self.mean = torch.tensor(prep["mean"]).view(1, 3, 1, 1)
            self.std = torch.tensor(prep["std"]).view(1, 3, 1, 1)

        @daft.method.batch(return_dtype=DataType.string(), batch_size=32)
        def __call__(self, images: daft.Series):
            torch = self.torch
            x = torch.from_numpy(np.stack(images.to_pylist())).permute(0, 3, 1, 2).float() / 255.0
            with torch.inference_mode():
                probs = torch.softmax(self.net((x - self.mean) / self.std), 1)
            return [card["labels"][i] for i in probs.argmax(1).tolist()]

    started = time.perf_counter()
    classify = Classifier(model)
    df = daft.from_glob_path(f"{corpus}/**/*.jpg")
    df = df.with_column("image", resize(decode_image(download(col("path")), mode="RGB"), side, side))
    df = df.with_column("label", classify(col("image")))
    df.select("path", "label").write_parquet(out)
    Path(out + ".timing.json").write_text(json.dumps({"loop_seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
