"""Ranks the tests of a suite run by the XLA compiling they did (conftest's FLAX_FLD_TEST_COMPILE_REPORT).

    FLAX_FLD_TEST_COMPILE_REPORT=/tmp/compiles make test
    python tests/compile_report.py /tmp/compiles [--top 30]

Prints the totals (wall seconds of all tests, compile seconds, programs compiled and loaded from the
persistent cache), the test files by compile seconds, and the most expensive tests.
"""

import argparse
import collections
import glob
import json
import os


def read_records(directory: str) -> list[dict]:
    records = []
    for path in sorted(glob.glob(os.path.join(directory, "*.jsonl"))):
        with open(path, encoding="utf-8") as handle:
            records += [json.loads(line) for line in handle if line.strip()]
    if not records:
        raise SystemExit(f"error: no test records in {directory} (run the suite with FLAX_FLD_TEST_COMPILE_REPORT)")
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    records = read_records(args.directory)
    total = sum(r["seconds"] for r in records)
    compile_s = sum(r["compile_s"] for r in records)
    print(f"{len(records)} tests: {total:.0f} s of test time, {compile_s:.0f} s compiling "
          f"({100 * compile_s / max(total, 1e-9):.0f} %), {sum(r['compiled'] for r in records)} programs compiled, "
          f"{sum(r['cached'] for r in records)} from the persistent cache")
    by_file = collections.defaultdict(lambda: [0.0, 0.0, 0])
    for record in records:
        entry = by_file[record["test"].split("::")[0]]
        entry[0] += record["seconds"]
        entry[1] += record["compile_s"]
        entry[2] += record["compiled"]
    print("\n| file | test s | compile s | programs |\n| --- | ---: | ---: | ---: |")
    for name, (seconds, compiling, count) in sorted(by_file.items(), key=lambda kv: -kv[1][1])[:args.top]:
        print(f"| {name} | {seconds:.1f} | {compiling:.1f} | {count} |")
    print("\n| test | test s | compile s | programs |\n| --- | ---: | ---: | ---: |")
    for record in sorted(records, key=lambda r: -r["compile_s"])[:args.top]:
        print(f"| {record['test']} | {record['seconds']:.1f} | {record['compile_s']:.1f} | {record['compiled']} |")


if __name__ == "__main__":
    main()
