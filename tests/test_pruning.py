import copy

import pytest
import torch
from torch import nn

import prune as prune_script
import test as test_script
import train
from data.shapes import SHAPE_CLASSES
from layers.blocks import ConvBNReLU
from models.build import build_model
from models.counting import count_flops, count_parameters
from models.pruning import (
    ChannelGroup,
    PruningError,
    Reader,
    apply_channel_widths,
    channel_groups,
    global_threshold,
    prunable_norm_names,
    prune_channels,
    select_channels,
    zero_pruned_channels,
)
from tests.conftest import REPO_ROOT, TINY_MODEL, randomise_batchnorm, tiny_train_overrides
from utils.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from utils.config import ConfigError, load_config

ARCHITECTURES = [
    (None, TINY_MODEL, 96),
    ("fssd300_resnet50_voc.yaml", ["model.backbone=resnet18", "model.width_multiplier=0.125"], 288),
    ("ssdlite320_mobilenetv2_voc.yaml", ["model.width_multiplier=0.25"], 320),
    ("ssd300_resnet50_voc.yaml", ["model.width_multiplier=0.125"], 300),
    ("ssd300_vgg16_voc.yaml", ["model.width_multiplier=0.125", "model.batch_norm=true"], 300),
    (
        "ssd300_efficientnet_b3_voc.yaml",
        [
            "model.width_multiplier=0.125",
            "model.architecture=fssd",
            "model.extras=[[256, 512, 3, 2, 1]]",
        ],
        300,
    ),
]
ARCHITECTURE_IDS = [
    "fssd_vgg16_bn",
    "fssd_resnet18",
    "ssdlite_mobilenetv2",
    "ssd_resnet50",
    "ssd_vgg16_bn_l2norm",
    "fssd_efficientnet_b3",
]


def build(config_name, overrides, size, **kwargs):
    path = REPO_ROOT / "configs" / config_name if config_name else None
    return build_model(load_config(path, [*overrides, f"model.image_size={size}"]), **kwargs)


def outputs(model, images):
    with torch.no_grad():
        return model(images)


def assert_same_outputs(actual, expected):
    for got, want in zip(actual, expected, strict=True):
        tolerance = 1e-5 * float(want.abs().max())
        torch.testing.assert_close(got, want, rtol=1e-4, atol=tolerance)


@pytest.mark.parametrize("config_name, overrides, size", ARCHITECTURES, ids=ARCHITECTURE_IDS)
def test_pruned_model_equals_the_zeroed_model(config_name, overrides, size):
    """Zero the scale and shift of the channels to prune: they then carry zeros, so
    removing them must not change the outputs. Wrong surgery (a wrong concat offset,
    a reader left unsliced, a depthwise conv out of step) would."""
    model = build(config_name, overrides, size)
    randomise_batchnorm(model)
    model.eval()
    images = torch.rand(2, 3, size, size) * 255
    groups = channel_groups(model)
    keep = select_channels(groups, 0.5)
    unpruned_outputs = outputs(model, images)
    zero_pruned_channels(groups, keep)
    zeroed_outputs = outputs(model, images)
    # The pruned channels mattered before they were zeroed.
    assert not torch.allclose(unpruned_outputs[1], zeroed_outputs[1], rtol=1e-3, atol=1e-3)
    params_before = count_parameters(model)
    widths_before = sum(group.width for group in groups)

    widths = prune_channels(groups, keep)

    assert widths == {name: int(indices.numel()) for name, indices in keep.items()}
    assert sum(widths.values()) < 0.6 * widths_before
    assert count_parameters(model) < params_before
    assert_same_outputs(outputs(model, images), zeroed_outputs)


