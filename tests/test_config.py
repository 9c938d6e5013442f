"""The typed config loader: every shipped config loads, overrides are typed, mistakes are named."""

from pathlib import Path

import pytest

from src import config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))


def _schema_for(path: Path) -> type:
    """Pretraining configs have a [training] section; RL configs a [ppo] section."""
    text = path.read_text()
    if path.name.startswith("transfer_"):
        from src.transfer.config import TransferConfig

        return TransferConfig
    if "[ppo]" in text:
        return config.RLConfig
    if path.name.startswith("terrain_"):
        from src.terrain.config import TerrainConfig

        return TerrainConfig
    return config.PretrainConfig


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads_and_round_trips(path, tmp_path):
    cls = _schema_for(path)
    cfg = config.load(cls, path)
    saved = config.save(cfg, tmp_path / "resolved.toml")
    assert config.load(cls, saved) == cfg


def test_configs_directory_is_not_empty():
    assert any(p.name == "pretrain_cmht.toml" for p in CONFIGS)


def test_override_is_parsed_to_the_field_type():
    cfg = config.load(
        config.PretrainConfig,
        None,
        ["training.steps=7", "training.learning_rate=3e-4", "model.modalities.lidar.shape=[32, 32, 4]",
         "run.name=abc", 'training.norm_pix_loss=["rgb"]'],
    )
    assert cfg.training.steps == 7 and isinstance(cfg.training.steps, int)
    assert cfg.training.learning_rate == pytest.approx(3e-4)
    assert cfg.model.modalities["lidar"].shape == (32, 32, 4)
    assert cfg.model.modalities["lidar"].patch_size == 0  # the other fields of the entry keep their defaults
    assert cfg.run.name == "abc"
    assert cfg.training.norm_pix_loss == ("rgb",)


def test_integer_given_for_float_is_accepted_but_not_the_reverse():
    assert config.load(config.PretrainConfig, None, ["training.learning_rate=1"]).training.learning_rate == 1.0
    with pytest.raises(config.ConfigError, match=r"training\.steps: expected an integer"):
        config.load(config.PretrainConfig, None, ["training.steps=1.5"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.stepz=3", r"unknown key\(s\) \['stepz'\] in \[training\]; valid keys: \[.*'steps'"),
        ("nosuch.key=1", r"unknown key\(s\) \['nosuch'\] in top level; valid keys: \[.*'training'"),
        ("training.steps=ten", r"training\.steps: expected an integer, got str 'ten'"),
        ("model.pos_embedding=\"rope\"", r"model\.pos_embedding: 'rope' is not one of \['sincos', 'learned'\]"),
        ("model.modalities.sonar.shape=[3]", r"unknown modality \['sonar'\]"),
        ("model.modalities.lidar.shape=12", r"model\.modalities\.lidar\.shape: expected a list"),
        ("training.norm_pix_loss=true", r"training\.norm_pix_loss: expected a list"),
        ('training.norm_pix_loss=["bev"]', r"training\.norm_pix_loss\[0\]: 'bev' is not one of"),
        ("training", r"expected section\.key=value"),
    ],
)
def test_mistakes_name_the_key(override, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load(config.PretrainConfig, None, [override])


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[training]\nbatchsize = 4\n")
    with pytest.raises(config.ConfigError, match=r"bad\.toml: unknown key\(s\) \['batchsize'\]"):
        config.load(config.PretrainConfig, bad)


def test_missing_file_and_invalid_toml_are_errors(tmp_path):
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.load(config.PretrainConfig, tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[training\nsteps = 1\n")
    with pytest.raises(config.ConfigError, match="invalid TOML"):
        config.load(config.PretrainConfig, broken)


def test_cli_exits_with_the_message(tmp_path):
    import argparse

    parser = config.add_config_args(argparse.ArgumentParser())
    args = parser.parse_args(["--config", str(tmp_path / "nope.toml"), "--set", "training.steps=2"])
    with pytest.raises(SystemExit, match="config error: .*does not exist"):
        config.load_from_args(config.PretrainConfig, args)
