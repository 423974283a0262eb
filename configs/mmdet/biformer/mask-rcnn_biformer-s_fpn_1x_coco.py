# Mask R-CNN 1x on COCO with BiFormer-S (zoo_biformer_small, the authors' ImageNet-1k weights).
# Reported: 47.8 box AP / 43.2 mask AP (COCO val2017), rayleizhu/BiFormer object_detection/README.md, table
# "Results", BiFormer-S, MaskRCNN 1x (48.1 / 43.6 in the columns of the run "reproduced right before code release");
# the authors' config: object_detection/configs/coco/maskrcnn.1x.biformer_small.py (8 GPUs x 2 images).
# Backbone as theirs (object_detection/models_mm/biformer_mm.py): n_win 16, their auto_pad on sizes that are no
# multiple of it (the zoo's default), a LayerNorm2d (eps 1e-6) on every stage output (`extra_norms`, as
# zoo.mm.DENSE_SPECS), BatchNorms in eval mode (their norm_eval=True), drop path 0.2.
# Optimizer as the authors' (UniFormer's recipe): AdamW, lr 1e-4, betas (0.9, 0.999), weight decay 0.05, none on
# parameters whose name holds 'norm'. Their names put 'norm' on the LayerNorms and the extra norms only (the stem's and
# downsamplings' BatchNorms are `downsample_layers.i.j`), so the zoo's `stem.norm*` and `downsample.norm` are named
# back to decay. They trained in fp16: --opt optim_wrapper.type=AmpOptimWrapper on GPUs.
# Weights: the authors published them on OneDrive only (no pretrained tag in the zoo): download biformer_small_in1k.pth
# (the file name their load_release gives it) and point `checkpoint` at it.
_base_ = [
    '../_base_/models/mask-rcnn_zoo_fpn.py',
    '../_base_/datasets/coco_instance.py',
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

optim_wrapper = dict(
    optimizer=dict(lr=0.0001, weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={
        'norm': dict(decay_mult=0.),
        'stem.norm': dict(decay_mult=1.),  # longer keys match first
        'downsample.norm': dict(decay_mult=1.)}))
