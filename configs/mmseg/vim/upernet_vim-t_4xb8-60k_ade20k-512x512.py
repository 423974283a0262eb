# UperNet on ADE20K (512x512 crops) with Vim-Ti (zoo_vim_tiny, the authors' ImageNet-1k weights), on the authors'
# schedule: 60k iterations at 4 GPUs x 8 images (not mmseg's 160k at 8 x 2).
# Reported: not transcribed here. The paper (arXiv:2401.09417) reports ADE20K UperNet results for Vim-Ti, but its
# table could not be consulted for this config, so no number is quoted; hustvl/Vim's seg/README.md lists none.
# The authors' config: seg/configs/vim/upernet/upernet_vim_tiny_24_512_slide_60k.py with the overrides of
# seg/scripts/ft_vim_tiny_upernet.sh (lr 2e-4, weight decay 0.1).
# Backbone as their seg/backbone/vim.py: the mixer outputs of blocks 5, 11, 17, 23 (use_residual_as_feature=False),
# a BEiT-style pyramid (transposed convs with SyncBatchNorm between them for stride 4, one for 8, identity, max-pool),
# position embedding at img_size 512, drop path 0.1 (VisionMamba's default). Unlike theirs (if_cls_token=False, which
# drops the classifier's middle class token and loads the position table shifted by one), the zoo keeps the class
# token in the middle as the weights were trained. UperNet head 192 channels wide as theirs; sliding-window test
# (512 crops, stride 341).
# Optimizer as the authors' ran it: AdamW, lr 2e-4, betas (0.9, 0.999), weight decay 0.1, none on 1-D parameters and
# biases; linear warm-up 1500 iterations, then poly (power 1). Their LayerDecayOptimizerConstructor (rate 0.92,
# 24 layers) looks for `backbone.blocks.<i>`, which Vim (`backbone.layers.<i>`) does not have: in effect only the
# patch embedding, position embedding and class token were scaled (layer 0: x0.92^25), every block and the heads ran
# at the full lr. That is reproduced here.
_base_ = [
    '../_base_/models/upernet_zoo.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/schedules/adamw_160k.py',
    '../_base_/default_runtime.py',
]

model = dict(
    backbone=dict(
        model_name='zoo_vim_tiny',
        img_size=512,
        block_indices=(5, 11, 17, 23),
        pyramid_norm='BN',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='hustvl_in1k')),
    decode_head=dict(in_channels=[192, 192, 192, 192], channels=192),
    auxiliary_head=dict(in_channels=192),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))

optim_wrapper = dict(
    optimizer=dict(lr=0.0002, weight_decay=0.1),
    paramwise_cfg=dict(
        flat_decay_mult=0.,
        custom_keys={
            'backbone.model.patch_embed.proj.weight': dict(lr_mult=0.92 ** 25),
            'backbone.model.patch_embed.proj.bias': dict(lr_mult=0.92 ** 25, decay_mult=0.),
            'backbone.model.pos_embed': dict(lr_mult=0.92 ** 25),
            'backbone.model.cls_token': dict(lr_mult=0.92 ** 25)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=60000, by_epoch=False),
]
train_cfg = dict(max_iters=60000, val_interval=6000)
default_hooks = dict(checkpoint=dict(interval=6000))

sync_bn = 'torch'  # the pyramid's BatchNorm is a SyncBatchNorm in theirs (distributed runs)
train_dataloader = dict(batch_size=8)  # x 4 GPUs
