from __future__ import annotations

from PIL import Image

from imgclf_ray.imaging.conditioning import Conditioning, condition, resize_shorter_side


def test_resize_keeps_aspect_and_crop_gives_square(sample_photo):
    assert resize_shorter_side(sample_photo, 100).size == (149, 100)  # 640*100/427 truncated
    out = condition(sample_photo, Conditioning(resize=100, crop=64))
    assert out.shape == (3, 64, 64) and out.dtype.name == "uint8"


def test_tiny_images_are_upscaled_and_greyscale_has_one_channel():
    out = condition(Image.new("RGB", (8, 8), (10, 20, 30)), Conditioning(resize=32, crop=32, channels=1))
    assert out.shape == (1, 32, 32)


def test_no_crop_squashes_to_square(sample_photo):
    assert condition(sample_photo, Conditioning(resize=48)).shape == (3, 48, 48)


def test_same_pixels_as_torchvision_transforms(sample_photo):
    """Weights trained with torchvision's Resize + CenterCrop see identical inputs here."""
    import numpy as np
    from torchvision import transforms as T

    for box, resize, crop in [((0, 0, 640, 427), 256, 224), ((3, 5, 343, 252), 36, 32), ((0, 0, 200, 500), 64, 60)]:
        img = sample_photo.crop(box)
        ref = T.Compose([T.Resize(resize), T.CenterCrop(crop), T.PILToTensor()])(img).numpy()
        assert np.array_equal(condition(img, Conditioning(resize=resize, crop=crop)), ref)


def test_a_sliver_is_not_enlarged_past_what_it_is_into_a_huge_image(tmp_path):
    """A 1,532-byte PNG of 1,500,000 x 1 pixels passes the decode limits (1.5 million pixels) and
    its shorter side brought to 256 made it 384,000,000 x 256: 9.6 GB in one job. Enlarging past
    Pillow's bomb limit (89 million pixels) is refused when it would make the image larger than it
    is; as a row, a preprocess error. A line scan of 300:1 is resized and cropped as before."""
    import struct
    import zlib

    import numpy as np
    import pytest

    from imgclf_ray.imaging.limits import DecodeError
    from imgclf_ray.stages import LoadConfig, LoadStage

    with pytest.raises(DecodeError, match=r"^image of 400000x1: its shorter side brought to 256 makes it "
                                          r"102,400,000x256 = 26,214,400,000 pixels, over 89,478,485 \(Pillow's "
                                          r"decompression-bomb limit\): refused$"):
        resize_shorter_side(Image.new("L", (400_000, 1)), 256)
    assert resize_shorter_side(Image.new("L", (30000, 100)), 224).size == (67200, 224)  # (a line scan)
    assert resize_shorter_side(Image.new("L", (400_000, 300)), 256).size == (341333, 256)  # (made smaller)
    assert condition(Image.new("RGB", (30000, 100)), Conditioning(resize=224, crop=224)).shape == (3, 224, 224)
    for size in [(1, 2000), (2000, 1)]:
        with pytest.raises(DecodeError, match=r"over 89,478,485 \(Pillow's decompression-bomb limit\)"):
            condition(Image.new("RGB", size), Conditioning(resize=224, crop=224))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    width = 1_500_000
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, 1, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(bytes(width + 1), 9)) + chunk(b"IEND", b""))
    assert len(png) < 2000
    (tmp_path / "sliver.png").write_bytes(png)
    out = LoadStage(LoadConfig(conditioning=Conditioning(resize=256, crop=224)))(
        {"uri": np.array([f"file://{tmp_path}/sliver.png"], dtype=object)})
    assert out["status"].tolist() == ["error"]
    assert out["error"][0].startswith("preprocess: image of 1500000x1: its shorter side brought to 256"), out["error"][0]
