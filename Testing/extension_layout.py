"""What the extension's tests share: its Slicer modules and a small CMake reader (no Slicer needed)."""

from __future__ import annotations

import re
import struct
from pathlib import Path

from pantheon.plugins import plugins

# One Slicer module per model plug-in (pantheon/models/<model>/plugin.py), and the paper its help cites.
MODEL_MODULES = tuple(p.slicer_module for p in plugins() if p.slicer_module)
# Modules that are tools, not models (no plug-in declares them, no paper): reviewing a batch's pseudo-labels.
TOOL_MODULES = ("PantheonReview",)
MODULES = MODEL_MODULES + TOOL_MODULES


# --------------------------------------------------------------------------------------------
# A small CMake reader
# --------------------------------------------------------------------------------------------


class Command:
    def __init__(self, name: str, args: list[str], line: int, conditions: tuple[str, ...]):
        self.name, self.args, self.line, self.conditions = name, args, line, conditions

    def __repr__(self):
        return f"{self.name}({' '.join(self.args)}) @{self.line}"


def _tokenize_cmake(text: str) -> list[tuple[str, list[str], int]]:
    """Return (command name, raw args, line) for every command invocation in ``text``."""
    out, i, n = [], 0, len(text)

    def skip_comment(j):
        if text.startswith("#[[", j):
            end = text.find("]]", j)
            return n if end < 0 else end + 2
        end = text.find("\n", j)
        return n if end < 0 else end

    while i < n:
        c = text[i]
        if c == "#":
            i = skip_comment(i)
        elif c.isalpha() or c == "_":
            m = re.compile(r"[A-Za-z_][A-Za-z0-9_]*").match(text, i)
            name, j = m.group(0), m.end()
            while j < n and text[j] in " \t":
                j += 1
            if j >= n or text[j] != "(":
                i = j
                continue
            line = text.count("\n", 0, i) + 1
            j += 1
            depth, args, cur = 0, [], None
            while j < n:
                ch = text[j]
                if ch == "#":
                    j = skip_comment(j)
                    continue
                if ch == '"':
                    k, buf = j + 1, []
                    while k < n and text[k] != '"':
                        if text[k] == "\\" and k + 1 < n:
                            buf.append(text[k:k + 2])
                            k += 2
                        else:
                            buf.append(text[k])
                            k += 1
                    cur = (cur or "") + "".join(buf)
                    j = k + 1
                    continue
                if ch in " \t\r\n":
                    if cur is not None:
                        args.append(cur)
                        cur = None
                elif ch == "(":
                    depth += 1
                    cur = (cur or "") + ch
                elif ch == ")":
                    if depth == 0:
                        if cur is not None:
                            args.append(cur)
                        j += 1
                        break
                    depth -= 1
                    cur = (cur or "") + ch
                else:
                    cur = (cur or "") + ch
                j += 1
            else:
                raise ValueError(f"unterminated command {name!r} at line {line}")
            out.append((name, args, line))
            i = j
        else:
            i += 1
    return out


def read_cmake(path: Path) -> list[Command]:
    """Commands of one CMakeLists.txt, with ${VAR} expanded from earlier set() calls in the same
    file (enough for these files) and the enclosing if() conditions recorded."""
    variables: dict[str, list[str]] = {}
    conditions: list[str] = []
    cmds = []

    def expand(arg: str) -> list[str]:
        m = re.fullmatch(r"\$\{(\w+)\}", arg)
        if m and m.group(1) in variables:
            return list(variables[m.group(1)])
        return [re.sub(r"\$\{(\w+)\}",
                       lambda mm: ";".join(variables.get(mm.group(1), [mm.group(0)])), arg)]

    for name, raw, line in _tokenize_cmake(path.read_text(encoding="utf-8")):
        lname = name.lower()
        args = [a for r in raw for a in expand(r)]
        if lname == "set" and args:
            variables[args[0]] = args[1:]
        cmds.append(Command(lname, args, line, tuple(conditions)))
        if lname == "if":
            conditions.append(" ".join(args))
        elif lname == "endif" and conditions:
            conditions.pop()
    return cmds


def keyword_args(args: list[str], keywords: set[str]) -> dict[str, list[str]]:
    """Split a macro's arguments into {KEYWORD: values}; flags map to []."""
    out, key = {}, None
    for a in args:
        if a in keywords:
            key = a
            out.setdefault(key, [])
        elif key is not None:
            out[key].append(a)
    return out


def find(cmds, name):
    return [c for c in cmds if c.name == name.lower()]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])
