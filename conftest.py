"""Optional libraries: a test or doctest that needs one that is not installed is skipped, naming it.

So the suite collects and passes after a bare ``pip install -e .`` (plus pytest); the test extra installs them
all. Tests of the compiled (Numba) kernels carry the ``compiled`` marker and are skipped without Numba.
"""

from __future__ import annotations

import doctest
import re

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
    """The optional library whose absence raised ``error``, or ``None``.

    Also read from the message, for what comes back as text: a subprocess's stderr in an assertion, a spawned
    worker's traceback, a logger raised by hand without a module name."""
    if isinstance(error, ModuleNotFoundError):
        root = (getattr(error, "name", None) or "").split(".")[0]
        if root in OPTIONAL:
            return root
    text = str(error)
    for name in re.findall(r"No module named '([\w.]+)'", text):
        if name.split(".")[0] in OPTIONAL:
            return name.split(".")[0]
    if isinstance(error, ModuleNotFoundError) or "ModuleNotFoundError" in text:  # "Neither `tensorboard` nor ..."
        return next((name for name in sorted(OPTIONAL) if f"`{name}`" in text or f"'{name}'" in text), None)
    return None


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


def _skip_when_optional_is_missing():
    try:
        return (yield)
    except BaseException as error:  # noqa: BLE001 - re-raised unless an optional library is missing
        missing = None
        seen: BaseException | None = error
        for _ in range(8):  # the chain: a doctest's exception, pytest.warns' "did not warn" around it, ...
            if seen is None:
                break
            if isinstance(seen, doctest.UnexpectedException):
                seen = seen.exc_info[1]
            missing = _missing_optional(seen)
            if missing is not None:
                break
            seen = seen.__cause__ or seen.__context__
        if missing is None:
            raise
        pytest.skip(f"needs {missing}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    return (yield from _skip_when_optional_is_missing())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from _skip_when_optional_is_missing())


def pytest_collection_modifyitems(config, items):
    import importlib.util

    if importlib.util.find_spec("numba") is None:
        skip = pytest.mark.skip(reason="the compiled path needs Numba (pip install numba)")
        for item in items:
            if "compiled" in item.keywords:
                item.add_marker(skip)
