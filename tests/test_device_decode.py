"""decode.jpeg_on: predictor — JPEGs decoded in batches on the predictor's device (nvJPEG on GPU
actors; here, without a GPU, torchvision's libjpeg-turbo on the CPU actor): the rows task decoding
writes, bad files' error rows included, in either engine; the jobs it cannot serve refused."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imgclf_ray.errors import SpecError
from imgclf_ray.imaging.device_decode import for_device
from imgclf_ray.io import sink
from imgclf_ray.io.listing import list_archive
from imgclf_ray.runner.job import execute
from imgclf_ray.spec import DecodeSpec
from tests.corpus import bad_files, good_files, jpeg_bytes
from tests.support.jobs import make_spec

COMPARED = ("image_id", "status", "error", "width", "height", "label", "topk_labels")


def _odd_jpegs(photo: Image.Image) -> dict[str, bytes]:
    """JPEGs the decode tasks keep (CMYK, EXIF-rotated) or the device meets (greyscale,
    progressive, bytes that only look like a JPEG)."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    small = photo.crop((0, 0, 300, 200))
    whole = jpeg_bytes(small)
    return {
        "odd/grey.jpg": jpeg_bytes(small.convert("L")),
        "odd/cmyk.jpg": jpeg_bytes(small.convert("CMYK")),
        "odd/rotated.jpg": jpeg_bytes(small, exif=exif.tobytes()),
        "odd/progressive.jpg": jpeg_bytes(small, progressive=True),
        # A whole header and no image data: the device refuses it, Pillow then says why.
        "odd/no-scan.jpg": whole[:whole.index(b"\xff\xda")] + b"\xff\xd9",
    }


@pytest.fixture(scope="module")
def jpeg_archive(tmp_path_factory, sample_photo):
    root = tmp_path_factory.mktemp("jpegs")
    files = {**good_files(sample_photo, n_digits=2), **{k: v[0] for k, v in bad_files(sample_photo).items()},
             **_odd_jpegs(sample_photo)}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def torch_resampled_model(tmp_path_factory):
    """A seeded resnet18 whose card asks for torch's resize (as Hugging Face processors do): the
    conditioning the predictor reproduces exactly on a CPU."""
    import torch

    from imgclf_ray.models.artifact import save_artifact
    from imgclf_ray.models.torch_classifier import build_network

    torch.manual_seed(0)
    uri = str(tmp_path_factory.mktemp("model-torch-resize"))
    save_artifact(uri, {"architecture": "resnet18", "labels": [f"c{i}" for i in range(4)],
                        "preprocess": {"resize": 40, "crop": 32, "channels": 3, "mean": [0.5] * 3,
                                       "std": [0.25] * 3, "resampler": "torch"}},
                  build_network("resnet18", 4).state_dict())
    return uri


def _rows(sink_uri: str) -> dict[str, dict]:
    return {r["image_id"]: r for r in sink.read_rows(sink.resolve_run(sink_uri, "r")).to_pylist()}


@pytest.mark.ray
@pytest.mark.slow
def test_jpegs_decoded_by_the_predictor_give_the_rows_of_task_decoding(ray_session, jpeg_archive,
                                                                       torch_resampled_model, tmp_path):
    runs, stages = {}, {}
    for name, executor, where in (("tasks", "ray", "tasks"), ("predictor", "ray", "predictor"),
                                  ("local", "local", "predictor")):
        spec = make_spec(str(jpeg_archive), str(tmp_path / name), torch_resampled_model,
                         decode={"jpeg_on": where}, run={"executor": executor})
        result = execute(spec, list_archive(spec.source), "r")
        runs[name], stages[name] = _rows(spec.sink.uri), result.stages
    # The plain JPEGs (3 photographs, greyscale, the one without a scan) went to the predictor; the
    # progressive one stayed in the tasks (nvJPEG would decode it on the host).
    assert stages["predictor"]["device_decode"]["rows"] == stages["local"]["device_decode"]["rows"] == 5
    assert "device_decode" not in stages["tasks"]
    base = runs["tasks"]
    assert sum(r["status"] == "ok" for r in base.values()) == 9
    for name in ("predictor", "local"):
        assert sorted(runs[name]) == sorted(base)
        for image_id, a in base.items():
            b = runs[name][image_id]
            assert {c: a[c] for c in COMPARED} == {c: b[c] for c in COMPARED}, (name, a["uri"])
            if a["status"] == "ok":
                np.testing.assert_allclose(a["class_scores"], b["class_scores"], atol=1e-5)
    no_scan = next(r for r in base.values() if r["uri"].endswith("no-scan.jpg"))
    assert no_scan["status"] == "error" and no_scan["error"].startswith("decode: ")


