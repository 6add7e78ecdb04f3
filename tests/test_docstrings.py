"""Every Example in the library's docstrings runs and prints what it shows."""

import doctest
import importlib
import pkgutil

import pytest

import optax_dgrad._src

# Modules with no public name, hence no Example; every other module must show one.
WITHOUT_EXAMPLES = {"optax_dgrad._src.validation", "optax_dgrad._src.tree_utils"}
MODULES = [
    name
    for name in (
        f"optax_dgrad._src.{m.name}" for m in pkgutil.iter_modules(optax_dgrad._src.__path__)
    )
    if name not in WITHOUT_EXAMPLES
]


@pytest.mark.parametrize(
    "name", MODULES + ["training", "training.augment", "rundir", "ensembling", "ensembling.specs"]
)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
