"""Reading a command's configuration: a flat YAML recipe plus command-line flags, Hugging Face style.

The recipe's keys become flags, so argparse type-checks recipe and command line alike; command-line flags come
last and win. Works on any config.CommandConfig subclass: its annotated sections, and its TRL config where it has
one, make up the parser. Only safe YAML is read (no Python objects), and every problem is one ConfigError line.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from pathlib import Path
from typing import Any, TypeVar

import yaml
from transformers import HfArgumentParser

from r1lite.errors import ConfigError

C = TypeVar("C")

# Names recipes used before the names were unified; an old recipe gets told the new name.
RENAMED = {
    "dataset_split": "dataset_train_split",
    "eval_split": "dataset_test_split",
    "eval_limit": "max_eval_samples",
    "eval_max_new_tokens": "eval_max_completion_length",
    "limit": "max_eval_samples",
    "n": "max_train_samples",
    "num_samples": "num_generations",
    "max_new_tokens": "max_completion_length",
    "split": "dataset_train_split (train, sft, rewards check) or dataset_test_split (eval)",
    "sample_every": "nothing: completions of every logged step go to completions/*.parquet (TRL's log_completions)",
}


class _Parser(HfArgumentParser):
    def error(self, message: str):
        # argparse would print the whole (very long) usage and exit; one line naming the key is enough.
        raise ConfigError(f"{message} (see `{self.prog} --help`)")


# A command's one positional argument, by the section that holds its field: (field, metavar, help).
POSITIONALS = {
    "chat": ("question", "QUESTION", "the question to ask once (same as --question)"),
    "export": ("run_dir", "RUN_DIR", "the run directory to export (same as --run_dir)"),
}


def build_parser(cls) -> _Parser:
    types = list(cls.section_types().values())
    if cls.trl_config is not None:
        types.append(cls.trl_config)
    parser = _Parser(types, prog=cls.prog, description=cls.__doc__)
    parser.set_defaults(**cls.defaults)
    parser.add_argument("--config", default=None, help="Flat YAML recipe; command-line flags override it.")
    for section, (dest, metavar, help_) in POSITIONALS.items():
        if section in cls.section_types():
            parser.add_argument(f"positional_{dest}", nargs="?", default=None, metavar=metavar, help=help_)
    return parser


def _unknown_key(key: str, known: set[str], source: str) -> ConfigError:
    name = f"--{key}" if source == "command line" else key
    if key in RENAMED:
        return ConfigError(f"{source}: '{name}' is now {RENAMED[key]}")
    close = difflib.get_close_matches(key, known, n=1)
    return ConfigError(f"{source}: unknown key '{name}'{f' (did you mean {close[0]!r}?)' if close else ''}")


def _yaml_to_argv(config: dict[str, Any], known: set[str], source: str) -> list[str]:
    """Turn a recipe mapping into command-line tokens, so argparse type-checks recipe and CLI alike."""
    argv: list[str] = []
    for key, value in config.items():
        if key not in known:
            raise _unknown_key(key, known, source)
        if value is None or value == []:
            continue  # "the default": argparse has no token for None or an empty list
        if isinstance(value, dict):
            raise ConfigError(f"{source}: key '{key}' takes a single value or a list, not a mapping")
        values = value if isinstance(value, list) else [value]
        argv.append(f"--{key}")
        argv.extend(str(v) for v in values)
    return argv


def _pop_config_path(argv: list[str]) -> Path | None:
    if "--config" not in argv:
        return None
    i = argv.index("--config")
    if i + 1 >= len(argv):
        raise ConfigError("--config needs a path to a YAML recipe")
    path = Path(argv[i + 1])
    del argv[i : i + 2]
    return path


def parse_config(cls: type[C], argv: list[str] | None = None) -> C:
    """``--config recipe.yaml`` plus flags -> a validated configuration of command `cls`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(cls)
    positionals = {f"positional_{dest}" for dest, _, _ in POSITIONALS.values()}
    known = {a.dest for a in parser._actions} - {"help", "config"} - positionals
    path = _pop_config_path(argv)
    recipe_argv = _yaml_to_argv(load_yaml(path), known, str(path)) if path else []
    namespace, unknown = parser.parse_known_args(recipe_argv + argv)
    flags = [token[2:].split("=")[0] for token in unknown if token.startswith("--")]
    if flags:
        raise _unknown_key(flags[0], known, "command line")
    if unknown:
        raise ConfigError(f"unexpected argument(s): {' '.join(unknown)} (see `{cls.prog} --help`)")
    values = vars(namespace)
    values.pop("config", None)
    for dest, _, _ in POSITIONALS.values():
        positional = values.pop(f"positional_{dest}", None)
        if positional is not None:
            values[dest] = positional
    kwargs: dict[str, Any] = {}
    for name, section in cls.section_types().items():
        kwargs[name] = section(**{f.name: values.pop(f.name) for f in dataclasses.fields(section)})
    if cls.trl_config is not None:
        kwargs["trl"] = values
    config = cls(**kwargs)
    config.validate()
    return config


def load_yaml(path: Path) -> dict[str, Any]:
    """A recipe file: safe YAML only (no Python objects), a flat mapping, errors with the line and column."""
    if path.is_dir() or not path.exists():
        raise ConfigError(f"recipe not found: {path}" + (" (a directory)" if path.is_dir() else ""))
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a flat YAML mapping of key: value")
    return data
