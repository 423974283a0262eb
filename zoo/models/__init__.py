"""One module per family; importing a module registers its variants with timm."""
from . import davit, mambaout, maxvit, van  # noqa: F401
