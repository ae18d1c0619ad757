"""Config loading: YAML + key=value overrides into a dataclass, errors, save/load round trip."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest
import yaml

from latentrl.config import ConfigError, config_help, config_to_dict, load_config, save_config


@dataclass
class DemoConfig:
    learning_rate: float = field(default=1e-6, metadata={"help": "AdamW learning rate."})
    num_generations: int = field(default=8, metadata={"help": "Rollouts per prompt (G)."})
    use_vllm: bool = field(default=False, metadata={"help": "Generate with vLLM."})
    output_dir: str = field(default="runs/demo", metadata={"help": "Where to write."})
    max_steps: Optional[int] = field(default=None, metadata={"help": "Stop after this many."})
    beta: float | None = field(default=0.0, metadata={"help": "KL coefficient."})
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = field(
        default="dapo", metadata={"help": "Loss normalisation."}
    )
    dropout_sites: list[str] = field(
        default_factory=lambda: ["hidden"], metadata={"help": "Where masks act."}
    )
    epsilon: tuple[float, float] = field(default=(0.2, 0.2), metadata={"help": "Clip range."})
    save_dir: Path = field(default=Path("ckpt"), metadata={"help": "Checkpoint directory."})

    def __post_init__(self) -> None:
        if self.num_generations < 2:
            raise ValueError("num_generations must be at least 2 for group advantages")


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# Sources and precedence


def test_defaults_only() -> None:
    assert load_config(DemoConfig) == DemoConfig()


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "learning_rate: 3.0e-5\nnum_generations: 4\nloss_type: grpo\n")
    cfg = load_config(DemoConfig, path, ["num_generations=16", "use_vllm=true"])
    assert cfg.learning_rate == 3e-5
    assert cfg.num_generations == 16  # command line wins over the file
    assert cfg.loss_type == "grpo" and cfg.use_vllm is True


def test_empty_yaml_file_is_empty_mapping(tmp_path: Path) -> None:
    assert load_config(DemoConfig, write(tmp_path, "")) == DemoConfig()


def test_override_value_containing_equals_sign() -> None:
    cfg = load_config(DemoConfig, overrides=["output_dir=runs/lr=1e-4"])
    assert cfg.output_dir == "runs/lr=1e-4"


def test_override_without_equals_is_rejected() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        load_config(DemoConfig, overrides=["learning_rate"])


# ---------------------------------------------------------------------------------------------
# Unknown keys


def test_unknown_key_in_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "lerning_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(DemoConfig, path)
    message = str(err.value)
    assert "lerning_rate" in message
    assert str(path) in message
    assert "Did you mean 'learning_rate'" in message
    assert "num_generations" in message  # the valid keys are listed


def test_unknown_key_on_command_line() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(DemoConfig, overrides=["num_generation=4"])
    message = str(err.value)
    assert "num_generation" in message and "command line" in message
    assert "Did you mean 'num_generations'" in message


def test_unknown_key_without_close_match() -> None:
    with pytest.raises(ConfigError, match="Valid keys") as err:
        load_config(DemoConfig, overrides=["zzz=1"])
    assert "Did you mean" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# Coercion


def test_int_to_float_and_scientific_strings(tmp_path: Path) -> None:
    assert load_config(DemoConfig, overrides=["learning_rate=1"]).learning_rate == 1.0
    cfg = load_config(DemoConfig, overrides=["learning_rate=1e-4"])  # YAML reads "1e-4" as str
    assert isinstance(cfg.learning_rate, float) and cfg.learning_rate == 1e-4
    cfg = load_config(DemoConfig, write(tmp_path, "learning_rate: 1e-4\n"))
    assert cfg.learning_rate == 1e-4


def test_integral_float_to_int_but_not_fraction() -> None:
    assert load_config(DemoConfig, overrides=["num_generations=1e2"]).num_generations == 100
    with pytest.raises(ConfigError, match="num_generations.*int"):
        load_config(DemoConfig, overrides=["num_generations=2.5"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("false", False), ("True", True), ("yes", True), ("0", False), ("1", True)],
)
def test_bool_strings(text: str, expected: bool) -> None:
    assert load_config(DemoConfig, overrides=[f"use_vllm={text}"]).use_vllm is expected


def test_bool_rejects_other_values() -> None:
    with pytest.raises(ConfigError, match="use_vllm.*bool"):
        load_config(DemoConfig, overrides=["use_vllm=maybe"])


def test_optional_none_and_value(tmp_path: Path) -> None:
    assert load_config(DemoConfig, overrides=["max_steps=null"]).max_steps is None
    assert load_config(DemoConfig, overrides=["max_steps=10"]).max_steps == 10
    assert load_config(DemoConfig, overrides=["beta=null"]).beta is None  # PEP 604 union
    assert load_config(DemoConfig, overrides=["beta=4e-2"]).beta == 0.04
    assert load_config(DemoConfig, write(tmp_path, "max_steps: ~\n")).max_steps is None
    with pytest.raises(ConfigError, match="max_steps"):
        load_config(DemoConfig, overrides=["max_steps=ten"])


def test_literal_validation_lists_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(DemoConfig, write(tmp_path, "loss_type: ppo\n"))
    message = str(err.value)
    assert "loss_type" in message and "'ppo'" in message
    for choice in ("grpo", "bnpo", "dr_grpo", "dapo"):
        assert repr(choice) in message


def test_list_and_tuple(tmp_path: Path) -> None:
    cfg = load_config(DemoConfig, overrides=["dropout_sites=[mlp, attn]", "epsilon=[0.2, 0.28]"])
    assert cfg.dropout_sites == ["mlp", "attn"]
    assert cfg.epsilon == (0.2, 0.28) and isinstance(cfg.epsilon, tuple)
    cfg = load_config(DemoConfig, write(tmp_path, "epsilon: [1, 3.0e-1]\n"))
    assert cfg.epsilon == (1.0, 0.3)
    with pytest.raises(ConfigError, match="epsilon"):
        load_config(DemoConfig, overrides=["epsilon=[0.2]"])  # wrong length
    with pytest.raises(ConfigError, match="dropout_sites.*list"):
        load_config(DemoConfig, overrides=["dropout_sites=mlp"])


def test_str_field_keeps_raw_text_on_command_line(tmp_path: Path) -> None:
    assert load_config(DemoConfig, overrides=["output_dir=123"]).output_dir == "123"
    with pytest.raises(ConfigError, match="output_dir.*str"):  # a file should quote it
        load_config(DemoConfig, write(tmp_path, "output_dir: 123\n"))


def test_type_mismatch_names_key_and_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(DemoConfig, write(tmp_path, "num_generations: many\n"))
    message = str(err.value)
    assert "num_generations" in message and "int" in message and "recipe.yaml" in message


def test_future_annotations_are_resolved() -> None:
    # this module uses `from __future__ import annotations`: every hint is a string
    assert isinstance(DemoConfig.__annotations__["learning_rate"], str)
    assert load_config(DemoConfig, overrides=["learning_rate=2"]).learning_rate == 2.0


# ---------------------------------------------------------------------------------------------
# Bad files and validation


def test_malformed_yaml_names_file(tmp_path: Path) -> None:
    path = write(tmp_path, "learning_rate: [0.1\n", name="broken.yaml")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(DemoConfig, path)


def test_non_mapping_yaml_names_file(tmp_path: Path) -> None:
    path = write(tmp_path, "- 1\n- 2\n", name="list.yaml")
    with pytest.raises(ConfigError, match="list.yaml.*mapping"):
        load_config(DemoConfig, path)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(DemoConfig, "nope.yaml")


def test_post_init_error_becomes_config_error() -> None:
    with pytest.raises(ConfigError, match="num_generations must be at least 2"):
        load_config(DemoConfig, overrides=["num_generations=1"])


@dataclass
class RequiredConfig:
    model: str = field(metadata={"help": "Hub id or local path."})
    seed: int = field(default=0, metadata={"help": "Random seed."})


def test_missing_required_key() -> None:
    with pytest.raises(ConfigError, match="model"):
        load_config(RequiredConfig)
    assert load_config(RequiredConfig, overrides=["model=gpt2"]).model == "gpt2"


# ---------------------------------------------------------------------------------------------
# Saving, round trip, help


def test_save_load_round_trip(tmp_path: Path) -> None:
    cfg = load_config(
        DemoConfig,
        overrides=[
            "learning_rate=1e-5",
            "max_steps=300",
            "beta=null",
            "loss_type=dr_grpo",
            "dropout_sites=[hidden, mlp]",
            "epsilon=[0.2, 0.28]",
            "save_dir=out/ckpt",
            "output_dir=a=b",
        ],
    )
    path = tmp_path / "sub" / "config.yaml"
    save_config(cfg, path)
    assert load_config(DemoConfig, path) == cfg
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temporary file left behind


def test_saved_yaml_keys_in_field_order(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    save_config(DemoConfig(), path)
    keys = [line.split(":")[0] for line in path.read_text().splitlines() if not line[0].isspace()]
    keys = [k for k in keys if not k.startswith("-")]
    assert keys == list(config_to_dict(DemoConfig()))
    assert keys[0] == "learning_rate" and keys[-1] == "save_dir"


def test_config_to_dict_is_plain() -> None:
    data = config_to_dict(DemoConfig())
    assert data["epsilon"] == [0.2, 0.2] and data["save_dir"] == "ckpt"
    assert yaml.safe_load(yaml.safe_dump(data)) == data


def test_round_trip_of_special_floats(tmp_path: Path) -> None:
    cfg = DemoConfig(learning_rate=math.inf)
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(DemoConfig, tmp_path / "c.yaml").learning_rate == math.inf


def test_config_help_one_line_per_field() -> None:
    lines = config_help(DemoConfig).splitlines()
    assert len(lines) == len(config_to_dict(DemoConfig()))
    first = lines[0]
    assert first.startswith("learning_rate") and "float" in first
    assert "1e-06" in first and "AdamW learning rate." in first
    loss_line = next(line for line in lines if line.startswith("loss_type"))
    assert "Literal" in loss_line and "'dapo'" in loss_line
    assert "required" in config_help(RequiredConfig).splitlines()[0]
