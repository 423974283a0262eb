# Semantic FPN 80k on ADE20K (512x512 crops) with BiFormer-S (zoo_biformer_small, the authors' ImageNet-1k weights).
# Reported: 48.9 mIoU (single scale), rayleizhu/BiFormer semantic_segmentation/README.md, table "Results", BiFormer-S,
# S-FPN, 80K; the authors' config: semantic_segmentation/configs/ade20k/sfpn.biformer_small.py (8 GPUs x 4 images:
# UniFormer's 160k iterations at 4 GPUs x 4 images, run with twice the GPUs and the lr for half the iterations).
# Backbone as theirs (semantic_segmentation/models_mm/biformer_mm.py): n_win 8, their auto_pad (the zoo's default), a
# LayerNorm2d (eps 1e-6) on every stage output (`extra_norms`), SyncBatchNorm in the backbone (`sync_bn`, on GPUs),
# drop path 0.15.
# Optimizer as the authors': AdamW, lr 2e-4, weight decay 1e-4, no exemptions; cosine annealing over the 80k
# iterations to 1e-8 of the lr, with a linear warm-up from 0.1x over the first 1000. They tested with UniFormer's
# AlignResize (short side 512, sides resized to multiples of 32), which mmseg 1.x lacks: plain Resize here. They
# trained in fp16 (loss scale 512): --opt optim_wrapper.type=AmpOptimWrapper on GPUs.
# Weights: OneDrive only (no pretrained tag): download biformer_small_in1k.pth and point `checkpoint` at it.
_base_ = [
    '../_base_/models/fpn_zoo.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/schedules/adamw_80k.py',
    '../_base_/default_runtime.py',
]

model = dict(
    backbone=dict(
        model_name='zoo_biformer_small',
        n_win=8,
        drop_path_rate=0.15,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/biformer_small_in1k.pth')),
    neck=dict(in_channels=[64, 128, 256, 512]))

optim_wrapper = dict(optimizer=dict(lr=0.0002, weight_decay=0.0001))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=1000),
    dict(type='CosineAnnealingLR', T_max=80000, eta_min_ratio=1e-8, by_epoch=False, begin=0, end=80000),
]
train_cfg = dict(max_iters=80000, val_interval=4000)
default_hooks = dict(checkpoint=dict(interval=4000))

sync_bn = 'torch'  # the authors convert the backbone's BatchNorms to SyncBatchNorm (distributed runs)
train_dataloader = dict(batch_size=4)  # x 8 GPUs
