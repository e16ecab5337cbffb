"""Online log-message template mining: group messages that have no stack trace.

`mask` replaces the obviously variable parts of a message (numbers, ids, IPs,
paths, ...) with `<*>`; `TemplateMiner` then clusters the masked messages
online, Drain-style: candidates share the token count, a message joins the most
similar candidate, and positions where the two differ become `<*>`.
"""
import hashlib
import re
from operator import eq

WILDCARD = "<*>"

# (pattern, substring the message must hold for the pattern to apply, needs a digit[, hint]).
# The gates skip most patterns for most messages: masking is the hot path. A hint is a
# regular expression that matches wherever the pattern does (a necessary part of any match)
# and starts with a character class: Python's re then jumps from candidate to candidate in
# C, where a pattern that starts with a look-behind or \b is tried at every position (or a
# test in C, such as a count of separators). Each hinted pattern runs only on a message
# where its hint holds; the result is the same (tests/test_ingest_templates.py).
# Order matters: wide patterns (URLs, timestamps, IPs) first, so that the
# number rule at the end does not cut them into pieces. A pattern that starts
# with a repeated class has a look-behind on that class: it may only start where
# a run starts, which keeps the scan linear on hostile input.
_HEX = r"[0-9a-fA-F]"
_DAYS = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_MONTHS = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_MASKS = [
    # What the sidecar's scrubber (or another) left in place of a value.
    (r"[-+]?\[(?:Filtered|REDACTED|Redacted|redacted)\]", "[", False),
    (r"(?<![\w+.-])[a-zA-Z][a-zA-Z0-9+.-]*://[^\s,;\"'<>)\]]*", "://", False),                  # URL
    (r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[a-zA-Z]{2,}\b", "@", False),                   # email
    (r"\b{h}{{8}}-{h}{{4}}-{h}{{4}}-{h}{{4}}-{h}{{12}}\b".format(h=_HEX), "-", True,
     r"{h}{{8}}-{h}{{4}}-".format(h=_HEX)),                                                # UUID
    # ctime / syslog: "Sun Jul 24 03:15:55 2005", "Jul 24 03:15:55"
    (r"\b(?:{d},?\s+)?{m}\s+\d{{1,2}},?\s+(?:\d{{4}}\s+)?\d\d:\d\d(?::\d\d(?:[.,]\d+)?)?"
     r"(?:\s+[A-Z]{{3,4}})?(?:\s+\d{{4}})?\b".format(d=_DAYS, m=_MONTHS), ":", True,
     r"[ADFJMNOS](?:an|eb|ar|pr|ay|un|ul|ug|ep|ct|ov|ec)\s"),
    (r"\b\d{4}-\d\d-\d\d(?:[T ]\d\d:\d\d(?::\d\d(?:[.,]\d+)?)?(?:Z|[+-]\d\d:?\d\d)?)?\b", "-", True,
     r"\d-\d\d-\d"),  # ISO
    (r"(?<![\w:-])(?:{h}{{2}}[:-]){{5,}}{h}{{2}}\b".format(h=_HEX), "", True,
     lambda message: message.count(":") + message.count("-") >= 5),                       # MAC, EUI
    (r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?(?![\w.])", ".", True, r"\d\.\d"),  # IPv4[:port]
    (r"(?<![\w:.])(?=[\[:0-9a-fA-F]{{0,41}}\d)\[?(?:{h}{{0,4}}:){{2,7}}{h}{{0,4}}\]?(?::\d+)?(?![\w:])"
     .format(h=_HEX), ":", True, r":{h}{{0,4}}:".format(h=_HEX)),                      # IPv6, h:m:s
    (r"\b\d{1,2}:\d\d(?::\d\d(?:[.,]\d+)?)?\b", ":", True, r"\d:\d\d"),                # time of day
    (r"(?<![\w.])\d{1,4}[/.-]\d{1,2}[/.-]\d{2,4}(?![\w.])", "", True, r"\d[/.-]\d{1,2}[/.-]\d"),  # other dates
    (r"(?:(?<=[\s=(\[\"':,])|^)(?:~|\.{1,2})?(?:/[\w.@%+~$#-]+)+/?", "/", False),      # absolute path
    (r"(?<![\w./-])[\w.-]+(?:/[\w.@%+~$#-]+){2,}/?", "/", False),                         # relative a/b/c
    (r"\b[a-zA-Z]:\\[^\s]*", ":\\", False),                                             # Windows path
    (r"\b0[xX]{h}+\b|\b(?=[a-fA-F]*\d)(?=\d*[a-fA-F]){h}{{8,}}\b".format(h=_HEX), "", True,
     r"{h}(?:[xX]|{h}{{6}}){h}".format(h=_HEX)),                                           # hex
    # Durations and sizes: "12ms", "9.2 KB", "<1 sec"; the unit goes too, as its
    # scale changes with the value.
    (r"(?<![\w.])[<>~]?\d+(?:\.\d+)?(?:(?:ns|us|µs|ms|s|m|h|d|[kKMGTP]i?[bB]|[bB])"
     r"|\s?(?:nanos|micros|millis|sec|secs|seconds?|mins?|minutes?|hours?|days?|bytes?|"
     r"[kKMGTP]i?B|B))(?![\w.])", "", True, r"\d\s?[nuµmshdkKMGTPbB]"),
    (r"(?<!\w)'[^'\n]*'(?!\w)", "'", False),                                            # quoted values
    (r"(?<!\w)\"[^\"\n]*\"(?!\w)", '"', False),
    # Numbers. Written to start with a character class so that re skips to the candidates:
    # (?<![A-Za-z0-9])[-+]?\d+(?:[.,]\d+)*(?![A-Za-z0-9]), the first character taken before
    # the look-behind.
    (r"[-+\d](?<![A-Za-z0-9].)(?:(?<=\d)\d*|(?<=[-+])\d+)(?:[.,]\d+)*(?![A-Za-z0-9])", "", True),
]
_MASK_RE = [(re.compile(pattern), gate, digit,
             None if not hint else re.compile(hint[0]).search if isinstance(hint[0], str) else hint[0])
            for pattern, gate, digit, *hint in _MASKS]
# key=value: the value goes, the key stays (it names the field).
_KEY_VALUE_RE = re.compile(r"((?<![\w.-])[\w.-]+=)(?!<\*>)[^\s,;&)\]}]+")
_DIGIT_RE = re.compile(r"\d")


def mask(message: str) -> str:
    """The message with its variable parts replaced by <*>; pure, deterministic."""
    digits = _DIGIT_RE.search(message) is not None
    for pattern, gate, digit, hint in _MASK_RE:
        if (digits or not digit) and gate in message and (hint is None or hint(message)):
            message = pattern.sub(WILDCARD, message)
    if "=" in message:
        message = _KEY_VALUE_RE.sub(r"\1" + WILDCARD, message)
    return message


_WILD_ONLY_RE = re.compile(r"[^\w<]*(?:<\*>[^\w<]*)+")


def _tokens(masked):
    """Whitespace tokens; a token made only of placeholders and punctuation ("<*>",
    "(<*>)", "<*>:<*>,") becomes "<*>", and is dropped after a token that ends in a
    placeholder: a value that spans several tokens ("9.2 KB", "1 (2 KB)", a list,
    "x:1 2 3" that a scrubber turned into "x:[Filtered]") keeps the count stable."""
    tokens = []
    for token in masked.split():
        if WILDCARD in token and _WILD_ONLY_RE.fullmatch(token):
            if tokens and tokens[-1].endswith(WILDCARD):
                continue
            token = WILDCARD
        tokens.append(token)
    return tokens


def _variable(token):
    """A token that holds a placeholder or a digit is (part of) a value, not a word."""
    return WILDCARD in token or _DIGIT_RE.search(token) is not None


def _similarity(template, tokens):
    """(share of equal tokens among the positions that carry evidence, equal tokens).

    Equal tokens count for (pure placeholders excepted); a word facing anything
    else counts against. No evidence either way: a position the template has
    already generalised, and two different values ("blk_<*>" / "<*>", "ssh2" /
    "ssh1"): that is where templates legitimately differ.
    """
    same = total = 0
    for mine, theirs in zip(template, tokens):
        if mine == theirs:
            if mine != WILDCARD:
                same += 1
                total += 1
        elif mine != WILDCARD and not (_variable(mine) and _variable(theirs)):
            total += 1
    if total == 0:
        # Only values: the same message only if the templates' values agree.
        return (1.0 if all(m == t or m == WILDCARD for m, t in zip(template, tokens)) else 0.0), 0
    return same / total, same


def _key(tokens):
    """Index key: token count and first word (Drain's prefix tree of depth 1); a
    first token that is a value goes under <*>."""
    if not tokens:
        return 0, ""
    return len(tokens), WILDCARD if _variable(tokens[0]) else tokens[0]


class _Cluster:
    __slots__ = ("id", "tokens", "size", "words")

    def __init__(self, cid, tokens, size):
        self.id, self.size = cid, size
        self.set_tokens(tokens)

    def set_tokens(self, tokens):
        self.tokens = tokens
        # Positions that count as evidence whatever the message holds there (see _similarity).
        self.words = sum(1 for token in tokens if not _variable(token))


class TemplateMiner:
    """Online clustering of masked messages; state = the clusters' templates.

    A message joins the most similar template with the same token count and
    first word when at least three quarters of the evidence agrees (see
    `_similarity`); the positions that differ become <*>. One mismatching word
    in four is what separates "user alice" / "user bob" (one template) from
    short messages that differ in their verb (two templates). Ties go to the
    template with more equal words (the most specific), then to the smallest id,
    so the choice never depends on the order in which persisted rows come back.
    """
    # Exact in binary floating point: 6/8 == 0.75, so ties at the edge are kept.
    threshold = 0.75
    # A message is compared with every template of its bucket: past this many
    # (random text, an attack), new messages group by their exact masked text
    # instead, so the cost per message stays bounded.
    max_bucket = 100
    # Likewise for memory and meta.db: a service with more templates than this is
    # sending text that is not logging; new shapes then group by exact masked text.
    max_clusters = 5000
    # Masked texts remembered with the cluster they joined unchanged (see add): at most this
    # many, each at most this long (a message may be 64 KiB), so about 1 MB a service at most.
    max_remembered = 2000
    max_remembered_chars = 500

    def __init__(self):
        self._clusters = {}     # id -> _Cluster, in creation order
        self._index = {}        # _key(template) -> [_Cluster]
        # Masked text -> the _Cluster it joined without changing it. _match reads only the
        # templates, so until one changes (any insert or retemplate clears this) the same text
        # joins the same cluster unchanged again: looked up instead of compared token by token.
        # Most messages of a service repeat a masked text once their values are masked.
        self._joined = {}

    def add(self, message: str) -> tuple[str, bool]:
        masked = mask(message)
        cluster = self._joined.get(masked)
        if cluster is not None:
            cluster.size += 1
            return cluster.id, False
        tokens = _tokens(masked)
        cluster = self._match(tokens)
        if cluster is None:
            if len(self._index.get(_key(tokens), ())) >= self.max_bucket or len(self._clusters) >= self.max_clusters:
                return hashlib.sha1(" ".join(tokens).encode("utf-8", "surrogatepass")).hexdigest()[:16], False
            cluster = _Cluster(self._new_id(" ".join(tokens)), tokens, 1)
            self._insert(cluster)
            return cluster.id, True
        cluster.size += 1
        merged = [mine if mine == theirs else WILDCARD for mine, theirs in zip(cluster.tokens, tokens)]
        if merged == cluster.tokens:
            if len(masked) <= self.max_remembered_chars:
                if len(self._joined) >= self.max_remembered:
                    self._joined.clear()
                self._joined[masked] = cluster
            return cluster.id, False
        self._retemplate(cluster, merged)
        return cluster.id, True

    def template(self, cluster_id: str) -> str:
        return " ".join(self._clusters[cluster_id].tokens)

    def clusters(self) -> list[tuple[str, str, int]]:
        return [(c.id, " ".join(c.tokens), c.size) for c in self._clusters.values()]

    def cluster(self, cluster_id: str) -> tuple[str, str, int]:
        """One row of clusters(), without building the others (a service may have thousands)."""
        found = self._clusters[cluster_id]
        return found.id, " ".join(found.tokens), found.size

    @classmethod
    def from_clusters(cls, rows: list[tuple[str, str, int]]) -> "TemplateMiner":
        miner = cls()
        for cid, template, size in rows:
            miner._insert(_Cluster(cid, template.split(), size))
        return miner

    def _candidates(self, tokens):
        """The templates a message is compared with: its token count and first word."""
        count, first = _key(tokens)
        candidates = self._index.get((count, first), [])
        if first != WILDCARD:
            # Templates whose first token turned out to be a value.
            candidates = candidates + self._index.get((count, WILDCARD), [])
        return candidates

    def _match(self, tokens):
        candidates = self._candidates(tokens)
        best, best_score = None, (-1.0, 0)
        threshold = self.threshold
        # An exact shortcut, counted in C. Against `probe`, equal positions are those
        # _similarity counts as equal (a placeholder never equals None); a word position of
        # the template always counts as evidence; so its share is at most equal / words.
        # Free-text messages (a tail of words after the template) fill their buckets with
        # templates that fail this: compared token by token, such a message cost about 150 µs
        # once its service had thousands of templates, about 80 µs with the shortcut
        # (bench/workload.free_text_errors; bench/ingest.py --free-text-errors in the server).
        probe = [None if token == WILDCARD else token for token in tokens]
        for cluster in candidates:
            if sum(map(eq, cluster.tokens, probe)) < threshold * cluster.words:
                continue
            score = _similarity(cluster.tokens, tokens)
            if score > best_score or (score == best_score and cluster.id < best.id):
                best, best_score = cluster, score
        if best is None or best_score[0] < self.threshold:
            return None
        return best

    def _new_id(self, template):
        """sha1 of the first masked template; on the (unlikely) clash, of it and a counter."""
        cid, n = hashlib.sha1(template.encode("utf-8", "surrogatepass")).hexdigest()[:16], 0
        while cid in self._clusters:
            n += 1
            cid = hashlib.sha1("{}\n{}".format(template, n).encode("utf-8", "surrogatepass")).hexdigest()[:16]
        return cid

    def _insert(self, cluster):
        self._joined.clear()
        self._clusters[cluster.id] = cluster
        self._index.setdefault(_key(cluster.tokens), []).append(cluster)

    def _retemplate(self, cluster, tokens):
        self._joined.clear()
        old_key, new_key = _key(cluster.tokens), _key(tokens)
        cluster.set_tokens(tokens)
        if old_key != new_key:
            self._index[old_key].remove(cluster)
            self._index.setdefault(new_key, []).append(cluster)
