"""One module per family; importing a module registers its variants with timm."""
from . import mambaout, van  # noqa: F401
