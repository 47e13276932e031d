"""How mod_audio_stream reads its API arguments: FreeSWITCH's tokenizer and the module's URL check.

``uuid_audio_stream`` splits its argument line with ``switch_separate_string`` (blank-delimited,
single quotes group, backslash escapes, the last slot takes the rest of the line: this is how
metadata with blanks survives) and accepts a URL only if ``validate_ws_uri`` does
(``mod_audio_stream.c``, ``audio_streamer_glue.cpp``).
"""
from __future__ import annotations

__all__ = ["separate_string", "validate_ws_uri"]

_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "s": " ", "'": "'", '"': '"', "\\": "\\"}


def separate_string(text: str, max_args: int) -> list[str]:
    """FreeSWITCH's blank-delimited ``switch_separate_string``: single quotes group (and are removed),
    backslash escapes, and the last slot takes the rest of the line."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n and len(out) < max_args:
        while i < n and text[i] == " ":
            i += 1
        start, quoted = i, False
        if len(out) == max_args - 1:
            i = n
        while i < n and (quoted or text[i] != " "):
            if text[i] == "\\":
                i += 1
            elif text[i] == "'":
                quoted = not quoted
            i += 1
        out.append(_cleanup(text[start:i]))
    return out


def _cleanup(token: str) -> str:
    out, quoted, i = [], False, 0
    while i < len(token):
        c = token[i]
        if c == "\\" and token[i + 1:i + 2] in _ESCAPES:
            i += 1
            out.append(_ESCAPES[token[i]])
        elif c == "'" and (quoted or "'" in token[i + 1:]):
            quoted = not quoted
        else:
            out.append(c)
        i += 1
    return "".join(out).rstrip(" ")


def validate_ws_uri(url: str) -> bool:
    """``validate_ws_uri``: ws:// or wss://, host of [A-Za-z0-9.-], optional all-digit port before ``/``."""
    for scheme in ("ws://", "wss://"):
        if url.startswith(scheme):
            rest = url[len(scheme):]
            break
    else:
        return False
    host_end = 0
    while host_end < len(rest) and rest[host_end] not in ":/":
        if not (rest[host_end].isascii() and (rest[host_end].isalnum() or rest[host_end] in "-.")):
            return False
        host_end += 1
    if host_end == 0:
        return False
    if rest[host_end:host_end + 1] == ":":
        port = rest[host_end + 1:].split("/", 1)[0]
        return all(c.isascii() and c.isdigit() for c in port)
    return True
