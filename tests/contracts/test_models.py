"""Contract tests over the model registry, plus the U-Net's memory model against nnU-Net's."""

from __future__ import annotations

import pytest
import torch

from medseg.models import build_model, list_models
from medseg.models.unet import architecture_for_patch, feature_map_size
from tests.conftest import require_peer, run_cli

TINY = {2: ((1.0, 1.0), (32, 32)), 3: ((2.0, 1.0, 1.0), (8, 32, 32))}
FAMILIES = [(family.name, ndim) for family in list_models() if family.task_type == "segmentation" for ndim in family.dims]
CLASSIFIERS = [family.name for family in list_models() if family.task_type == "classification"]


@pytest.mark.parametrize(("name", "ndim"), FAMILIES)
def test_model_contract(name, ndim):
    from medseg.models import get_model_family

    family = get_model_family(name)
    spacing, patch = TINY[ndim]
    kwargs, topology = family.architecture_for_patch(spacing, patch, base_features=4)
    architecture = {"name": name, "kwargs": kwargs}
    torch.manual_seed(0)
    network = build_model(architecture, in_channels=2, num_classes=3, deep_supervision=True)
    x = torch.randn(2, 2, *topology.patch_size)
    outputs = network(x)
    assert isinstance(outputs, list) and outputs[0].shape == (2, 3, *topology.patch_size)
    assert all(o.shape[:2] == (2, 3) for o in outputs)
    loss = sum(o.float().pow(2).mean() for o in outputs)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in network.parameters() if p.requires_grad)
    # deterministic construction and inference
    torch.manual_seed(0)
    twin = build_model(architecture, in_channels=2, num_classes=3, deep_supervision=False).eval()
    network.eval()
    with torch.no_grad():
        assert torch.allclose(twin(x), network(x)[0], atol=1e-6)
        assert torch.equal(twin(x), twin(x))


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_contract(name):
    """Every classification family: (B, C, H, W) -> (B, K) logits, finite gradients, deterministic in eval mode."""
    from medseg.models import get_model_family

    vit = "patch" in get_model_family(name).options
    kwargs = {"patch": 8, "width": 32, "depth": 2, "heads": 2} if vit else {"width": 8}
    architecture = {"name": name, "kwargs": {"input_size": [32, 32], **kwargs}}
    torch.manual_seed(0)
    network = build_model(architecture, in_channels=3, num_classes=5)
    torch.manual_seed(0)
    twin = build_model(architecture, in_channels=3, num_classes=5).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():  # deterministic construction and inference (before training moves any norm statistics)
        assert torch.allclose(twin(x), network.eval()(x), atol=1e-6) and torch.equal(twin(x), twin(x))
    logits = network.train()(x)
    assert logits.shape == (4, 5)
    logits.pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in network.parameters() if p.requires_grad)
    network.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(network(x * 50).float()).all()
    if vit:
        with pytest.raises(ValueError, match="patch grid"):
            network(torch.randn(1, 3, 48, 48))
    with pytest.raises((ValueError, TypeError)):
        build_model({"name": name, "kwargs": {**architecture["kwargs"], "no_such_setting": 1}}, 3, 5)


def test_vit_layer_ids_and_position_embedding_resize():
    from medseg.models.vit import resize_position_embedding

    network = build_model({"name": "vit", "kwargs": {"input_size": [32, 32], "patch": 8, "width": 16, "depth": 3, "heads": 2}}, 1, 2)
    ids = {name: network.layer_id(name) for name, _ in network.named_parameters()}
    assert ids["pos_embed"] == 0 and ids["patch_embed.weight"] == 0 and ids["blocks.2.mlp.0.weight"] == 3 and ids["head.weight"] == 4
    resized = resize_position_embedding(network.pos_embed.detach(), [8, 8])
    assert resized.shape == (1, 65, 16) and torch.equal(resized[:, 0], network.pos_embed[:, 0].detach())
    assert torch.equal(resize_position_embedding(network.pos_embed.detach(), [4, 4]), network.pos_embed.detach())


