"""Register the potkernels quantizer with transformers as soon as transformers' quantizer registry exists.

``transformers.quantizers.auto`` (where the registry lives) imports every quantizer transformers has
(HQQ, compressed-tensors, …): seconds of import time that ``import potkernels`` should not pay when
transformers is not used. So ``import potkernels`` registers at once if that module is already
imported, and otherwise installs a one-shot import hook that registers right after it runs — before
any ``from_pretrained`` can look a quant method up (``transformers.modeling_utils`` imports it).
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

TARGET = "transformers.quantizers.auto"


def _register() -> None:
    from . import hf_quantizer  # noqa: F401  (registers on import)


class _RegisteringLoader(importlib.abc.Loader):
    """Runs the real loader, then registers potkernels; every other attribute is the real loader's."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:
        self._inner.exec_module(module)
        _register()

    def __getattr__(self, name):
        return getattr(self._inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]  # one shot
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


def install() -> None:
    """Register now if transformers' registry is loaded, else when it loads (idempotent)."""
    if TARGET in sys.modules:
        _register()
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
