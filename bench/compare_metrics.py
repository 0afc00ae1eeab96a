"""Do two runs compute the same numbers? Compare their metrics.jsonl row by row.

    python bench/compare_metrics.py runs/a runs/b
    python bench/compare_metrics.py COMMIT:bench/results/NAME runs/NAME    # a recorded run (runs.csv:
                                                                          # its commit and raw_path)

Rows are matched by (step, split); a row is identical when every key both rows have is equal
(timings and throughput left out). Prints how many rows agree, the first that does not (with its
differing keys), and the test result of each when it has a report. Exit 0 when every
common row agrees.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

IGNORED = {"time", "samples_per_s"}


def text_of(source: str, name: str) -> str:
    if ":" in source and not Path(source).exists():
        commit, path = source.split(":", 1)
        return subprocess.run(["git", "show", f"{commit}:{path}/{name}"], capture_output=True, text=True).stdout
    file = Path(source) / name
    return file.read_text() if file.exists() else ""


def read(source: str, name: str) -> list[dict]:
    return [json.loads(line) for line in text_of(source, name).splitlines() if line.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", help="a run directory, or COMMIT:PATH of one kept in git history")
    parser.add_argument("b")
    args = parser.parse_args()
    a = {(r["step"], r["split"]): r for r in read(args.a, "metrics.jsonl")}
    b = {(r["step"], r["split"]): r for r in read(args.b, "metrics.jsonl")}
    common = sorted(set(a) & set(b), key=lambda k: (k[0], k[1] != "train"))
    if not common:
        print("no rows in common")
        return 1
    same = 0
    for key in common:
        diff = sorted(k for k in set(a[key]) & set(b[key]) - IGNORED if a[key][k] != b[key][k])
        if diff:
            print(f"first difference: step {key[0]} ({key[1]}):")
            for k in diff:
                print(f"  {k}: {a[key][k]} vs {b[key][k]}")
            break
        same += 1
    print(f"{same} of {len(common)} common rows identical (steps {common[0][0]}..{common[-1][0]})")
    for source in (args.a, args.b):
        report = text_of(source, "report.json")
        if report.strip():
            print(f"{source}: test {json.loads(report)['test']}")
    return 0 if same == len(common) else 1


if __name__ == "__main__":
    sys.exit(main())
