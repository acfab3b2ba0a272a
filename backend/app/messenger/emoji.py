"""What counts as one emoji: a reaction is a single emoji grapheme, nothing else.

The shapes of Unicode's emoji sequences (UTS #51): a pictograph with an optional
presentation selector and skin tone; those joined by ZWJ (families, professions); a
keycap; a flag (two regional indicators); a subdivision flag (a black flag and tags).
Text, digits, spaces, control characters and two emoji side by side are not one.
"""

from __future__ import annotations

import re

MAX_EMOJI_CHARS = 64  # code points (the column's size); the longest real one is ~10

_SKIN = "\U0001f3fb-\U0001f3ff"
# Extended pictographs, without the regional indicators (flags only) and skin tones.
_PICTOGRAPH = (
    "\u00a9\u00ae\u203c\u2049\u2122\u2139\u2194-\u2199\u21a9\u21aa\u231a\u231b\u2328"
    "\u23cf\u23e9-\u23f3\u23f8-\u23fa\u24c2\u25aa\u25ab\u25b6\u25c0\u25fb-\u25fe"
    "\u2600-\u27bf\u2934\u2935\u2b05-\u2b07\u2b1b\u2b1c\u2b50\u2b55\u3030\u303d\u3297"
    "\u3299\U0001f004\U0001f0cf\U0001f170-\U0001f19a\U0001f201-\U0001f251"
    "\U0001f300-\U0001f3fa\U0001f400-\U0001faff"
)
_ELEMENT = f"(?:[{_PICTOGRAPH}]\ufe0f?[{_SKIN}]?\ufe0f?|[0-9#*]\ufe0f?\u20e3)"
_EMOJI = re.compile(
    "(?:"
    "[\U0001f1e6-\U0001f1ff]{2}"  # a flag
    "|\U0001f3f4[\U000e0020-\U000e007e]{1,12}\U000e007f"  # a subdivision flag
    f"|{_ELEMENT}(?:\u200d{_ELEMENT}){{0,9}}"  # one pictograph, or a ZWJ sequence
    ")"
)


def is_one_emoji(value: str) -> bool:
    """Whether the string is exactly one emoji (see the module's note)."""
    return 0 < len(value) <= MAX_EMOJI_CHARS and _EMOJI.fullmatch(value) is not None
