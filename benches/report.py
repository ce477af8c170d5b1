#!/usr/bin/env python3
"""Turns the raw results of benches/compare.sh into results.json, a Markdown table
with the ratios ours/etcd and ours/RabbitMQ, and two SVG plots (throughput and p99
latency against connections). Standard library only.

Usage: report.py WORK_DIR OUT_DIR MACHINE_JSON ETCD_VERSION SECONDS [RABBITMQ_VERSION]
"""
import json
import math
import os
import sys
import time

work, out, machine, etcd_version, secs = sys.argv[1:6]
rabbitmq_version = sys.argv[6] if len(sys.argv) > 6 else None
machine = json.loads(machine)


def load_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


etcd = {r["connections"]: r["wrk"] for r in load_jsonl(os.path.join(work, "etcd.jsonl"))}
ours = {r["connections"]: r["wrk"] for r in load_jsonl(os.path.join(work, "sq.jsonl"))}
rabbit_path = os.path.join(work, "rabbitmq.jsonl")
rabbit = {r["connections"]: r["wrk"] for r in load_jsonl(rabbit_path)} if os.path.exists(rabbit_path) else {}
own = []  # the project's own benchmark runs, in the order they ran
own_path = os.path.join(work, "own.jsonl")
if os.path.exists(own_path):
    for run in load_jsonl(own_path):
        path = os.path.join(work, f"{run['name']}.json")
        if os.path.exists(path):
            with open(path) as f:
                run["report"] = json.load(f)
            own.append(run)

conns = sorted(set(etcd) | set(ours) | set(rabbit))
rows = []
for c in conns:
    e, o, q = etcd.get(c), ours.get(c), rabbit.get(c)
    rows.append({
        "connections": c,
        "etcd": e,
        "ours": o,
        "rabbitmq": q,
        "throughput_ratio": (o["rps"] / e["rps"]) if e and o and e["rps"] else None,
        "rabbitmq_ratio": (o["rps"] / q["rps"]) if q and o and q["rps"] else None,
    })

results = {
    "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    "machine": machine,
    "etcd_version": etcd_version,
    "rabbitmq_version": rabbitmq_version,
    "seconds_per_row": float(secs),
    "rows": rows,
    "own": own,
}
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=2)


def fmt(v, digits=2):
    return "-" if v is None else f"{v:.{digits}f}"


rabbit_note = (f"; RabbitMQ {rabbitmq_version}, three nodes, a durable quorum queue, publisher confirms "
               "(benches/amqp.rs)") if rabbitmq_version else ""
lines = [
    f"Run {results['when']} on {machine['cpus']} CPUs ({machine['cpu']}), {machine['mem_mib']} MiB; "
    f"{etcd_version}{rabbit_note}; wrk -t1, 256-byte values, one request in flight per connection, "
    f"{secs} s per row, fsync on.",
    "",
    "| connections | etcd puts/s | etcd p50 / p99 ms | RabbitMQ msgs/s | RabbitMQ p50 / p99 ms "
    "| ours tasks/s | ours p50 / p99 ms | ours/etcd | ours/RabbitMQ |",
    "|---|---|---|---|---|---|---|---|---|",
]
for r in rows:
    e, o, q = r["etcd"] or {}, r["ours"] or {}, r["rabbitmq"] or {}
    lines.append(
        f"| {r['connections']} | {fmt(e.get('rps'), 0)} | {fmt(e.get('p50_ms'))} / {fmt(e.get('p99_ms'))} "
        f"| {fmt(q.get('rps'), 0)} | {fmt(q.get('p50_ms'))} / {fmt(q.get('p99_ms'))} "
        f"| {fmt(o.get('rps'), 0)} | {fmt(o.get('p50_ms'))} / {fmt(o.get('p99_ms'))} "
        f"| {fmt(r['throughput_ratio'])}× | {fmt(r['rabbitmq_ratio'])}× |"
    )
if own:
    lines += [
        "",
        "The project's own load generator (`session-queue bench`), each run on a fresh cluster:",
        "",
        "| run | rate | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|",
    ]
