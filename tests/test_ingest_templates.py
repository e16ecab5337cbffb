import collections
import hashlib
import random

import pytest

from ingest.templates import TemplateMiner, mask


@pytest.mark.parametrize("message, masked", [
    ("retry 3 of 10", "retry <*> of <*>"),
    ("offset -42 and ratio 0.125", "offset <*> and ratio <*>"),
    ("block blk_-6952295868487656571 done", "block blk_<*> done"),
    ("at address 0x7ffd5e8c, code 0xDEAD", "at address <*>, code <*>"),
    ("commit 3f2a9c1b7e4d5a60 pushed", "commit <*> pushed"),
    ("request 123e4567-e89b-12d3-a456-426614174000 failed", "request <*> failed"),
    ("connect to 10.0.0.12 refused", "connect to <*> refused"),
    ("connect to 10.0.0.12:5432 refused", "connect to <*> refused"),
    ("listen on [::1]:8080 and fe80::1ff:fe23:4567:890a", "listen on <*> and <*>"),
    ("mail to jane.doe+ops@example.co.uk bounced", "mail to <*> bounced"),
    ("GET https://api.example.com/v1/users?id=7 failed", "GET <*> failed"),
    ("cannot open /var/log/app/error.log: denied", "cannot open <*>: denied"),
    ("cannot open C:\\Users\\bob\\app.ini", "cannot open <*>"),
    ("started 2024-03-01T12:34:56.789Z ok", "started <*> ok"),
    ("started 2024-03-01 12:34:56,789 ok", "started <*> ok"),
    ("at Sun Jul 24 03:15:55 2005 done", "at <*> done"),
    ("tick at 12:34:56 done", "tick at <*> done"),
    ("took 12ms then 3.5s", "took <*> then <*>"),
    ("wrote 9.2 KB in <1 sec", "wrote <*> in <*>"),
    ("waited 30 seconds", "waited <*>"),
    ("file 'report final.pdf' not found", "file <*> not found"),
    ('key "user:42" missing', "key <*> missing"),
    ("retry user=alice mode=fast", "retry user=<*> mode=<*>"),
    ("nic 00:1A:2B:3C:4D:5E down", "nic <*> down"),
    ("card [Filtered] declined", "card <*> declined"),
    ("Can't find child 2085 in scoreboard", "Can't find child <*> in scoreboard"),
    ("no variables here", "no variables here"),
])
def test_mask(message, masked):
    assert mask(message) == masked


def test_variables_share_a_cluster():
    miner = TemplateMiner()
    first, _ = miner.add("Connection to 10.0.0.1:5432 timed out after 30s")
    second, _ = miner.add("Connection to 10.0.0.7:6543 timed out after 2.5s")
    assert first == second
    assert miner.template(first) == "Connection to <*> timed out after <*>"


def test_different_messages_do_not_share_a_cluster():
    miner = TemplateMiner()
    ids = {miner.add(message)[0] for message in [
        "Connection to 10.0.0.1 timed out",
        "Connection to 10.0.0.1 was refused",
        "Disk /dev/sda1 is full",
        "Invalid user alice from 10.0.0.1",
        "Launching task 12",
        "Killing task 12",
    ]}
    assert len(ids) == 6


def test_a_varying_word_generalises_and_the_id_stays():
    miner = TemplateMiner()
    cid, changed = miner.add("Invalid user alice from 10.0.0.1 port 22")
    assert changed
    assert cid == hashlib.sha1(b"Invalid user alice from <*> port <*>").hexdigest()[:16]
    assert miner.add("Invalid user alice from 10.0.0.2 port 23") == (cid, False)
    assert miner.add("Invalid user bob from 10.0.0.3 port 24") == (cid, True)
    assert miner.template(cid) == "Invalid user <*> from <*> port <*>"
    assert miner.add("Invalid user carol from 10.0.0.4 port 25") == (cid, False)
    assert miner.clusters() == [(cid, "Invalid user <*> from <*> port <*>", 4)]


def test_a_value_spanning_several_tokens_keeps_the_cluster():
    miner = TemplateMiner()
    ids = {miner.add(message)[0] for message in [
        "sent 0 bytes, lifetime 00:01",
        "sent 1190 bytes (1.16 KB), lifetime <1 sec",
        "sent 18846 bytes (18.4 KB), lifetime 02:19",
    ]}
    assert len(ids) == 1


def test_empty_and_value_only_messages():
    miner = TemplateMiner()
    assert miner.add("")[0] == miner.add("   ")[0]
    assert miner.add("42")[0] == miner.add("17")[0]
    assert len(miner.clusters()) == 2


