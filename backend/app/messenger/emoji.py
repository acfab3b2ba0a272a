"""What counts as one emoji: a reaction is a single emoji grapheme, nothing else.

The shapes of Unicode's emoji sequences (UTS #51): an emoji with an optional
presentation selector or skin tone; up to four of those joined by ZWJ (families,
couples, professions); a keycap; a flag (two regional indicators); a subdivision flag (a
black flag and tags). Each element is a character with the Emoji property: symbols that
only look alike (✓), unassigned code points, text, digits, spaces, control characters
and two emoji side by side are not one.

One emoji is one reaction however its presentation selectors (U+FE0F) were written: it
is kept in one canonical form, every selector dropped and one put back after each
character that is shown as text unless asked (❤️, ©️, 1️⃣), but not before a skin tone.
"""

from __future__ import annotations

import re

MAX_EMOJI_CHARS = 64  # code points (the column's size); the longest real one is ~10
MAX_JOINED = 4  # elements of a ZWJ sequence: a family of four, a kiss

_SKIN = "\U0001f3fb-\U0001f3ff"
# Characters with the Emoji property (emoji-data.txt), without the digits, # and *
# (keycaps only), the regional indicators (flags only) and the skin tones.
_PICTOGRAPH = (
    "\u00a9\u00ae\u203c\u2049\u2122\u2139\u2194-\u2199\u21a9\u21aa\u231a\u231b\u2328"
    "\u23cf\u23e9-\u23f3\u23f8-\u23fa\u24c2\u25aa\u25ab\u25b6\u25c0\u25fb-\u25fe"
    "\u2600-\u2604\u260e\u2611\u2614\u2615\u2618\u261d\u2620\u2622\u2623\u2626\u262a"
    "\u262e\u262f\u2638-\u263a\u2640\u2642\u2648-\u2653\u265f\u2660\u2663\u2665\u2666"
    "\u2668\u267b\u267e\u267f\u2692-\u2697\u2699\u269b\u269c\u26a0\u26a1\u26a7\u26aa"
    "\u26ab\u26b0\u26b1\u26bd\u26be\u26c4\u26c5\u26c8\u26ce\u26cf\u26d1\u26d3\u26d4"
    "\u26e9\u26ea\u26f0-\u26f5\u26f7-\u26fa\u26fd\u2702\u2705\u2708-\u270d\u270f\u2712"
    "\u2714\u2716\u271d\u2721\u2728\u2733\u2734\u2744\u2747\u274c\u274e\u2753-\u2755"
    "\u2757\u2763\u2764\u2795-\u2797\u27a1\u27b0\u27bf\u2934\u2935\u2b05-\u2b07\u2b1b"
    "\u2b1c\u2b50\u2b55\u3030\u303d\u3297\u3299"
    "\U0001f004\U0001f0cf\U0001f170\U0001f171\U0001f17e\U0001f17f\U0001f18e"
    "\U0001f191-\U0001f19a\U0001f201\U0001f202\U0001f21a\U0001f22f\U0001f232-\U0001f23a"
    "\U0001f250\U0001f251\U0001f300-\U0001f321\U0001f324-\U0001f393\U0001f396\U0001f397"
    "\U0001f399-\U0001f39b\U0001f39e-\U0001f3f0\U0001f3f3-\U0001f3f5\U0001f3f7-\U0001f3fa"
    "\U0001f400-\U0001f4fd\U0001f4ff-\U0001f53d\U0001f549-\U0001f54e\U0001f550-\U0001f567"
    "\U0001f56f\U0001f570\U0001f573-\U0001f57a\U0001f587\U0001f58a-\U0001f58d\U0001f590"
    "\U0001f595\U0001f596\U0001f5a4\U0001f5a5\U0001f5a8\U0001f5b1\U0001f5b2\U0001f5bc"
    "\U0001f5c2-\U0001f5c4\U0001f5d1-\U0001f5d3\U0001f5dc-\U0001f5de\U0001f5e1\U0001f5e3"
    "\U0001f5e8\U0001f5ef\U0001f5f3\U0001f5fa-\U0001f64f\U0001f680-\U0001f6c5"
    "\U0001f6cb-\U0001f6d2\U0001f6d5-\U0001f6d7\U0001f6dc-\U0001f6e5\U0001f6e9\U0001f6eb"
    "\U0001f6ec\U0001f6f0\U0001f6f3-\U0001f6fc\U0001f7e0-\U0001f7eb\U0001f7f0"
    "\U0001f90c-\U0001f93a\U0001f93c-\U0001f945\U0001f947-\U0001f9ff\U0001fa70-\U0001fa7c"
    "\U0001fa80-\U0001fa89\U0001fa8f-\U0001fac6\U0001face-\U0001fadc\U0001fadf-\U0001fae9"
    "\U0001faf0-\U0001faf8"
)
# Of those, the ones shown as text unless a selector asks for an emoji (the Emoji
# property without Emoji_Presentation), and the keycaps' bases.
_TEXT_DEFAULT = (
    "0-9#*\u00a9\u00ae\u203c\u2049\u2122\u2139\u2194-\u2199\u21a9\u21aa\u2328\u23cf"
    "\u23ed-\u23ef\u23f1\u23f2\u23f8-\u23fa\u24c2\u25aa\u25ab\u25b6\u25c0\u25fb\u25fc"
    "\u2600-\u2604\u260e\u2611\u2618\u261d\u2620\u2622\u2623\u2626\u262a\u262e\u262f"
    "\u2638-\u263a\u2640\u2642\u265f\u2660\u2663\u2665\u2666\u2668\u267b\u267e"
    "\u2692\u2694-\u2697\u2699\u269b\u269c\u26a0\u26a7\u26b0\u26b1\u26c8\u26cf\u26d1"
    "\u26d3\u26e9\u26f0\u26f1\u26f4\u26f7-\u26f9\u2702\u2708\u2709\u270c\u270d\u270f"
    "\u2712\u2714\u2716\u271d\u2721\u2733\u2734\u2744\u2747\u2763\u2764\u27a1\u2934"
    "\u2935\u2b05-\u2b07\u3030\u303d\u3297\u3299"
    "\U0001f170\U0001f171\U0001f17e\U0001f17f\U0001f202\U0001f237\U0001f321"
    "\U0001f324-\U0001f32c\U0001f336\U0001f37d\U0001f396\U0001f397\U0001f399-\U0001f39b"
    "\U0001f39e\U0001f39f\U0001f3cb-\U0001f3ce\U0001f3d4-\U0001f3df\U0001f3f3\U0001f3f5"
    "\U0001f3f7\U0001f43f\U0001f441\U0001f4fd\U0001f549\U0001f54a\U0001f56f\U0001f570"
    "\U0001f573-\U0001f579\U0001f587\U0001f58a-\U0001f58d\U0001f590\U0001f5a5\U0001f5a8"
    "\U0001f5b1\U0001f5b2\U0001f5bc\U0001f5c2-\U0001f5c4\U0001f5d1-\U0001f5d3"
    "\U0001f5dc-\U0001f5de\U0001f5e1\U0001f5e3\U0001f5e8\U0001f5ef\U0001f5f3\U0001f5fa"
    "\U0001f6cb\U0001f6cd-\U0001f6cf\U0001f6e0-\U0001f6e5\U0001f6e9\U0001f6f0\U0001f6f3"
)
# At most one selector, or a skin tone, per element.
_ELEMENT = f"(?:[{_PICTOGRAPH}](?:\ufe0f|[{_SKIN}])?|[0-9#*]\ufe0f?\u20e3)"
_EMOJI = re.compile(
    "(?:"
    "[\U0001f1e6-\U0001f1ff]{2}"  # a flag
    "|\U0001f3f4[\U000e0020-\U000e007e]{1,12}\U000e007f"  # a subdivision flag
    f"|{_ELEMENT}(?:\u200d{_ELEMENT}){{0,{MAX_JOINED - 1}}}"  # one emoji, or a ZWJ sequence
    ")"
)
_WANTS_SELECTOR = re.compile(f"[{_TEXT_DEFAULT}](?![{_SKIN}])")


def canonical_emoji(value: str) -> str | None:
    """The emoji in its canonical form (see the module's note), or None when the string
    is not exactly one emoji."""
    if not 0 < len(value) <= MAX_EMOJI_CHARS or _EMOJI.fullmatch(value) is None:
        return None
    return _WANTS_SELECTOR.sub("\\g<0>\ufe0f", value.replace("\ufe0f", ""))


def is_one_emoji(value: str) -> bool:
    """Whether the string is exactly one emoji (see the module's note)."""
    return canonical_emoji(value) is not None
