# RetinaNet 1x on COCO with BiFormer-S (zoo_biformer_small, the authors' ImageNet-1k weights).
# Reported: 45.9 box AP (COCO val2017), rayleizhu/BiFormer object_detection/README.md, table "Results", BiFormer-S,
# RetinaNet 1x (47.3 in the column of the run "reproduced right before code release"); the authors' config:
# object_detection/configs/coco/retinanet.1x.biformer_small.py (8 GPUs x 2 images).
# Backbone as theirs (object_detection/models_mm/biformer_mm.py): n_win 16, their auto_pad on sizes that are no
# multiple of it (the zoo's default), a LayerNorm2d (eps 1e-6) on every stage output (`extra_norms`, as
# zoo.mm.DENSE_SPECS), BatchNorms in eval mode (their norm_eval=True), drop path 0.2.
# Optimizer as the authors' (WaveViT's recipe): AdamW, lr 1e-4, weight decay 1e-4, no exemptions. They trained in fp16
# (loss scale 512): --opt optim_wrapper.type=AmpOptimWrapper on GPUs.
# Weights: the authors published them on OneDrive only (no pretrained tag in the zoo): download biformer_small_in1k.pth
# (the file name their load_release gives it) and point `checkpoint` at it.
_base_ = [
    '../_base_/models/retinanet_zoo_fpn.py',
    '../_base_/datasets/coco_detection.py',
    '../_base_/schedules/adamw_1x.py',
    '../_base_/default_runtime.py',
]

model = dict(
    backbone=dict(
        model_name='zoo_biformer_small',
        n_win=16,
        norm_eval=True,
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/biformer_small_in1k.pth')),
    neck=dict(in_channels=[64, 128, 256, 512]))

optim_wrapper = dict(optimizer=dict(lr=0.0001, weight_decay=0.0001))
find_unused_parameters = True  # as the authors'
