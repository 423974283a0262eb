"""What each family's own detection/segmentation code adds to its backbone, in one table.

The authors of some families wrote a dense-prediction backbone that differs from their classification model by a
norm on each output (LITv2's ``norm1``-``norm3``, DaViT's ``norm0``-``norm3``, BiFormer's ``extra_norms.<i>``).
Their COCO/ADE20K checkpoints hold those norms under ``backbone.``; :class:`zoo.mm.ZooBackbone` builds them as
``out_norms.<level>`` and maps the authors' keys onto them. A family without an entry gets no output norms, and the
rest of an authors' backbone state dict always goes through the family's own ``checkpoint_filter_fn``.

Adding a family: one ``DenseSpec`` line below, only when its authors' dense backbone has such norms. Plain
(isotropic) families need nothing here: the adapter tells them apart by their ``feature_info`` (one stride for all
entries) and builds the pyramid itself.
"""
import re
import sys
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

from timm.models import model_entrypoint

__all__ = ['DenseSpec', 'DENSE_SPECS', 'family_of', 'dense_spec', 'checkpoint_filter_of']


@dataclass(frozen=True)
class DenseSpec:
    """A family's dense-prediction additions.

    Args:
        norm_levels: output levels (0 = stride 4) that the authors' detection backbone normalises (the default of
            ``ZooBackbone(out_norms=None)``; configs name other levels explicitly, e.g. where the authors'
            segmentation backbone differs).
        norm_key: that norm's key prefix in the authors' checkpoints, without ``backbone.``; ``{i}`` is the level.
        norm_eps: its LayerNorm epsilon.
        source: where the authors define it (repository and file).
    """
    norm_levels: Tuple[int, ...]
    norm_key: str = 'norm{i}'
    norm_eps: float = 1e-5
    source: str = ''

    def norm_key_pattern(self) -> 're.Pattern[str]':
        """Matches ``<norm key>.<param>`` and captures the level and the parameter name."""
        return re.compile('^' + re.escape(self.norm_key).replace(r'\{i\}', r'(\d+)') + r'\.(weight|bias)$')


DENSE_SPECS: Dict[str, DenseSpec] = {
    # the segmentation backbone (segmentation/mmseg/models/backbones/litv2.py) also has norm0: out_norms=(0, 1, 2, 3)
    'litv2': DenseSpec((1, 2, 3), 'norm{i}', source='ziplab/LITv2 detection/mmdet/models/backbones/litv2.py'),
    'davit': DenseSpec((0, 1, 2, 3), 'norm{i}', source='dingmyu/davit mmdet/mmdet/models/backbones/davit.py'),
    # timm's LayerNorm2d at its default eps (1e-6) on every stage output, in the detection and segmentation backbones
    'biformer': DenseSpec((0, 1, 2, 3), 'extra_norms.{i}', norm_eps=1e-6,
                          source='rayleizhu/BiFormer object_detection/models_mm/biformer_mm.py, '
                                 'semantic_segmentation/models_mm/biformer_mm.py'),
}


def family_of(model_name: str) -> str:
    """``zoo_litv2_small`` -> ``litv2``: the module that registers the model (timm's own models give theirs, e.g.
    ``vision_transformer``)."""
    return model_entrypoint(model_name.split('.')[0]).__module__.rsplit('.', 1)[-1]


def dense_spec(model_name: str) -> Optional[DenseSpec]:
    return DENSE_SPECS.get(family_of(model_name))


def checkpoint_filter_of(model_name: str) -> Optional[Callable]:
    """The family's ``checkpoint_filter_fn`` (every zoo family has one; so do most timm modules), else None."""
    module = sys.modules[model_entrypoint(model_name.split('.')[0]).__module__]
    return getattr(module, 'checkpoint_filter_fn', None)
