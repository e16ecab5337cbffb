"""Scrubbing: secrets under sensitive keys and credit-card numbers never reach the disk.

Values under keys that contain one of SENSITIVE_KEY_PARTS become "[Filtered]"
(Sentry's default data scrubbing); digit runs that pass the Luhn check are
masked wherever they appear in text. A cheap regex over the encoded JSON
decides whether the walk is needed at all, so clean entries cost one search.
"""
import re

FILTERED = "[Filtered]"
SENSITIVE_KEY_PARTS = ("password", "passwd", "secret", "api_key", "apikey", "auth", "credentials",
                       "private_key", "token", "cookie", "authorization", "session")
_SENSITIVE_KEY = re.compile("|".join(SENSITIVE_KEY_PARTS), re.IGNORECASE)
# Not after a word character, dot or dash: ids such as blk_-6952295868487656571 are not cards.
_CARD = re.compile(r"(?<![\w.-])[2-6](?:[ -]?\d){12,18}(?![\w.])")
_MAYBE = re.compile(("(?i)" + "|".join(SENSITIVE_KEY_PARTS) + r"|\d[\d -]{11,}\d").encode())


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
    if len(text) < 13:
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


def may_need_scrubbing(encoded):
    """True when encoded JSON holds a sensitive key name or a long digit run."""
    return _MAYBE.search(encoded) is not None
