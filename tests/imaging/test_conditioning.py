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
