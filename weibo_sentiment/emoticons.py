"""Emoticons: what counts as one (`EMOTICON_RE`) and `strip_emoticons`, which removes them."""

from __future__ import annotations

import re

# What counts as an emoticon (weibo_senti_100k's labels were derived from them, so evaluation can remove them to
# measure what a model learned from the words, and training can drop them; see `strip_emoticons`).
_BRACKET = r"\[(?!\d+\])[^\[\]\s]{1,10}\]"  # [哈哈] [泪] [good] [din推撞] [?]; not [1] [2013], not 【】
# Unicode emoji, as pictographs: the supplementary pictograph blocks U+1F000-1FAFF whole (😀 🌹 🚀 🤣 🫠, the
# regional indicators of flags 🇨🇳, the skin tones 🏻-🏿), and in the Basic Multilingual Plane the characters that
# Unicode's emoji-data.txt marks Extended_Pictographic (☀ ☺ ♥ ⚡ ✌ ✨ ❤ ❌ ⭐ ...), but for the typographic ones below.
_PICTOGRAPH = ("\u231a\u231b\u2328\u23cf\u23e9-\u23f3\u23f8-\u23fa\u2600-\u2604\u260e\u2611\u2614\u2615\u2618"
               "\u261d\u2620\u2622\u2623\u2626\u262a\u262e\u262f\u2638-\u263a\u2640\u2642\u2648-\u2653\u265f"
               "\u2660\u2663\u2665\u2666\u2668\u267b\u267e\u267f\u2692-\u2697\u2699\u269b\u269c\u26a0\u26a1"
               "\u26a7\u26aa\u26ab\u26b0\u26b1\u26bd\u26be\u26c4\u26c5\u26c8\u26ce\u26cf\u26d1\u26d3\u26d4"
               "\u26e9\u26ea\u26f0-\u26f5\u26f7-\u26fa\u26fd\u2702\u2705\u2708-\u270d\u270f\u2712\u2714\u2716"
               "\u271d\u2721\u2728\u2733\u2734\u2744\u2747\u274c\u274e\u2753-\u2755\u2757\u2763\u2764"
               "\u2795-\u2797\u27a1\u27b0\u27bf\u2934\u2935\u2b05-\u2b07\u2b1b\u2b1c\u2b50\u2b55"
               "\U0001f000-\U0001faff")
# Extended_Pictographic too, but also ordinary typography or CJK text: emoji only with the emoji presentation
# selector U+FE0F after them (©️ ™️ ↔️ ▶️ 〽️ ㊗️); alone (© ™ ↔ ▶ 〽 ㊗) they stay.
_TYPOGRAPHIC = ("\u00a9\u00ae\u203c\u2049\u2122\u2139\u2194-\u2199\u21a9\u21aa\u24c2\u25aa\u25ab\u25b6\u25c0"
                "\u25fb-\u25fe\u3030\u303d\u3297\u3299")
# One emoji: a pictograph, a typographic symbol with U+FE0F, or a keycap (1️⃣ #️⃣); then any variation selectors
# (U+FE0E/FE0F), skin tones (U+1F3FB-1F3FF), keycap mark (U+20E3) and tag characters (U+E0020-E007F, the
# subdivision flags such as Scotland's); and any further emoji joined by ZERO WIDTH JOINER U+200D (👨‍👩‍👧 ❤️‍🔥 🏳️‍🌈).
_ELEMENT = f"(?:[{_PICTOGRAPH}]|[{_TYPOGRAPHIC}]\ufe0f|[0-9#*]\ufe0f?\u20e3)"
_MODIFIERS = "[\ufe0e\ufe0f\u20e3\U0001f3fb-\U0001f3ff\U000e0020-\U000e007f]*"
_EMOJI = f"{_ELEMENT}{_MODIFIERS}(?:\u200d{_ELEMENT}{_MODIFIERS})*"
EMOTICON_RE = re.compile(f"{_BRACKET}|{_EMOJI}")


def strip_emoticons(text: str) -> str:
    """`text` without its emoticons, and without the white space that then begins or ends it.

    What counts (each occurrence is removed whole; nothing else changes):

    - Weibo bracket emoticons: `[`, 1 to 10 characters that are neither white space nor a bracket, `]`, such as
      [哈哈] [泪] [good] [din推撞] [江南style] [?]; except digits only ([1], [2013]: reference numbers). Longer
      or spaced bracketed text ([原文地址：http://...], [高速交通广播 节目预告]) and CJK brackets 【】〔〕 stay.
    - Unicode emoji: every character of U+1F000-1FAFF (😀 🌹 🚀 🤣 🇨🇳 ...); the Extended_Pictographic symbols of
      the Basic Multilingual Plane (☀ ☺ ♥ ⚡ ✌ ✨ ❤ ❌ ⭕ ⭐ ...); © ® ™ ‼ ⁉ ℹ ↔-↙ ↩ ↪ Ⓜ ▪ ▫ ▶ ◀ ◻-◾ 〰 〽 ㊗ ㊙
      and keycaps (1⃣) only as emoji sequences (followed by U+FE0F or U+20E3); each with its variation selectors,
      skin-tone modifiers and tag characters, and whole ZWJ sequences (👨‍👩‍👧, 🏳️‍🌈).
    - Kept: all CJK text and punctuation (，。！？【】《》「」), ★ ☆ → ①, kaomoji such as (^_^) and ASCII smileys
      such as :) (not emoji characters), and white space between words.
    """
    return EMOTICON_RE.sub("", text).strip()
