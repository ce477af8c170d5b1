#!/usr/bin/env python3
"""Plots a soak's memory samples (benches/soak.sh) as an SVG line chart.

    plot_soak.py rss.csv out.svg "subtitle"

The CSV has a `seconds` column, one `nodeN_rss_kib` column per node and a
`tasks_held` column; the chart shows each node's RSS in MiB over minutes, and the
tasks held (right axis, dashed). Plain SVG, no plotting library needed. Also prints
each node's RSS after a warm-up of five minutes and at
the end, and its least-squares slope over that span (and the same for where the
memory is held, when the CSV has those columns).
"""

import csv
import sys

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]


def main():
    src, dst = sys.argv[1], sys.argv[2]
    subtitle = sys.argv[3] if len(sys.argv) > 3 else ""
    with open(src) as f:
        rows = [r for r in csv.DictReader(f)]
    rows = [r for r in rows if r["seconds"]]
    t = [int(r["seconds"]) / 60 for r in rows]
    nodes = [k for k in rows[0] if k.endswith("_rss_kib")]
    series = {k: [int(r[k] or 0) / 1024 for r in rows] for k in nodes}
    held = [int(r.get("tasks_held") or 0) for r in rows]

    w, h, left, right, top, bottom = 760, 380, 60, 70, 50, 45
    pw, ph = w - left - right, h - top - bottom
    tmax = max(t) or 1
    ymax = max(max(v) for v in series.values()) * 1.15 or 1
    hmax = max(held) * 1.15 or 1

    def x(v):
        return left + pw * v / tmax

    def y(v):
        return top + ph * (1 - v / ymax)

    def yh(v):
        return top + ph * (1 - v / hmax)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{left}" y="20" font-size="15">Resident memory per node during the soak</text>',
        f'<text x="{left}" y="37" fill="#555">{subtitle}</text>',
    ]
    for i in range(6):
        v = ymax * i / 5
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.0f}</text>')
        hv = hmax * i / 5
        out.append(f'<text x="{left + pw + 6}" y="{yh(hv) + 4:.1f}" fill="#888">{hv:,.0f}</text>')
    step = 5 if tmax > 10 else 1
    m = 0
    while m <= tmax:
        out.append(f'<line x1="{x(m):.1f}" x2="{x(m):.1f}" y1="{top}" y2="{top + ph}" stroke="#f3f3f3"/>')
        out.append(f'<text x="{x(m):.1f}" y="{top + ph + 16}" text-anchor="middle">{m}</text>')
        m += step
    out.append(f'<text x="{left + pw / 2}" y="{h - 8}" text-anchor="middle">minutes</text>')
    out.append(f'<text transform="translate(16,{top + ph / 2}) rotate(-90)" text-anchor="middle">RSS, MiB</text>')
    out.append(
        f'<text transform="translate({w - 10},{top + ph / 2}) rotate(90)" text-anchor="middle" '
        f'fill="#888">tasks held (node 1)</text>'
    )
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    pts = " ".join(f"{x(a):.1f},{yh(b):.1f}" for a, b in zip(t, held))
    out.append(f'<polyline points="{pts}" fill="none" stroke="#888" stroke-dasharray="4 3"/>')
    for n, k in enumerate(nodes):
        pts = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in zip(t, series[k]))
        c = COLORS[n % len(COLORS)]
        out.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="1.6"/>')
        out.append(f'<text x="{left + 10 + 90 * n}" y="{top + 16}" fill="{c}">{k.split("_")[0]}</text>')
    out.append("</svg>")
    with open(dst, "w") as f:
        f.write("\n".join(out) + "\n")

    # Figures for the text: after warm-up (the first 5 minutes) to the end. The slope
    # is a least-squares fit over every sample in that span (two end points alone
    # are at the mercy of a memtable flush).
    warm = next((i for i, v in enumerate(t) if v >= 5), 0)
    for k in nodes:
        node = k.split("_")[0]
        a, b = series[k][warm], series[k][-1]
        print(
            f"{node}: {a:.0f} MiB at {t[warm]:.1f} min, {b:.0f} MiB at {t[-1]:.1f} min, "
            f"min {min(series[k][warm:]):.0f}, max {max(series[k][warm:]):.0f}, "
            f"slope {slope(t[warm:], series[k][warm:]):+.2f} MiB/min"
        )
        # Where it is held (columns of newer soak.sh runs): anonymous memory, the
        # allocator's committed bytes, RocksDB's pools.
        for part in ("anon", "heap", "rocksdb"):
            col = f"{node}_{part}_kib"
            if col not in rows[0]:
                continue
            v = [int(r[col] or 0) / 1024 for r in rows]
            print(
                f"  {part}: {v[warm]:.0f} -> {v[-1]:.0f} MiB, max {max(v[warm:]):.0f}, "
                f"slope {slope(t[warm:], v[warm:]):+.2f} MiB/min"
            )
    print(f"tasks held (node 1): {held[warm]} at warm-up, {held[-1]} at the end, max {max(held)}")


def slope(xs, ys):
    """Least-squares slope of ys over xs (0 when there are fewer than two points)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((a - mx) ** 2 for a in xs)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / den if den else 0.0


if __name__ == "__main__":
    main()
