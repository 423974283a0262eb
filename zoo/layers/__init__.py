"""Building blocks shared by two or more families (and not already in timm.layers)."""
from .pvt import init_pvt_weights, rename_pvt_key
from .stages import StagedClassifierMixin, StagedFeaturesMixin, StagedModelMixin

__all__ = ['init_pvt_weights', 'rename_pvt_key', 'StagedClassifierMixin', 'StagedFeaturesMixin', 'StagedModelMixin']
