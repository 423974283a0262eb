"""Efficient vision backbones behind timm's API.

Importing ``zoo`` registers every zoo architecture with timm as ``zoo_<family>_<variant>``::

    import timm, zoo
    model = timm.create_model('zoo_van_b0', pretrained=True, features_only=True)
"""
from fnmatch import fnmatch
from typing import List

import timm

from . import models  # noqa: F401  (registers the models with timm)

__version__ = '0.1.0'

ZOO_PREFIX = 'zoo_'


def list_models(pattern: str = '*', pretrained: bool = False) -> List[str]:
    """Names of the zoo's registered models that match a shell-style `pattern`.

    The pattern is matched against the full name (``'zoo_van_*'``) or, for convenience, against the
    name without the ``zoo_`` prefix (``'van_*'``). With ``pretrained=True`` the names carry their
    pretrained tags (``zoo_van_b0.official_in1k``), as with ``timm.list_models``.
    """
    names = timm.list_models(ZOO_PREFIX + '*', pretrained=pretrained)
    return [n for n in names if fnmatch(n, pattern) or fnmatch(n[len(ZOO_PREFIX):], pattern)]
