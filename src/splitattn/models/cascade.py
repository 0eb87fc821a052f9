"""Cascade R-CNN RoI heads (Cai & Vasconcelos, 2018) on torchvision's RoI components.

Hand-written because torchvision has no Cascade R-CNN heads; sampling, RoIAlign, box coding, NMS and the
mask head are torchvision's.

Three box stages with rising IoU thresholds; each stage regresses (class-agnostic) the boxes the previous
stage produced. Training: stage 1 samples proposals (plus ground truth) as Faster R-CNN does; later stages
relabel the previous stage's refined boxes at their own IoU threshold. Inference: the final boxes are the
last stage's, scored by the mean of all stages' class probabilities on the same RoIs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference, maskrcnn_loss
from torchvision.ops import boxes as box_ops

from ..errors import ConfigError, InputError

CASCADE_IOUS = (0.5, 0.6, 0.7)
CASCADE_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


def _scale_grad(x: Tensor, scale: float) -> Tensor:
    """``x``, with its gradient multiplied by ``scale`` in backward."""
    if not torch.jit.is_scripting():
        return _ScaleGrad.apply(x, scale)
    # TorchScript cannot call an autograd.Function: the same value (x - x.detach() is exactly 0), and the
    # same gradient.
    return x.detach() + (x - x.detach()) * scale


def _stage_loss(
    logits: Tensor, deltas: Tensor, labels: list[Tensor], reg: list[Tensor]
) -> tuple[Tensor, Tensor]:
    """One stage's (classification, box regression) loss, the box loss over its positive RoIs."""
    lab = torch.cat(labels)
    tgt = torch.cat(reg)
    loss_cls = F.cross_entropy(logits, lab)
    pos = torch.where(lab > 0)[0]
    loss_box = F.smooth_l1_loss(deltas[pos], tgt[pos], beta=1 / 9, reduction="sum") / max(lab.numel(), 1)
    return loss_cls, loss_box


