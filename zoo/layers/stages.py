"""timm's model contract for hierarchical models built as a stem, ``stages`` and a ``ClassifierHead``.

The families' model classes mix these in before ``nn.Module``; each keeps what is its own (init, group matcher,
weight-decay exemptions, and for LITv2 its intermediates with the final norm).
"""
from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import get_device_dtype
from timm.models._features import feature_take_indices

__all__ = ['StagedClassifierMixin', 'NormedStagesMixin']


class StagedClassifierMixin:
    """Gradient checkpointing per stage and the classifier part of the contract.

    Expects ``self.stages`` (stages with a ``grad_checkpointing`` flag), ``self.head`` (a timm ``ClassifierHead``),
    ``self.num_features`` and ``forward_features``.
    """

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool, in_features=self.num_features, **get_device_dtype(self))
        self.head_hidden_size = self.head.num_features

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x


class NormedStagesMixin(StagedClassifierMixin):
    """For models whose every stage ends in its own norm and returns NCHW (VAN, TransNeXt): the stage outputs are
    the features, there is no final norm, and the head follows the last stage directly.

    Expects ``forward_stem(x)`` (default ``self.stem(x)``) to give the first stage's input and ``self.feature_info``.
    """

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward features that returns intermediates.

        Args:
            x: Input image tensor.
            indices: Take the last n stages if int, all if None, the matching indices if a sequence.
            norm: Unused: every stage output is already normalized by that stage's norm.
            stop_early: Stop after the last stage needed for the intermediates.
            output_fmt: Shape of the intermediate feature outputs; only 'NCHW'.
            intermediates_only: Only return the intermediate features.
        """
        assert output_fmt in ('NCHW',), 'Output shape must be NCHW.'
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)

        x = self.forward_stem(x)
        if torch.jit.is_scripting() or not stop_early:  # can't slice blocks in torchscript
            stages = self.stages
        else:
            stages = self.stages[:max_index + 1]
        for feat_idx, stage in enumerate(stages):
            x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(x)

        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ):
        """Prune the stages not needed for the given intermediates (the stage norms are part of the features)."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[:max_index + 1]
        if prune_end:
            # features now end at the last kept stage; the head was sized for the last stage so it goes too
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.forward_stem(x))  # each stage checkpoints its own blocks when grad checkpointing is on