@pytest.mark.parametrize(
    "config_name, overrides, size",
    [ARCHITECTURES[0], ARCHITECTURES[2]],
    ids=[ARCHITECTURE_IDS[0], ARCHITECTURE_IDS[2]],
)
def test_two_rounds_equal_the_model_zeroed_once(config_name, overrides, size):
    """Slim, rebuild from the stored widths, slim again: the result equals the original
    model with the channels of both rounds zeroed (round 2's indices mapped back through
    round 1's), and round 2 only narrows."""
    model = build(config_name, overrides, size)
    randomise_batchnorm(model)
    model.eval()
    config = load_config(
        REPO_ROOT / "configs" / config_name if config_name else None,
        [*overrides, f"model.image_size={size}"],
    )
    images = torch.rand(2, 3, size, size) * 255
    keep_first = select_channels(channel_groups(model), 0.4)
    # Round 2's choice, made on the model as round 1 leaves it.
    trial = copy.deepcopy(model)
    trial_groups = channel_groups(trial)
    prune_channels(trial_groups, keep_first)
    keep_second = select_channels(trial_groups, 0.4)
    both = {name: indices[keep_second[name]] for name, indices in keep_first.items()}
    zero_pruned_channels(channel_groups(model), both)
    zeroed_outputs = outputs(model, images)

    widths_first = prune_channels(channel_groups(model), keep_first)
    rebuilt = build_model(config, channel_widths=widths_first)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    widths_second = prune_channels(channel_groups(rebuilt), keep_second)

    assert widths_second == {name: int(indices.numel()) for name, indices in both.items()}
    assert all(widths_second[name] <= widths_first[name] for name in widths_first)
    assert sum(widths_second.values()) < sum(widths_first.values())
    assert_same_outputs(outputs(rebuilt, images), zeroed_outputs)
    again = build_model(config, channel_widths=widths_second)
    again.load_state_dict(rebuilt.state_dict())  # strict: the composed widths rebuild it


def test_fusion_readers_keep_the_concat_offsets():
    model = build(None, TINY_MODEL, 96).eval()
    groups = channel_groups(model)
    fusion = model.features.fusion
    pyramid_conv = model.features.pyramid.layers[0].conv
    original = pyramid_conv.weight.detach().clone()
    keep = {group.name: torch.arange(group.width) for group in groups}
    expected_inputs, offset = [], 0
    for index, transform in enumerate(fusion.transforms):
        width = transform.out_channels
        kept = torch.arange(index % 2, width, 3)  # a different pattern per source
        keep[f"features.fusion.transforms.{index}"] = kept
        expected_inputs.append(offset + kept)
        offset += width

    prune_channels(groups, keep)

    assert torch.equal(pyramid_conv.weight, original[:, torch.cat(expected_inputs)])
    assert fusion.out_channels == pyramid_conv.in_channels == sum(map(len, expected_inputs))


def fake_group(name: str, scores: list[float]) -> ChannelGroup:
    norm = nn.BatchNorm2d(len(scores))
    with torch.no_grad():
        norm.weight.copy_(torch.tensor(scores))
    return ChannelGroup(name=name, convs=[nn.Conv2d(1, len(scores), 1)], norms=[norm])


def test_global_threshold_with_a_minimum_per_layer():
    groups = [
        fake_group("a", [0.9, -0.1, 0.5, 0.05]),
        fake_group("b", [0.2, 0.3, 0.01, -0.7, 0.6, 0.4]),
        fake_group("c", [0.02, 0.03, 0.04, 0.06]),
    ]
    # 14 channels, ratio 0.5: the 7 smallest |gamma| are 0.01 (b), 0.02 0.03 0.04 (c),
    # 0.05 (a), 0.06 (c), 0.1 (a). Layer c would vanish; it keeps its best channel.
    keep = select_channels(groups, 0.5, min_keep_fraction=0.1)
    assert {name: indices.tolist() for name, indices in keep.items()} == {
        "a": [0, 2],
        "b": [0, 1, 3, 4, 5],
        "c": [3],
    }
    # A larger minimum and rounding up to multiples of 4 (capped at the width).
    keep = select_channels(groups, 0.5, min_keep_fraction=0.5, multiple_of=4)
    assert {name: indices.tolist() for name, indices in keep.items()} == {
        "a": [0, 1, 2, 3],
        "b": [0, 1, 2, 3, 4, 5],
        "c": [0, 1, 2, 3],
    }
    assert {name: len(indices) for name, indices in select_channels(groups, 0.0).items()} == {
        "a": 4,
        "b": 6,
        "c": 4,
    }
    with pytest.raises(PruningError, match="ratio"):
        select_channels(groups, 1.0)
    with pytest.raises(PruningError, match="multiple"):
        select_channels(groups, 0.5, multiple_of=0)


