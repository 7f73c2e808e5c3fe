"""Hand-crafted feature extractors: a conditioned image (C, H, W uint8) -> a 1-D float32 vector.

The same function runs when a classical model is trained and when it is applied, chosen by name and
parameters recorded in the model card. Register new ones with ``@register("name")``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from imgclf_ray.registry import EXTRACTORS as _REGISTRY

Extractor = Callable[..., np.ndarray]
register, names, get = _REGISTRY.register, _REGISTRY.names, _REGISTRY.get
# Extractors whose values are already bounded to [0, 1] (pixels / 255, normalised histograms,
# block-normalised HOG): scale-sensitive estimators use them as they are, as scikit-learn users
# do. Others (GLCM statistics, CNN embeddings, any newly registered one) get a StandardScaler.
BOUNDED_FEATURES = frozenset({"pixels", "color_histogram", "hog", "lbp", "edges"})


# Extractors with a batch form, (N, C, H, W) uint8 -> (N, D): a network's forward pass over the
# decode task's whole batch at once, not image by image. The same numbers as the image form.
BATCHED: dict[str, Extractor] = {}
BATCH_PASS = 16  # images per call of a batch form (a decode task's memory is planned at 256 MB)


def extract(name: str, image: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
    """Apply extractor ``name`` to one (C, H, W) uint8 image."""
    return np.asarray(get(name)(image, **(params or {})), dtype=np.float32).ravel()


def extract_many(name: str, images: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
    """Apply extractor ``name`` to a (N, C, H, W) uint8 batch: in one call when it has a batch form."""
    if name in BATCHED:  # in passes of BATCH_PASS images: a network's activations stay tens of MB
        passes = (images[i:i + BATCH_PASS] for i in range(0, len(images), BATCH_PASS))
        return np.concatenate([np.asarray(BATCHED[name](part, **(params or {})), dtype=np.float32).reshape(len(part), -1)
                               for part in passes])
    return np.stack([extract(name, image, params) for image in images])


def _grey(image: np.ndarray) -> np.ndarray:
    """(C, H, W) uint8 -> (H, W) float in 0..1, with scikit-image's rgb2gray weights (BT.709)."""
    if image.shape[0] == 1:
        return image[0].astype(np.float32) / 255.0
    r, g, b = image.astype(np.float32) / 255.0
    return 0.2125 * r + 0.7154 * g + 0.0721 * b


def _grey_u8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(_grey(image) * 255.0), 0, 255).astype(np.uint8)


@register("pixels")
def pixels(image: np.ndarray, grey: bool = False, standardize: bool = False) -> np.ndarray:
    """Raw intensities scaled to 0..1 (size set by the card's resize/crop); with ``standardize``,
    per-image standardisation (the image's own mean subtracted, divided by its standard deviation
    floored at 1/sqrt(values), as CNN inputs with ``normalize: per_image``)."""
    values = (_grey(image) if grey else image.astype(np.float32) / 255.0).ravel()
    if standardize:
        values = (values - values.mean()) / max(float(values.std()), values.size ** -0.5)
    return values


@register("color_histogram")
def color_histogram(image: np.ndarray, bins: int = 16, space: str = "hsv") -> np.ndarray:
    """Per-channel histograms (HSV or RGB), each normalised to sum 1."""
    from PIL import Image

    if image.shape[0] == 1:
        channels = [image[0]]
    else:
        hwc = np.ascontiguousarray(image.transpose(1, 2, 0))
        if space == "hsv":
            hwc = np.asarray(Image.fromarray(hwc, "RGB").convert("HSV"))
        elif space != "rgb":
            raise ValueError(f"space must be 'hsv' or 'rgb', got {space!r}")
        channels = [hwc[:, :, i] for i in range(3)]
    hists = [np.histogram(c, bins=bins, range=(0, 256))[0].astype(np.float32) for c in channels]
    return np.concatenate([h / max(h.sum(), 1.0) for h in hists])


@register("hog")
def hog(image: np.ndarray, orientations: int = 9, pixels_per_cell: int = 8, cells_per_block: int = 2) -> np.ndarray:
    """Histogram of oriented gradients (scikit-image, L2-Hys block normalisation) on greyscale."""
    from skimage.feature import hog as sk_hog

    return sk_hog(_grey(image), orientations=orientations, pixels_per_cell=(pixels_per_cell,) * 2,
                  cells_per_block=(cells_per_block,) * 2, block_norm="L2-Hys", feature_vector=True)


@register("lbp")
def lbp(image: np.ndarray, points: int = 8, radius: float = 1.0, method: str = "uniform") -> np.ndarray:
    """Histogram of local binary patterns (scikit-image), normalised to sum 1."""
    from skimage.feature import local_binary_pattern

    codes = local_binary_pattern(_grey_u8(image), points, radius, method=method)
    n_bins = points + 2 if method == "uniform" else 2 ** points
    hist = np.histogram(codes, bins=n_bins, range=(0, n_bins))[0].astype(np.float32)
    return hist / max(hist.sum(), 1.0)


GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")


@register("glcm")
def glcm(image: np.ndarray, distances: tuple[int, ...] = (1, 2, 4), levels: int = 32,
         props: tuple[str, ...] = GLCM_PROPS) -> np.ndarray:
    """Haralick texture properties of grey-level co-occurrence matrices (scikit-image): for each
    property and distance, the mean and the range over the four directions."""
    from skimage.feature import graycomatrix, graycoprops

    quantised = (_grey_u8(image).astype(np.uint16) * levels // 256).astype(np.uint8)
    angles = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
    matrix = graycomatrix(quantised, distances=list(distances), angles=list(angles), levels=levels,
                          symmetric=True, normed=True)
    out = []
    for prop in props:
        values = np.nan_to_num(graycoprops(matrix, prop))  # (distances, angles)
        out.extend([values.mean(axis=1), values.max(axis=1) - values.min(axis=1)])
    return np.concatenate(out)


@register("edges")
def edges(image: np.ndarray, bins: int = 16, sigma: float = 1.0) -> np.ndarray:
    """Sobel gradient-magnitude histogram, magnitude-weighted orientation histogram, and the
    density of Canny edges."""
    from skimage.feature import canny
    from skimage.filters import sobel_h, sobel_v

    grey = _grey(image)
    gy, gx = sobel_h(grey), sobel_v(grey)
    magnitude = np.hypot(gx, gy)
    orientation = np.mod(np.arctan2(gy, gx), np.pi)
    mag_hist = np.histogram(magnitude, bins=bins, range=(0, 1.5))[0].astype(np.float32)
    ori_hist = np.histogram(orientation, bins=bins, range=(0, np.pi), weights=magnitude)[0].astype(np.float32)
    density = np.float32(canny(grey, sigma=sigma).mean())
    return np.concatenate([mag_hist / max(mag_hist.sum(), 1.0), ori_hist / max(ori_hist.sum(), 1e-9), [density]])


@register("cnn_embedding")
def cnn_embedding(image: np.ndarray, backbone: str) -> np.ndarray:
    """Pre-logits of a torch model artifact at ``backbone`` (local path, or s3:// reached through the
    environment's settings), normalised with that model's mean/std. The classical model's
    preprocess should give the backbone's input size. The backbone is loaded once per process."""
    return cnn_embeddings(image[None], backbone)[0]


def cnn_embeddings(images: np.ndarray, backbone: str) -> np.ndarray:
    """cnn_embedding of a (N, C, H, W) batch, in one forward pass."""
    from imgclf_ray.models.torch_classifier import embedder

    return embedder(backbone).embed(images)


BATCHED["cnn_embedding"] = cnn_embeddings