def test_models_command_lists_families():
    listing = run_cli("models", check=True).stdout
    assert "unet" in listing and "segmentation" in listing and "2D/3D" in listing


def _nnunet_layers(ndim: int) -> dict:
    """The layer choices nnU-Net's planners give dynamic_network_architectures' U-Nets."""
    return {
        "conv_op": torch.nn.Conv2d if ndim == 2 else torch.nn.Conv3d, "conv_bias": True,
        "norm_op": torch.nn.InstanceNorm2d if ndim == 2 else torch.nn.InstanceNorm3d, "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "nonlin": torch.nn.LeakyReLU, "nonlin_kwargs": {"inplace": True},
    }


@pytest.mark.parametrize(("spacing", "patch"), [((5.0, 0.8, 0.8), (24, 160, 192)), ((1.0, 1.0), (256, 320)), ((1.0, 1.0, 1.0), (96, 96, 96))])
def test_unet_memory_model_equals_nnunet(spacing, patch):
    require_peer("dynamic_network_architectures")
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    kwargs, topology = architecture_for_patch(spacing, patch)
    ndim = len(spacing)
    theirs = PlainConvUNet(
        input_channels=1, n_stages=len(kwargs["strides"]), features_per_stage=kwargs["features_per_stage"],
        kernel_sizes=kwargs["kernel_sizes"], strides=kwargs["strides"],
        n_conv_per_stage=kwargs["n_conv_per_stage"], num_classes=3, n_conv_per_stage_decoder=kwargs["n_conv_per_stage_decoder"],
        **_nnunet_layers(ndim),
    )
    assert feature_map_size(topology.patch_size, 1, 3, kwargs) == int(theirs.compute_conv_feature_map_size(topology.patch_size))
    ours = build_model({"name": "unet", "kwargs": kwargs}, 1, 3)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


@pytest.mark.parametrize(("spacing", "patch"), [((5.0, 0.8, 0.8), (24, 160, 192)), ((1.0, 1.0), (256, 320)), ((1.0, 1.0, 1.0), (96, 96, 96))])
def test_resenc_memory_model_equals_nnunet(spacing, patch):
    """The ResEnc planner's activation count and the network's size equal dynamic_network_architectures'
    ResidualEncoderUNet (the network nnU-Net's ResEnc planners size)."""
    require_peer("dynamic_network_architectures")
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    from medseg.models import resenc_unet

    kwargs, topology = resenc_unet.architecture_for_patch(spacing, patch)
    ndim = len(spacing)
    theirs = ResidualEncoderUNet(
        input_channels=1, n_stages=len(kwargs["strides"]), features_per_stage=kwargs["features_per_stage"],
        kernel_sizes=kwargs["kernel_sizes"], strides=kwargs["strides"],
        n_blocks_per_stage=kwargs["n_blocks_per_stage"], num_classes=3, n_conv_per_stage_decoder=kwargs["n_conv_per_stage_decoder"],
        **_nnunet_layers(ndim),
    )
    assert resenc_unet.feature_map_size(topology.patch_size, 1, 3, kwargs) == int(theirs.compute_conv_feature_map_size(topology.patch_size))
    ours = build_model({"name": "resenc_unet", "kwargs": kwargs}, 1, 3)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


@pytest.mark.parametrize(("name", "ndim"), FAMILIES)
def test_autocast_training_step_has_no_nan(name, ndim):
    """bf16 autocast (CPU; fp16/bf16 on GPU alike): the mixers keep their recurrences in float32."""
    from medseg.models import get_model_family

    spacing, patch = TINY[ndim]
    kwargs, topology = get_model_family(name).architecture_for_patch(spacing, patch, base_features=4)
    torch.manual_seed(0)
    network = build_model({"name": name, "kwargs": kwargs}, in_channels=1, num_classes=2, deep_supervision=True)
    optimizer = torch.optim.AdamW(network.parameters(), 1e-3)
    x = torch.randn(2, 1, *topology.patch_size) * 50  # large activations, as unnormalised scans give
    for _ in range(2):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = network(x)
            loss = sum(o.float().pow(2).mean() for o in outputs)
        assert torch.isfinite(loss)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in network.parameters() if p.grad is not None)
        optimizer.step()


