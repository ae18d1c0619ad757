"""Validation curves of a `scripts/grpo_grid.sh` run: mean greedy validation accuracy over seeds, by step.

    python scripts/grid_table.py OUT
"""

import sys
from collections import defaultdict
from pathlib import Path

from latentrl.train.common import read_log


def curves(out: Path) -> dict[str, dict[int, dict[int, float]]]:
    """setting -> seed -> {step: validation accuracy}."""
    table: dict[str, dict[int, dict[int, float]]] = defaultdict(dict)
    for log in sorted(out.glob("*/seed*/log.jsonl")):
        rows = read_log(log)
        seed = int(log.parent.name.removeprefix("seed"))
        table[log.parent.parent.name][seed] = {r["step"]: r["eval/accuracy"] for r in rows if "eval/accuracy" in r}
    return table


def main(out: str) -> None:
    for name, by_seed in curves(Path(out)).items():
        steps = sorted(set.intersection(*(set(c) for c in by_seed.values())))
        mean = {s: 100 * sum(c[s] for c in by_seed.values()) / len(by_seed) for s in steps}
        gain = {s: mean[s] - mean[0] for s in steps} if 0 in mean else {}
        print(f"{name} (seeds {sorted(by_seed)}):", " ".join(f"{s}:{gain.get(s, mean[s]):+.1f}" for s in steps))


if __name__ == "__main__":
    main(sys.argv[1])
