"""One module per family; importing a module registers its variants with timm."""
from . import davit, litv2, mambaout, maxvit, transnext, van, vim  # noqa: F401
