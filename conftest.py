"""Optional libraries: a test or doctest that needs one that is not installed is skipped, naming it.

So the suite collects and passes after a bare ``pip install -e .`` (plus pytest); the test extra installs them
all. Tests of the compiled (Numba) kernels carry the ``compiled`` marker and are skipped without Numba.
"""

from __future__ import annotations

import doctest

import pytest

OPTIONAL = {
    "jsonargparse",
    "matplotlib",
    "mlflow",
    "numba",
    "peft",
    "scipy",
    "sklearn",
    "tensorboard",
    "tensorboardX",
    "timm",
    "torchvision",
    "transformers",
    "wandb",
}


def _missing_optional(error: BaseException) -> str | None:
    name = getattr(error, "name", None) or ""
    root = name.split(".")[0]
    return root if isinstance(error, ModuleNotFoundError) and root in OPTIONAL else None


class _OptionalModule(pytest.Module):
    """A test module whose import needs an optional library that is not installed is skipped, not an error."""

    def _getobj(self):
        try:
            return super()._getobj()
        except self.CollectError as error:
            cause = error.__cause__ or error.__context__
            missing = _missing_optional(cause) if cause is not None else None
            if missing is None:
                raise
            pytest.skip(f"needs {missing}", allow_module_level=True)


def pytest_pycollect_makemodule(module_path, parent):
    return _OptionalModule.from_parent(parent, path=module_path)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    try:
        return (yield)
    except (ModuleNotFoundError, doctest.UnexpectedException) as error:
        cause = error.exc_info[1] if isinstance(error, doctest.UnexpectedException) else error
        missing = _missing_optional(cause)
        if missing is None:
            raise
        pytest.skip(f"needs {missing}")


def pytest_collection_modifyitems(config, items):
    import importlib.util

    if importlib.util.find_spec("numba") is None:
        skip = pytest.mark.skip(reason="the compiled path needs Numba (pip install numba)")
        for item in items:
            if "compiled" in item.keywords:
                item.add_marker(skip)
