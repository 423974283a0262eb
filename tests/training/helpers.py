"""Tiny settings shared by the training and tools tests."""
from pathlib import Path

import numpy as np
from PIL import Image

TINY_VAN = {'embed_dims': [8, 16, 24, 32], 'depths': [1, 1, 1, 1], 'mlp_ratios': [2, 2, 2, 2]}
TINY_VAN_OPT = 'model.kwargs={embed_dims: [8, 16, 24, 32], depths: [1, 1, 1, 1], mlp_ratios: [2, 2, 2, 2]}'
# 179 training digits (10% of the set), 16x16 images, 5 batches per epoch
TINY_DIGITS_OPTS = [TINY_VAN_OPT, 'data.image_size=16', 'data.digits_val_fraction=0.9', 'data.batch_size=32']
COLORS = {'red': (220, 30, 30), 'green': (30, 200, 30), 'blue': (30, 30, 220)}


def make_image_folder(root: Path, per_class: int = 4, size: int = 20) -> Path:
    """<root>/{train,val}/{red,green,blue}/*.png: noisy images of one colour per class."""
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for name, color in COLORS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = np.clip(np.array(color) + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f'{i}.png')
    return root
