"""Keep torch out of the scoring process, although Feast would import it.

Feast 0.67 imports torch at import time whenever it is installed (`feast/torch_wrapper.py`,
imported by its offline store and online response modules), only to offer `to_tensor()`,
which serving never calls. In the embedded profile torch is installed (training needs it),
so the service would load ~300 MB and a second of imports it does not use. This module
registers a lazy `feast.torch_wrapper` first: same names, torch imported on first use only.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


def _get_torch() -> Any:
    return importlib.import_module("torch")


def install() -> None:
    """Call before the first Feast import; a no-op once Feast's own wrapper is loaded."""
    if "feast.torch_wrapper" in sys.modules:
        return
    lazy = types.ModuleType("feast.torch_wrapper", "Lazy stand-in: torch only when get_torch() is called.")
    lazy.TORCH_AVAILABLE = False  # type: ignore[attr-defined]
    lazy.get_torch = _get_torch  # type: ignore[attr-defined]
    sys.modules["feast.torch_wrapper"] = lazy