def test_the_constant_output_of_pruned_channels_moves_into_the_readers():
    torch.manual_seed(0)
    producer = ConvBNReLU(3, 4, 1, batch_norm=True)
    reader_bn = ConvBNReLU(4, 2, 1, batch_norm=True)
    reader_bias = nn.Conv2d(4, 5, 1)
    for block in (producer, reader_bn):
        randomise_batchnorm(block, seed=1)
    with torch.no_grad():
        # Channel 1 is off but has a positive shift (ReLU passes 0.7 on), channel 3 a
        # negative one (ReLU gives 0).
        producer.bn.weight[[1, 3]] = 0.0
        producer.bn.bias[[1, 3]] = torch.tensor([0.7, -0.4])
    producer.eval(), reader_bn.eval()

    def group() -> ChannelGroup:
        return ChannelGroup(
            name="producer",
            convs=[producer.conv],
            norms=[producer.bn],
            readers=[
                Reader(conv=reader_bn.conv, norm=reader_bn.bn),
                Reader(conv=reader_bias),
            ],
        )

    x = torch.randn(2, 3, 5, 5)

    def forward():
        with torch.no_grad():
            hidden = producer(x)
            return reader_bn(hidden), reader_bias(hidden)

    expected = forward()
    prune_channels([group()], {"producer": torch.tensor([0, 2])})
    assert producer.out_channels == reader_bn.conv.in_channels == reader_bias.in_channels == 2
    # 1x1 convs have no padded border, so the compensation is exact.
    assert_same_outputs(forward(), expected)


def test_no_compensation_drops_the_constant():
    producer = ConvBNReLU(3, 2, 1, batch_norm=True)
    reader = nn.Conv2d(2, 1, 1)
    with torch.no_grad():
        producer.bn.weight[1], producer.bn.bias[1] = 0.0, 0.5
    group = ChannelGroup(
        name="p", convs=[producer.conv], norms=[producer.bn], readers=[Reader(conv=reader)]
    )
    bias = reader.bias.detach().clone()
    prune_channels([group], {"p": torch.tensor([0])}, compensate=False)
    assert torch.equal(reader.bias, bias)


def test_widths_rebuild_the_pruned_model():
    config = load_config(None, TINY_MODEL)
    model = build_model(config)
    randomise_batchnorm(model)
    model.eval()
    groups = channel_groups(model)
    widths = prune_channels(groups, select_channels(groups, 0.5))

    rebuilt = build_model(config, channel_widths=widths)
    rebuilt.load_state_dict(model.state_dict())  # strict: every shape matches
    rebuilt.eval()
    images = torch.rand(1, 3, 96, 96) * 255
    assert_same_outputs(outputs(rebuilt, images), outputs(model, images))

    with pytest.raises(PruningError, match=r"features\.nothing"):
        apply_channel_widths(build_model(config), {"features.nothing": 3})
    name = next(iter(widths))
    with pytest.raises(PruningError, match="outside"):
        apply_channel_widths(build_model(config), {name: 0})


def test_residual_streams_are_left_alone():
    model = build("fssd300_resnet50_voc.yaml", ["model.backbone=resnet50"], 300)
    names = set(prunable_norm_names(model))
    block = "features.backbone.layer2.0"
    assert {f"{block}.bn1", f"{block}.bn2"} <= names
    assert f"{block}.bn3" not in names and f"{block}.downsample.1" not in names
    assert "features.backbone.bn1" not in names
    assert "features.fusion.transforms.0.bn" in names


def test_models_without_batchnorm_cannot_be_pruned():
    model = build("ssd300_vgg16_voc.yaml", ["model.width_multiplier=0.125"], 300)
    with pytest.raises(PruningError, match="no prunable channels"):
        select_channels(channel_groups(model), 0.5)