class AgnosticBoxPredictor(nn.Module):
    """Class scores (``num_classes`` incl. background) and one class-agnostic box delta per RoI.

    Shape:
        ``(N, in_channels) -> (N, num_classes), (N, 4)``.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


class CascadeRoIHeads(RoIHeads):
    """Cascade box heads (+ optional mask head on the last stage's boxes), torchvision's output format.

    Args:
        box_roi_pool: a :class:`~torchvision.ops.MultiScaleRoIAlign`, shared by the stages.
        box_heads: one box head per stage (e.g. TwoMLPHead or FastRCNNConvFCHead).
        box_predictors: one :class:`AgnosticBoxPredictor` per stage.
        stage_ious: foreground IoU threshold of each stage (default 0.5, 0.6, 0.7).
        stage_weights: BoxCoder weights of each stage (default (10,10,5,5), (20,20,10,10), (30,30,15,15)).
        stage_loss_weights: weight of each stage's losses.
        batch_size_per_image, positive_fraction: stage-1 RoI sampling, as in Faster R-CNN.
        score_thresh, nms_thresh, detections_per_img: inference post-processing.
        mask_roi_pool, mask_head, mask_predictor: torchvision Mask R-CNN parts (or ``None``).
    """

    # TorchScript types the attributes it cannot infer from these (as torchvision's RoIHeads does).
    __annotations__ = {
        **RoIHeads.__annotations__,
        "box_coders": list[det_utils.BoxCoder],
        "matchers": list[det_utils.Matcher],
    }
    __jit_unused_properties__ = ["num_stages"]

    def __init__(
        self,
        box_roi_pool: nn.Module,
        box_heads: Sequence[nn.Module],
        box_predictors: Sequence[nn.Module],
        stage_ious: Sequence[float] = CASCADE_IOUS,
        stage_weights: Sequence[Sequence[float]] = CASCADE_WEIGHTS,
        stage_loss_weights: Sequence[float] = (1.0, 1.0, 1.0),
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        mask_roi_pool: nn.Module | None = None,
        mask_head: nn.Module | None = None,
        mask_predictor: nn.Module | None = None,
    ) -> None:
        n = len(box_heads)
        lengths = dict(box_predictors=len(box_predictors), stage_ious=len(stage_ious),
                       stage_weights=len(stage_weights), stage_loss_weights=len(stage_loss_weights))
        if n < 1 or any(v != n for v in lengths.values()):
            raise ConfigError(
                f"a cascade needs at least one stage and one box predictor, IoU threshold (cascade_ious), "
                f"box-coder weight 4-tuple (cascade_weights) and loss weight per box head; got {n} heads "
                f"and {lengths}"
            )
        if any(not 0 < t <= 1 for t in stage_ious):
            raise ConfigError(f"cascade IoU thresholds must be within (0, 1], got {tuple(stage_ious)}")
        super().__init__(
            box_roi_pool,
            box_heads[0],
            box_predictors[0],
            stage_ious[0],
            stage_ious[0],
            batch_size_per_image,
            positive_fraction,
            tuple(stage_weights[0]),
            score_thresh,
            nms_thresh,
            detections_per_img,
            mask_roi_pool=mask_roi_pool,
            mask_head=mask_head,
            mask_predictor=mask_predictor,
        )
        # The stage-1 modules are registered again below; drop the single-stage attributes.
        del self.box_head, self.box_predictor
        self.box_heads = nn.ModuleList(box_heads)
        self.box_predictors = nn.ModuleList(box_predictors)
        self.stage_ious = tuple(float(t) for t in stage_ious)
        self.stage_loss_weights = tuple(float(w) for w in stage_loss_weights)
        self.box_coders = [det_utils.BoxCoder(tuple(float(v) for v in w)) for w in stage_weights]
        self.matchers = [det_utils.Matcher(t, t, allow_low_quality_matches=False) for t in self.stage_ious]

    @property
    def num_stages(self) -> int:
        return len(self.box_heads)

    def _label(
        self, stage: int, proposals: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Match proposals to ground truth at this stage's IoU: (labels, matched gt, regression targets)."""
        labels, matched, reg = [], [], []
        for props, t in zip(proposals, targets):
            gt_boxes, gt_labels = t["boxes"].to(props.dtype), t["labels"]
            if gt_boxes.numel() == 0:
                idx = torch.zeros(len(props), dtype=torch.int64, device=props.device)
                lab = torch.zeros(len(props), dtype=torch.int64, device=props.device)
                gt_boxes = torch.zeros((1, 4), dtype=props.dtype, device=props.device)
            else:
                m = self.matchers[stage](box_ops.box_iou(gt_boxes, props))
                idx = m.clamp(min=0)
                lab = gt_labels[idx].to(torch.int64)
                lab[m < 0] = 0
            labels.append(lab)
            matched.append(idx)
            reg.append(self.box_coders[stage].encode_single(gt_boxes[idx], props))
        return labels, matched, reg

    def _stage_features(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        x = self.box_roi_pool(features, proposals, image_shapes)
        if self.training:
            # Each stage sends gradients into the shared RoI features; scale so their sum is one stage's.
            x = _scale_grad(x, 1.0 / len(self.box_heads))
        return x

    def _decode(
        self, stage: int, deltas: Tensor, proposals: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> list[Tensor]:
        boxes = self.box_coders[stage].decode_single(deltas, torch.cat(proposals))
        out = []
        for b, shape in zip(boxes.split([len(p) for p in proposals]), image_shapes):
            out.append(box_ops.clip_boxes_to_image(b, shape))
        return out

    def _postprocess(
        self, scores: Tensor, boxes: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        out_b, out_s, out_l = [], [], []
        num_classes = scores.shape[1]
        for s, b in zip(scores.split([len(x) for x in boxes]), boxes):
            labels = torch.arange(1, num_classes, device=s.device).view(1, -1).expand(len(b), -1)
            s = s[:, 1:]
            b = b[:, None, :].expand(-1, num_classes - 1, -1)
            b, s, labels = b.reshape(-1, 4), s.reshape(-1), labels.reshape(-1)
            keep = torch.where(s > self.score_thresh)[0]
            b, s, labels = b[keep], s[keep], labels[keep]
            keep = box_ops.remove_small_boxes(b, min_size=1e-2)
            b, s, labels = b[keep], s[keep], labels[keep]
            keep = box_ops.batched_nms(b, s, labels, self.nms_thresh)[: self.detections_per_img]
            out_b.append(b[keep])
            out_s.append(s[keep])
            out_l.append(labels[keep])
        return out_b, out_s, out_l

    def _mask_forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        gt: list[dict[str, Tensor]],
        matched: list[Tensor],
        labels: list[Tensor],
        result: list[dict[str, Tensor]],
        losses: dict[str, Tensor],
    ) -> None:
        """The mask head on the last stage's boxes: adds ``masks`` to each ``result`` (eval) or ``loss_mask``
        to ``losses`` (training, on the last stage's positive RoIs matched at its IoU)."""
        mask_props: list[Tensor] = []
        pos_matched: list[Tensor] = []
        if self.training:
            for props, idx, lab in zip(proposals, matched, labels):
                pos = torch.where(lab > 0)[0]
                mask_props.append(props[pos])
                pos_matched.append(idx[pos])
        else:
            mask_props = [r["boxes"] for r in result]
        # has_mask() in a form that TorchScript reads: it drops the branch when a module is None.
        if self.mask_roi_pool is not None and self.mask_head is not None and self.mask_predictor is not None:
            x = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, mask_props, image_shapes)))
            if self.training:
                gt_masks = [t["masks"] for t in gt]
                gt_labels = [t["labels"] for t in gt]
                losses["loss_mask"] = maskrcnn_loss(x, mask_props, gt_masks, gt_labels, pos_matched)
            else:
                for prob, r in zip(maskrcnn_inference(x, [r["labels"] for r in result]), result):
                    r["masks"] = prob

    def forward(  # type: ignore[override]
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Same contract as torchvision's :meth:`RoIHeads.forward`; it scripts as torchvision's does.

        Returns:
            ``(detections, losses)``: in eval mode a list of ``{"boxes": (N, 4), "labels": (N,),
            "scores": (N,)[, "masks": (N, 1, H, W)]}``; in train mode per-stage losses
            ``loss_classifier_stage{k}``, ``loss_box_reg_stage{k}`` (and ``loss_mask``).
        """
        losses: dict[str, Tensor] = {}
        result: list[dict[str, Tensor]] = []
        gt: list[dict[str, Tensor]] = []
        labels: list[Tensor] = []
        matched: list[Tensor] = []
        reg: list[Tensor] = []
        if self.training:
            if targets is None:
                raise InputError("targets are required in training mode (or call model.eval())")
            self.check_targets(targets)
            gt = targets
            # Stage 1: ground truth added, sampled and labelled at stage_ious[0] with stage 1's box coder.
            proposals, matched, labels, reg = self.select_training_samples(proposals, targets)
        all_scores: list[Tensor] = []
        boxes = proposals
        for k, (head, predictor) in enumerate(zip(self.box_heads, self.box_predictors)):
            if k > 0:
                # Each later stage refines the boxes the previous one produced.
                proposals = boxes
                if self.training:
                    labels, matched, reg = self._label(k, proposals, gt)
            logits, deltas = predictor(head(self._stage_features(features, proposals, image_shapes)))
            if self.training:
                lc, lb = _stage_loss(logits, deltas, labels, reg)
                losses["loss_classifier_stage" + str(k + 1)] = lc * self.stage_loss_weights[k]
                losses["loss_box_reg_stage" + str(k + 1)] = lb * self.stage_loss_weights[k]
            else:
                all_scores.append(F.softmax(logits, -1))
            boxes = self._decode(k, deltas.detach(), proposals, image_shapes)
        if not self.training:
            boxes_l, scores_l, labels_l = self._postprocess(torch.stack(all_scores).mean(0), boxes)
            for b, sc, lab in zip(boxes_l, scores_l, labels_l):
                result.append({"boxes": b, "labels": lab, "scores": sc})
        if self.has_mask():
            self._mask_forward(features, proposals, image_shapes, gt, matched, labels, result, losses)
        return result, losses

__all__ = ["CascadeRoIHeads", "AgnosticBoxPredictor", "CASCADE_IOUS", "CASCADE_WEIGHTS"]
