"""What the cloud sends, made safe to write into a log line or echo back.

A method name with a newline must not forge a log line; a 250 KB desired value must
not be echoed whole into the log, the twin or a method reply; a 400-digit integer must
not raise while it is being described. :func:`clip` escapes control characters (and
the Unicode line separators) and cuts to :data:`CLIP_CHARS`; :func:`describe` does the
same for any JSON value's ``repr``, bounded before it is even built.
"""

from __future__ import annotations

#: What a cloud-supplied string is cut to in logs and echoes.
CLIP_CHARS = 200
_LINE_BREAKERS = {"\u2028", "\u2029", "\x85"}


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x20 or code == 0x7F or char in _LINE_BREAKERS:
        named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
        return named.get(char, f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}")
    return char


def clip(value: object, limit: int = CLIP_CHARS) -> str:
    """``str(value)`` with control characters escaped, cut to ``limit`` characters."""
    text = value if isinstance(value, str) else _safe_str(value)
    head = text[: limit + 1]
    escaped = "".join(_escape(c) for c in head)
    if len(text) <= limit and len(escaped) <= limit:
        return escaped
    return f"{escaped[:limit]}... ({len(text)} chars)"


def describe(value: object, limit: int = CLIP_CHARS) -> str:
    """A bounded, escaped ``repr`` of a JSON value (type and size for huge ones)."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int) and value.bit_length() > 640:  # over ~190 digits
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    if isinstance(value, str) and len(value) > limit:
        return f"a string of {len(value)} chars starting {clip(value[:40], 40)!r}"
    if isinstance(value, (list, dict)) and len(value) > 20:
        kind = "a list" if isinstance(value, list) else "an object"
        return f"{kind} of {len(value)} items"
    return clip(_safe_repr(value), limit)


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except (ValueError, RecursionError):
        return f"<{type(value).__name__}>"


def _safe_repr(value: object) -> str:
    try:
        return repr(value)
    except (ValueError, RecursionError):
        return f"<{type(value).__name__}>"
