"""Config loading: YAML + key=value overrides into a pydantic config, errors, save/load round trip."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, Optional

import pytest
import yaml
from pydantic import Field, model_validator

from latentrl.config import Config, ConfigError, config_help, config_to_dict, load_config, save_config, with_defaults


class DemoConfig(Config):
    learning_rate: float = Field(1e-6, description="AdamW learning rate.")
    num_generations: int = Field(8, ge=1, description="Rollouts per prompt (G).")
    use_vllm: bool = Field(False, description="Generate with vLLM.")
    output_dir: str = Field("runs/demo", description="Where to write.")
    max_steps: Optional[int] = Field(None, description="Stop after this many.")
    beta: float | None = Field(0.0, description="KL coefficient.")
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = Field("dapo", description="Loss normalisation.")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field("bf16", description="Autocast.")
    dropout_sites: list[str] = Field(["hidden"], description="Where masks act.")
    epsilon: tuple[float, float] = Field((0.2, 0.2), description="Clip range.")
    save_dir: Path = Field(Path("ckpt"), description="Checkpoint directory.")

    @model_validator(mode="after")
    def _check(self):
        if self.num_generations == 1:
            raise ValueError("num_generations must be at least 2 for group advantages")
        return self


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
    assert load_config(DemoConfig, overrides=["num_generations=100.0"]).num_generations == 100
    with pytest.raises(ConfigError, match="num_generations.*integer"):
        load_config(DemoConfig, overrides=["num_generations=2.5"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("false", False), ("True", True), ("yes", True), ("0", False), ("1", True)],
)
def test_bool_strings(text: str, expected: bool) -> None:
    assert load_config(DemoConfig, overrides=[f"use_vllm={text}"]).use_vllm is expected


@pytest.mark.parametrize("text", ["no", "off", "n", "No"])
def test_bool_strings_of_yaml_1_1_read_as_false(text: str, tmp_path: Path) -> None:
    assert load_config(DemoConfig, overrides=[f"use_vllm={text}"]).use_vllm is False
    assert load_config(DemoConfig, write(tmp_path, f"use_vllm: {text}\n")).use_vllm is False


def test_choice_named_no_is_text_not_a_boolean(tmp_path: Path) -> None:
    """YAML 1.1 (PyYAML's default) reads ``no`` as False; the config reads YAML 1.2's booleans, so the
    choice ``no`` of ``mixed_precision`` (and TRL's ``eval_strategy: no``) arrives as the text."""
    assert load_config(DemoConfig, overrides=["mixed_precision=no"]).mixed_precision == "no"
    assert load_config(DemoConfig, write(tmp_path, "mixed_precision: no\n")).mixed_precision == "no"
    assert load_config(DemoConfig, write(tmp_path, "dropout_sites: [no, off]\n", "b.yaml")).dropout_sites == ["no", "off"]
    with pytest.raises(ConfigError, match="mixed_precision.*got False"):
        load_config(DemoConfig, write(tmp_path, "mixed_precision: false\n", "c.yaml"))


def test_bool_rejects_other_values() -> None:
    with pytest.raises(ConfigError, match="use_vllm.*boolean"):
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


def test_str_field_keeps_raw_text(tmp_path: Path) -> None:
    assert load_config(DemoConfig, overrides=["output_dir=123"]).output_dir == "123"
    assert load_config(DemoConfig, overrides=["output_dir=2024-01-01"]).output_dir == "2024-01-01"
    assert load_config(DemoConfig, write(tmp_path, "output_dir: 123\n")).output_dir == "123"


def test_type_mismatch_names_key_and_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(DemoConfig, write(tmp_path, "num_generations: many\n"))
    message = str(err.value)
    assert "num_generations" in message and "integer" in message and "recipe.yaml" in message


def test_ranges_are_checked_and_shown_in_help() -> None:
    with pytest.raises(ConfigError, match="num_generations.*greater than or equal to 1, got 0"):
        load_config(DemoConfig, overrides=["num_generations=0"])
    assert "[>= 1]" in config_help(DemoConfig)


def test_with_defaults_changes_only_the_default() -> None:
    class Other(DemoConfig):
        pass

    with_defaults(Other, num_generations=16)
    assert Other().num_generations == 16 and DemoConfig().num_generations == 8
    with pytest.raises(ConfigError, match="greater than or equal to 1"):  # the range stays
        load_config(Other, overrides=["num_generations=0"])


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


def test_model_validator_error_becomes_config_error() -> None:
    with pytest.raises(ConfigError, match="num_generations must be at least 2"):
        load_config(DemoConfig, overrides=["num_generations=1"])


class RequiredConfig(Config):
    model: str = Field(description="Hub id or local path.")
    seed: int = Field(0, description="Random seed.")


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


def test_config_help_two_lines_per_field() -> None:
    lines = config_help(DemoConfig).splitlines()
    assert len(lines) == 2 * len(config_to_dict(DemoConfig()))
    first = lines[0]
    assert first.strip().startswith("learning_rate") and "float" in first and "1e-06" in first
    assert "AdamW learning rate." in lines[1]
    loss_line = next(line for line in lines if line.strip().startswith("loss_type"))
    assert "Literal" in loss_line and "'dapo'" in loss_line
    assert "required" in config_help(RequiredConfig).splitlines()[0]


def test_every_recipe_in_configs_loads_with_its_command() -> None:
    """The shipped YAML recipes are valid configs (nested sweep/demo blocks included)."""
    from latentrl.demo import DemoConfig as Demo
    from latentrl.experiments.sweep import SweepConfig
    from latentrl.train.grpo_config import GRPOConfig
    from latentrl.train.sft_config import SFTConfig

    recipes = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    command = {"sft": SFTConfig, "gpt2": SFTConfig, "grpo": GRPOConfig, "sweep": SweepConfig, "demo": Demo}
    assert len(recipes) >= 10
    for path in recipes:
        load_config(command[path.stem.split("_")[0]], path)
