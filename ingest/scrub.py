"""Scrubbing: secrets under sensitive keys and credit-card numbers never reach the disk.

Values under keys that contain one of SENSITIVE_KEY_PARTS become "[Filtered]"
(Sentry's default data scrubbing); digit runs of card length that pass the
Luhn check are masked wherever they appear in text. It runs on every entry,
so the common case is made cheap: key verdicts are cached, and one pass over
the whole request body tells whether any card number can be in it at all.
"""
import re

FILTERED = "[Filtered]"
SENSITIVE_KEY_PARTS = ("password", "passwd", "secret", "api_key", "apikey", "auth", "credentials",
                       "private_key", "token", "cookie", "authorization", "session")
_SENSITIVE_KEY = re.compile("|".join(SENSITIVE_KEY_PARTS), re.IGNORECASE)
# Not after a word character, dot or dash: ids such as blk_-6952295868487656571 are not cards.
_CARD = re.compile(r"(?<![\w.-])[2-6](?:[ -]?\d){12,18}(?![\w.])")
# Prefilters: a card's first digit starts the pattern, so the regex engine jumps from
# candidate to candidate instead of trying every position.
_CARD_HINT = r"[2-6](?<=[^\w.-][2-6])[\d -]{11,}\d"
_CARD_HINT_BYTES = re.compile(_CARD_HINT.encode())
_CARD_HINT_TEXT = re.compile(_CARD_HINT)


def luhn_ok(digits):
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _issuer_length_ok(digits):
    """Lengths the card networks issue for a leading digit (Visa, Mastercard, Amex, Diners, JCB, Discover...)."""
    first, length = digits[0], len(digits)
    if first == "4":
        return length in (13, 16, 19)
    if first in "25":
        return length == 16
    if first == "3":
        return length in (14, 15, 16, 17, 18, 19)
    return first == "6" and 16 <= length <= 19


def _mask_card(match):
    digits = match.group(0).replace(" ", "").replace("-", "")
    return FILTERED if _issuer_length_ok(digits) and luhn_ok(digits) else match.group(0)


def scrub_text(text):
    if len(text) < 13 or _CARD_HINT_TEXT.search(" " + text) is None:
        return text
    return _CARD.sub(_mask_card, text)


def scrub_value(value):
    """Scrubbed copy of a JSON-like value (dicts, lists, strings)."""
    if isinstance(value, dict):
        return {key: FILTERED if isinstance(key, str) and _SENSITIVE_KEY.search(key) and value[key] not in (None, "")
                else scrub_value(value[key]) for key in value}
    if isinstance(value, list):
        return [scrub_value(item) for item in value]
    if isinstance(value, str):
        return scrub_text(value)
    return value


_key_verdicts = {}  # key -> is it sensitive; keys repeat from entry to entry


def _sensitive(key):
    verdict = _key_verdicts.get(key)
    if verdict is None:
        verdict = bool(_SENSITIVE_KEY.search(key)) if isinstance(key, str) else False
        if len(_key_verdicts) < 50_000:  # bounded: keys made of data must not grow it forever
            _key_verdicts[key] = verdict
            if not verdict:
                _safe_keys.add(key)
    return verdict


_safe_keys = set()  # keys seen and found not sensitive


_CONTAINERS = frozenset((dict, list))


def has_sensitive_key(value):
    """True when a dict at any depth of `value` has a sensitive key (with a value worth hiding).

    Runs on every entry: a flat dict whose keys were all seen before and found safe
    costs two set tests in C.
    """
    if type(value) is dict and _safe_keys.issuperset(value) and _CONTAINERS.isdisjoint(map(type, value.values())):
        return False
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            if not _safe_keys.issuperset(item):
                for key, child in item.items():
                    if child not in (None, "") and _sensitive(key):
                        return True
            stack.extend([child for child in item.values() if type(child) is dict or type(child) is list])
        elif type(item) is list:
            stack.extend([child for child in item if type(child) is dict or type(child) is list])
    return False


def may_hold_card(encoded):
    """True when encoded JSON holds a card-like digit run (checked before Luhn)."""
    return _CARD_HINT_BYTES.search(encoded) is not None


# Digits become "0", spaces and dashes "-", word characters and dots "w", every
# other byte (quotes, punctuation, non-ASCII) "|": card shapes become fixed
# strings that bytes.find() looks for at C speed over a whole request body.
_SHAPE = bytes(ord("0") if 48 <= i <= 57 else ord("-") if i in (32, 45)
               else ord("w") if (65 <= i <= 90 or 97 <= i <= 122 or i in (46, 95)) else ord("|")
               for i in range(256))