def synthetic_stream(seed=7, count=600):
    """(message, true template) pairs: ids, IPs, users, durations and paths vary."""
    rng = random.Random(seed)
    users = ["alice", "bob", "carol", "dave", "erin", "root", "admin"]
    makers = [
        ("login failed for user {u} from {ip}",
         lambda: dict(u=rng.choice(users), ip="10.0.{}.{}".format(rng.randint(0, 9), rng.randint(1, 254)))),
        ("request {uuid} took {ms}ms",
         lambda: dict(uuid="%08x-aaaa-4bbb-8ccc-%012x" % (rng.getrandbits(32), rng.getrandbits(48)),
                      ms=rng.randint(1, 900))),
        ("cannot open {path}: permission denied",
         lambda: dict(path="/srv/data/{}/part-{:05d}".format(rng.choice(users), rng.randint(0, 99999)))),
        ("cannot open {path}: no such file or directory",
         lambda: dict(path="/srv/data/{}/part-{:05d}".format(rng.choice(users), rng.randint(0, 99999)))),
        ("worker {n} exited with code {c}", lambda: dict(n=rng.randint(1, 64), c=rng.randint(1, 255))),
        ("job {n} finished in {s} seconds", lambda: dict(n=rng.randint(1, 9999), s=rng.randint(1, 500))),
        ("queue {q} is full, dropping {n} messages",
         lambda: dict(q=rng.choice(["ingest", "mail", "billing"]), n=rng.randint(1, 1000))),
        ("database connection lost", dict),
        ("database connection restored", dict),
        ("cache miss for key={k}", lambda: dict(k="user:{}".format(rng.randint(1, 10 ** 6)))),
    ]
    stream = []
    for _ in range(count):
        template, values = rng.choice(makers)
        stream.append((template.format(**values()), template))
    return stream


def grouping_accuracy(predicted, truth):
    true_sizes = collections.Counter(truth)
    groups = collections.defaultdict(list)
    for index, label in enumerate(predicted):
        groups[label].append(index)
    correct = sum(len(members) for members in groups.values()
                  if len({truth[i] for i in members}) == 1 and true_sizes[truth[members[0]]] == len(members))
    return correct / len(truth)


def test_grouping_accuracy_on_a_synthetic_stream():
    stream = synthetic_stream()
    miner = TemplateMiner()
    labels = [miner.add(message)[0] for message, _ in stream]
    assert grouping_accuracy(labels, [template for _, template in stream]) == 1.0


def test_from_clusters_assigns_the_same_ids_to_a_replayed_stream():
    stream = [message for message, _ in synthetic_stream(seed=11)]
    original = TemplateMiner()
    for message in stream[:300]:
        original.add(message)
    rows = original.clusters()
    random.Random(3).shuffle(rows)  # storage may return the rows in any order
    rebuilt = TemplateMiner.from_clusters(rows)
    for message in stream[300:]:
        assert rebuilt.add(message) == original.add(message)
    assert sorted(rebuilt.clusters()) == sorted(original.clusters())


def test_unbounded_input_is_bounded():
    from ingest.templates import TemplateMiner
    miner = TemplateMiner()
    miner.max_clusters = 50
    ids = [miner.add("zq{} unique shape number {} of many".format("x" * i, i))[0] for i in range(80)]
    assert len(miner.clusters()) == 50
    assert len(set(ids)) == 80  # still one group per distinct masked text, just not mined
    assert miner.add("zq" + "x" * 70 + " unique shape number 70 of many")[0] == ids[70]


# Messages rich in what the patterns look for: digits, hex, separators, month names, units.
_PIECES = ["Jan", "Feb", "Sep", "Dec", "Mon", "ms", "sec", "KB", "MiB", "0x", "ff:", "-", "::", "1.2.3.4",
           "2024-05-01", "12:30:45", "/a/b", "<*>", "deadbeef12", "\u00b5s", "\u03bcs", " ", "=", "12/31/2024",
           "3 min", "9.2 KB", "00:1A:2B:3C:4D:5E", "aa-bb-cc-dd-ee-ff", "\u0663\u0664", "[::1]:80",
           "123e4567-e89b-12d3-a456-426614174000", "Jul 24 03:15:55", "<1 sec", "~5ms", "+7", "x9"]
_CHARS = "0123456789abcdefABCDEFxX:-./ _=,;'\"[]()<>~@\u00b5smhdnukKMGTPbBi\\\t%+#$*"


def _fuzz_messages(count, seed=11):
    rng = random.Random(seed)
    return ["".join(rng.choice(_PIECES) if rng.random() < 0.4 else rng.choice(_CHARS)
                    for _ in range(rng.randint(1, 30))) for _ in range(count)]


def test_every_hint_holds_where_its_pattern_matches():
    # A hint only lets mask() skip a pattern; one that missed a match would change templates.
    from ingest import templates
    hinted = [(pattern, hint) for pattern, _, _, hint in templates._MASK_RE if hint is not None]
    assert len(hinted) >= 8
    matched = collections.Counter()
    for message in _fuzz_messages(20_000):
        for pattern, hint in hinted:
            if pattern.search(message):
                matched[pattern.pattern] += 1
                assert hint(message), (pattern.pattern, message)
    assert all(matched[pattern.pattern] > 10 for pattern, _ in hinted), matched


