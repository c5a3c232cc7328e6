"""``python -m tests.chaos.report [RESULTS_DIR]``: the table of every chaos run's JSON result
(scenario x mode x broker), as Markdown."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.chaos.harness import RESULTS

COLUMNS = ("committed", "effects", "duplicates", "stored", "pending", "in_broker", "lost")
#: warnings every run gets, not shown: the test tasks have no time limit, task events are off,
#: and on RabbitMQ the doctor runs before a worker declared the run's new queue
EVERYWHERE = ("tasks.time_limit", "worker.events", "rabbitmq.queue")
MODE_ORDER = {"reliable": 0, "plain_default": 1, "plain_tuned": 2}


def _doctor(result: dict[str, Any]) -> str:
    doctor = result.get("doctor")
    if not doctor:
        return "n/a"
    warn = sorted({name.split(" ")[0] for name in doctor["warn"]} - set(EVERYWHERE))
    verdict = "pass" if doctor["exit_code"] == 0 else "FAIL: " + ", ".join(doctor["fail"])
    return verdict + (f" (warn: {', '.join(warn)})" if warn else "")


def _mode(result: dict[str, Any]) -> str:
    names = {"reliable": "celery_reliable", "plain_default": "plain defaults", "plain_tuned": "plain tuned"}
    return f"{names[result['mode']]} ({result['publishing']})"


def load(directory: Path) -> list[dict[str, Any]]:
    results = [json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))]
    return sorted(results, key=lambda r: (r["scenario"], r["broker"], MODE_ORDER[r["mode"]], r["publishing"]))


def table(results: list[dict[str, Any]]) -> str:
    head = ["scenario", "broker", "mode (publishing)", *COLUMNS, "faults", "doctor", "s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        lost = f"**{r['lost']}**" if r["lost"] else "0"
        cells = [r["scenario"], r["broker"], _mode(r), *(str(r[c]) for c in COLUMNS[:-1]), lost]
        cells += [str(r["faults"]), _doctor(r), f"{r['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS
    results = load(directory)
    if not results:
        print(f"no results in {directory}", file=sys.stderr)
        return 1
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