_CARD_FIRST_DIGITS = b"23456"
_UNSCRUBBED_ID_KEYS = (b'"trace_id":"', b'"span_id":"')
_CARD_SHAPES = (b"0" * 13, b"0000-0000-0000", b"0000-000000-00000")
_RUN_SHAPES = (0x30, 0x2D)  # "0" and "-" of _SHAPE: digits, spaces and dashes
_CARD_BYTES = re.compile(_CARD.pattern.encode())
_ESCAPE = re.compile(rb"\\.")


def _card_can_start(body, shaped, pos):
    """Can a card match (see _CARD) start where the shape found at `pos` begins?

    Walks back over the digits and dashes before `pos` to where a match could
    start: after a space, a quote or other punctuation, an escape such as \\n,
    or at the start of the body; never after a letter, digit, underscore, dot or
    dash; and only on a digit 2-6.
    """
    start = pos
    while start > 0:
        before = shaped[start - 1]
        if before == 0x2D and body[start - 1] == 0x20:
            return True
        if before != 0x30 and before != 0x2D:
            break
        start -= 1
    if body[start] not in _CARD_FIRST_DIGITS:
        return False  # the run starts with a dash, or a digit no card number starts with
    if start == 0:
        return True
    before = shaped[start - 1]
    if before == 0x77:
        return start >= 2 and body[start - 2] == 0x5C
    # Trace and span ids are stored as sent, never scrubbed: an all-digit id is no reason.
    return before == 0x7C and not body.endswith(_UNSCRUBBED_ID_KEYS, 0, start)


def _card_can_end(shaped, pos):
    """Can a card match end inside the digit run at `pos`? Before a separator, or where
    the run ends on anything but a letter, digit, underscore or dot."""
    end, size = pos, len(shaped)
    while end < size:
        char = shaped[end]
        if char == 0x2D:
            return True
        if char != 0x30:
            return char != 0x77
        end += 1
    return True


def body_may_hold_cards(body):
    """False when no part of this raw request body can hold a card number.

    One pass over the whole body at C speed instead of a regex per entry: digit
    shapes of every card layout, or a \\u escape that could spell digits. Hex ids
    (trace ids, UUIDs) hold long digit runs too, but glued to letters, where no
    card number can start or end: those hits are skipped. In an ASCII body the
    runs left are then matched and Luhn-checked as the scrubber would
    (`_run_holds_card`): a UUID whose first groups are all digits is no reason to
    check every entry of its batch one by one.
    """
    # memchr for the backslash first: most bodies have none, and the two-byte search costs
    # twice the translate below.
    if b"\\" in body and b"\\u" in body:
        return True
    shaped = body.translate(_SHAPE)
    text = None
    for shape in _CARD_SHAPES:
        checked_until = -1  # the end of the last run checked: its other hits need no second look
        pos = shaped.find(shape)
        while pos != -1:
            if pos >= checked_until and _card_can_start(body, shaped, pos) and _card_can_end(shaped, pos):
                if not body.isascii():
                    return True  # str patterns take non-ASCII digits and letters for \d and \w
                if text is None:
                    # Each two-character escape becomes two spaces: offsets stay, and an escaped
                    # quote, tab or newline stays something no card number runs through.
                    text = _ESCAPE.sub(b"  ", body) if b"\\" in body else body
                holds, checked_until = _run_holds_card(text, shaped, pos)
                if holds:
                    return True
            pos = shaped.find(shape, pos + 1)
    return False


def _run_holds_card(text, shaped, pos):
    """(does the run of digits, spaces and dashes around `pos` hold a number the scrubber
    would mask, the offset where the run ends).

    No match of _CARD reaches past such a run, so matching the run alone finds what
    matching each decoded string finds; the lookbehind still sees the byte before it.
    """
    start = pos
    while start > 0 and shaped[start - 1] in _RUN_SHAPES:
        start -= 1
    end = pos
    while end < len(shaped) and shaped[end] in _RUN_SHAPES:
        end += 1
    for match in _CARD_BYTES.finditer(text, start, min(end + 1, len(text))):
        digits = match.group(0).replace(b" ", b"").replace(b"-", b"").decode("ascii")
        if _issuer_length_ok(digits) and luhn_ok(digits):
            return True, end
    return False, end