def test_the_numbers_pattern_finds_what_its_plain_form_finds():
    import re

    from ingest import templates
    plain = re.compile(r"(?<![A-Za-z0-9])[-+]?\d+(?:[.,]\d+)*(?![A-Za-z0-9])")
    fast = templates._MASK_RE[-1][0]
    for message in _fuzz_messages(20_000, seed=12) + ["-5", "a-5", "+-5", "5.5.5", "x5", "5x", "-", "\u0663"]:
        assert [m.span() for m in fast.finditer(message)] == [m.span() for m in plain.finditer(message)], message


def test_remembered_joins_give_what_comparing_gives():
    stream = [message for message, _ in synthetic_stream(seed=5)] * 2 + _fuzz_messages(3000, seed=13)
    remembering, comparing = TemplateMiner(), TemplateMiner()
    hits = 0
    for message in stream:
        expected = comparing.add(message)
        comparing._joined.clear()  # the reference compares token by token every time
        hits += mask(message) in remembering._joined
        assert remembering.add(message) == expected, message
    assert remembering.clusters() == comparing.clusters()  # sizes included
    assert hits > len(stream) // 4


def test_a_remembered_join_is_forgotten_when_a_template_changes():
    miner = TemplateMiner()
    general = [miner.add(message)[0] for message in ("user u1 x2 in", "user u3 x4 in", "user alice logged in")][-1]
    specific = miner.add("user alice logged out")[0]
    assert miner.add("user alice logged in")[0] == general  # remembered: (1.0, 2 words) beats (0.75, 3)
    assert miner.add("user alice logged at") == (specific, True)  # "user alice logged <*>" now
    assert miner.add("user alice logged in")[0] == specific  # (1.0, 3 words) beats (1.0, 2)


def test_a_remembered_join_is_forgotten_when_a_template_is_added():
    miner = TemplateMiner()
    general = [miner.add(message)[0] for message in ("user u1 x2 in", "user u3 x4 in", "user alice logged in")][-1]
    assert miner.add("user alice logged in")[0] == general  # remembered
    added, created = miner.add("user alice logged 42")  # "user alice logged <*>": no match, a new template
    assert created and added != general
    assert miner.add("user alice logged in")[0] == added  # (1.0, 3 words) beats (1.0, 2)


def test_what_is_remembered_is_bounded():
    miner = TemplateMiner()
    miner.max_remembered = 3
    long_text = "payload " + "word " * 200
    for _ in range(2):
        miner.add(long_text)  # joins its own template unchanged the second time, but too long to keep
    assert miner._joined == {}
    miner.add("job 1 state a1")
    miner.add("job 2 state b2")  # "job <*> state <*>" from here on
    for value in ("c3", "d4", "e5", "f6", "g7", "h8"):
        assert miner.add("job 3 state " + value) == (miner.add("job 1 state a1")[0], False)
        assert 0 < len(miner._joined) <= 3


def _free_text_messages(count, seed=21):
    """Error messages with a tail of free text, as an app that logs a user's input sends:
    they fill their buckets with templates that share the beginning and little else."""
    rng = random.Random(seed)
    words = "order payment cache retry token queue shard replica invoice upload index user".split()
    heads = ["Failed to parse payload from client {}", "Upstream {} refused the request", "Job {} aborted"]
    return [rng.choice(heads).format(rng.randint(1, 999)) + ": " +
            " ".join(rng.choice(words) for _ in range(rng.randint(1, 6))) for _ in range(count)]


class _ComparingEveryTemplate(TemplateMiner):
    """The reference: _match as it was before the shortcut, every candidate compared token by token."""

    def _match(self, tokens):
        from ingest import templates
        best, best_score = None, (-1.0, 0)
        for cluster in self._candidates(tokens):
            score = templates._similarity(cluster.tokens, tokens)
            if score > best_score or (score == best_score and cluster.id < best.id):
                best, best_score = cluster, score
        return None if best is None or best_score[0] < self.threshold else best


def test_the_shortcut_skips_only_templates_that_could_not_be_joined(monkeypatch):
    from ingest import templates
    comparisons = collections.Counter()
    similarity = templates._similarity

    def counted(template, tokens):
        comparisons[counting] += 1
        return similarity(template, tokens)
    monkeypatch.setattr(templates, "_similarity", counted)
    stream = (_free_text_messages(4000) + [message for message, _ in synthetic_stream(seed=6)]
              + _fuzz_messages(3000, seed=14))
    random.Random(3).shuffle(stream)
    fast, reference = TemplateMiner(), _ComparingEveryTemplate()
    for message in stream:
        counting = "reference"
        expected = reference.add(message)
        counting = "fast"
        assert fast.add(message) == expected, message
    assert fast.clusters() == reference.clusters()  # templates and sizes
    assert len(fast.clusters()) > 1000  # the free text made thousands of templates
    assert comparisons["fast"] * 2 < comparisons["reference"]
