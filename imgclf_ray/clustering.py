"""Clusterers fitted on a sample (or streamed), kept as safe artifacts, applied to every row.

A fitted clusterer is reduced to plain arrays (safetensors) plus a JSON card, and every algorithm
assigns new rows by a documented rule on those arrays, vectorised in numpy:

==================  =========================================================================
kmeans, minibatch   nearest cluster centre (scikit-learn's own ``predict``)
meanshift           nearest cluster centre (scikit-learn's own ``predict``)
birch               nearest subcluster centre -> that subcluster's cluster (Birch's ``predict``)
gmm                 highest posterior probability (GaussianMixture's ``predict_proba``); the
                    probability is written to ``cluster_probability``
agglomerative       nearest centroid of the clusters found on the sample (it has no ``predict``)
dbscan              the cluster of the nearest core sample when it lies within ``eps``, else
                    noise ``-1`` (DBSCAN has no ``predict``)
==================  =========================================================================

``cluster_distance`` is the Euclidean distance, in the (PCA-reduced) embedding space, to what the
row was assigned to: the centre, the centroid, the mixture component's mean, or the nearest core
sample. The card also keeps a reference sample for the outlier check: ``outlier_score`` is the
distance to the ``k``-th nearest reference image.
Nothing here unpickles: the artifact is safetensors + JSON, checked against the card's sha256.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from datetime import datetime, timezone
from typing import Any, Iterable, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from imgclf_ray.errors import ArtifactError
from imgclf_ray.io.storage import describe_os_error, filesystem, join
from imgclf_ray.messages import describe
from imgclf_ray.registry import CLUSTER_ALGORITHMS
from imgclf_ray.spec import ClusterSpec, FeatureSpec, PreprocessSpec, StorageSpec

CARD_FILE = "clusterer_card.json"
ARRAYS_FILE = "clusterer.safetensors"
REFERENCE_SIZE = 2000
OUTLIER_K = 5


class ClustererCard(BaseModel):
    """What a fitted clusterer is and how it was made."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: Literal[1] = 1
    algorithm: str
    params: dict[str, Any]
    features: FeatureSpec
    preprocess: PreprocessSpec
    pca: Optional[int] = None
    fit: str = "sample"
    seed: int = 0
    n_clusters: int = Field(description="Clusters found (noise -1 not counted).")
    fitted_rows: int = Field(description="Rows the clusterer (and PCA) saw when fitted.")
    outlier_k: int = OUTLIER_K
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the arrays file.")
    fitted_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    library_versions: dict[str, str] = Field(default_factory=dict)

    def clusterer_id(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()

    def matches(self, spec: ClusterSpec) -> bool:
        """Whether the artifact was fitted with the spec's settings (else a refit is needed)."""
        return (self.algorithm, self.params, self.features, self.preprocess, self.pca) == (
            spec.algorithm, spec.params, spec.features, spec.preprocess, spec.pca)


class Clusterer:
    """A fitted clusterer: card + arrays. ``assign`` is what the pipeline runs on every row."""

    def __init__(self, card: ClustererCard, arrays: dict[str, np.ndarray]):
        self.card = card
        self.arrays = arrays
        self._gmm = None

    # -- embedding ------------------------------------------------------------------------
    def reduce(self, features: np.ndarray) -> np.ndarray:
        """Features -> the clusterer's space (PCA when the card has it)."""
        x = np.asarray(features, dtype=np.float64)
        if "pca_components" in self.arrays:
            x = (x - self.arrays["pca_mean"]) @ self.arrays["pca_components"].T
        return x

    # -- assignment -----------------------------------------------------------------------
    def assign(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        """(cluster ids int32, distances float32, probabilities float32 or None) of rows ``z``
        (already reduced)."""
        z = np.asarray(z, dtype=np.float64)
        if not len(z):
            return np.zeros(0, np.int32), np.zeros(0, np.float32), None
        if "means" in self.arrays:  # a Gaussian mixture
            proba = self._mixture().predict_proba(z)
            cluster = proba.argmax(axis=1)
            distance = np.linalg.norm(z - self.arrays["means"][cluster], axis=1)
            return cluster.astype(np.int32), distance.astype(np.float32), proba.max(axis=1).astype(np.float32)
        if "core" in self.arrays:  # core samples within eps
            core = self.arrays["core"]
            if not len(core):
                return np.full(len(z), -1, np.int32), np.full(len(z), np.nan, np.float32), None
            nearest, distance = _nearest(z, core)
            cluster = np.where(distance <= float(self.arrays["eps"][0]), self.arrays["core_labels"][nearest], -1)
            return cluster.astype(np.int32), distance.astype(np.float32), None
        nearest, distance = _nearest(z, self.arrays["centers"])
        return self.arrays["center_labels"][nearest].astype(np.int32), distance.astype(np.float32), None

    def _mixture(self):
        if self._gmm is None:
            from sklearn.mixture import GaussianMixture

            a = self.arrays
            gmm = GaussianMixture(n_components=len(a["means"]),
                                  covariance_type=self.card.params.get("covariance_type", "full"))
            gmm.weights_, gmm.means_ = a["weights"], a["means"]
            gmm.covariances_, gmm.precisions_cholesky_ = a["covariances"], a["precisions_cholesky"]
            gmm.converged_, gmm.n_iter_, gmm.lower_bound_ = True, 0, 0.0
            self._gmm = gmm
        return self._gmm

    # -- outliers -------------------------------------------------------------------------
    def outlier_scores(self, z: np.ndarray) -> np.ndarray:
        """Distance of each row to its k-th nearest image of the reference sample."""
        ref = self.arrays["reference"]
        k = min(self.card.outlier_k, len(ref))
        return np.sqrt(_kth_smallest_sq(np.asarray(z, np.float64), ref, k)).astype(np.float32)

    def outlier_threshold(self, quantile: float) -> float:
        """The ``quantile`` of the reference sample's own k-th-neighbour distances (self excluded)."""
        return float(np.quantile(self.arrays["reference_kdist"], quantile))

    @property
    def clusterer_id(self) -> str:
        return self.card.clusterer_id()


def _sq_distances(z: np.ndarray, c: np.ndarray) -> np.ndarray:
    d = (z * z).sum(1)[:, None] - 2.0 * z @ c.T + (c * c).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _nearest(z: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = _sq_distances(z, c)
    idx = d.argmin(axis=1)
    return idx, np.sqrt(d[np.arange(len(z)), idx])


def _kth_smallest_sq(z: np.ndarray, ref: np.ndarray, k: int, chunk: int = 4096) -> np.ndarray:
    out = np.empty(len(z))
    for start in range(0, len(z), chunk):
        d = _sq_distances(z[start:start + chunk], ref)
        out[start:start + chunk] = np.partition(d, k - 1, axis=1)[:, k - 1]
    return out


def _estimator(spec: ClusterSpec):
    module, _, name = CLUSTER_ALGORITHMS.get(spec.algorithm).cls.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    params = dict(spec.params)
    if "random_state" in cls().get_params() and "random_state" not in params:
        params["random_state"] = spec.seed
    return cls(**params)


def _n_clusters(arrays: dict[str, np.ndarray]) -> int:
    for key in ("center_labels", "core_labels"):
        if key in arrays:
            return int(len(np.unique(arrays[key][arrays[key] >= 0])))
    return int(len(arrays["means"]))


def fit(spec: ClusterSpec, sample: np.ndarray, stream: Optional[Iterable[np.ndarray]] = None) -> Clusterer:
    """Fit ``spec``'s clusterer on ``sample`` features (rows x dims); with ``stream`` (batches of
    features of the whole archive) the algorithm is fitted by ``partial_fit`` over those instead,
    PCA still on the sample."""
    import sklearn
    from sklearn.decomposition import PCA

    sample = np.asarray(sample, dtype=np.float64)
    if len(sample) < 2:
        raise ValueError(f"the clustering sample has {len(sample)} usable image(s); at least 2 are needed")
    arrays: dict[str, np.ndarray] = {}
    if spec.pca:
        n = min(spec.pca, *sample.shape)
        pca = PCA(n_components=n, random_state=spec.seed).fit(sample)
        arrays["pca_mean"], arrays["pca_components"] = pca.mean_, pca.components_
    draft = Clusterer(_placeholder_card(spec), arrays)
    z = draft.reduce(sample)
    est = _estimator(spec)
    fitted_rows = len(z)
    if stream is not None:
        fitted_rows = 0
        for batch in stream:
            if len(batch):
                est.partial_fit(draft.reduce(batch))
                fitted_rows += len(batch)
        if spec.algorithm == "birch":
            est.partial_fit()  # the global clustering step over the subclusters
    else:
        est.fit(z)
    arrays.update(CLUSTER_ALGORITHMS.get(spec.algorithm).arrays(est, z))
    rng = np.random.default_rng(spec.seed)
    ref = z[np.sort(rng.choice(len(z), min(REFERENCE_SIZE, len(z)), replace=False))]
    k = min(OUTLIER_K, len(ref) - 1)
    arrays["reference"] = ref
    # k-th neighbour other than itself: the (k+1)-th smallest distance including the zero to itself.
    arrays["reference_kdist"] = np.sqrt(_kth_smallest_sq(ref, ref, k + 1))
    card = _placeholder_card(spec).model_copy(update={
        "n_clusters": _n_clusters(arrays), "fitted_rows": fitted_rows, "outlier_k": k,
        "library_versions": {"scikit-learn": sklearn.__version__, "numpy": np.__version__}})
    return Clusterer(card, {k_: np.ascontiguousarray(v) for k_, v in arrays.items()})


def _placeholder_card(spec: ClusterSpec) -> ClustererCard:
    return ClustererCard(algorithm=spec.algorithm, params=spec.params, features=spec.features,
                         preprocess=spec.preprocess, pca=spec.pca, fit=spec.fit, seed=spec.seed,
                         n_clusters=0, fitted_rows=0, sha256="0" * 64)


def save(uri: str, clusterer: Clusterer, storage: StorageSpec = StorageSpec()) -> Clusterer:
    """Write the arrays (safetensors) and the card (with their sha256); returns the saved clusterer."""
    from safetensors.numpy import save as save_arrays

    blob = save_arrays(clusterer.arrays)
    card = clusterer.card.model_copy(update={"sha256": hashlib.sha256(blob).hexdigest()})
    fs, path = filesystem(uri, storage)
    fs.makedirs(path, exist_ok=True)
    fs.pipe_file(join(path, ARRAYS_FILE), blob)
    fs.pipe_file(join(path, CARD_FILE), card.model_dump_json(indent=2).encode())
    return Clusterer(card, clusterer.arrays)


def exists(uri: str, storage: StorageSpec = StorageSpec()) -> bool:
    fs, path = filesystem(join(uri, CARD_FILE), storage)
    return fs.exists(path)


def load(uri: str, storage: StorageSpec = StorageSpec()) -> Clusterer:
    """Read a clusterer artifact; the arrays must match the card's sha256."""
    from safetensors.numpy import load as load_arrays

    fs, path = filesystem(uri, storage)
    try:
        card = ClustererCard.model_validate_json(fs.cat_file(join(path, CARD_FILE)))
        blob = fs.cat_file(join(path, ARRAYS_FILE))
    except OSError as exc:
        raise ArtifactError(f"{uri}: unreadable clusterer ({describe_os_error(exc)}) (cluster.artifact)") from None
    except ValueError as exc:
        raise ArtifactError(f"{uri}/{CARD_FILE}: not a clusterer card ({describe(exc)})") from None
    if hashlib.sha256(blob).hexdigest() != card.sha256:
        raise ArtifactError(f"{uri}/{ARRAYS_FILE}: sha256 does not match the card; refusing to load it")
    return Clusterer(card, load_arrays(blob))
