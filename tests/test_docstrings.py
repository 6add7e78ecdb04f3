"""Every Example in the library's docstrings runs and prints what it shows."""

import doctest
import importlib
import pkgutil

import pytest

import optax_dgrad._src

MODULES = [f"optax_dgrad._src.{m.name}" for m in pkgutil.iter_modules(optax_dgrad._src.__path__)]


@pytest.mark.parametrize("name", MODULES + ["data.augment"])
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
