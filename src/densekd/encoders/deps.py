"""Optional dependencies: import them or fail with a message that names the package to install.

Kept free of heavy imports (no torch) so that the command line can catch
:class:`MissingDependencyError` without slowing ``densekd --help``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["MissingDependencyError", "require"]


class MissingDependencyError(ImportError):
    """An optional package a feature needs is not installed; the message names the pip command.

    Parameters
    ----------
    package
        The PyPI name to install.
    feature
        What needs it, in words (e.g. ``"backend 'onnx'"``).
    extra
        The densekd extra that pulls it in.
    """

    def __init__(self, package: str, feature: str, extra: str = "onnx"):
        self.package = package
        super().__init__(f"{feature} needs the optional package {package!r}: pip install {package} "
                         f"(or pip install 'densekd[{extra}]')")


def require(module: str, feature: str, package: str | None = None) -> Any:
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``package`` (default: ``module``)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(package or module, feature) from None
