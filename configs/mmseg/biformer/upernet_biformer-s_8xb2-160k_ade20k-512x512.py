# UperNet 160k on ADE20K (512x512 crops) with BiFormer-S (zoo_biformer_small, the authors' ImageNet-1k weights).
# Reported: 49.8 mIoU (single scale; 50.8 multi-scale + flip), rayleizhu/BiFormer semantic_segmentation/README.md,
# table "Results", BiFormer-S, UPerNet, 160K; the authors' config:
# semantic_segmentation/configs/ade20k/upernet.biformer_small.py (8 GPUs x 2 images).
# Backbone as theirs (semantic_segmentation/models_mm/biformer_mm.py): n_win 8 ("training resolution is 512"), their
# auto_pad (the zoo's default), a LayerNorm2d (eps 1e-6) on every stage output (`extra_norms`), SyncBatchNorm in the
# backbone (`sync_bn` below, on GPUs), drop path 0.3.
# Optimizer as the authors' (UniFormer's/CSWin's recipe): AdamW, lr 6e-5, betas (0.9, 0.999), weight decay 0.01, none
# on the LayerNorms and extra norms (their 'norm' names; the zoo's BatchNorm names are matched back to decay); linear
# warm-up 1500 iterations, then poly (power 1). They trained in fp16 (loss scale 512): --opt
# optim_wrapper.type=AmpOptimWrapper on GPUs.
# Weights: OneDrive only (no pretrained tag): download biformer_small_in1k.pth and point `checkpoint` at it.
_base_ = [
    '../_base_/models/upernet_zoo.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/schedules/adamw_160k.py',
    '../_base_/default_runtime.py',
]

model = dict(
    backbone=dict(
        model_name='zoo_biformer_small',
        n_win=8,
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/biformer_small_in1k.pth')),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))

optim_wrapper = dict(
    optimizer=dict(lr=0.00006, weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={
        'norm': dict(decay_mult=0.),
        'stem.norm': dict(decay_mult=1.),
        'downsample.norm': dict(decay_mult=1.)}))

sync_bn = 'torch'  # the authors convert the backbone's BatchNorms to SyncBatchNorm (distributed runs)
train_dataloader = dict(batch_size=2)  # x 8 GPUs