def trained_checkpoint(root, tmp_path, output_name):
    """A tiny model with random BatchNorm scales saved as a shapes checkpoint: the
    overrides of a run into ``tmp_path / output_name``, the config, the model and the
    checkpoint's path."""
    overrides = tiny_train_overrides(root, tmp_path / output_name)
    config = load_config(None, overrides)
    model = build_model(config)
    randomise_batchnorm(model)
    source = tmp_path / "trained.pt"
    state = make_checkpoint(
        config=config, model_state=model.state_dict(), class_names=list(SHAPE_CLASSES)
    )
    save_checkpoint(state, source)
    return overrides, config, model, source


def test_prune_then_evaluate_and_fine_tune(tiny_shapes_root, tmp_path, capsys):
    """The three stages through the scripts: the pruned checkpoint carries its widths
    into test.py, train.py --init and a resumed fine-tuning run."""
    overrides, config, model, source = trained_checkpoint(tiny_shapes_root, tmp_path, "finetune")
    pruned = tmp_path / "pruned.pt"
    arguments = ["--checkpoint", str(source), "--ratio", "0.5", "--out", str(pruned)]
    arguments += ["--benchmark", "--repeats", "2"]
    assert prune_script.main(prune_script.parse_args(arguments)) == 0
    printed = capsys.readouterr().out
    checkpoint = load_checkpoint(pruned)
    widths = checkpoint["channel_widths"]
    assert (
        checkpoint["class_names"] == list(SHAPE_CLASSES) and checkpoint["pruning"]["ratio"] == 0.5
    )
    groups = channel_groups(model)
    total = sum(group.width for group in groups)
    # The printed summary is the pruned model's: channels, threshold, params, GFLOPs.
    _, threshold = global_threshold(torch.cat([group.scores() for group in groups]), 0.5)
    assert checkpoint["pruning"]["threshold"] == threshold > 0
    kept = sum(widths.values())
    assert kept < total
    assert (
        f"pruned {total - kept} of {total} channels ({(total - kept) / total:.1%}) in "
        f"{len(groups)} layers; global |gamma| threshold {threshold:.4g}"
    ) in printed
    rows = {line.split()[0]: line.split()[1:] for line in printed.splitlines() if line.strip()}
    rebuilt = build_model(config, load_weights=False, channel_widths=widths)
    assert int(rows["params"][0].replace(",", "")) == count_parameters(model)
    assert int(rows["params"][1].replace(",", "")) == count_parameters(rebuilt)
    assert float(rows["GFLOPs"][1]) == pytest.approx(count_flops(rebuilt, 96) / 1e9, abs=5e-4)
    # Latency rows: forward ms, its speed-up over the unpruned model, total ms, speed-up.
    unpruned = float(rows["unpruned"][0])
    for name in ("pruned", "pruned+folded"):
        forward, speedup = float(rows[name][0]), float(rows[name][1].rstrip("x"))
        # Printed to 2 decimals: the speed-up's rounding plus that of both times.
        rounding = 0.005 + 0.005 * (unpruned / forward) * (1 / forward + 1 / unpruned)
        assert forward > 0 and speedup == pytest.approx(unpruned / forward, abs=rounding * 1.01)
    shapes = {key: value.shape for key, value in checkpoint["model"].items()}

    evaluation = ["--checkpoint", str(pruned), "--no-plots", "--results-dir", str(tmp_path)]
    assert test_script.main(test_script.parse_args([*evaluation, *overrides])) == 0

    run = ["--config", str(REPO_ROOT / "configs" / "quickstart_shapes.yaml"), *overrides]
    assert train.main(train.parse_args([*run, "--init", str(pruned), "--stop-at", "2"])) == 0
    stopped = load_checkpoint(tmp_path / "finetune" / "last.pt")
    assert stopped["channel_widths"] == widths
    assert {key: value.shape for key, value in stopped["model"].items()} == shapes
    assert train.main(train.parse_args(["--resume", str(tmp_path / "finetune" / "last.pt")])) == 0
    assert load_checkpoint(tmp_path / "finetune" / "last.pt")["iteration"] == 6

    with pytest.raises(train.ConfigError, match="--init"):
        train.resolve_config(train.parse_args([*run, "--init", str(pruned), "--resume"]))


