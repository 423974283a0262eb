# UperNet 160k on ADE20K (512x512 crops) with LITv2-S (zoo_litv2_small, the authors' ImageNet-1k weights).
# Reported: none; the LITv2 authors report Semantic FPN only (see fpn_litv2-s_8xb2-80k_ade20k-512x512.py).
# Optimizer: the Swin/UperNet recipe (AdamW, lr 6e-5, weight decay 0.01, none on norms), not the authors'.
_base_ = [
    '../_base_/models/upernet_zoo.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/schedules/adamw_160k.py',
    '../_base_/default_runtime.py',
]

model = dict(
    backbone=dict(
        model_name='zoo_litv2_small',
        drop_path_rate=0.2,
        out_norms=(0, 1, 2, 3),  # as the authors' segmentation backbone (norm0-norm3)
        init_cfg=dict(type='Pretrained', checkpoint='official_in1k')),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))

optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))

train_dataloader = dict(batch_size=2)  # x 8 GPUs
