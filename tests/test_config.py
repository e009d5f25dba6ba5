"""Typed YAML configs: unknown keys and wrong types are errors naming the dotted key; overrides work."""

from pathlib import Path

import pytest

from peopleseg.config import load_config, save_config, to_dict
from peopleseg.engine.train_config import TrainConfig
from peopleseg.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")))
def test_shipped_configs_load(path: Path) -> None:
    config = load_config(TrainConfig, path)
    assert config.model.classes == ["background", "person"]


def test_overrides_and_round_trip(tmp_path) -> None:
    config = load_config(
        TrainConfig,
        CONFIGS / "segformer_b0_people.yaml",
        [
            "optim.lr=1e-4",
            "train.max_steps=300",
            "model.input_size=[256, 256]",
            "data.val=null",
            "loss.class_weights=[1, 2]",
        ],
    )
    assert config.optim.lr == 1e-4 and config.train.max_steps == 300
    assert config.model.input_size == (256, 256) and config.data.val is None
    assert config.loss.class_weights == [1.0, 2.0]
    saved = save_config(config, tmp_path / "c.yaml")
    assert load_config(TrainConfig, saved) == config
    assert to_dict(config)["model"]["input_size"] == [256, 256]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("optim:\n  lrr: 0.1\n", "unknown config key 'optim.lrr'"),
        ("optim:\n  lr: fast\n", "optim.lr: expected a number"),
        ("train:\n  max_steps: 1.5\n", "train.max_steps: expected an integer"),
        ("model:\n  input_size: [1, 2, 3]\n", "model.input_size: expected 2 values"),
        ("data:\n  train: [1]\n", "data.train: expected a mapping"),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("optim: {lr: [\n", "not valid YAML at line"),
        ("data:\n  skip_bad: maybe\n", "data.skip_bad: expected true or false"),
        ("optim:\n  lr: 0.1\n  lr: 0.2\n", "'lr' is given twice at line 3"),
        (b"optim:\n  lr: 0.1  # caf\xe9\n", "not UTF-8 text"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, text, message) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match=message) as error:
        load_config(TrainConfig, path)
    assert "bad.yaml" in str(error.value) and "\n" not in str(error.value)


def test_bad_overrides() -> None:
    with pytest.raises(ConfigError, match=r"must look like key\.sub=value"):
        load_config(TrainConfig, None, ["optim.lr"])
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.learning_rate'"):
        load_config(TrainConfig, None, ["optim.learning_rate=1"])
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(TrainConfig, "missing.yaml")
