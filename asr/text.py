"""Text normalisation shared by training targets, transcription output and WER scoring.

Scoring a hypothesis against a reference only means something when both went through the
same normalisation as the training transcripts, so every path calls `normalize_text`.
"""

import re
import unicodedata

# Apostrophes stay inside words ("don't"); every other non-alphanumeric character separates words.
_SEPARATORS = re.compile(r"[^\w']+|_")
_LONE_APOSTROPHES = re.compile(r"(?<!\w)'|'(?!\w)")
_TYPOGRAPHIC_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})


def normalize_text(text: str) -> str:
    """Lower-case, NFKC-fold, drop punctuation (keeping in-word apostrophes) and collapse spaces.

    >>> normalize_text("  Author of the Danger-Trail, Philip Steels, etc. ")
    'author of the danger trail philip steels etc'
    >>> normalize_text("Don\u2019t 'quote' me")
    "don't quote me"
    """
    text = unicodedata.normalize("NFKC", text).translate(_TYPOGRAPHIC_APOSTROPHES).lower()
    text = _SEPARATORS.sub(" ", text)
    text = _LONE_APOSTROPHES.sub(" ", text)
    return " ".join(text.split())
