"""One module per family; importing a module registers its variants with timm."""
from . import (  # noqa: F401
    biformer,  # noqa: F401
    davit,
    litv2,
    lookupvit,  # noqa: F401
    mambaout,
    maxvit,
    plainmamba,  # noqa: F401
    sparsifiner,  # noqa: F401
    transnext,
    van,
    vim,  # noqa: F401
)