@pytest.mark.parametrize("ndim", [2, 3])
def test_vil_backward_direction_scans_the_reversed_sequence(ndim):
    """A backward ViL layer equals the forward layer (same weights) on the reversed positions."""
    from medseg.models.vil_layer import ViLLayer

    torch.manual_seed(0)
    forward = ViLLayer(8, ndim, heads=2, direction="forward")
    backward = ViLLayer(8, ndim, heads=2, direction="backward")
    backward.load_state_dict(forward.state_dict())
    shape = (2, 8, 5, 6) if ndim == 2 else (2, 8, 3, 4, 5)
    x = torch.randn(shape)
    flat = lambda t: t.flatten(2)  # noqa: E731
    reversed_input = flat(x).flip(-1).reshape(shape)
    expected = flat(forward(reversed_input)).flip(-1)
    assert torch.allclose(flat(backward(x)), expected, atol=1e-5)
    assert not torch.allclose(flat(backward(x)), flat(forward(x)), atol=1e-3)  # the direction matters


@pytest.mark.parametrize("conv", ["causal1d", "map"])
def test_vil_axis_order_scans_the_map_with_that_axis_fastest(conv):
    """An axis0 ViL layer on a 3D map equals the forward layer (same weights) on the map with axis 0
    moved last, for both short convolutions; the backward variant reverses that."""
    from medseg.models.vil_layer import ViLLayer

    torch.manual_seed(0)
    x = torch.randn(2, 8, 3, 4, 5)
    moved = x.movedim(2, -1).contiguous()  # (B, C, 4, 5, 3): slices run fastest
    for name, reverse in (("axis0", False), ("axis0_backward", True)):
        layer = ViLLayer(8, 3, heads=2, conv=conv, direction=name)
        forward = ViLLayer(8, 3, heads=2, conv=conv, direction="forward")
        forward.load_state_dict(layer.state_dict())
        if conv == "map":  # the reference's map convolution sees the moved (and reversed) map
            with torch.no_grad():
                kernel = layer.conv.weight.movedim(2, -1)
                forward.conv.weight.copy_(kernel.flip(2, 3, 4) if reverse else kernel)
        flip = lambda t: t.flatten(2).flip(-1).reshape(t.shape)  # noqa: E731
        expected = flip(forward(flip(moved))) if reverse else forward(moved)
        assert torch.allclose(layer(x), expected.movedim(-1, 2), atol=1e-5), name
    with pytest.raises(ValueError, match="unknown scan order"):
        ViLLayer(8, 3, direction="sideways")


def test_vil_direction_cycles():
    from medseg.models.xlstm_unet import direction

    assert [direction(i, "alternate", 3) for i in range(3)] == ["forward", "backward", "forward"]
    assert [direction(i, "forward", 3) for i in range(2)] == ["forward", "forward"]
    assert [direction(i, "axes", 3) for i in range(7)] == [
        "axis2", "axis2_backward", "axis1", "axis1_backward", "axis0", "axis0_backward", "axis2",
    ]
    assert [direction(i, "axes", 2) for i in range(4)] == ["axis1", "axis1_backward", "axis0", "axis0_backward"]
    with pytest.raises(ValueError, match="vil_directions"):
        direction(0, "zigzag", 3)


@pytest.mark.parametrize("name", ["xlstm_unet_bot", "xlstm_unet_enc"])
def test_xlstm_unet_options(name):
    """ViL v2's map convolution and the published forward-only traversal build and run in 2D and 3D."""
    from medseg.models import get_model_family

    for ndim in (2, 3):
        spacing, patch = TINY[ndim]
        kwargs, topology = get_model_family(name).architecture_for_patch(spacing, patch, base_features=4)
        for options in ({"vil_conv": "map"}, {"vil_directions": "axes"}, {"vil_directions": "forward"}):
            network = build_model({"name": name, "kwargs": {**kwargs, **options}}, 1, 2)
            assert network(torch.randn(1, 1, *topology.patch_size)).shape == (1, 2, *topology.patch_size)
        layers = [m for m in network.modules() if type(m).__name__ == "ViLLayer"]
        assert layers and all(layer.direction == "forward" for layer in layers)


