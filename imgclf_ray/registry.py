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
from typing import Callable, Generic, Mapping, TypeVar, Union

T = TypeVar("T")


class Registry(Generic[T]):
    """Plugins of one kind (``kind`` names them in error messages)."""

    def __init__(self, kind: str, providers: Union[tuple[str, ...], Mapping[str, str]] = ()):
        self.kind = kind
        self.providers = providers  # modules that register everything, or name -> its module
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

    def known(self, name: str) -> bool:
        """Whether ``name`` is registered, importing only what a per-name provider map needs."""
        if isinstance(self.providers, Mapping):
            return name in self.providers or name in self._items
        return name in self.names()


# The extension points. Each provider module fills its registry with @REGISTRY.register("name").
EXTRACTORS: Registry = Registry("feature extractor", ("imgclf_ray.features.extractors",))
OPS: Registry = Registry("conditioning op", ("imgclf_ray.imaging.ops",))
# Model frameworks: how an artifact of each is loaded into a classifier (imgclf_ray.models.loader).
CLASSIFIERS: Registry = Registry("model framework", {
    "torch": "imgclf_ray.models.torch_classifier",
    "sklearn": "imgclf_ray.models.sklearn_classifier",
    "onnx": "imgclf_ray.models.onnx_runtime",
    "hierarchical": "imgclf_ray.models.tree_classifier",
})
