import os

# The suite runs offline: no test may reach a hub or a tracker.
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('WANDB_MODE', 'disabled')
