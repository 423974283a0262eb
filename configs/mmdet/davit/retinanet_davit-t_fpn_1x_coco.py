# RetinaNet 1x on COCO with DaViT-T (zoo_davit_tiny, Microsoft's ImageNet-1k weights).
# Reported: 44.0 box AP (COCO val2017), dingmyu/davit README.md, table "RetinaNet", DaViT-T, 1x; the authors' config:
# mmdet/configs/davit_retinanet_1x_coco.py.
# Optimizer as the authors': AdamW, lr 1e-4, betas (0.9, 0.999), weight decay 0.05, no exemptions; drop path 0.1.
# Data as the authors': DETR-style multi-scale training (random resize, or resize-crop-resize) even for 1x.
_base_ = [
    '../_base_/models/retinanet_zoo_fpn.py',
    '../_base_/datasets/coco_detection.py',
    '../_base_/schedules/adamw_1x.py',
    '../_base_/default_runtime.py',
]

model = dict(
    backbone=dict(
        model_name='zoo_davit_tiny',
        drop_path_rate=0.1,
        # the authors' detection backbone normalises every output (norm0-norm3)
        init_cfg=dict(type='Pretrained', checkpoint='msft_in1k')),
    neck=dict(in_channels=[96, 192, 384, 768]))

_scales = [(480, 1333), (512, 1333), (544, 1333), (576, 1333), (608, 1333), (640, 1333), (672, 1333), (704, 1333),
           (736, 1333), (768, 1333), (800, 1333)]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomChoice', transforms=[
        [dict(type='RandomChoiceResize', scales=_scales, keep_ratio=True)],
        [dict(type='RandomChoiceResize', scales=[(400, 1333), (500, 1333), (600, 1333)], keep_ratio=True),
         dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600), allow_negative_crop=True),
         dict(type='RandomChoiceResize', scales=_scales, keep_ratio=True)]]),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