def test_the_decode_task_passes_on_only_whole_plain_jpegs(sample_photo):
    photo = sample_photo.crop((0, 0, 300, 200))
    options = DecodeSpec(jpeg_on="predictor")
    assert for_device(jpeg_bytes(photo), options) == (300, 200)
    assert for_device(jpeg_bytes(photo.convert("L")), options) == (300, 200)
    whole = jpeg_bytes(photo)
    assert for_device(whole[: len(whole) // 2], options) is None  # truncated: the task says so
    assert for_device(jpeg_bytes(photo.convert("CMYK")), options) is None
    exif = Image.Exif()
    exif[0x0112] = 8
    rotated = jpeg_bytes(photo, exif=exif.tobytes())
    assert for_device(rotated, options) is None
    assert for_device(rotated, DecodeSpec(jpeg_on="predictor", exif_transpose=False)) == (300, 200)
    assert for_device(jpeg_bytes(photo), DecodeSpec(jpeg_on="predictor", max_image_pixels=1000)) is None
    buf = io.BytesIO()
    photo.save(buf, format="PNG")
    assert for_device(buf.getvalue(), options) is None
    # nvJPEG decodes a progressive JPEG on the host: the decode tasks' cores do it as well.
    assert for_device(jpeg_bytes(photo, progressive=True), options) is None
    # A sliver the device would enlarge into gigabytes (a 4 KB JPEG of 40000x1 at 224: 9 GB): the
    # task's path, which refuses it; a line scan within Pillow's limit goes to the device.
    sliver = jpeg_bytes(Image.new("L", (40000, 1)))
    assert for_device(sliver, options) == (40000, 1) and for_device(sliver, options, 224) is None
    assert for_device(jpeg_bytes(Image.new("L", (3000, 100))), options, 224) == (3000, 100)


def test_the_device_decodes_in_chunks_of_bounded_pixels_and_halves_a_failing_one(sample_photo, monkeypatch):
    """128 phone photos at once would be 9 GB of full-size pixels on the device: chunks hold at most
    DEVICE_PIXELS; a corrupt file fails its chunk's call, which is halved down to that file."""
    import torch

    from imgclf_ray.imaging import device_decode
    from imgclf_ray.imaging.conditioning import Conditioning

    assert device_decode.chunks([30, 30, 10, 70, 5, 5], budget=64) == [[0, 1], [2], [3], [4, 5]]
    assert device_decode.chunks([], budget=64) == []
    calls: list[int] = []

    def decode(items):
        calls.append(len(items))
        if "bad" in items:
            raise RuntimeError("nvjpeg: bad data")
        return [f"ok:{i}" for i in items]

    items = [f"f{i}" for i in range(16)]
    items[11] = "bad"
    got = device_decode.halving(items, decode)
    assert got == [f"ok:{i}" if i != "bad" else None for i in items]
    assert len(calls) <= 2 * 4 + 1  # log2(16) levels, two calls each: not one call per file

    photo = sample_photo.crop((0, 0, 300, 200))
    blobs = [jpeg_bytes(photo.rotate(15 * k)) for k in range(5)]
    blobs[2] = blobs[2][:20] + bytes(len(blobs[2]) - 20)  # a damaged header: the decoder raises
    cond = Conditioning(resize=32, crop=32, channels=3)
    whole, errors = device_decode.decode_batch(blobs, cond, DecodeSpec(), torch.device("cpu"))
    monkeypatch.setattr(device_decode, "DEVICE_PIXELS", 2 * 300 * 200)  # two photos per call
    chunked, chunk_errors = device_decode.decode_batch(blobs, cond, DecodeSpec(), torch.device("cpu"),
                                                       [300 * 200] * 5)
    assert chunk_errors == errors and errors[2] is not None and errors.count(None) == 4  # it took the fallback
    for a, b in zip(whole, chunked):
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize("resize, crop, offset", [(40, 32, "round"), (41, 32, "floor"), (48, None, "round"),
                                                  (20, 32, "round"), (19, 32, "floor")])
def test_conditioning_on_the_device_equals_the_tasks_torch_resize(resize, crop, offset):
    """Sizes, crop offsets, a square resize without crop, a crop larger than the image (black
    padding, as Pillow's crop): the same pixels as ``condition`` with ``resampler: torch``."""
    import torch

    from imgclf_ray.imaging.conditioning import Conditioning, condition
    from imgclf_ray.imaging.device_decode import _condition

    rng = np.random.default_rng(0)
    cond = Conditioning(resize=resize, crop=crop, crop_offset=offset, resampler="torch")
    for h, w in ((61, 45), (30, 77), (25, 25)):
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        expected = condition(Image.fromarray(arr), cond)
        got = _condition(torch.from_numpy(arr).permute(2, 0, 1).contiguous(), cond).numpy()
        assert got.shape == expected.shape and (got == expected).all(), (h, w)


def test_the_inputs_column_comes_back_dense_whatever_arrow_made_of_it():
    from imgclf_ray.stages.load import _ragged, dense_inputs

    pixels = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)
    mixed = _ragged(pixels, np.array([True, False]))
    assert mixed.dtype == object and mixed[1].shape == (0, 0, 0)
    dense = dense_inputs(mixed, (3, 4, 4))
    assert (dense[0] == pixels[0]).all() and not dense[1].any()
    none_here = np.zeros((2, 0, 0, 0), np.uint8)  # every row went to the predictor
    assert dense_inputs(none_here, (3, 4, 4)).shape == (2, 3, 4, 4)
    assert dense_inputs(pixels, (3, 4, 4)) is pixels


@pytest.mark.parametrize("sections, why", [
    ({"curate": {"checks": ["dark"]}}, "the curation measures are computed in the decode tasks"),
    ({"cluster": {"algorithm": "kmeans", "params": {"n_clusters": 2}}}, "the clusterer's embedding"),
    ({"model": {"uri": None}}, "there is no model"),
])
def test_jobs_the_predictor_cannot_decode_for_are_refused_before_work(tiny_model, tmp_path, sections, why):
    from imgclf_ray.runner.plan import refuse_before_work

    model = sections.pop("model", None)
    spec = make_spec(str(tmp_path), str(tmp_path / "out"), tiny_model, decode={"jpeg_on": "predictor"}, **sections)
    if model is not None:
        spec = spec.model_copy(update={"model": None})
    with pytest.raises(SpecError, match=f"decode.jpeg_on: predictor cannot apply: {why}"):
        refuse_before_work(spec)
