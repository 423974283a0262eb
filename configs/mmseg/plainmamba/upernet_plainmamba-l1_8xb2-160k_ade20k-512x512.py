# UperNet 160k on ADE20K (512x512 crops) with PlainMamba-L1 (zoo_plainmamba_l1, the authors' ImageNet-1k weights).
# Reported: 44.1 mIoU, ChenhongyiYang/PlainMamba README.md, table "ADE20K UperNet", PlainMamba-L1; the authors'
# config: downstream/mmsegmentation/plain_mamba_seg_configs/l1_upernet.py (8 GPUs x 2 images). That number is for
# their layout, which feeds UperNet four stride-16 maps (the block outputs of blocks 5, 11, 17, 23, a new LayerNorm
# (eps 1e-6) on the first three and the final norm on the last) without a pyramid; here the same blocks go through the
# adapter's simple feature pyramid (strides 4-32), as for every plain model.
# Backbone otherwise as theirs: drop path 0.1, SyncBatchNorm in the stem and the depthwise conv (`sync_bn`, on GPUs);
# the FCN auxiliary head reads level 3 as theirs.
# Optimizer as the authors': AdamW, lr 6e-5, betas (0.9, 0.999), weight decay 0.01, none on norms, the position
# embedding and the scans' A_log, D and direction_Bs; linear warm-up 1500 iterations, then poly (power 1). They tested
# with SegFormer's AlignedResize (sides resized to multiples of 32), which mmseg 1.x lacks: plain Resize here.
_base_ = [
    '../_base_/models/upernet_zoo.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/schedules/adamw_160k.py',
    '../_base_/default_runtime.py',
]

model = dict(
    backbone=dict(
        model_name='zoo_plainmamba_l1',
        block_indices=(5, 11, 17, 23),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='official_in1k')),
    decode_head=dict(in_channels=[192, 192, 192, 192]),
    auxiliary_head=dict(in_channels=192, in_index=3))

optim_wrapper = dict(
    optimizer=dict(lr=0.00006, weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={
        '.absolute_pos_embed': dict(decay_mult=0.),
        '.relative_position_bias_table': dict(decay_mult=0.),
        'pos_block': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.),
        '.pos_embed': dict(decay_mult=0.),
        '.A_log': dict(decay_mult=0.),
        '.D': dict(decay_mult=0.),
        '.direction_Bs': dict(decay_mult=0.)}))

sync_bn = 'torch'  # the authors' backbone converts its BatchNorms to SyncBatchNorm (convert_syncbn=True)
train_dataloader = dict(batch_size=2)  # x 8 GPUs
