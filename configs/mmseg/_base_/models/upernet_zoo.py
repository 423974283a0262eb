# UperNet (and the FCN auxiliary head on the stride-16 level): mmsegmentation 1.2.2's
# configs/_base_/models/upernet_r50.py with the ResNet replaced by a zoo backbone. Leaf configs name the backbone and
# set the heads' in_channels to its widths.
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
    decode_head=dict(
        type='UPerHead',
        in_channels=[256, 512, 1024, 2048],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=512,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=1024,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    # model training and testing settings
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
