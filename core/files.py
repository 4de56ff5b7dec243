"""Reading the project's own input files (configs, DeepSpeed configs, model configs): the text
of a file and the line of every JSON key, with one-line errors naming the file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lorarec.core.errors import ConfigError


def _key(path: tuple | list) -> str:
    """``("train", "betas", 1)`` -> ``train.betas[1]``."""
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _read_text(p: Path, what: str) -> str:
    """The UTF-8 text of file ``p``; a missing, unreadable or non-UTF-8 file is a ConfigError."""
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{p}: {what} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a directory, not a {what}") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the {what} ({exc.strerror or exc})") from None
    except ValueError as exc:  # a path with a NUL byte
        raise ConfigError(f"{p!r}: not a valid path ({exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{p}:{line}: not UTF-8 text (byte {exc.start} is 0x{data[exc.start]:02x}); "
            "save the file as UTF-8"
        ) from None


def json_key_lines(text: str, where: str = "JSON") -> dict[tuple, int]:
    """The line of every object key of valid JSON ``text`` by its path (list items by index);
    a key given twice in one object is a ConfigError naming it and both lines."""
    lines: dict[tuple, int] = {}
    stack: list[list] = []  # [is_object, path, {key: line}, current key or index, expect_key]
    line, i, n = 1, 0, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
        elif c == '"':
            j = i + 1
            while text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            top = stack[-1] if stack else None
            if top is not None and top[0] and top[4]:
                key = json.loads(text[i : j + 1])
                if key in top[2]:
                    raise ConfigError(
                        f"{where}:{line}: duplicate key {_key(top[1] + (key,))!r} "
                        f"(first at line {top[2][key]})"
                    )
                top[2][key], top[3], top[4] = line, key, False
                lines[top[1] + (key,)] = line
            i = j
        elif c in "{[":
            path = () if not stack else stack[-1][1] + (stack[-1][3],)
            stack.append([c == "{", path, {}, None if c == "{" else 0, True])
        elif c in "}]":
            stack.pop()
        elif c == "," and stack:
            if stack[-1][0]:
                stack[-1][4] = True
            else:
                stack[-1][3] += 1
        i += 1
    return lines


def read_json_object(path: Path, what: str) -> tuple[dict[str, Any], dict[tuple, int]]:
    """A JSON file that must hold an object, and the line of each of its keys by path.
    Unreadable, non-UTF-8 or invalid JSON, another top-level value or a duplicate key is a
    ConfigError naming the file (and line)."""
    text = _read_text(path, what)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not a {what}: nested too deeply") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: a {what} must be a JSON object, not {_json_kind(obj)}")
    return obj, json_key_lines(text, str(path))


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return "a number"
    return {list: "a list", str: "a string", type(None): "null"}.get(type(value), "a value")
