import pytest

from asr.text import normalize_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, World!", "hello world"),
        ("  many   spaces\tand\nlines ", "many spaces and lines"),
        ("Don't STOP", "don't stop"),
        ("Don\u2019t 'quote' me", "don't quote me"),  # typographic apostrophe, quotes dropped
        ("the boys' toys", "the boys toys"),  # only apostrophes inside a word are kept
        ("snake_case words", "snake case words"),
        ("\uff21\uff22\uff23 \ufb01ne", "abc fine"),  # NFKC folds full-width letters and ligatures
        ("Café Ünïcode", "café ünïcode"),
        ("...!?", ""),
        ("", ""),
    ],
)
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


def test_normalize_text_is_idempotent():
    text = "Author of the Danger-Trail, Philip Steels, etc."
    assert normalize_text(normalize_text(text)) == normalize_text(text)