def test_a_second_round_through_the_scripts(tiny_shapes_root, tmp_path, capsys):
    """prune.py, train.py --init with sparsity, prune.py again: the rounds and the
    composed widths travel with every checkpoint, and the second round says how far
    the model is from the unpruned one."""
    overrides, config, model, source = trained_checkpoint(tiny_shapes_root, tmp_path, "sparse")
    first = tmp_path / "pruned_1.pt"
    arguments = ["--checkpoint", str(source), "--ratio", "0.5", "--out", str(first)]
    assert prune_script.main(prune_script.parse_args(arguments)) == 0
    assert "round" not in capsys.readouterr().out.split("wrote")[0].split("threshold")[-1]
    widths_first = load_checkpoint(first)["channel_widths"]

    run = ["--config", str(REPO_ROOT / "configs" / "quickstart_shapes.yaml"), *overrides]
    run += ["--init", str(first), "train.sparsity=1e-2", "--stop-at", "2"]
    assert train.main(train.parse_args(run)) == 0
    trained = load_checkpoint(tmp_path / "sparse" / "last.pt")
    assert [entry["round"] for entry in trained["pruning_rounds"]] == [1]
    capsys.readouterr()

    second = tmp_path / "pruned_2.pt"
    arguments = ["--checkpoint", str(tmp_path / "sparse" / "last.pt"), "--ratio", "0.3"]
    arguments += ["--benchmark", "--repeats", "2", "--out", str(second)]
    assert prune_script.main(prune_script.parse_args(arguments)) == 0
    printed = capsys.readouterr().out
    # The latency table keeps the unpruned model as the reference and lists round 1.
    rows = [line.split()[0] for line in printed.split("latency")[1].splitlines()[2:]]
    assert rows == ["unpruned", "round", "pruned", "pruned+folded"]
    assert "round 1 " in printed.split("latency")[1]
    checkpoint = load_checkpoint(second)
    rounds = checkpoint["pruning_rounds"]
    assert [entry["round"] for entry in rounds] == [1, 2] and checkpoint["pruning"] == rounds[1]
    assert rounds[1]["source"] == str(tmp_path / "sparse" / "last.pt")
    widths_second = checkpoint["channel_widths"]
    assert set(widths_second) == set(widths_first)
    assert all(widths_second[name] <= widths_first[name] for name in widths_first)
    # Round 2 removes 30 % of round 1's channels (each layer keeps 10 % of its own).
    assert rounds[1]["channels"][0] == sum(widths_first.values())
    assert rounds[1]["channels"][1] == sum(widths_second.values())
    assert sum(widths_second.values()) <= round(0.7 * sum(widths_first.values())) + len(
        widths_first
    )
    unpruned = rounds[0]["channels"][0]
    kept = sum(widths_second.values())
    rebuilt = build_model(config, load_weights=False, channel_widths=widths_second)
    params_share = count_parameters(rebuilt) / count_parameters(model)
    assert (
        f"round 2: {kept} of the unpruned model's {unpruned} channels left "
        f"({kept / unpruned:.1%}), params {params_share:.1%} of its "
        f"{count_parameters(model):,}"
    ) in printed
    rebuilt.load_state_dict(checkpoint["model"])  # strict: the stored widths fit
    evaluation = ["--checkpoint", str(second), "--no-plots", "--results-dir", str(tmp_path)]
    assert test_script.main(test_script.parse_args([*evaluation, *overrides])) == 0


