"""Real photographs that scikit-image and scikit-learn ship, and the altered copies curation must
recognise (blurred, darkened, resized + re-encoded, same pixels in another file)."""

from __future__ import annotations

from PIL import Image, ImageFilter

PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


def photos(size: tuple[int, int] = (400, 300)) -> dict[str, Image.Image]:
    """Seven different colour photographs, centre-cropped and resized to ``size``."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    arrays = {name: getattr(skimage.data, name)() for name in PHOTO_NAMES}
    arrays.update(zip(("china", "flower"), load_sample_images().images))
    out = {}
    for name, arr in arrays.items():
        img = Image.fromarray(arr).convert("RGB")
        w, h = img.size
        ratio = size[0] / size[1]
        cw, ch = (w, int(w / ratio)) if w / h < ratio else (int(h * ratio), h)
        left, top = (w - cw) // 2, (h - ch) // 2
        out[name] = img.crop((left, top, left + cw, top + ch)).resize(size, Image.Resampling.LANCZOS)
    return out


def blurred(img: Image.Image, sigma: float = 3.0) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(sigma))


def darkened(img: Image.Image, factor: float = 0.15) -> Image.Image:
    return Image.eval(img, lambda v: int(v * factor))


def resized(img: Image.Image, scale: float = 0.9) -> Image.Image:
    return img.resize((int(img.width * scale), int(img.height * scale)), Image.Resampling.BILINEAR)
