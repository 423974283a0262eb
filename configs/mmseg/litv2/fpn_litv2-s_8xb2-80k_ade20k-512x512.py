# Semantic FPN 80k on ADE20K (512x512 crops) with LITv2-S (zoo_litv2_small, the authors' ImageNet-1k weights).
# Reported: 44.3 mIoU (single scale), ziplab/LITv2 README.md, table "Semantic Segmentation on ADE20K", LITv2-S;
# the authors' config: segmentation/configs/litv2/litv2_s_fpn_r50_512x512_80k_ade20k.py (8 GPUs x 2 images).
# Optimizer as the authors': AdamW, lr 1e-4, weight decay 1e-4 (mmseg 0.x's 80k poly policy with min lr 1e-4).
_base_ = [
    '../_base_/models/fpn_zoo.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/schedules/adamw_80k.py',
    '../_base_/default_runtime.py',
]

model = dict(
    backbone=dict(
        model_name='zoo_litv2_small',
        drop_path_rate=0.2,
        out_norms=(0, 1, 2, 3),  # the authors' segmentation backbone normalises all four outputs (norm0-norm3)
        init_cfg=dict(type='Pretrained', checkpoint='official_in1k')),
    neck=dict(in_channels=[96, 192, 384, 768]))

train_dataloader = dict(batch_size=2)  # x 8 GPUs
