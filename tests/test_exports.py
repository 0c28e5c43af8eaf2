"""The public surface (httpx's test_exported_members, adapted): ``kiq.__all__`` lists
every public name the package defines, nothing else, in sorted order."""

from __future__ import annotations

import inspect
import types

import kiq
from kiq import errors


def public_names() -> set[str]:
    """Names a user can reach as ``kiq.X`` that kiq itself defines (not submodules,
    not ``annotations`` or imported typing helpers)."""
    names = set()
    for name, value in vars(kiq).items():
        if name.startswith("_") or isinstance(value, types.ModuleType):
            continue
        module = getattr(value, "__module__", None) or type(value).__module__
        if module == "kiq" or module.startswith("kiq."):
            names.add(name)
    return names


def test_all_lists_every_public_name() -> None:
    """Nothing public is missing from ``__all__``."""
    assert public_names() - set(kiq.__all__) == set()


def test_all_names_exist() -> None:
    """Every name in ``__all__`` can be imported (``from kiq import *`` works)."""
    assert [name for name in kiq.__all__ if not hasattr(kiq, name)] == []


def test_all_is_sorted_without_duplicates() -> None:
    """``__all__`` is in sorted order, each name once, so a diff shows what changed."""
    assert kiq.__all__ == sorted(set(kiq.__all__))


def test_all_exports_every_error() -> None:
    """Every exception in kiq.errors is reachable as ``kiq.<Name>`` for ``except`` clauses."""
    exceptions = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == errors.__name__
    }

    assert exceptions - set(kiq.__all__) == set()


def test_version_is_exported() -> None:
    """``kiq.__version__`` is public and a plain version string."""
    assert "__version__" in kiq.__all__
    assert kiq.__version__.count(".") == 2
