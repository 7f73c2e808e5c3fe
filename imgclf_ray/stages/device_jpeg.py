"""``decode.jpeg_on: predictor``: the JPEGs the decode tasks passed on undecoded, decoded on the
predictor's device (``imaging.device_decode``) into the batch's inputs; a file that fails becomes
an error row of the decode stage, as it would have in the decode tasks."""

from __future__ import annotations

import threading
import time
from typing import Any, Optional

import numpy as np

from imgclf_ray.imaging.conditioning import Conditioning
from imgclf_ray.spec import DecodeSpec
from imgclf_ray.stages.common import Reporter, Rows


class DeviceJpegs:
    """Decodes a batch's passed-on JPEGs on ``device`` (one per predictor)."""

    def __init__(self, cond: Conditioning, device: Any, decode: DecodeSpec, reporter: Optional[Reporter] = None):
        self.cond, self.device, self.decode, self.reporter = cond, device, decode, reporter
        # One decode at a time: the predictor may take two batches at once (resources.calls_per_actor),
        # and its 64 MP chunk budget is per decode.
        self._lock = threading.Lock()

    def __call__(self, inputs: np.ndarray, encoded: np.ndarray, rows: Rows,
                 pixels: Optional[np.ndarray] = None) -> tuple[Any, list[int]]:
        """The batch's inputs on the device with the JPEGs decoded in, and the rows whose file
        failed (their error says why); ``pixels``: each row's width x height (its header's)."""
        import torch

        from imgclf_ray.imaging.device_decode import decode_batch
        from imgclf_ray.stages.load import dense_inputs

        x = torch.from_numpy(dense_inputs(inputs, self.cond.output_shape))
        idx = [i for i, e in enumerate(encoded) if rows.ok[i] and isinstance(e, (bytes, bytearray))]
        if not idx:
            return x, []
        started = time.perf_counter()
        x = x.to(self.device)
        with self._lock:
            images, errors = decode_batch([bytes(encoded[i]) for i in idx], self.cond, self.decode, self.device,
                                          None if pixels is None else [int(pixels[i]) for i in idx])
        failed = []
        for i, img, why in zip(idx, images, errors):
            if why is None:
                x[i] = img
            else:
                rows.fail(i, why)
                failed.append(i)
        if self.reporter is not None:
            self.reporter("device_decode", len(idx), time.perf_counter() - started)
        return x, failed
