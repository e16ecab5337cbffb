"""Online log-message template mining: group messages that have no stack trace.

`mask` replaces the obviously variable parts of a message (numbers, ids, IPs,
paths, ...) with `<*>`; `TemplateMiner` then clusters the masked messages
online, Drain-style: candidates share the token count, a message joins the most
similar candidate, and positions where the two differ become `<*>`.
"""
import hashlib
import re

WILDCARD = "<*>"

# (pattern, substring the message must hold for the pattern to apply, needs a digit).
# The gates skip most patterns for most messages: masking is the hot path.
# Order matters: wide patterns (URLs, timestamps, IPs) first, so that the
# number rule at the end does not cut them into pieces.
_HEX = r"[0-9a-fA-F]"
_DAYS = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_MONTHS = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_MASKS = [
    (r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s,;\"'<>)\]]*", "://", False),                  # URL
    (r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[a-zA-Z]{2,}\b", "@", False),                   # email
    (r"\b{h}{{8}}-{h}{{4}}-{h}{{4}}-{h}{{4}}-{h}{{12}}\b".format(h=_HEX), "-", True),  # UUID
    # ctime / syslog: "Sun Jul 24 03:15:55 2005", "Jul 24 03:15:55"
    (r"\b(?:{d},?\s+)?{m}\s+\d{{1,2}},?\s+(?:\d{{4}}\s+)?\d\d:\d\d(?::\d\d(?:[.,]\d+)?)?"
     r"(?:\s+[A-Z]{{3,4}})?(?:\s+\d{{4}})?\b".format(d=_DAYS, m=_MONTHS), ":", True),
    (r"\b\d{4}-\d\d-\d\d(?:[T ]\d\d:\d\d(?::\d\d(?:[.,]\d+)?)?(?:Z|[+-]\d\d:?\d\d)?)?\b", "-", True),  # ISO
    (r"\b(?:{h}{{2}}[:-]){{5,}}{h}{{2}}\b".format(h=_HEX), "", True),                   # MAC, EUI
    (r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?(?![\w.])", ".", True),              # IPv4[:port]
    (r"(?<![\w:.])(?=[\[:0-9a-fA-F]*\d)\[?(?:{h}{{0,4}}:){{2,7}}{h}{{0,4}}\]?(?::\d+)?(?![\w:])"
     .format(h=_HEX), ":", True),                                                        # IPv6, h:m:s
    (r"\b\d{1,2}:\d\d(?::\d\d(?:[.,]\d+)?)?\b", ":", True),                             # time of day
    (r"(?<![\w.])\d{1,4}[/.-]\d{1,2}[/.-]\d{2,4}(?![\w.])", "", True),                  # other dates
    (r"(?:(?<=[\s=(\[\"':,])|^)(?:~|\.{1,2})?(?:/[\w.@%+~$#-]+)+/?", "/", False),      # absolute path
    (r"(?<![\w/])[\w.-]+(?:/[\w.@%+~$#-]+){2,}/?", "/", False),                         # relative a/b/c
    (r"\b[a-zA-Z]:\\[^\s]*", ":\\", False),                                             # Windows path
    (r"\b0[xX]{h}+\b|\b(?=[a-fA-F]*\d)(?=\d*[a-fA-F]){h}{{8,}}\b".format(h=_HEX), "", True),  # hex
    # Durations and sizes: "12ms", "9.2 KB", "<1 sec"; the unit goes too, as its
    # scale changes with the value.
    (r"(?<![\w.])[<>~]?\d+(?:\.\d+)?(?:(?:ns|us|µs|ms|s|m|h|d|[kKMGTP]i?[bB]|[bB])"
     r"|\s?(?:nanos|micros|millis|sec|secs|seconds?|mins?|minutes?|hours?|days?|bytes?|"
     r"[kKMGTP]i?B|B))(?![\w.])", "", True),
    (r"(?<!\w)'[^'\n]*'(?!\w)", "'", False),                                            # quoted values
    (r"(?<!\w)\"[^\"\n]*\"(?!\w)", '"', False),
    (r"(?<![A-Za-z0-9])[-+]?\d+(?:[.,]\d+)*(?![A-Za-z0-9])", "", True),                # numbers
]
_MASK_RE = [(re.compile(pattern), gate, digit) for pattern, gate, digit in _MASKS]
# key=value: the value goes, the key stays (it names the field).
_KEY_VALUE_RE = re.compile(r"(\b[\w.-]+=)(?!<\*>)[^\s,;&)\]}]+")
_DIGIT_RE = re.compile(r"\d")


def mask(message: str) -> str:
    digits = _DIGIT_RE.search(message) is not None
    for pattern, gate, digit in _MASK_RE:
        if (digits or not digit) and gate in message:
            message = pattern.sub(WILDCARD, message)
    if "=" in message:
        message = _KEY_VALUE_RE.sub(r"\1" + WILDCARD, message)
    return message


def _tokens(masked):
    """Whitespace tokens; a run of tokens made only of placeholders and punctuation
    ("<*>", "(<*>)", "<*>:<*>,") becomes one "<*>": a variable that spans several
    tokens ("9.2 KB", "1 (2 KB)", a list) must not change the token count."""
    tokens = []
    for token in masked.split():
        if _WILD_ONLY_RE.fullmatch(token):
            if tokens and tokens[-1] == WILDCARD:
                continue
            token = WILDCARD
        tokens.append(token)
    return tokens


_WILD_ONLY_RE = re.compile(r"[^\w<]*(?:<\*>[^\w<]*)+")
def _variable(token):
    return WILDCARD in token or _DIGIT_RE.search(token) is not None


def cluster_id(template):
    return hashlib.sha1(template.encode("utf-8")).hexdigest()[:16]


class _Cluster:
    __slots__ = ("id", "tokens", "size")

    def __init__(self, cid, tokens, size):
        self.id, self.tokens, self.size = cid, tokens, size


class TemplateMiner:
    threshold = 0.75

    def __init__(self):
        self._clusters = {}        # id -> _Cluster, in creation order
        self._index = {}           # (token count, first token or <*>) -> [_Cluster]

    @staticmethod
    def _key(tokens):
        first = tokens[0] if tokens else ""
        return len(tokens), WILDCARD if _variable(first) else first

    def _insert(self, cluster):
        self._clusters[cluster.id] = cluster
        self._index.setdefault(self._key(cluster.tokens), []).append(cluster)

    def _candidates(self, tokens):
        count, first = self._key(tokens)
        found = list(self._index.get((count, first), ()))
        if first != WILDCARD:
            found += self._index.get((count, WILDCARD), ())
        return found

    wild_neutral = True

    def _similarity(self, template, tokens):
        """Jaccard over the constant positions: equal tokens count for, a constant
        facing anything else against; variable facing variable is neutral."""
        same = total = 0
        for mine, theirs in zip(template, tokens):
            if mine == theirs:
                if mine != WILDCARD:
                    same += 1
                    total += 1
            elif mine == WILDCARD and self.wild_neutral:
                continue
            elif not (_variable(mine) and _variable(theirs)):
                total += 1
        return same / total if total else 0.0

    def _match(self, tokens):
        best, best_score = None, -1.0
        for cluster in self._candidates(tokens):
            score = self._similarity(cluster.tokens, tokens)
            if score > best_score:
                best, best_score = cluster, score
        return best if best_score >= self.threshold else None

    def add(self, message: str) -> tuple[str, bool]:
        tokens = _tokens(mask(message))
        cluster = self._match(tokens)
        if cluster is None:
            cluster = _Cluster(cluster_id(" ".join(tokens)), tokens, 1)
            self._insert(cluster)
            return cluster.id, True
        cluster.size += 1
        merged = [mine if mine == theirs else WILDCARD for mine, theirs in zip(cluster.tokens, tokens)]
        if merged == cluster.tokens:
            return cluster.id, False
        self._move(cluster, merged)
        return cluster.id, True

    def _move(self, cluster, tokens):
        old_key, new_key = self._key(cluster.tokens), self._key(tokens)
        cluster.tokens = tokens
        if old_key != new_key:
            self._index[old_key].remove(cluster)
            self._index.setdefault(new_key, []).append(cluster)

    def template(self, cluster_id: str) -> str:
        return " ".join(self._clusters[cluster_id].tokens)

    def clusters(self) -> list[tuple[str, str, int]]:
        return [(c.id, " ".join(c.tokens), c.size) for c in self._clusters.values()]

    @classmethod
    def from_clusters(cls, rows):
        miner = cls()
        for cid, template, size in rows:
            miner._insert(_Cluster(cid, template.split(), size))
        return miner
