"""Real runs on the CPU, one detector and one segmentor per kernel family (window: LITv2, neighborhood: TransNeXt,
routing: BiFormer, selective scan: PlainMamba and Vim) and for the plain models' pyramid (Sparsifiner, whose sparse
attention is the fifth kernel family, and LookupViT): 2 training iterations and an evaluation (COCO mAP through
pycocotools, mIoU) on tiny datasets in the COCO and ADE20K layouts, then a resume from the first iteration's
checkpoint that must end exactly where the uninterrupted run ended. Narrow heads and shallow backbones keep this
within CI's time; the configs are the real ones otherwise (n_win, pyramid norms, optimizer groups, schedules)."""
import itertools
from pathlib import Path

import pytest
import torch

from tests.mm.tiny_data import tiny_detection_config, tiny_segmentation_config, write_ade, write_coco

pytestmark = [pytest.mark.mm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
_runs = itertools.count()

LITV2 = dict(depths=(1, 1, 1, 1), embed_dim=48, drop_path_rate=0.0)
TRANSNEXT = dict(depths=(1, 1, 1, 1), embed_dims=(24, 48, 96, 192), num_heads=(1, 2, 4, 8), drop_path_rate=0.0)
BIFORMER = dict(depths=(1, 1, 1, 1), embed_dims=(32, 64, 96, 128))  # n_win as the configs: 16 pads the tiny maps
PLAIN = dict(depth=4, block_indices=(0, 1, 2, 3))  # the configs' taps are blocks of 24 (12)

CASES = {
    # kernel family: (config, backbone overrides, backbone widths)
    'window-mask-rcnn': ('configs/mmdet/litv2/mask-rcnn_litv2-s_fpn_1x_coco.py', LITV2, [48, 96, 192, 384]),
    'window-fpn': ('configs/mmseg/litv2/fpn_litv2-s_8xb2-80k_ade20k-512x512.py', LITV2, [48, 96, 192, 384]),
    'neighborhood-retinanet': ('configs/mmdet/transnext/retinanet_transnext-t_fpn_1x_coco.py',
                               dict(TRANSNEXT, img_size=64), [24, 48, 96, 192]),
    'neighborhood-upernet': ('configs/mmseg/transnext/upernet_transnext-t_8xb2-160k_ade20k-512x512.py',
                             dict(TRANSNEXT, img_size=64), [24, 48, 96, 192]),
    'routing-mask-rcnn': ('configs/mmdet/biformer/mask-rcnn_biformer-s_fpn_1x_coco.py', BIFORMER, [32, 64, 96, 128]),
    'routing-fpn': ('configs/mmseg/biformer/fpn_biformer-s_8xb4-80k_ade20k-512x512.py', BIFORMER, [32, 64, 96, 128]),
    'scan-retinanet': ('configs/mmdet/plainmamba/retinanet_plainmamba-l1_fpn_1x_coco.py', PLAIN, [192] * 4),
    'scan-upernet': ('configs/mmseg/vim/upernet_vim-t_4xb8-60k_ade20k-512x512.py', PLAIN, [192] * 4),
    'sparse-mask-rcnn': ('configs/mmdet/sparsifiner/mask-rcnn_sparsifiner-deit-s_fpn_1x_coco.py', PLAIN, [384] * 4),
    'plain-upernet': ('configs/mmseg/lookupvit/upernet_lookupvit-s16_8xb2-160k_ade20k-512x512.py', PLAIN, [384] * 4),
}


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    return dict(coco=write_coco(root / 'coco'), ade=write_ade(root / 'ade'))


def tiny_config(case: str, data: dict, tmp_path: Path) -> Path:
    config, backbone, widths = CASES[case]
    base = str(ROOT / config)
    if 'mmdet' in config:
        return tiny_detection_config(tmp_path / f'{case}.py', base, data['coco'], backbone, widths,
                                     masks='mask-rcnn' in case)
    return tiny_segmentation_config(tmp_path / f'{case}.py', base, data['ade'], backbone, widths)


def checkpoints(work_dir: Path):
    found = sorted(work_dir.glob('epoch_*.pth')) or sorted(work_dir.glob('iter_*.pth'))
    return [p.name for p in found], found


def weights(path: Path) -> dict:
    return torch.load(path, map_location='cpu')['state_dict']


@pytest.mark.parametrize('case', sorted(CASES))
def test_train_evaluate_resume(case, data, tmp_path):
    from zoo.mm import runner

    config = tiny_config(case, data, tmp_path)
    name = f'run{next(_runs)}'
    metrics = runner.train(config, [f'experiment_name={name}'], work_dir=str(tmp_path / 'full'))
    detection = 'mmdet' in CASES[case][0]
    key = 'coco/bbox_mAP' if detection else 'mIoU'
    assert key in metrics and 0.0 <= float(metrics[key]) <= 100.0, metrics
    if 'mask-rcnn' in case:
        assert 'coco/segm_mAP' in metrics
    names, paths = checkpoints(tmp_path / 'full')
    assert len(names) == 2, names

    # resume from the first checkpoint in a fresh work_dir: the second iteration must come out the same
    resumed = runner.train(config, [f'experiment_name={name}r'], work_dir=str(tmp_path / 'resumed'),
                           resume=str(paths[0]))
    r_names, r_paths = checkpoints(tmp_path / 'resumed')
    assert r_names == names[1:]
    full, again = weights(paths[1]), weights(r_paths[0])
    assert full.keys() == again.keys()
    different = [k for k in full if not torch.equal(full[k], again[k])]
    assert not different, f'{len(different)} tensors differ after resuming, e.g. {different[:3]}'
    assert float(resumed[key]) == float(metrics[key])
