"""Named registries, one per extension point: a dict, a decorator, ``get`` and ``names``.

Each registry knows the modules that fill it (``providers``: a module for all its names, or one
per name) and imports them by name on the first lookup. So a spec or a card validates a name
(``EXTRACTORS.get("hog")``) without importing the code behind it — the configuration stays below
the runtime, with no import cycle — and a process imports only what it uses.

Adding an extension: write its function or class in a provider module with
``@REGISTRY.register("name")`` (a new module: add it to the registry's providers here), and give
it a conformance test.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Mapping, Optional, TypeVar, Union

T = TypeVar("T")


class Registry(Generic[T]):
    """Plugins of one kind (``kind`` names them in error messages)."""

    def __init__(self, kind: str, providers: Union[tuple[str, ...], Mapping[str, str]] = (),
                 package: Optional[str] = None):
        self.kind = kind
        self.providers = providers  # modules that register everything, or name -> its module
        self.package = package  # a package each of whose modules registers what it adds
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding ``fn`` under ``name``; a second registration of a name is an error."""
        def wrap(fn: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = fn
            return fn
        return wrap

    def _load(self, name: str | None = None) -> None:
        if isinstance(self.providers, Mapping):
            modules = [self.providers[name]] if name in self.providers else \
                ([] if name is not None else list(self.providers.values()))
        else:
            modules = list(self.providers)
        if self.package is not None:
            found = importlib.import_module(self.package)
            modules += [f"{self.package}.{m.name}" for m in pkgutil.iter_modules(found.__path__)]
        for module in modules:
            importlib.import_module(module)

    def names(self) -> list[str]:
        self._load()
        return sorted({*self._items, *(self.providers if isinstance(self.providers, Mapping) else ())})

    def get(self, name: str) -> T:
        if name not in self._items:
            self._load(name)
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}") from None

    def check(self, name: str) -> str:
        """``name`` if it is registered (now: a spec validated after a plugin registered accepts
        it); else ValueError listing the known names (a spec's message names its key)."""
        if not isinstance(name, str) or not self.known(name):
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return name

    def name_type(self) -> Any:
        """The type of a spec field holding one of this registry's names: a string checked when the
        spec is validated (``check``); docs/reference.md lists the names registered then."""
        from typing import Annotated

        from pydantic import AfterValidator

        return Annotated[str, AfterValidator(self.check), self]

    def known(self, name: str) -> bool:
        """Whether ``name`` is registered, importing only what a per-name provider map needs."""
        if isinstance(self.providers, Mapping):
            return name in self.providers or name in self._items
        return name in self.names()


@dataclass(frozen=True)
class Estimator:
    """A scikit-learn classifier by name (imgclf_ray/estimators/): built by imgclf_ray.training.trainer."""

    cls: str  # the dotted scikit-learn class
    defaults: Mapping[str, Any] = field(default_factory=dict)  # ours over scikit-learn's (max_iter)
    seeded: bool = False  # takes random_state = the job's seed
    scale_sensitive: bool = False  # a StandardScaler goes first on features not bounded to [0, 1]
    native_multilabel: bool = False  # fits multilabel targets itself (else one-vs-rest)


@dataclass(frozen=True)
class ClusterAlgorithm:
    """A scikit-learn clusterer by name (imgclf_ray/cluster_algorithms/), reduced to arrays that
    assign any image later (imgclf_ray.clustering): ``centers`` + ``center_labels`` (nearest
    centre), ``weights``/``means``/``covariances``/``precisions_cholesky`` (a Gaussian mixture), or
    ``core`` + ``core_labels`` + ``eps`` (nearest core sample within eps)."""

    cls: str  # the dotted scikit-learn class
    arrays: Callable[[Any, Any], dict]  # (fitted estimator, the rows it was fitted on) -> arrays
    streaming: bool = False  # has partial_fit: cluster.fit: stream


@dataclass(frozen=True)
class CurationCheck:
    """A data-curation check by name (imgclf_ray/curation_checks/): it sets ``is_<name>``.

    A row check decides each image alone, in the predictor, from a score column the decode tasks
    measured (``score`` compared with ``op`` to the CurateSpec field ``threshold``); an archive check
    needs every row of the run (imgclf_ray.curation.archive's map and reduce)."""

    kind: str  # "row" or "archive"
    score: Optional[str] = None  # row checks: the score column
    op: str = "<"  # row checks: flagged when score < threshold ("<") or score > threshold (">")
    threshold: Optional[str] = None  # row checks: the CurateSpec field; None: the clusterer's outlier threshold
    measured: bool = False  # needs the per-image measures (scores, hashes) of the decode tasks
    needs: Optional[str] = None  # on by default only with "cluster" (a cluster section) or "labels" (a model and source.labels)
    cleanvision: Optional[str] = None  # cleanvision's name for it, accepted in curate.checks
    archive: Optional[str] = None  # archive checks: "module:NAME" of its scan, reduce, merge and rewrite


@dataclass(frozen=True)
class Container:
    """A file that holds several images (imgclf_ray/containers/), split into parts before decoding."""

    split: Callable[..., list]  # (bytes, SourceSpec, DecodeSpec, target side or None) -> [containers.base.Part]
    stage: str = "read"  # the stage a file that cannot be split is charged to


# The extension points. Each provider module fills its registry with @REGISTRY.register("name").
EXTRACTORS: Registry = Registry("feature extractor", ("imgclf_ray.features.extractors",))
OPS: Registry = Registry("conditioning op", ("imgclf_ray.imaging.ops",))
ESTIMATORS: Registry[Estimator] = Registry("estimator", package="imgclf_ray.estimators")
CLUSTER_ALGORITHMS: Registry[ClusterAlgorithm] = Registry("clustering algorithm",
                                                          package="imgclf_ray.cluster_algorithms")
CURATION_CHECKS: Registry[CurationCheck] = Registry("curation check", package="imgclf_ray.curation_checks")
# Files holding several images: source.table, source.webdataset, source.video (imgclf_ray/containers/).
CONTAINERS: Registry[Container] = Registry("source container", package="imgclf_ray.containers")
# Model formats `imgclf model import` reads (imgclf_ray/models/importers/: one module each).
MODEL_FORMATS: Registry = Registry("model format", package="imgclf_ray.models.importers")
# Model frameworks: how an artifact of each is loaded into a classifier (imgclf_ray.models.loader).
CLASSIFIERS: Registry = Registry("model framework", {
    "torch": "imgclf_ray.models.torch_classifier",
    "sklearn": "imgclf_ray.models.sklearn_classifier",
    "onnx": "imgclf_ray.models.onnx_runtime",
    "hierarchical": "imgclf_ray.models.tree_classifier",
})
