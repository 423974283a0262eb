"""Building blocks shared by two or more families (and not already in timm.layers)."""
from .stages import StagedClassifierMixin, StagedFeaturesMixin, StagedModelMixin

__all__ = ['StagedClassifierMixin', 'StagedFeaturesMixin', 'StagedModelMixin']
