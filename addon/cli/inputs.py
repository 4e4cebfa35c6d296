"""What commands read from their arguments: a policy or a chat request, from a file, '-'
(stdin) or inline, as JSON or YAML. Problems are `CliError`s (one line, exit 2)."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .render import CliError

YAML_SUFFIXES = (".yaml", ".yml")


def read_arg(value: str, what: str) -> str:
    """The text of a file path, '-' for stdin, or inline JSON."""
    try:
        if value == "-":
            return sys.stdin.read()
        if value.lstrip().startswith(("{", "[")):
            return value
        return Path(value).read_text(encoding="utf-8")
    except OSError as e:
        raise CliError(f"cannot read {what} {value!r}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise CliError(f"cannot read {what} {value!r}: not UTF-8 text") from None


def read_policy(value: str) -> str | Mapping[str, Any]:
    """policy_ir text (JSON, parsed and reported by the policy parser), or the mapping a
    YAML policy decodes to: people who keep their configuration in YAML write policies in it."""
    text = read_arg(value, "policy")
    try:
        json.loads(text)
        return text
    except ValueError:
        pass
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        if value.endswith(YAML_SUFFIXES):
            raise CliError(f"policy {value!r} is not valid YAML: {_one_line(e)}") from None
        return text  # the parser says where the JSON is broken
    return data if isinstance(data, Mapping) else text


def read_request(value: str) -> Mapping[str, Any]:
    """A chat request body (JSON or YAML object) for `rank --request`."""
    text = read_arg(value, "request")
    try:
        data = yaml.safe_load(text)  # YAML is a superset of JSON
    except yaml.YAMLError as e:
        raise CliError(f"request {value!r} is not valid JSON or YAML: {_one_line(e)}") from None
    if not isinstance(data, Mapping):
        raise CliError(f"request {value!r} must be a chat request object like "
                       f'{{"messages": [{{"role": "user", "content": "hi"}}]}}')
    return data


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())
