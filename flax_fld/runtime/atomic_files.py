"""Files written whole or not at all: to ``PATH.tmp`` first, then renamed over ``PATH``.

A crash (or a kill) mid-write leaves the previous file, or none, never half of one: ``os.replace`` is atomic
on POSIX and Windows when both names are on one file system, which a sibling temporary name guarantees.
"""

import json
import os
from typing import Any


def write_text_atomically(path: str, text: str) -> str:
    """Writes ``text`` (UTF-8) to ``path`` through ``path.tmp``; returns ``path``."""
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)
    return path


def write_json_atomically(path: str, payload: Any, *, indent: int = 2) -> str:
    """``json.dumps(payload, indent=indent)`` written with ``write_text_atomically``; returns ``path``."""
    return write_text_atomically(path, json.dumps(payload, indent=indent))
