"""darkfix: restore extremely dark Bayer raw photos into clean sRGB pictures (Lamba & Mitra, CVPR 2021).

The library is `restore` (one file to an array) and `load` (weights loaded once, for many files); errors a
caller can cause are `DarkfixError` and its subclasses. Importing darkfix is cheap: torch is loaded only
when a restore needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import DarkfixError, OutputError, OutputExistsError, ProfileError, RawReadError, WeightsError

__version__ = "0.1.0"
__all__ = ["Darkfix", "DarkfixError", "OutputError", "OutputExistsError", "ProfileError", "RawReadError",
           "WeightsError", "load", "restore", "__version__"]

if TYPE_CHECKING:
    from .api import Darkfix, load, restore


def __getattr__(name: str) -> Any:
    if name in ("Darkfix", "load", "restore"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'darkfix' has no attribute {name!r}")
