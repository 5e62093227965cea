"""Argument handling shared by every script: the config printer, YAML configs, devices."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

from utils.errors import OptionError


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help keeps the usage docstring as written and shows every option's default once."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default in (argparse.SUPPRESS, "") or not action.option_strings:
            return text
        if action.nargs == 0 or action.default is None:  # a plain switch, or nothing unless given
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def describe_model(path: str, info: dict[str, Any]) -> str:
    """One line: which model file answered, and what it was trained on."""
    model, features, meta = info.get("model_config", {}), info.get("feature_config", {}), info.get("meta") or {}
    parts = [f"{model.get('name', '?')} width {model.get('width', '?')}",
             f"{features.get('feature', '?')} {model.get('feat_dim', '')}".strip()]  # fmt: skip
    if meta.get("train_list"):
        parts.append(f"trained on {meta['train_list']}")
    if meta.get("teacher"):
        parts.append(f"distilled from {meta['teacher']}")
    if isinstance(meta.get("valid_eer"), (int, float)):  # older files stored a test-set "eer": not repeated here
        parts.append(f"validation EER {meta['valid_eer']:.2%}")
    return f"model: {path} ({', '.join(parts)})"


def print_arguments(args: argparse.Namespace) -> None:
    """Print the configuration the way the original scripts did, one `key: value` per line."""
    print("-----------  Configuration Arguments -----------")
    for key, value in sorted(vars(args).items()):
        print(f"{key}: {value}")
    print("------------------------------------------------")


def save_arguments(args: argparse.Namespace, path: str | os.PathLike) -> None:
    """Save the configuration next to a script's outputs (atomic)."""
    from utils.fileio import atomic_write_bytes

    atomic_write_bytes(path, arguments_json(args))


