"""Every config in configs/mmdet and configs/mmseg builds its model on the CPU and runs a forward."""
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.mm

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob('configs/mm*/*/*.py') if '_base_' not in p.parts)


def sample(scope: str, h: int, w: int) -> dict:
    img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample
        ds = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1., 1.), img_id=0))
    else:
        from mmseg.structures import SegDataSample
        ds = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w)))
    return dict(inputs=[img], data_samples=[ds])


def test_configs_are_found():
    assert len(CONFIGS) >= 20 and any('mmdet' in c for c in CONFIGS) and any('mmseg' in c for c in CONFIGS)


@pytest.mark.parametrize('path', CONFIGS)
@torch.no_grad()
def test_config_builds_and_predicts(path):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    cfg = Config.fromfile(str(ROOT / path))
    assert cfg.model.backbone.type == 'ZooBackbone' and cfg.model.backbone.init_cfg.type == 'Pretrained'
    cfg.model.backbone.init_cfg = None  # no weights in CI: random initialisation
    init_default_scope(cfg.default_scope)
    if cfg.default_scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    model = MODELS.build(cfg.model).eval()
    (result,) = model.test_step(sample(cfg.default_scope, 64, 96))
    if cfg.default_scope == 'mmdet':
        assert result.pred_instances.bboxes.shape[-1] == 4
    else:
        assert result.pred_sem_seg.data.shape[-2:] == (64, 96)
