# Semantic FPN on ADE20K (512x512 crops) with VAN-B2 (zoo_van_b2, the authors' ImageNet-1k weights).
# Reported: 46.7 mIoU, Visual-Attention-Network/VAN-Segmentation README.md, table "VAN + Semantic FPN", VAN-Base
# (= VAN-B2), 40K; the authors' config: configs/sem_fpn/fpn_van_b2_ade20k_40k.py. It is mmseg's 80k Semantic FPN
# schedule (4 GPUs x 4 images) run on 8 GPUs x 4 images with twice the lr for half the iterations: 40k here.
# Optimizer as the authors': AdamW, lr 2e-4, weight decay 1e-4, no exemptions; drop path 0.2; poly (power 0.9) to 0.
_base_ = [
    '../_base_/models/fpn_zoo.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/schedules/adamw_80k.py',
    '../_base_/default_runtime.py',
]

model = dict(
    backbone=dict(
        model_name='zoo_van_b2',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='official_in1k')),
    neck=dict(in_channels=[64, 128, 320, 512]))

optim_wrapper = dict(optimizer=dict(lr=0.0002, weight_decay=0.0001))
param_scheduler = [dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=40000, by_epoch=False)]
train_cfg = dict(max_iters=40000, val_interval=4000)
default_hooks = dict(checkpoint=dict(interval=4000))
train_dataloader = dict(batch_size=4)  # x 8 GPUs
