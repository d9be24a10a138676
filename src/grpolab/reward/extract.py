"""Answer extraction: the content of the final ``\\boxed{...}`` of a response, in one linear pass.

    from grpolab.reward.extract import extract_answer
    extract_answer("so \\boxed{\\frac{1}{2}}")   # -> ("\\frac{1}{2}", "ok")

Only the text after the last ``</think>`` counts; ``\\boxed{...}``, ``\\boxed {...}`` and ``\\fbox{...}``
are recognised; escaped braces are not groups; a box whose whole content is another box is unwrapped.
Linear in the response length however deep boxes nest (``\\boxed{`` 100,000 deep: under a second),
so it runs in the caller without a time bound (`grpolab.reward.math_reward` bounds verification in workers).
"""
from __future__ import annotations

import re

#: Reasons :func:`extract_answer` can return.
EXTRACT_REASONS: tuple[str, ...] = ("ok", "no_box", "empty_box", "unbalanced_box")

_THINK_CLOSE = "</think>"
_BOX_COMMANDS = ("boxed", "fbox")
_SPECIAL = re.compile(r"[\\{}]")  # only used to jump to the next interesting character
_SPACE = " \t\r\n"


# ----------------------------------------------------------------------------------------------
# extraction
# ----------------------------------------------------------------------------------------------
def _scan_last_box(text: str) -> tuple[str, int, int, int]:
    """Find the last top-level box in ``text`` in one left-to-right pass.

    Returns ``(status, cmd_start, content_start, content_end)`` where status is ``"ok"``,
    ``"no_box"`` or ``"unbalanced_box"``. Backslash escapes (``\\{``, ``\\}``, ``\\\\``) are not braces.
    A box nested inside another box is part of the outer box's content. When the last box that was
    opened at top level never closes, the result is ``unbalanced_box``.
    """
    n = len(text)
    depth = 0
    open_depth = -1  # depth at which the current top-level box was opened (-1: none open)
    open_cmd = open_content = 0
    last: tuple[int, int, int] | None = None
    pos = 0
    search = _SPECIAL.search
    while True:
        m = search(text, pos)
        if m is None:
            break
        i = m.start()
        c = text[i]
        if c == "\\":
            j = i + 1
            name_end = -1
            for name in _BOX_COMMANDS:
                if text.startswith(name, j):
                    name_end = j + len(name)
                    break
            if name_end >= 0 and not (name_end < n and text[name_end].isalpha()):
                k = name_end
                while k < n and text[k] in _SPACE:
                    k += 1
                if k < n and text[k] == "{":
                    if open_depth < 0:
                        open_depth, open_cmd, open_content = depth, i, k + 1
                    pos = k  # the "{" itself is counted on the next round
                    continue
                pos = name_end
                continue
            pos = i + 2  # skip the escaped character (\{ \} \\ or a command's first letter)
        elif c == "{":
            depth += 1
            pos = i + 1
        else:  # "}"
            if depth > 0:
                depth -= 1
            if open_depth >= 0 and depth == open_depth:
                last = (open_cmd, open_content, i)
                open_depth = -1
            pos = i + 1
    if open_depth >= 0:
        return "unbalanced_box", open_cmd, open_content, n
    if last is None:
        return "no_box", -1, -1, -1
    return ("ok",) + last


def extract_answer(response: str) -> tuple[str | None, str]:
    """Return ``(content, reason)`` for the last ``\\boxed{...}`` of the final answer part.

    Only the text after the last ``</think>`` is searched when the response has one (a box inside
    the reasoning does not count). ``\\boxed{...}``, ``\\boxed {...}`` and ``\\fbox{...}`` are
    recognised; a box whose whole content is another box is unwrapped. ``reason`` is one of
    :data:`EXTRACT_REASONS`; ``content`` is ``None`` unless reason is ``"ok"``.
    """
    if not isinstance(response, str):
        return None, "no_box"
    cut = response.rfind(_THINK_CLOSE)
    text = response[cut + len(_THINK_CLOSE):] if cut >= 0 else response
    status, _, start, end = _scan_last_box(text)
    if status != "ok":
        return None, status
    start, end = _unwrap(text, start, end)  # \boxed{\boxed{x}} -> x
    if start >= end:
        return None, "empty_box"
    return text[start:end], "ok"


def _strip(text: str, s: int, e: int) -> tuple[int, int]:
    while s < e and text[s].isspace():
        s += 1
    while e > s and text[e - 1].isspace():
        e -= 1
    return s, e


def _unwrap(text: str, s: int, e: int) -> tuple[int, int]:
    """Bounds of ``text[s:e]`` stripped, with every box whose whole content is another box unwrapped.

    Linear in ``e - s`` however deep the nesting: each ``{``'s matching ``}`` is found in one pass
    (escapes as in :func:`_scan_last_box`), then layers are peeled by index, never by re-scanning."""
    s, e = _strip(text, s, e)
    if not text.startswith(("\\boxed", "\\fbox"), s, e):
        return s, e
    close: dict[int, int] = {}
    stack: list[int] = []
    pos = s
    search = _SPECIAL.search
    while (m := search(text, pos, e)) is not None:
        i = m.start()
        c = text[i]
        if c == "\\":
            pos = i + 2
            continue
        if c == "{":
            stack.append(i)
        elif stack:
            close[stack.pop()] = i
        pos = i + 1
    while True:
        name_end = next((s + 1 + len(n) for n in _BOX_COMMANDS if text.startswith("\\" + n, s, e)), -1)
        if name_end < 0 or (name_end < e and text[name_end].isalpha()):
            return s, e
        k = name_end
        while k < e and text[k] in _SPACE:
            k += 1
        if k >= e or text[k] != "{" or close.get(k) != e - 1:
            return s, e
        s, e = _strip(text, k + 1, e - 1)