def test_widths_file_builds_the_narrow_model_and_travels_with_checkpoints(
    tiny_shapes_root, tmp_path
):
    overrides = tiny_train_overrides(tiny_shapes_root, tmp_path / "run")
    groups = channel_groups(build_model(load_config(None, overrides)))
    widths = {group.name: max(1, group.width // 2) for group in groups[::2]}
    path = tmp_path / "widths.yaml"
    path.write_text("".join(f"{name}: {width}\n" for name, width in widths.items()))
    narrow = build_model(load_config(None, [*overrides, f"model.widths_file={path}"]))
    assert {g.name: g.width for g in channel_groups(narrow)} == {
        g.name: widths.get(g.name, g.width) for g in groups
    }
    # train.py stores the widths in its checkpoints: the model rebuilds without the file.
    config = str(REPO_ROOT / "configs" / "quickstart_shapes.yaml")
    run = ["--config", config, *overrides, f"model.widths_file={path}", "--stop-at", "1"]
    assert train.main(train.parse_args(run)) == 0
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    assert checkpoint["channel_widths"] == widths
    path.unlink()
    assert test_script.main(test_script.parse_args(
        ["--checkpoint", str(tmp_path / "run" / "last.pt"), "--no-plots",
         "--results-dir", str(tmp_path / "eval")]
    )) == 0  # fmt: skip
    path.write_text("not: [a, mapping, of, widths]")
    with pytest.raises(ConfigError, match=r"widths\.yaml: expected a mapping of channel group"):
        build_model(load_config(None, [*overrides, f"model.widths_file={path}"]))


def test_shipped_slim_widths_reach_the_reference_budget():
    # fssd.pytorch's 50 % FSSD300-VGG16-BN: 13.2 M parameters, 38 GFLOPs.
    config = load_config(
        REPO_ROOT / "configs" / "fssd300_vgg16_bn_voc.yaml",
        [f"model.widths_file={REPO_ROOT / 'configs/widths/fssd300_vgg16_bn_slim50.yaml'}"],
    )
    model = build_model(config, load_weights=False)
    widths = {group.name: group.width for group in channel_groups(model)}
    backbone = [widths[name] for name in widths if name.startswith("features.backbone")]
    assert backbone == [38, 58, 101, 121, 218, 232, 234, 282, 297, 243, 214, 199, 54, 136, 212]
    assert count_parameters(model) == pytest.approx(13.2e6, rel=0.02)
    assert count_flops(model, 300) / 1e9 == pytest.approx(38.0, rel=0.03)
    rounded = load_config(
        REPO_ROOT / "configs" / "fssd300_vgg16_bn_voc.yaml",
        [f"model.widths_file={REPO_ROOT / 'configs/widths/fssd300_vgg16_bn_slim50_x8.yaml'}"],
    )
    rounded_widths = channel_groups(build_model(rounded, load_weights=False))
    assert all(group.width % 8 == 0 for group in rounded_widths)
    assert all(
        widths[group.name] <= group.width < widths[group.name] + 8 for group in rounded_widths
    )


def test_prune_to_a_widths_file_keeps_each_groups_largest_scales(tmp_path):
    config = load_config(None, TINY_MODEL)
    model = build_model(config)
    randomise_batchnorm(model)
    source = tmp_path / "trained.pt"
    state = make_checkpoint(config=config, model_state=model.state_dict(), class_names=["a"])
    save_checkpoint(state, source)
    groups = channel_groups(model)
    target = {groups[0].name: 3, groups[-1].name: groups[-1].width - 1}
    path = tmp_path / "widths.yaml"
    path.write_text("".join(f"{name}: {width}\n" for name, width in target.items()))
    out = tmp_path / "to_widths.pt"
    arguments = ["--checkpoint", str(source), "--widths", str(path), "--out", str(out)]
    assert prune_script.main(prune_script.parse_args(arguments)) == 0
    checkpoint = load_checkpoint(out)
    widths = checkpoint["channel_widths"]
    assert {name: widths[name] for name in target} == target
    assert all(widths[g.name] == g.width for g in groups if g.name not in target)
    # The first group keeps its 3 largest |gamma|, in channel order.
    norm_name = next(name for name, module in model.named_modules() if module is groups[0].norms[0])
    gamma = model.get_submodule(norm_name).weight.detach()
    kept = torch.sort(torch.sort(groups[0].scores(), descending=True).indices[:3]).values
    torch.testing.assert_close(checkpoint["model"][f"{norm_name}.weight"], gamma[kept])
    assert checkpoint["pruning"]["widths_file"] == str(path)
    path.write_text("features.nothing: 3\n")
    with pytest.raises(PruningError, match="groups this model does not have"):
        prune_script.main(prune_script.parse_args(arguments))
