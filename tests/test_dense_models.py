"""Detection / segmentation models: backbone (a FeatureDictNet), norm conversion, the four detectors, the
cascade, DeepLabV3."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

import splitattn
from splitattn.data import CocoDetection, DetectionTransform, detection_collate, make_shapes_coco
from splitattn.errors import ConfigError, InputError
from splitattn.layers import SplitAttn
from splitattn.layers.norm import convert_norm, get_head_norm, get_norm_layer, group_norm, norm_name
from splitattn.models import (
    CascadeRoIHeads,
    FeatureDictNet,
    ResNeStBackbone,
    ResNeStFPN,
    build_resnest_backbone,
    create_detection_model,
    create_segmentation_model,
    segmentation_loss,
)

SMALL = dict(
    min_size=64,
    max_size=96,
    fpn_channels=32,
    representation_size=64,
    rpn_pre_nms_top_n_train=100,
    rpn_post_nms_top_n_train=50,
    rpn_pre_nms_top_n_test=100,
    rpn_post_nms_top_n_test=30,
    box_batch_size_per_image=32,
    rpn_batch_size_per_image=64,
)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    ann = make_shapes_coco(root, "train", num_images=4, size=64, seed=1, crowd_every=2)
    return CocoDetection(root / "train2017", ann, DetectionTransform(train=False), masks=True)


def test_backbone_output_shape_freeze_and_norms():
    torch.manual_seed(0)
    body = build_resnest_backbone("resnest14d", norm="frozenbn", freeze_at=2)
    shapes = body.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "res2": (256, 4),
        "res3": (512, 8),
        "res4": (1024, 16),
        "res5": (2048, 32),
    }
    feats = body(torch.rand(1, 3, 64, 96))
    for k, f in feats.items():
        assert f.shape == (1, shapes[k].channels, 64 // shapes[k].stride, 96 // shapes[k].stride)
    assert not any(p.requires_grad for p in body.conv1.parameters())
    assert not any(p.requires_grad for p in body.layer1.parameters())
    assert all(p.requires_grad for p in body.layer2.parameters())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in body.modules())

    gn = build_resnest_backbone("resnest14d", norm="groupnorm", freeze_at=0)
    assert any(isinstance(m, torch.nn.GroupNorm) for m in gn.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in gn.modules())
    # The pooled attention vector gets one-group GroupNorm, as in create_model(norm_layer="groupnorm").
    attn_norms = [m.bn1 for m in gn.modules() if isinstance(m, SplitAttn)]
    assert attn_norms and all(isinstance(n, torch.nn.GroupNorm) and n.num_groups == 1 for n in attn_norms)
    # Every norm matches the classifier built with GroupNorm, layer by layer.
    ref = splitattn.create_model("resnest14d", norm_layer="groupnorm")

    def norms(m: torch.nn.Module) -> dict[str, tuple[int, int]]:
        return {k: (v.num_groups, v.num_channels) for k, v in m.named_modules()
                if isinstance(v, torch.nn.GroupNorm)}

    assert norms(gn) == norms(ref)
    sync = build_resnest_backbone("resnest14d", norm="syncbn", freeze_at=1)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in sync.modules())

    dil = build_resnest_backbone(
        "resnest14d", output_stride=8, out_features=("res4", "res5"), norm="batchnorm"
    )
    assert {k: v.stride for k, v in dil.output_shape().items()} == {"res4": 8, "res5": 8}
    assert dil(torch.rand(2, 3, 64, 64))["res5"].shape == (2, 2048, 8, 8)

    fpn = ResNeStFPN(gn, 32)
    out = fpn(torch.rand(1, 3, 64, 64))
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert [o.shape[-1] for o in out.values()] == [16, 8, 4, 2, 1]
    with pytest.raises(ValueError, match="freeze_at"):
        build_resnest_backbone("resnest14d", freeze_at=7)
    with pytest.raises(ValueError, match="unknown norm"):
        build_resnest_backbone("resnest14d", norm="layernorm")


@pytest.mark.parametrize(
    "name", ["faster_rcnn_fpn", "cascade_rcnn_fpn", "mask_rcnn_fpn", "cascade_mask_rcnn_fpn"]
)
def test_detector_train_and_eval_on_synthetic_coco(name, shapes):
    torch.manual_seed(0)
    model = create_detection_model(
        name,
        "resnest14d",
        num_classes=shapes.num_classes,
        backbone_norm="groupnorm",
        freeze_at=0,
        box_head="4conv1fc" if "cascade" in name else "2fc",
        head_norm="groupnorm",
        **SMALL,
    )
    images, targets, _ = detection_collate([shapes[0], shapes[1]])
    assert targets[0]["masks"].shape[0] == targets[0]["boxes"].shape[0] > 0
    model.train()
    losses = model(images, targets)
    expected = {"loss_objectness", "loss_rpn_box_reg"}
    if "cascade" in name:
        expected |= {f"loss_{k}_stage{s}" for k in ("classifier", "box_reg") for s in (1, 2, 3)}
    else:
        expected |= {"loss_classifier", "loss_box_reg"}
    if "mask" in name:
        expected.add("loss_mask")
    assert set(losses) == expected
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.body.layer4[0].conv1.weight.grad is not None

    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for o, im in zip(out, images):
        n = o["boxes"].shape[0]
        assert o["boxes"].shape == (n, 4) and o["scores"].shape == (n,) and o["labels"].dtype == torch.int64
        if n:
            assert int(o["labels"].min()) >= 1 and int(o["labels"].max()) < shapes.num_classes
            assert (
                float(o["boxes"][:, 2].max()) <= im.shape[-1]
                and float(o["boxes"][:, 3].max()) <= im.shape[-2]
            )
            assert float(o["scores"].min()) > 0 and float(o["scores"].max()) <= 1
        if "mask" in name:
            assert o["masks"].shape == (n, 1, *im.shape[-2:])
            if n:
                assert float(o["masks"].min()) >= 0 and float(o["masks"].max()) <= 1


def test_cascade_stage_config_and_refinement():
    torch.manual_seed(0)
    model = create_detection_model(
        "cascade_rcnn_fpn", "resnest14d", num_classes=3, backbone_norm="groupnorm", **SMALL
    )
    heads = model.roi_heads
    assert isinstance(heads, CascadeRoIHeads) and heads.num_stages == 3
    assert heads.stage_ious == (0.5, 0.6, 0.7)
    assert [c.weights for c in heads.box_coders] == [(10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15)]
    assert [m.high_threshold for m in heads.matchers] == [0.5, 0.6, 0.7]
    assert all(p.bbox_pred.out_features == 4 for p in heads.box_predictors)  # class-agnostic
    assert len({id(h) for h in heads.box_heads}) == 3

    # A proposal at IoU 0.65 with the ground truth is foreground for stages 1-2 and background for stage 3.
    gt = torch.tensor([[0.0, 0.0, 20.0, 20.0]])
    prop = torch.tensor([[0.0, 0.0, 20.0, 13.0]])  # IoU = 13 / 20 = 0.65
    tgt = [{"boxes": gt, "labels": torch.tensor([2])}]
    labels = [heads._label(k, [prop], tgt)[0][0].item() for k in range(3)]
    assert labels == [2, 2, 0]
    # Regression targets are encoded with each stage's weights: stage 3's are 3x stage 1's.
    r1 = heads._label(0, [prop], tgt)[2][0]
    r3 = heads._label(2, [prop], tgt)[2][0]
    torch.testing.assert_close(r3, 3 * r1)

    # Each stage refines the previous stage's boxes; at inference the scores are the stages' mean.
    feats = {str(i): torch.rand(1, 32, 16 // 2**i, 16 // 2**i) for i in range(4)}
    calls = []
    for k, pred in enumerate(heads.box_predictors):
        pred.register_forward_hook(lambda m, i, o, k=k: calls.append((k, o[0].softmax(-1))))
    heads.eval()
    with torch.no_grad():
        for p in heads.box_predictors:
            p.bbox_pred.bias.copy_(torch.tensor([0.0, 0.0, 0.1, 0.0]))  # grow width every stage
        rois = [torch.tensor([[10.0, 10.0, 30.0, 30.0]])]
        seen = []
        heads.box_roi_pool.register_forward_pre_hook(lambda m, args: seen.append(args[1][0].clone()))
        res, _ = heads(feats, rois, [(64, 64)])
    widths = [float(b[0, 2] - b[0, 0]) for b in seen]
    assert widths[0] == pytest.approx(20) and widths[1] > widths[0] and widths[2] > widths[1]
    mean_scores = torch.stack([c[1] for c in calls]).mean(0)[0, 1:]
    assert float(res[0]["scores"].max()) == pytest.approx(float(mean_scores.max()), rel=1e-5)


def test_classification_checkpoint_loads_into_every_detector_backbone(tmp_path):
    torch.manual_seed(0)
    clf = splitattn.create_model("resnest14d", num_classes=10)
    for m in clf.modules():  # non-trivial BN statistics, to see them survive the FrozenBN conversion
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    path = splitattn.save_weights(clf, tmp_path / "clf.safetensors")
    ref = clf.state_dict()
    for name in ["faster_rcnn_fpn", "cascade_rcnn_fpn", "mask_rcnn_fpn", "cascade_mask_rcnn_fpn"]:
        det = create_detection_model(name, "resnest14d", num_classes=3, pretrained_backbone=path, **SMALL)
        body = det.backbone.body.state_dict()
        for key in ("conv1.0.weight", "layer3.0.conv2.conv.weight", "layer4.0.bn3.running_var", "bn1.weight"):
            torch.testing.assert_close(body[key], ref[key])
    # An official-style .pth (a plain state dict) loads too.
    torch.save(ref, tmp_path / "official.pth")
    det = create_detection_model(
        "faster_rcnn_fpn", "resnest14d", num_classes=3, pretrained_backbone=tmp_path / "official.pth", **SMALL
    )
    torch.testing.assert_close(
        det.backbone.body.state_dict()["layer2.0.conv1.weight"], ref["layer2.0.conv1.weight"]
    )
    with pytest.raises(Exception, match="architecture differs"):
        create_detection_model(
            "faster_rcnn_fpn", "resnest26d", num_classes=3, pretrained_backbone=path, **SMALL
        )


def test_deeplabv3_outputs_and_dilation():
    torch.manual_seed(0)
    model = create_segmentation_model(
        "deeplabv3", "resnest14d", num_classes=5, output_stride=8, aux_loss=True
    )
    assert model.backbone.body.output_shape()["res5"].stride == 8
    model.train()
    out = model(torch.rand(2, 3, 64, 80))
    assert set(out) == {"out", "aux"} and out["out"].shape == (2, 5, 64, 80) == out["aux"].shape
    model.eval()
    noaux = create_segmentation_model("deeplabv3", "resnest14d", num_classes=3, aux_loss=False).eval()
    with torch.no_grad():
        assert set(noaux(torch.rand(1, 3, 64, 64))) == {"out"}
    with pytest.raises(ValueError, match="unknown segmentation model"):
        create_segmentation_model("pspnet")


def _randomise_bn_stats(model: torch.nn.Module) -> torch.nn.Module:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
    return model


def test_detection_backbone_is_the_features_only_extractor(tmp_path):
    """Same weights -> the same maps from build_resnest_backbone and create_model(features_only=True)."""
    torch.manual_seed(0)
    path = splitattn.save_weights(
        _randomise_bn_stats(splitattn.create_model("resnest14d", num_classes=4)), tmp_path / "c.safetensors"
    )
    feats = splitattn.create_model("resnest14d", pretrained=path, features_only=True,
                                   out_indices=(0, 1, 2, 3, 4)).eval()
    body = build_resnest_backbone("resnest14d", pretrained=path, norm="batchnorm", freeze_at=0,
                                  out_features=("stem", "res2", "res3", "res4", "res5")).eval()
    assert isinstance(body, FeatureDictNet) and isinstance(feats, FeatureDictNet)
    assert body.state_dict().keys() == feats.state_dict().keys()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        got, ref = body(x), feats(x)
        assert list(got) == ["stem", "res2", "res3", "res4", "res5"]
        assert all(torch.equal(a, b) for a, b in zip(got.values(), ref, strict=True))
        # FrozenBatchNorm keeps the loaded statistics: the same function as BatchNorm in eval mode.
        frozen = build_resnest_backbone("resnest14d", pretrained=path, norm="frozenbn", freeze_at=5,
                                        out_features=("res3", "res5"))
        for k, v in frozen.train()(x).items():
            torch.testing.assert_close(v, got[k], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("freeze_at", range(6))
def test_freeze_at_semantics(freeze_at):
    torch.manual_seed(0)
    body = build_resnest_backbone("resnest14d", norm="batchnorm", freeze_at=freeze_at)
    parts = [("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",)]
    for i, names in enumerate(parts):
        mods = [getattr(body, n) for n in names]
        params = [p for m in mods for p in m.parameters()]
        kinds = {type(m) for mod in mods for m in mod.modules()}
        frozen = i < freeze_at
        assert params and all(p.requires_grad != frozen for p in params), (i, names)
        assert (FrozenBatchNorm2d in kinds) == frozen and (torch.nn.BatchNorm2d in kinds) != frozen, names
    assert body.freeze_at == freeze_at
    x = torch.rand(2, 3, 64, 64)
    loss = sum(v.mean() for v in body.train()(x).values())
    assert loss.requires_grad == (freeze_at < 5)
    if freeze_at < 5:
        loss.backward()
        assert all((p.grad is not None) == p.requires_grad for p in body.parameters())
    # A training batch of 1 needs batch statistics only while some BatchNorm is left unfrozen.
    if freeze_at == 5:
        assert body(x[:1])["res5"].shape == (1, 2048, 2, 2)
    else:
        with pytest.raises(ValueError, match="batch of 1"):
            body(x[:1])
    with pytest.raises(ConfigError, match="freeze_at"):
        body.freeze(6)


def test_one_norm_table_for_layers_heads_and_conversion():
    spellings = {
        "batchnorm": ("BN", "batch_norm2d", "BatchNorm2d"),
        "groupnorm": ("gn", "GroupNorm"),
        "frozenbn": ("FrozenBatchNorm2d", "frozen"),
        "syncbn": ("SyncBatchNorm", "sync_bn"),
    }
    for key, names in spellings.items():
        assert {norm_name(n) for n in names} == {key}
    assert get_norm_layer("gn") is group_norm and get_norm_layer(None) is torch.nn.BatchNorm2d
    assert get_norm_layer("frozen") is FrozenBatchNorm2d
    assert get_head_norm(None) is None and get_head_norm("none") is None
    assert get_head_norm("sync_bn") is torch.nn.SyncBatchNorm
    with pytest.raises(ConfigError, match="heads are trained from scratch"):
        get_head_norm("frozenbn")
    # One message, listing the valid names, wherever a norm name is read.
    for call in (lambda: get_norm_layer("layernorm"), lambda: get_head_norm("layernorm"),
                 lambda: convert_norm(torch.nn.BatchNorm2d(4), "layernorm"),
                 lambda: splitattn.create_model("resnest14d", norm_layer="layernorm"),
                 lambda: create_segmentation_model("deeplabv3", "resnest14d", 3, norm="layernorm"),
                 lambda: create_detection_model("faster_rcnn_fpn", "resnest14d", num_classes=3,
                                                fpn_norm="layernorm")):
        with pytest.raises(ConfigError, match=r"unknown norm 'layernorm'; choose one of batchnorm, syncbn, "
                                              r"frozenbn, groupnorm"):
            call()

    torch.manual_seed(0)
    bn = _randomise_bn_stats(torch.nn.Sequential(torch.nn.BatchNorm2d(64))).eval()[0]
    x = torch.randn(2, 64, 3, 3)
    frozen = convert_norm(bn, "frozen")
    assert type(frozen) is FrozenBatchNorm2d
    torch.testing.assert_close(frozen(x), bn(x))
    sync = convert_norm(bn, "syncbn")  # SyncBatchNorm needs a process group to run: compare its state
    assert type(sync) is torch.nn.SyncBatchNorm and not sync.training
    assert all(torch.equal(a, b) for a, b in zip(sync.state_dict().values(), bn.state_dict().values()))
    gn = convert_norm(bn, "gn")
    assert (gn.num_groups, gn.num_channels) == (32, 64) and torch.equal(gn.weight, bn.weight)
    assert convert_norm(bn, "batchnorm") is bn
    # The split-attention pooled vector gets one group; the rest of the block the usual groups.
    block = splitattn.create_model("resnest14d").layer1[0]
    convert_norm(block, "groupnorm")
    assert block.conv2.bn1.num_groups == 1 and block.conv2.bn0.num_groups == 32 and block.bn1.num_groups == 32


def test_dense_model_argument_errors():
    with pytest.raises(ConfigError, match="num_classes counts the background class and must be >= 2, got 1"):
        create_detection_model("faster_rcnn_fpn", "resnest14d", num_classes=1)
    with pytest.raises(ConfigError, match="num_classes must be >= 2, got 1"):
        create_segmentation_model("deeplabv3", "resnest14d", num_classes=1)
    with pytest.raises(ConfigError, match=r"unknown detection model 'yolo'; choose one of \('faster_rcnn"):
        create_detection_model("yolo", "resnest14d", num_classes=3)
    with pytest.raises(ConfigError, match="unknown box_head '3fc'"):
        create_detection_model("faster_rcnn_fpn", "resnest14d", num_classes=3, box_head="3fc")
    with pytest.raises(ConfigError, match=r"out_features must be a non-empty subset .* got \('res6',\)"):
        build_resnest_backbone("resnest14d", out_features=("res6",))
    with pytest.raises(ConfigError, match="freeze_at must be an integer within 0..5"):
        create_segmentation_model("deeplabv3", "resnest14d", num_classes=3, freeze_at=-1)
    with pytest.raises(ConfigError, match=r"backbone_kwargs may not set \['output_stride'\]"):
        create_segmentation_model("deeplabv3", "resnest14d", 3, backbone_kwargs={"output_stride": 16})
    with pytest.raises(ConfigError, match="not norm_layer"):
        build_resnest_backbone("resnest14d", norm_layer="groupnorm")
    with pytest.raises(ConfigError, match="cascade_weights"):
        create_detection_model("cascade_rcnn_fpn", "resnest14d", num_classes=3, backbone_norm="groupnorm",
                               cascade_ious=(0.5, 0.6), **SMALL)
    with pytest.raises(ConfigError, match="at least one of res2..res5"):
        ResNeStFPN(ResNeStBackbone(splitattn.create_model("resnest14d"), out_features=("stem",)))
    with pytest.raises(InputError, match=r"target must be an integer \(B, H, W\) class map .*\(2, 3, 8, 8\)"):
        segmentation_loss({"out": torch.zeros(2, 3, 8, 8)}, torch.zeros(2, 8, 8))
    losses = segmentation_loss({"out": torch.zeros(2, 3, 8, 8), "aux": torch.zeros(2, 3, 8, 8)},
                               torch.zeros(2, 8, 8, dtype=torch.long))
    torch.testing.assert_close(losses["loss_seg"], torch.log(torch.tensor(3.0)))
    torch.testing.assert_close(losses["loss_aux"], 0.4 * torch.log(torch.tensor(3.0)))
