"""timm's model contract for hierarchical models built as a stem, ``stages``, an optional final norm and a head.

The families' model classes mix these in before ``nn.Module`` (or before the timm class they build on); each keeps
what is its own (init, group matcher, weight-decay exemptions, checkpoint filter).
"""
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import get_device_dtype
from timm.models._features import feature_take_indices

__all__ = ['StagedClassifierMixin', 'StagedFeaturesMixin', 'StagedModelMixin']


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


class StagedFeaturesMixin:
    """The feature part of the contract: ``forward_features``, ``forward_intermediates`` (the stage outputs at
    strides 4/8/16/32) and ``prune_intermediate_layers``.

    Expects ``self.stages``, ``self.feature_info``, ``self.num_features`` and ``reset_classifier``; optionally a
    final norm ``self.norm`` applied after the last stage only (models whose stages end in their own norms, such as
    VAN and TransNeXt, have none). Hooks a model may override:

    * ``forward_stem(x)``: the first stage's input (default ``self.stem(x)``);
    * ``stage_to_nchw(x)``: a stage output as an NCHW intermediate (default: stages return NCHW);
    * ``reset_head_for_features()``: drop the classifier once the features no longer end at the last stage.
    """

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)

    def stage_to_nchw(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def reset_head_for_features(self):
        self.reset_classifier(0, '')

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        norm = getattr(self, 'norm', None)
        return x if norm is None else norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # each stage checkpoints its own blocks when grad checkpointing is on
        return self._final_norm(self.stages(self.forward_stem(x)))

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
            norm: Apply the final norm (where the model has one) to the last stage's intermediate.
            stop_early: Stop after the last stage needed for the intermediates.
            output_fmt: Shape of the intermediate feature outputs; only 'NCHW'.
            intermediates_only: Only return the intermediate features.

        Returns:
            The stage outputs as NCHW, and the final features (``forward_features``' format) unless
            ``intermediates_only``.
        """
        assert output_fmt in ('NCHW',), 'Output shape must be NCHW.'
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last_idx = len(self.stages) - 1

        x = self.forward_stem(x)
        if torch.jit.is_scripting() or not stop_early:  # can't slice blocks in torchscript
            stages = self.stages
        else:
            stages = self.stages[:max_index + 1]
        feat_idx = 0
        for feat_idx, stage in enumerate(stages):
            x = stage(x)
            if feat_idx in take_indices:
                x_inter = self._final_norm(x) if norm and feat_idx == last_idx else x
                intermediates.append(self.stage_to_nchw(x_inter))

        if intermediates_only:
            return intermediates
        if feat_idx == last_idx:
            x = self._final_norm(x)  # the final norm is sized for (and only applied to) the last stage
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Prune the stages (and the final norm / head) not needed for the given intermediates."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[:max_index + 1]
        if (prune_norm or prune_end) and getattr(self, 'norm', None) is not None:
            self.norm = nn.Identity()
        if prune_end:
            # features now end at the last kept stage; the head was sized for the last stage so it goes too
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_head_for_features()
        return take_indices


class StagedModelMixin(StagedFeaturesMixin, StagedClassifierMixin):
    """The whole contract for a stem -> stages -> [norm] -> ``ClassifierHead`` model written from scratch, whose
    stage i holds an optional ``downsample``, ``blocks`` and an optional stage ``norm``."""

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^stages\.(\d+)\.norm', (99999,)),
                (r'^norm', (99999,)),
            ],
        )
