"""One command-line style for every workflow.

Settings are dataclasses: every field has a type (``Literal[...]`` for choices), a default and a
docstring, which is its ``--help`` line. jsonargparse turns them into options, reads
``--config FILE`` (YAML) and prints the whole configuration with ``--print_config``. A mistake
in what was asked ends with one sentence on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import TypeVar

from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings

from datamodules.config import ConfigError
from datamodules.records import DataError

set_parsing_settings(docstring_parse_attribute_docstrings=True)  # field docstrings are the help

Settings = TypeVar("Settings")


class UsageError(Exception):
    """A mistake in what the user asked for; the message is one sentence."""


USER_ERRORS = (UsageError, ConfigError, DataError)
"""Errors whose message is a sentence for the user: printed, and the command exits 2."""


def new_parser(prog: str, description: str) -> ArgumentParser:
    """A parser in the house style: ``--config FILE`` (which also gives ``--print_config``) and no
    exit of its own on a bad value (:func:`parse` turns it into one sentence)."""
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file of settings, applied before the options that follow it")
    return parser


def settings_parser(prog: str, description: str, settings: type, bare_flags: Sequence[str] = ()) -> ArgumentParser:
    """A parser whose options are the fields of the dataclass ``settings``. Each ``bool`` field
    named in ``bare_flags`` may stand alone: ``--quick`` means ``--quick true``."""
    parser = new_parser(prog, description)
    parser.add_class_arguments(settings, None)
    for flag in bare_flags:
        action = parser._option_string_actions[f"--{flag}"]  # jsonargparse alone wants a value
        action.nargs, action.const = "?", True
    return parser


def one_sentence(message: str) -> str:
    """jsonargparse's multi-line report as one line that names the option."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return " ".join(lines).replace('Parser key "', 'option --').replace('":', ":")


def parse_namespace(parser: ArgumentParser, argv: Sequence[str]):
    """The parsed namespace, or :class:`UsageError` with one sentence. ``--help`` and
    ``--print_config`` print and exit 0 as usual."""
    try:
        return parser.parse_args(list(argv))
    except SystemExit:
        raise
    except Exception as error:  # jsonargparse reports bad keys, types and values this way
        raise UsageError(one_sentence(str(error))) from None


def parse(parser: ArgumentParser, argv: Sequence[str], settings: type[Settings]) -> tuple[Settings, dict]:
    """The ``settings`` dataclass from ``argv``, and the remaining (positional) values by name."""
    namespace = parse_namespace(parser, argv).as_dict()
    names = {f.name for f in fields(settings) if f.init}
    values = {k: v for k, v in namespace.items() if k in names}
    rest = {k: v for k, v in namespace.items() if k not in names and k != "config"}
    return settings(**values), rest


def run_main(body: Callable[[], int | None]) -> int:
    """Run a workflow's body; a user error becomes one sentence on stderr and exit code 2."""
    try:
        return body() or 0
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
