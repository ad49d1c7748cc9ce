import pytest

from tests.conftest import REPO_ROOT
from utils.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)

CONFIG_FILES = sorted((REPO_ROOT / "configs").glob("*.yaml"))


def _write(tmp_path, text, name="experiment.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_typed_and_file_updates_only_what_it_names(tmp_path):
    path = _write(tmp_path, "model:\n  image_size: 512\nloss:\n  neg_pos_ratio: 5\n")
    config = load_config(path)
    assert config.model.image_size == 512
    assert config.loss.neg_pos_ratio == 5
    defaults = Config()
    assert config.model.num_classes == defaults.model.num_classes
    assert config.priors == defaults.priors


def test_overrides_follow_the_file_and_are_typed(tmp_path):
    path = _write(tmp_path, "postprocess:\n  score_threshold: 0.05\n")
    config = load_config(
        path,
        [
            "postprocess.score_threshold=1e-3",
            "loss.neg_pos_ratio=4",
            "priors.clip=false",
            "priors.max_sizes=null",
            "priors.aspect_ratios=[[2], [2, 3]]",
            "model.backbone_weights=yes",
            "model.backbone=resnet50",
        ],
    )
    assert config.postprocess.score_threshold == 0.001
    assert config.loss.neg_pos_ratio == 4
    assert config.priors.clip is False
    assert config.priors.max_sizes is None
    assert config.priors.aspect_ratios == [[2.0], [2.0, 3.0]]
    # A text field keeps the text as typed, even words YAML would read as booleans.
    assert config.model.backbone_weights == "yes"
    assert config.model.backbone == "resnet50"


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "model:\n  imagesize: 300\n",
            "unknown key 'model.imagesize' (did you mean 'image_size'?)",
        ),
        ("modle:\n  image_size: 300\n", "unknown key 'modle' (did you mean 'model'?)"),
        ("model:\n  image_size: big\n", "'model.image_size' expects int, got 'big'"),
        ("model:\n  image_size: 300.5\n", "'model.image_size' expects int"),
        ("priors:\n  clip: 1\n", "'priors.clip' expects bool, got 1"),
        ("model:\n  backbone: vgg19\n", "'model.backbone' must be one of 'vgg16', 'resnet18'"),
        ("priors:\n  variances: [0.1]\n", "'priors.variances' expects 2 values, got 1"),
        ("priors:\n  min_sizes: [30, x]\n", "'priors.min_sizes[1]' expects float"),
        ("model: 300\n", "'model' is a section and expects a mapping, got int"),
        ("- 1\n- 2\n", "expected a mapping of sections, got list"),
        ("model: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_files_name_the_file_and_the_key(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(str(path))
    assert message in str(error.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("loss.neg_pos_ratio=2.5", "'loss.neg_pos_ratio' expects int, got 2.5"),
        ("loss.neg_pos=2", "unknown key 'loss.neg_pos'"),
        ("loss=2", "'loss' is a section"),
        ("loss.neg_pos_ratio.x=2", "'loss.neg_pos_ratio' has no sub-keys"),
        ("loss.neg_pos_ratio", "expected section.key=value"),
        ("priors.min_sizes=[1, 2", "value is not valid YAML"),
    ],
)
def test_bad_overrides_name_the_override(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert f"override '{override}'" in str(error.value)
    assert message in str(error.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.yaml: config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_saved_config_loads_back_identically(tmp_path):
    config = load_config(None, ["model.image_size=512", "priors.steps=null"])
    save_config(config, tmp_path / "run" / "config.yaml")
    assert load_config(tmp_path / "run" / "config.yaml") == config
    assert config_from_dict(config_to_dict(config)) == config
    assert not list((tmp_path / "run").glob("*.tmp"))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[path.name for path in CONFIG_FILES])
def test_every_shipped_config_loads_and_describes_its_priors(path):
    config = load_config(path)
    num_maps = len(config.priors.min_sizes)
    assert len(config.priors.aspect_ratios) == num_maps
    assert config.priors.max_sizes is None or len(config.priors.max_sizes) == num_maps
    assert config.priors.steps is None or len(config.priors.steps) == num_maps


def test_shipped_configs_exist():
    assert {path.name for path in CONFIG_FILES} >= {
        "fssd300_voc.yaml",
        "fssd512_voc.yaml",
        "fssd300_coco.yaml",
        "fssd512_coco.yaml",
    }
