"""The public API is what ``__all__`` says: sorted, importable, documented."""

from __future__ import annotations

import importlib
import inspect

import pytest

PACKAGES = [
    "cantata.agents",
    "cantata.agents.backends",
    "cantata.topologies",
    "cantata.cluster",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_unique_and_importable(name):
    module = importlib.import_module(name)
    exported = module.__all__
    assert exported == sorted(exported, key=lambda item: (not item.isupper(), item))
    assert len(set(exported)) == len(exported)
    for item in exported:
        assert hasattr(module, item), f"{name}.{item} is in __all__ but missing"


@pytest.mark.parametrize("name", PACKAGES)
def test_public_classes_and_functions_are_documented(name):
    module = importlib.import_module(name)
    undocumented = [
        item
        for item in module.__all__
        if (inspect.isclass(obj := getattr(module, item)) or inspect.isfunction(obj))
        and not inspect.getdoc(obj)
    ]
    assert undocumented == []


def test_the_folders_are_not_importable_by_bare_name():
    for bare in ("agents", "topologies", "cluster"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(bare)
