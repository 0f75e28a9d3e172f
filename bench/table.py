#!/usr/bin/env python3
"""Prints the markdown table of one or more results files from lab.py.

    python3 bench/table.py pollen.json http.json

When two files hold the same scenario (for example one run with --skip-http
and one with --skip-pollen), their systems are merged into one entry.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from report import evaluate_targets, markdown_table  # noqa: E402


def merge(paths, scenarios):
    merged = {}
    for path in paths:
        with open(path) as f:
            for res in json.load(f)["results"]:
                cur = merged.setdefault(res["scenario"], res)
                for system in ("pollen", "http"):
                    if system in res and system not in cur:
                        cur[system] = res[system]
    for res in merged.values():
        if res["scenario"] in scenarios and not res.get("error"):
            res["targets"] = evaluate_targets(res, scenarios[res["scenario"]].get("targets", []))
    return list(merged.values())


def main(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "scenarios.json")) as f:
        scenarios = json.load(f)
    print(markdown_table(merge(argv, scenarios)))


if __name__ == "__main__":
    main(sys.argv[1:])
