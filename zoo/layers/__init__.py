"""Building blocks shared by two or more families (and not already in timm.layers)."""
from .stages import NormedStagesMixin, StagedClassifierMixin

__all__ = ['NormedStagesMixin', 'StagedClassifierMixin']
