# Semantic FPN: mmsegmentation 1.2.2's configs/_base_/models/fpn_r50.py with the ResNet replaced by a zoo backbone.
# Leaf configs name the backbone and set the neck's in_channels to its widths.
custom_imports = dict(imports=['zoo.mm'], allow_failed_imports=False)

# model settings
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    size=(512, 512),  # the training crop (datasets/ade20k.py)
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='ZooBackbone',
        model_name=None,  # set by the leaf config: any timm.list_models('zoo_*') name
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=True)),  # the default ImageNet weights, through zoo.hub
    neck=dict(
        type='FPN',
        in_channels=[256, 512, 1024, 2048],
        out_channels=256,
        num_outs=4),
    decode_head=dict(
        type='FPNHead',
        in_channels=[256, 256, 256, 256],
        in_index=[0, 1, 2, 3],
        feature_strides=[4, 8, 16, 32],
        channels=128,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    # model training and testing settings
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