def arguments_json(args: argparse.Namespace) -> bytes:
    """The configuration as save_arguments writes it (for a script that writes it within a set of files)."""
    from utils.fileio import json_bytes

    return json_bytes(vars(args), sort_keys=True, default=str)


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse arguments, taking defaults from `--config file.yaml` when given.

    Precedence: command line > YAML > built-in defaults. Unknown YAML keys are an
    error, so a typo never silently falls back to a default.
    """
    pre, _ = parser.parse_known_args(argv)
    config_path = getattr(pre, "config", None)
    if config_path:
        import yaml

        try:
            loaded = yaml.safe_load(Path(config_path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            parser.error(f"config file not found: {config_path}")
        except yaml.YAMLError as exc:
            parser.error(f"config file {config_path} is not valid YAML: {str(exc).splitlines()[0]}")
        if not isinstance(loaded, dict):
            parser.error(f"config file {config_path} must hold a mapping of option: value")
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(loaded) - known)
        if unknown:
            parser.error(f"unknown key(s) in {config_path}: {', '.join(unknown)}")
        actions = {action.dest: action for action in parser._actions}
        parser.set_defaults(
            **{key: _config_value(parser, actions[key], value, config_path) for key, value in loaded.items()}
        )
    return parser.parse_args(argv)


def _config_value(parser: argparse.ArgumentParser, action: argparse.Action, value: Any, path: str) -> Any:
    """A YAML value checked as the command line checks it: argparse applies `type` only to string defaults
    and never checks `choices` on defaults, so `model: resnet99` or `batch_size: 4.9` reached the code (a
    traceback) where `--model resnet99` is a one-line error."""
    where = f"{action.dest} in {path}"
    if value is None:
        return action.default  # "not set": the built-in default
    if action.nargs == 0:  # a flag (store_true)
        if value not in (True, False):  # also 1 and 0
            parser.error(f"{where} must be true or false, got {value!r}")
        return bool(value)
    many = action.nargs in ("+", "*") or isinstance(action.nargs, int)
    items = value if many and isinstance(value, list) else [value]
    checked = []
    for item in items:
        if item is None or isinstance(item, (list, dict)):
            parser.error(f"{where} must be {'a list of values' if many else 'one value'}, got {value!r}")
        try:
            result = action.type(str(item)) if callable(action.type) else str(item)
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            parser.error(f"{where}: invalid value {item!r} ({exc})")
        if action.choices is not None and result not in action.choices:
            parser.error(f"{where} must be one of {', '.join(map(str, action.choices))}, got {item!r}")
        checked.append(result)
    return checked if many else checked[0]


def str2bool(value: str | bool) -> bool:
    """argparse type for true/false flags written the original way (`--augment True`)."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "y", "on"}:
        return True
    if lowered in {"0", "false", "no", "n", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def resolve_device(name: str) -> Any:
    """`auto` picks CUDA when present, else CPU; asking for CUDA without one is a clear error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not re.fullmatch(r"cuda(:[0-9]+)?", name):
        # torch.device would take "meta" or "mps" here and fail later with a traceback
        raise OptionError(f"--device {name!r} is not one of auto, cpu, cuda, cuda:N")
    if not torch.cuda.is_available():
        raise OptionError("--device cuda was requested but no CUDA GPU is available (use --device cpu or auto)")
    index = int(name.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise OptionError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return torch.device(name)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print a one-line error for the user and exit non-zero (no traceback)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def check_output_file(path: str | os.PathLike | None, flag: str) -> None:
    """Fail before any work when an output file cannot be written there (a folder, or a file as its folder)."""
    if not path:
        return
    target = Path(path)
    if str(path).endswith(("/", os.sep)) or target.is_dir():
        fail(f"{flag} {path} is a folder: give a file name")
    parent = next((p for p in target.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        fail(f"{flag} {path}: {parent} is a file, not a folder")
    _check_writable(parent, flag, path)


def check_output_dir(path: str | os.PathLike | None, flag: str) -> None:
    """Fail before any work when an output folder cannot be created there (an existing file in the way)."""
    if not path:
        return
    target = Path(path)
    blocker = next((p for p in (target, *target.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        fail(f"{flag} {path}: {blocker} is a file, not a folder")
    _check_writable(blocker, flag, path)


def _check_writable(folder: Path | None, flag: str, path: str | os.PathLike) -> None:
    """Fail when nothing can be created in `folder` (read-only, no permission, /proc): found by creating and
    removing a hidden file, as os.access says yes to root and knows nothing of read-only mounts. Checked
    before any work, so a command that changes the library never changes it and then fails on its output."""
    import tempfile

    if folder is None:
        return
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".voiceprint-probe-"):
            pass
    except OSError as error:
        fail(f"{flag} {path}: cannot write in {folder} ({error.strerror or error})")


def check_threshold(value: float | None, flag: str = "--threshold") -> None:
    """Fail in one line unless a cosine threshold is a number in [-1, 1] (5 would answer "no" to every pair)."""
    if value is not None and not (math.isfinite(value) and -1.0 <= value <= 1.0):
        fail(f"{flag} must be a finite cosine similarity, between -1 and 1: got {value}")


def check_ranges(args: argparse.Namespace, ranges: dict[str, tuple[float, float]]) -> None:
    """Fail in one line unless each named option lies in its [lowest, highest] (NaN never does)."""
    for name, (lowest, highest) in ranges.items():
        value = getattr(args, name)
        if value is not None and not lowest <= value <= highest:
            low, high = (f"{x:g}" if isinstance(x, float) else str(x) for x in (lowest, highest))
            fail(f"--{name} must be from {low} to {high}, got {value}")


def check_positive(args: argparse.Namespace, names: tuple[str, ...], allow_zero: tuple[str, ...] = ()) -> None:
    """Fail in one line when a numeric option is out of range (`--batch_size 0` would otherwise crash deep inside)."""
    for name in names:
        value = getattr(args, name)
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            fail(f"--{name} must be a finite number, got {value}")
        if name in allow_zero and value < 0:
            fail(f"--{name} must be 0 or more, got {value}")
        if name not in allow_zero and value <= 0:
            fail(f"--{name} must be greater than 0, got {value}")
