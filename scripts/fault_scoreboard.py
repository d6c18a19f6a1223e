#!/usr/bin/env python3
"""The fault campaign's scoreboard: pytest's JUnit XML of tests/faults -> a markdown table.

    python scripts/fault_scoreboard.py outputs/faults.xml docs/reliability.md

One row per planted fault: its stage, its outcome and the message the user saw (properties the test
records), or the failure; and the seconds it took. `make faults` runs it.
"""

from __future__ import annotations

import platform
import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from datetime import date
from pathlib import Path

HEADER = """# Reliability: the fault campaign

Every row is one fault planted by `tests/faults` and the outcome the user meets. Written by `make faults`
({when}, {machine}); its bad-input part also runs in `make test`.

"""


def rows(xml: Path) -> list[dict]:
    found = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        props = {p.get("name"): p.get("value", "") for p in case.iter("property")}
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        fault = re.search(r"\[(.*)\]$", case.get("name", ""))
        found.append(
            {
                "fault": fault.group(1)
                if fault
                else case.get("name", "").removeprefix("test_").replace("_", " "),
                "stage": props.get("stage", "?"),
                "outcome": props.get("outcome", "passed") if failure is None else "FAILED",
                "seconds": float(case.get("time", 0)),
                "message": props.get("message", "") if failure is None else failure.get("message", "")[:160],
            }
        )
    return found


def table(found: list[dict]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    passed = sum(r["outcome"] != "FAILED" for r in found)
    stages = Counter(r["stage"] for r in found)
    lines = [
        f"**{passed} of {len(found)} faults** ended as they must: a clear error with nothing changed, or a "
        "recovery with nothing lost "
        f"({', '.join(f'{stage} {n}' for stage, n in stages.items())}).",
        "",
        "| fault | stage | outcome | s | what the user sees |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {cell(r['fault'])} | {r['stage']} | {r['outcome']} | {r['seconds']:.1f} | "
        f"`{cell(r['message'])}` |"
        for r in found
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    xml, out = Path(argv[0]), Path(argv[1])
    found = rows(xml)
    machine = f"{platform.machine()}, {platform.system()}, Python {platform.python_version()}"
    out.write_text(HEADER.format(when=date.today().isoformat(), machine=machine) + table(found))
    print(table(found))
    return 0 if found and all(r["outcome"] != "FAILED" for r in found) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