for run in own:
    counted = "batch" if run["mode"] == "batch" else "completed"
    unit = "tasks/s" if run["mode"] == "batch" else "completed tasks/s"
    per = "per call" if run["mode"] == "batch" else "submit to completed"
    for op in run["report"]["operations"]:
        if op["operation"] == counted:
            lat = op["latency_ms"]
            lines.append(
                f"| {run['description']} | {op['items_per_sec']:,.0f} {unit} | {lat['p50']:.2f} ({per}) "
                f"| {lat['p99']:.2f} | {op['errors']} |"
            )
with open(os.path.join(out, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(lines))


def svg_chart(path, title, ylabel, series, log_y=False):
    """A small line chart: x = connections (log scale), one line per series."""
    w, h, left, right, top, bottom = 640, 400, 70, 20, 40, 50
    xs = sorted({x for _, pts, _ in series for x, _ in pts})
    ys = [y for _, pts, _ in series for _, y in pts if y is not None and y > 0]
    if not xs or not ys:
        return
    lx = [math.log2(x) for x in xs]
    x0, x1 = min(lx), max(lx) if max(lx) > min(lx) else min(lx) + 1
    if log_y:
        y0, y1 = math.log10(min(ys)) - 0.1, math.log10(max(ys)) + 0.1
    else:
        y0, y1 = 0.0, max(ys) * 1.1

    def px(x):
        return left + (math.log2(x) - x0) / (x1 - x0) * (w - left - right)

    def py(y):
        v = math.log10(y) if log_y else y
        return h - bottom - (v - y0) / (y1 - y0) * (h - top - bottom)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
        f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="black"/>',
        f'<text x="{w / 2}" y="{h - 12}" text-anchor="middle">connections</text>',
        f'<text x="16" y="{h / 2}" transform="rotate(-90 16 {h / 2})" text-anchor="middle">{ylabel}</text>',
    ]
    for x in xs:
        parts.append(f'<text x="{px(x):.1f}" y="{h - bottom + 16}" text-anchor="middle">{x}</text>')
    ticks = 5
    for i in range(ticks + 1):
        v = y0 + (y1 - y0) * i / ticks
        y = 10 ** v if log_y else v
        yy = py(y)
        parts.append(f'<line x1="{left - 4}" y1="{yy:.1f}" x2="{w - right}" y2="{yy:.1f}" stroke="#ddd"/>')
        label = f"{y:.3g}" if log_y else f"{y:,.0f}"
        parts.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{label}</text>')
    for i, (name, pts, color) in enumerate(series):
        pts = [(x, y) for x, y in pts if y is not None and y > 0]
        d = " ".join(f"{'M' if j == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for j, (x, y) in enumerate(pts))
        parts.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y in pts:
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"/>')
        parts.append(f'<rect x="{left + 10}" y="{top + 6 + i * 18}" width="12" height="3" fill="{color}"/>')
        parts.append(f'<text x="{left + 28}" y="{top + 10 + i * 18}">{name}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts))


svg_chart(
    os.path.join(out, "throughput.svg"),
    "Writes per second (higher is better)",
    "requests/s",
    [
        ("Session Queue (task submits)", [(c, (ours.get(c) or {}).get("rps")) for c in conns], "#1f77b4"),
        ("etcd (puts)", [(c, (etcd.get(c) or {}).get("rps")) for c in conns], "#d62728"),
        ("RabbitMQ quorum queue (confirmed publishes)",
         [(c, (rabbit.get(c) or {}).get("rps")) for c in conns], "#2ca02c"),
    ],
)
svg_chart(
    os.path.join(out, "latency.svg"),
    "p50 and p99 latency (lower is better)",
    "ms (log scale)",
    [
        ("Session Queue p50", [(c, (ours.get(c) or {}).get("p50_ms")) for c in conns], "#1f77b4"),
        ("Session Queue p99", [(c, (ours.get(c) or {}).get("p99_ms")) for c in conns], "#7fb3dd"),
        ("etcd p50", [(c, (etcd.get(c) or {}).get("p50_ms")) for c in conns], "#d62728"),
        ("etcd p99", [(c, (etcd.get(c) or {}).get("p99_ms")) for c in conns], "#f09090"),
        ("RabbitMQ p50", [(c, (rabbit.get(c) or {}).get("p50_ms")) for c in conns], "#2ca02c"),
        ("RabbitMQ p99", [(c, (rabbit.get(c) or {}).get("p99_ms")) for c in conns], "#98df8a"),
    ],
    log_y=True,
)
