"""Grouping benchmark: Grouping Accuracy (GA) of our template miner on the Loghub-2k datasets.

    .venv/bin/python bench/grouping.py             # ours through `python -m ingest.fingerprint`
    .venv/bin/python bench/grouping.py --direct    # ours in-process (TemplateMiner.add)
    .venv/bin/python bench/grouping.py --data DIR  # another directory of *_2k.log_structured*.csv

For each dataset: messages, true templates, our GA, drain3's default GA and our
messages/s (subprocess mode: messages / wall time of the subprocess, start-up
included, then with the start-up on empty input subtracted; direct mode:
messages / time spent in TemplateMiner.add).

GA as Loghub defines it: a message is correct only when its predicted group is
exactly the set of messages sharing its true template.
"""
import argparse
import collections
import contextlib
import csv
import glob
import io
import os
import subprocess
import sys
import time

import orjson

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from ingest.templates import TemplateMiner  # noqa: E402


def grouping_accuracy(predicted, truth):
    """Loghub GA: a predicted group counts when it holds exactly the messages of one true template."""
    true_sizes = collections.Counter(truth)
    groups = collections.defaultdict(list)
    for index, label in enumerate(predicted):
        groups[label].append(index)
    correct = 0
    for members in groups.values():
        templates = {truth[i] for i in members}
        if len(templates) == 1 and true_sizes[truth[members[0]]] == len(members):
            correct += len(members)
    return correct / len(truth)


def load(path):
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [row["Content"] for row in rows], [row["EventTemplate"] for row in rows]


def ours_direct(messages):
    miner = TemplateMiner()
    started = time.perf_counter()
    labels = [miner.add(message)[0] for message in messages]
    elapsed = time.perf_counter() - started
    return labels, len(messages) / elapsed, elapsed


def run_fingerprint(stdin):
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ingest.fingerprint"], input=stdin, cwd=ROOT,
                          stdout=subprocess.PIPE, check=True)
    return done, time.perf_counter() - started


def startup_seconds():
    """Wall time of `python -m ingest.fingerprint` on empty input (best of 3)."""
    return min(run_fingerprint(b"")[1] for _ in range(3))


def ours_subprocess(messages, service):
    stdin = b"".join(orjson.dumps({"service": service, "level": "error", "message": message}) + b"\n"
                     for message in messages)
    done, elapsed = run_fingerprint(stdin)
    labels = done.stdout.decode("utf-8").splitlines()
    if len(labels) != len(messages):
        raise RuntimeError("ingest.fingerprint printed {} lines for {} messages".format(len(labels), len(messages)))
    return labels, len(messages) / elapsed, elapsed


def drain3_labels(messages):
    from drain3 import TemplateMiner as Drain3Miner
    import logging
    logging.getLogger("drain3").setLevel(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        miner = Drain3Miner()  # prints "config file not found: drain3.ini": the defaults are wanted
    return [miner.add_log_message(message)["cluster_id"] for message in messages]


def print_table(header, rows):
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(str(cell).ljust(w) if i == 0 else str(cell).rjust(w)
                        for i, (cell, w) in enumerate(zip(row, widths))))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "loghub"))
    parser.add_argument("--direct", action="store_true", help="call TemplateMiner.add in-process")
    parser.add_argument("--no-drain3", action="store_true", help="skip the drain3 comparison")
    args = parser.parse_args()
    paths = sorted(glob.glob(os.path.join(args.data, "*_2k.log_structured*.csv")))
    if not paths:
        sys.exit("no *_2k.log_structured*.csv in {}".format(args.data))
    startup = 0.0 if args.direct else startup_seconds()
    rows, sums = [], [0.0, 0.0, 0.0, 0.0]
    for path in paths:
        name = os.path.basename(path).split("_")[0]
        messages, truth = load(path)
        labels, rate, elapsed = ours_direct(messages) if args.direct else ours_subprocess(messages, name)
        ours = grouping_accuracy(labels, truth)
        drain = None if args.no_drain3 else grouping_accuracy(drain3_labels(messages), truth)
        steady = len(messages) / max(elapsed - startup, 1e-9)
        for i, value in enumerate((ours, drain or 0.0, rate, steady)):
            sums[i] += value
        rows.append([name, len(messages), len(set(truth)), "{:.3f}".format(ours),
                     "-" if drain is None else "{:.3f}".format(drain), "{:,.0f}".format(rate),
                     "-" if args.direct else "{:,.0f}".format(steady)])
    count = len(paths)
    rows.append(["average", "", "", "{:.3f}".format(sums[0] / count),
                 "-" if args.no_drain3 else "{:.3f}".format(sums[1] / count),
                 "{:,.0f}".format(sums[2] / count), "-" if args.direct else "{:,.0f}".format(sums[3] / count)])
    if args.direct:
        print("mode: direct (TemplateMiner.add in-process; msgs/s = messages / time in add)")
    else:
        print("mode: subprocess (python -m ingest.fingerprint; msgs/s = messages / wall time; "
              "start-up on empty input {:.0f} ms is subtracted in the last column)".format(startup * 1000))
    print_table(["dataset", "messages", "templates", "our GA", "drain3 GA", "our msgs/s",
                 "excl. start-up"], rows)
    if not args.direct:
        every = [(os.path.basename(path).split("_")[0], load(path)[0]) for path in paths]
        stdin = b"".join(orjson.dumps({"service": name, "level": "error", "message": message}) + b"\n"
                         for name, messages in every for message in messages)
        total = sum(len(messages) for _, messages in every)
        _, elapsed = run_fingerprint(stdin)
        print("all {} messages through one `python -m ingest.fingerprint` run: {:.2f} s, {:,.0f} msgs/s "
              "(start-up included)".format(total, elapsed, total / elapsed))


if __name__ == "__main__":
    main()