def test_model_specs_parse_and_check_options():
    from medseg.errors import MedsegError
    from medseg.models.spec import parse_model_spec, parse_model_specs

    spec = parse_model_spec("xlstm_unet_bot[vil_directions=forward, vil_blocks=3]")
    assert spec.family == "xlstm_unet_bot" and spec.options == {"vil_directions": "forward", "vil_blocks": 3}
    assert str(spec) == "xlstm_unet_bot[vil_blocks=3,vil_directions=forward]"
    assert spec.plans_suffix == "xlstm_unet_bot-vil_blocks-3-vil_directions-forward"
    assert parse_model_spec("xlstm_unet_enc[vil_stages=[2,3]]").options == {"vil_stages": [2, 3]}
    assert parse_model_spec(" unet ").options == {} and str(parse_model_spec("unet")) == "unet"
    specs = parse_model_specs("unet,xlstm_unet_bot[vil_directions=axes,vil_conv=map],umamba_bot[mamba_state=8]")
    assert [str(s) for s in specs] == ["unet", "xlstm_unet_bot[vil_conv=map,vil_directions=axes]", "umamba_bot[mamba_state=8]"]
    for bad, message in [
        ("unet[vil_blocks=2]", "unet has no option 'vil_blocks' \\(its options: none\\)"),
        ("xlstm_unet_bot[depth=2]", "its options: vil_heads"),
        ("xlstm_unet_bot[vil_blocks]", "not key=value"),
        ("xlstm_unet_bot[vil_blocks=1,vil_blocks=2]", "given twice"),
        ("xlstm_unet_bot[vil_blocks=1", "expected FAMILY"),
        ("resnet", "unknown model 'resnet'"),
    ]:
        with pytest.raises(MedsegError, match=message):
            parse_model_spec(bad)
    with pytest.raises(MedsegError, match="listed twice"):
        parse_model_specs("unet,xlstm_unet_bot[vil_blocks=1],xlstm_unet_bot[vil_blocks=1]")


@pytest.mark.parametrize(("name", "ndim"), FAMILIES)
def test_every_family_is_checked_on_the_meta_device_before_it_is_built(name, ndim, tmp_path):
    """Model folders are loaded through build_checked: the network is first built on the meta device
    (no memory) and compared with the checkpoint, so every family must build there with the real shapes."""
    from medseg.errors import MedsegError
    from medseg.models import get_model_family
    from medseg.models.loading import build_checked

    spacing, patch = TINY[ndim]
    kwargs, _ = get_model_family(name).architecture_for_patch(spacing, patch, base_features=4)
    architecture = {"name": name, "kwargs": kwargs}
    state = build_model(architecture, in_channels=1, num_classes=3).state_dict()
    loaded = build_checked(architecture, 1, 3, state, tmp_path / "plans.json", tmp_path / "checkpoint.pt")
    assert all(torch.equal(loaded.state_dict()[key], value) for key, value in state.items())
    with pytest.raises(MedsegError, match="checkpoint.pt: does not fit the network in .*plans.json"):
        build_checked(architecture, 1, 4, state, tmp_path / "plans.json", tmp_path / "checkpoint.pt")  # one class more
    huge = {"name": name, "kwargs": {**kwargs, "features_per_stage": [100000] * len(kwargs["features_per_stage"])}}
    with pytest.raises(MedsegError, match=r"is \[.*\] in the checkpoint"):
        build_checked(huge, 1, 3, state, tmp_path / "plans.json", tmp_path / "checkpoint.pt")  # refused before allocating
