#!/usr/bin/env python3
"""Draws a pool's task timeline (the Chrome-trace JSON that
PoolOptions::trace_file or MPROC_TRACE writes) as a PNG with gnuplot: a lane
per worker, a bar per task coloured by outcome, a cross per crash, timeout or
recycling marker. For a trace viewer instead, open the JSON in
https://ui.perfetto.dev or chrome://tracing.

    python3 scripts/trace-chart.py trace.json docs/trace.png
"""
import json
import shutil
import subprocess
import sys

COLOURS = {"ok": "#4c9a2a", "error": "#e0a030", "crashed": "#c0392b", "timed out": "#8e44ad",
           "worker fault": "#7f8c8d", "failed": "#34495e"}


def main(src, png):
    events = json.load(open(src))["traceEvents"]
    names = {e["tid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}
    spans = [e for e in events if e.get("ph") == "X"]
    marks = [e for e in events if e.get("ph") == "i" and e.get("name") != "worker started"]
    lanes = sorted(names, key=lambda t: int(names[t].split("-")[-1].split()[0]) if "-" in names[t] else t)
    lane_of = {t: i for i, t in enumerate(lanes)}
    gnuplot = shutil.which("gnuplot")
    if not gnuplot:
        sys.exit("trace-chart: gnuplot is missing")
    data = []
    for outcome, colour in COLOURS.items():
        rows = [f"{(s['ts'] + s['dur'] / 2) / 1e3} {lane_of[s['tid']]} {s['dur'] / 2e3} 0.35"
                for s in spans if s["args"]["outcome"] == outcome and s["tid"] in lane_of]
        if rows:
            data.append((outcome, colour, rows))
    mark_rows = [f"{m['ts'] / 1e3} {lane_of[m['tid']]}" for m in marks if m["tid"] in lane_of]
    plots = [f"'-' using 1:2:3:4 with boxxyerror fs solid 0.8 lc rgb '{c}' title '{o}'" for o, c, _ in data]
    if mark_rows:
        plots.append("'-' using 1:2 with points pt 2 ps 2 lc rgb 'black' title 'crash / timeout / recycle'")
    script = f"""set terminal pngcairo size 1100,{140 + 60 * len(lanes)} font "DejaVu Sans,10"
set output '{png}'
set title 'Pool task timeline ({len(spans)} tasks)'
set xlabel 'ms since the pool started'
set ytics ({", ".join(f"'{names[t]}' {i}" for i, t in enumerate(lanes))})
set yrange [-0.7:{len(lanes) - 0.3}]
set key outside bottom center horizontal
set grid xtics
plot {", ".join(plots)}
"""
    for _, _, rows in data:
        script += "\n".join(rows) + "\ne\n"
    if mark_rows:
        script += "\n".join(mark_rows) + "\ne\n"
    r = subprocess.run([gnuplot], input=script, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"trace-chart: gnuplot failed: {r.stderr[-2000:]}")
    print(f"trace-chart: {len(spans)} tasks on {len(lanes)} lanes -> {png}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
