#!/usr/bin/env python3
"""Draws the Busbar ÷ peer ratios of a benchmark run as a bar chart.

    python bench/chart.py bench/results/latest.json bench/results/latest.png

One bar per (figure, peer): green where Busbar does better than the peer
(ratio above 1 for "higher is better" figures, below 1 for "lower is
better"), red where it does worse. The x axis is logarithmic; the line at 1
is parity. Targets from the benchmark issue are drawn as black ticks.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, NullLocator  # noqa: E402


def main(source, target):
    with open(source, encoding="utf-8") as f:
        rows = json.load(f)
    bars = []  # (label, ratio, busbar_wins, target_ratio)
    for row in rows:
        better = row["better"]
        for peer, ratio in row["ratios"].items():
            if ratio is None or ratio <= 0:
                continue
            wins = ratio >= 1 if better == "higher" else ratio <= 1
            goal = row.get("target") or {}
            goal_ratio = goal.get("value") if goal.get("peer") == peer else None
            label = f"{row['name']}  ÷ {peer}  ({better} is better)"
            bars.append((label, ratio, wins, goal_ratio))
    if not bars:
        sys.exit(f"{source} holds no ratios to draw")

    height = max(4.0, 0.32 * len(bars) + 1.6)
    fig, ax = plt.subplots(figsize=(13, height))
    positions = list(range(len(bars)))[::-1]
    colors = ["#2e9d5b" if wins else "#cc4b3c" for _, _, wins, _ in bars]
    ax.barh(positions, [b[1] for b in bars], color=colors, height=0.7)
    ax.set_xscale("log")
    ax.axvline(1.0, color="#333333", linewidth=1)
    for pos, (_, ratio, _, goal) in zip(positions, bars):
        ax.text(ratio * 1.04, pos, f"{ratio:.2f}", va="center", fontsize=8)
        if goal is not None:
            ax.plot([goal, goal], [pos - 0.4, pos + 0.4], color="black", linewidth=2)
    ax.set_yticks(positions)
    ax.set_yticklabels([b[0] for b in bars], fontsize=8)
    low = min(b[1] for b in bars + [("", 1.0, True, None)])
    high = max(b[1] for b in bars + [("", 1.0, True, None)])
    ax.set_xlim(low / 1.6, high * 1.8)
    ticks = [t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
             if low / 1.6 <= t <= high * 1.8]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.set_xlabel("Busbar ÷ peer (log scale; 1 = parity; black tick = target)")
    first = rows[0]
    machine = first.get("machine", {})
    kind = "quick run" if first.get("quick") else "full run"
    ax.set_title(
        f"Busbar vs peers, {kind}, {first.get('date', '')}\n"
        f"{machine.get('cores', '?')} cores, {machine.get('cpu', '?')}, Linux {machine.get('kernel', '?')}"
        "  —  green: Busbar better, red: Busbar worse",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    print(f"wrote {target}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: chart.py RESULTS.json OUT.png")
    main(sys.argv[1], sys.argv[2])
