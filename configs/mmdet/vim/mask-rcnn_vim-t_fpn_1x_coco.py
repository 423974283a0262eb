# Mask R-CNN 1x on COCO with Vim-Ti (zoo_vim_tiny, the authors' ImageNet-1k weights).
# Reported: none for this config. The Vim authors' detection code (hustvl/Vim det/, detectron2) trains ViTDet's
# Cascade Mask R-CNN for 100 epochs with large-scale jitter at 1024 (projects/ViTDet/configs/COCO/
# cascade_mask_rcnn_vimdet_t_100ep_adj1.py), from the last block only; the paper's COCO numbers are for that recipe
# and are not transcribed here.
# Backbone: the blocks at the ends of the four quarters (5, 11, 17, 23: the authors' segmentation taps), their mixer
# outputs, through the adapter's simple feature pyramid (LayerNorm in the stride-4 branch, as ViTDet's); drop path 0.1
# as the authors' detection backbone.
# Optimizer as the authors' detection recipe (det/configs/common/optim.py and the config above): AdamW, lr 1e-4,
# betas (0.9, 0.999), weight decay 0.1, none on norm layers (detectron2's weight_decay_norm=0: LayerNorm and BatchNorm,
# not Vim's RMSNorm) and on the position embedding; layer-wise lr decay 0.837 (get_vim_lr_decay_rate over 24 blocks:
# patch and position embeddings x0.837^25, block i x0.837^(24 - i), the rest x1). They trained with AMP: --opt
# optim_wrapper.type=AmpOptimWrapper on GPUs.
_base_ = [
    '../_base_/models/mask-rcnn_zoo_fpn.py',
    '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/adamw_1x.py',
    '../_base_/default_runtime.py',
]

model = dict(
    backbone=dict(
        model_name='zoo_vim_tiny',
        block_indices=(5, 11, 17, 23),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='hustvl_in1k')),
    neck=dict(in_channels=[192, 192, 192, 192]))

optim_wrapper = dict(
    optimizer=dict(lr=0.0001, weight_decay=0.1),
    paramwise_cfg=dict(
        norm_decay_mult=0.,
        custom_keys={
            'backbone.model.patch_embed.': dict(lr_mult=0.837 ** 25),
            'backbone.model.pos_embed': dict(lr_mult=0.837 ** 25, decay_mult=0.),
            **{f'backbone.model.layers.{i}.': dict(lr_mult=0.837 ** (24 - i)) for i in range(24)}}))
