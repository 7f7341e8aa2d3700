"""Nothing a user or a model supplies is evaluated or unpickled by r1lite, recipes are read as data only, remote
model code stays off unless asked for, and user reward code says where it came from."""

import ast
import logging
from pathlib import Path

import pytest

from r1lite.config import RunConfig, parse_config
from r1lite.errors import ConfigError

SOURCE = Path(__file__).resolve().parents[1] / "src" / "r1lite"


def test_no_eval_exec_or_pickle_in_the_package():
    offenders = []
    for path in SOURCE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        # The builtins that run code (a method such as re.compile or model.eval is not one of them).
        calls = {
            node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        }
        imports = {
            alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        }
        imports |= {
            node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
        }
        bad = (calls & {"eval", "exec", "compile", "__import__"}) | (imports & {"pickle", "marshal", "dill", "shelve"})
        if bad:
            offenders.append(f"{path.relative_to(SOURCE)}: {sorted(bad)}")
    assert not offenders


def test_recipes_are_read_as_data_only(tmp_path):
    recipe = tmp_path / "evil.yaml"
    recipe.write_text("max_steps: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML at line 1"):
        parse_config(RunConfig, ["--config", str(recipe)])


def test_remote_code_is_off_unless_the_recipe_asks(tiny_model_dir, caplog):
    from r1lite.config import ModelArgs
    from r1lite.models import load_from_args

    assert parse_config(RunConfig, []).trl.get("trust_remote_code") is False
    caplog.set_level(logging.WARNING)
    load_from_args(ModelArgs(model=str(tiny_model_dir), precision="fp32"), "cpu")
    assert "trust_remote_code" not in caplog.text
    load_from_args(ModelArgs(model=str(tiny_model_dir), precision="fp32"), "cpu", trust_remote_code=True)
    assert "trust_remote_code: running model code from" in caplog.text


def test_user_reward_code_is_logged_with_its_file(caplog):
    from r1lite.rewards import resolve_rewards

    caplog.set_level(logging.INFO)
    resolve_rewards("default", ["tests.helpers:length_reward"])
    assert "reward tests.helpers:length_reward imported from" in caplog.text and "tests/helpers.py" in caplog.text
