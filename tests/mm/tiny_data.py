"""Tiny datasets in COCO and ADE20K layouts, written by the tests (nothing downloaded)."""
import json
from pathlib import Path
from typing import Tuple

import cv2
import numpy as np

COCO_CLASSES = ('person', 'car')  # two of COCO's classes, ids 1 and 3 as in COCO


def _image_with_boxes(rng: np.random.Generator, size: Tuple[int, int], n: int):
    h, w = size
    img = (rng.random((h, w, 3)) * 60).astype(np.uint8)
    boxes = []
    for _ in range(n):
        bw, bh = int(rng.integers(w // 4, w // 2)), int(rng.integers(h // 4, h // 2))
        x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        label = int(rng.integers(0, len(COCO_CLASSES)))
        img[y:y + bh, x:x + bw] = (200, 60, 60) if label == 0 else (60, 200, 60)
        boxes.append((x, y, bw, bh, label))
    return img, boxes


def write_coco(root: Path, n_train: int = 2, n_val: int = 2, size: Tuple[int, int] = (64, 96), seed: int = 0) -> Path:
    """``root/annotations/instances_{train,val}.json`` and ``root/{train,val}/*.jpg``: rectangles of two classes,
    with boxes and polygon masks."""
    rng = np.random.default_rng(seed)
    (root / 'annotations').mkdir(parents=True, exist_ok=True)
    categories = [dict(id=1, name='person'), dict(id=3, name='car')]
    ann_id = 1
    for split, count in (('train', n_train), ('val', n_val)):
        (root / split).mkdir(exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            img, boxes = _image_with_boxes(rng, size, 2)
            name = f'{split}_{i:03d}.jpg'
            cv2.imwrite(str(root / split / name), img)
            images.append(dict(id=i + 1, file_name=name, height=size[0], width=size[1]))
            for x, y, bw, bh, label in boxes:
                annotations.append(dict(
                    id=ann_id, image_id=i + 1, category_id=categories[label]['id'], bbox=[x, y, bw, bh],
                    area=bw * bh, iscrowd=0, segmentation=[[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]))
                ann_id += 1
        (root / 'annotations' / f'instances_{split}.json').write_text(
            json.dumps(dict(images=images, annotations=annotations, categories=categories)))
    return root


def write_ade(root: Path, n_train: int = 2, n_val: int = 2, size: Tuple[int, int] = (64, 96), seed: int = 0) -> Path:
    """``root/images/{training,validation}/*.jpg`` and ``root/annotations/{training,validation}/*.png`` as in
    ADEChallengeData2016 (label 0 = other, 1-150 the classes; mmseg's ADE20KDataset reduces 0 to ignore)."""
    rng = np.random.default_rng(seed)
    for split, count in (('training', n_train), ('validation', n_val)):
        (root / 'images' / split).mkdir(parents=True, exist_ok=True)
        (root / 'annotations' / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img, boxes = _image_with_boxes(rng, size, 2)
            seg = np.ones(size, dtype=np.uint8)  # class 1 (wall) everywhere ...
            for x, y, bw, bh, label in boxes:
                seg[y:y + bh, x:x + bw] = 3 + label  # ... rectangles of classes 3 (sky) and 4 (floor)
            seg[:2] = 0  # a strip of "other" (ignored)
            name = f'ADE_{split}_{i:08d}'
            cv2.imwrite(str(root / 'images' / split / f'{name}.jpg'), img)
            cv2.imwrite(str(root / 'annotations' / split / f'{name}.png'), seg)
    return root


def tiny_detection_config(path: Path, base: str, data_root: Path, backbone: dict, neck_in: list, masks: bool,
                          num_classes: int = len(COCO_CLASSES)) -> Path:
    """A config inheriting `base` that trains 2 epochs of 1 iteration (2 images) on the tiny COCO at `data_root`,
    checkpoints every epoch, validates at the end, with nothing random in the data pipeline."""
    with_mask = f'with_mask={masks}'
    # narrow heads and few samples: the point is the whole pipeline, at CI cost
    heads = (f"""rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=32),
        bbox_head=dict(in_channels=32, fc_out_channels=64, num_classes={num_classes}),
        mask_roi_extractor=dict(out_channels=32),
        mask_head=dict(num_convs=1, in_channels=32, conv_out_channels=32, num_classes={num_classes})),
    train_cfg=dict(rpn=dict(sampler=dict(num=64)), rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rcnn=dict(max_per_img=20)),""" if masks else
             f"bbox_head=dict(in_channels=32, feat_channels=32, stacked_convs=1, num_classes={num_classes}),\n"
             "    test_cfg=dict(score_thr=0.0),")  # an untrained RetinaNet scores below the default 0.05
    metric = "['bbox', 'segm']" if masks else "'bbox'"
    path.write_text(f'''
_base_ = {base!r}
data_root = '{data_root}/'
metainfo = dict(classes={COCO_CLASSES!r})
model = dict(
    backbone={dict(dict(init_cfg=None), **backbone)!r},
    neck=dict(in_channels={neck_in!r}, out_channels=32),
    {heads})
train_pipeline = [
    dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True, {with_mask}),
    dict(type='Resize', scale=(96, 64), keep_ratio=True), dict(type='PackDetInputs')]
test_pipeline = [
    dict(type='LoadImageFromFile'), dict(type='Resize', scale=(96, 64), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, {with_mask}),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_train.json',
                 data_prefix=dict(img='train/'), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_val.json',
                 data_prefix=dict(img='val/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json', metric={metric})
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=2, val_interval=2)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1))
randomness = dict(seed=0)
''')
    return path


def tiny_segmentation_config(path: Path, base: str, data_root: Path, backbone: dict, widths: list) -> Path:
    """A config inheriting `base` (UperNet or Semantic FPN) that trains 2 iterations (2 images each) on the tiny
    ADE20K at `data_root`, checkpoints every iteration, validates at the end, with nothing random in the data
    pipeline; narrow heads. `widths`: the backbone's output widths."""
    if 'upernet' in base:
        parts = (f'decode_head=dict(in_channels={widths!r}, channels=32), '
                 f'auxiliary_head=dict(in_channels={widths[2]}, channels=16)')
    else:
        parts = (f'neck=dict(in_channels={widths!r}, out_channels=32), '
                 'decode_head=dict(in_channels=[32, 32, 32, 32], channels=32)')
    path.write_text(f'''
_base_ = {base!r}
data_root = '{data_root}/'
model = dict(backbone={dict(dict(init_cfg=None), **backbone)!r}, data_preprocessor=dict(size=(64, 96)), {parts})
train_pipeline = [
    dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='Resize', scale=(96, 64), keep_ratio=True), dict(type='PackSegInputs')]
test_pipeline = [
    dict(type='LoadImageFromFile'), dict(type='Resize', scale=(96, 64), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True), dict(type='PackSegInputs')]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, data_prefix=dict(img_path='images/training',
                 seg_map_path='annotations/training'), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, data_prefix=dict(img_path='images/validation',
                 seg_map_path='annotations/validation'), pipeline=test_pipeline))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=2, val_interval=2)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1))
randomness = dict(seed=0)
''')
    return path


def main(argv=None) -> int:
    """``python -m tests.mm.tiny_data OUT``: the tiny COCO and ADE20K under OUT and two configs that train on them
    for 2 iterations (Mask R-CNN with a depth-1 LITv2-S, UperNet with VAN-B0), random initialisation."""
    import argparse
    parser = argparse.ArgumentParser(prog='python -m tests.mm.tiny_data', description=main.__doc__.split('\n')[0])
    parser.add_argument('out', type=Path)
    out = parser.parse_args(argv).out.resolve()
    repo = Path(__file__).resolve().parents[2]
    det = tiny_detection_config(
        out / 'mask-rcnn_litv2-s_tiny.py', str(repo / 'configs/mmdet/litv2/mask-rcnn_litv2-s_fpn_1x_coco.py'),
        write_coco(out / 'coco'), dict(depths=(1, 1, 1, 1)), [96, 192, 384, 768], masks=True)
    seg = tiny_segmentation_config(
        out / 'upernet_van-b0_tiny.py', str(repo / 'configs/mmseg/van/upernet_van-b2_8xb2-160k_ade20k-512x512.py'),
        write_ade(out / 'ade'), dict(model_name='zoo_van_b0'), [32, 64, 160, 256])
    print(f'wrote {out}/coco, {out}/ade and\n  {det}\n  {seg}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
