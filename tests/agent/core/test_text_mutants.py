"""agent.core.text: exact escapes, cuts and descriptions (issue #14)."""

from __future__ import annotations

import pytest

from agent.core.text import CLIP_CHARS, clip, describe


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "plain"),
        ("a\nb\rc\td", "a\\nb\\rc\\td"),
        ("\x00\x1f\x20\x7e\x7f", "\\x00\\x1f ~\\x7f"),
        ("\u2028\u2029\x85é", "\\u2028\\u2029\\x85é"),
        (42, "42"),
    ],
)
def test_clip_escapes(value: object, expected: str) -> None:
    assert clip(value) == expected


def test_clip_cuts_at_the_limit() -> None:
    assert CLIP_CHARS == 200
    assert clip("x" * 200) == "x" * 200
    assert clip("x" * 201) == "x" * 200 + "... (201 chars)"
    assert clip("abcdef", 3) == "abc... (6 chars)"
    assert clip("ab\n", 3) == "ab\\... (3 chars)"  # the escape made it longer than the limit


def test_values_that_cannot_be_turned_into_text() -> None:
    class Bad:
        def __str__(self) -> str:
            raise ValueError("no")

        def __repr__(self) -> str:
            raise RecursionError("deep")

    assert clip(Bad()) == "<Bad>"
    assert describe(Bad()) == "<Bad>"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, "True"),
        (None, "None"),
        (7, "7"),
        (2**640 - 1, repr(2**640 - 1)),
        (2**640, "an integer of about 193 digits"),
        ("s" * 200, "'" + "s" * 199 + "... (202 chars)"),  # the repr's quotes count
        ("s" * 201, f"a string of 201 chars starting {'s' * 40!r}"),
        ("\n" * 201, f"a string of 201 chars starting {clip(chr(10) * 40, 40)!r}"),
        (list(range(20)), repr(list(range(20)))),
        (list(range(21)), "a list of 21 items"),
        (
            {str(n): n for n in range(21)},
            "an object of 21 items",
        ),
        ("a\nb", "'a\\nb'"),
    ],
)
def test_describe(value: object, expected: str) -> None:
    assert describe(value) == expected


def test_describe_clips_to_its_limit() -> None:
    assert describe([1, 2, 3], limit=4) == "[1, ... (9 chars)"
