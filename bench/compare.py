#!/usr/bin/env python3
"""Side-by-side benchmark run: mproc (Google Benchmark) vs CPython
multiprocessing vs the raw floors, interleaved in one run.

    python3 bench/compare.py --build build [--rounds 3] [--min-time 0.3]

Each round runs build/bench/mproc_bench (JSON output) and
bench/python_baseline.py, alternating which goes first; the table shows the
median over rounds. Prints the table and rewrites docs/benchmarks.md (unless
--no-docs).
"""
import argparse
import datetime
import json
import re
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# Derived floor: twice BM_BareFork (a pool of two workers forks twice).
TWO_FORKS = "2x:BM_BareFork"
# Rows of the table: (label, CPython workload, mproc benchmark, floor benchmark, floor label, kind)
# kind "time": lower is better, shown in us/ms; "bw": bytes/s, higher is better;
# "rate": items/s (Google Benchmark's SetItemsProcessed), higher is better.
ROWS = [
    ("Process start+join, fork", "process_start_join_fork", "BM_ProcessStartJoin/fork", "BM_BareFork",
     "bare fork+_exit+waitpid", "time"),
    ("Process start+join, forkserver", "process_start_join_forkserver", "BM_ProcessStartJoin/forkserver",
     None, None, "time"),
    ("Process start+join, spawn", "process_start_join_spawn", "BM_ProcessStartJoin/spawn", None, None, "time"),
    ("Pipe round trip, int (duplex Pipe())", "pipe_pingpong_small", "BM_PipeRoundTrip/duplex",
     "BM_RawPipePingPong", "raw pipe 1-byte ping-pong", "time"),
    ("Pipe round trip, int (two Pipe(false))", "pipe_pingpong_small_simplex", "BM_PipeRoundTrip/simplex",
     "BM_RawPipePingPong", "raw pipe 1-byte ping-pong", "time"),
    ("64 MiB send_bytes + 1-byte ack", "pipe_bandwidth_64MiB", "BM_PipeBandwidth64MiB",
     "BM_RawSocketStream64MiB", "raw socketpair stream", "bw"),
    # The same round trips with both processes on one CPU (see ONE_CPU).
    ("Pipe round trip, int (duplex Pipe()), 1 CPU", "1cpu:pipe_pingpong_small", "1cpu:BM_PipeRoundTrip/duplex",
     "1cpu:BM_RawPipePingPong", "raw pipe 1-byte ping-pong, 1 CPU", "time"),
    ("Pipe round trip, int (two Pipe(false)), 1 CPU", "1cpu:pipe_pingpong_small_simplex",
     "1cpu:BM_PipeRoundTrip/simplex", "1cpu:BM_RawPipePingPong", "raw pipe 1-byte ping-pong, 1 CPU", "time"),
    # Issue 3: Pool and ProcessPoolExecutor (bench/bench_pool.cpp), trivial int identity tasks.
    ("Executor submit→result round trip, 1 worker", "executor_submit_roundtrip", "BM_ExecutorRoundTrip",
     "BM_RawPipePingPong", "raw pipe 1-byte ping-pong", "time"),
    ("Executor throughput, trivial submits, 2 workers", "executor_submit_throughput",
     "BM_ExecutorThroughput/10000", None, None, "rate"),
    ("Pool.map trivial, chunksize 1, 2 workers", "pool_map_trivial_chunksize1", "BM_PoolMap/chunksize1",
     None, None, "rate"),
    ("Pool.map trivial, chunksize 10, 2 workers", "pool_map_trivial_chunksize10", "BM_PoolMap/chunksize10",
     None, None, "rate"),
    ("Pool.map trivial, chunksize 100, 2 workers", "pool_map_trivial_chunksize100", "BM_PoolMap/chunksize100",
     None, None, "rate"),
    ("Pool.map trivial, default chunks, 2 workers", "pool_map_trivial_default_chunks",
     "BM_PoolMap/default_chunks", None, None, "rate"),
    ("Pool(2) start+shutdown, fork", "pool_start_shutdown_2_fork", "BM_PoolStartShutdown/fork",
     TWO_FORKS, "2 × bare fork+_exit+waitpid", "time"),
    ("Pool(2) start+shutdown, forkserver", "pool_start_shutdown_2_forkserver", "BM_PoolStartShutdown/forkserver",
     TWO_FORKS, "2 × bare fork+_exit+waitpid", "time"),
    # Issue 4: shared state (bench/bench_shared.cpp).
    ("Queue 1→1, small messages", "queue_throughput_small", "BM_QueueThroughput", None, None, "rate"),
    ("Queue round trip (put→get→put→get), idle consumer", "queue_pingpong", "BM_QueuePingPong",
     "BM_RawFutexPingPong", "raw futex ping-pong", "time"),
    ("Value += 1 under get_lock(), 2 processes", "value_lock_increments", "BM_ValueIncrementLocked2Proc",
     None, None, "rate"),
    ("64 MiB array to a worker (CPython: Pipe.send_bytes)", "pipe_bandwidth_64MiB", "BM_Array64MiBToWorker",
     None, None, "bw"),
    # Issue 13: bulk data (bench/bench_bulk.cpp). The child receives into a reused buffer
    # (recv_bytes_into), as the raw socketpair floor does; or into a fresh Bytes (recv_bytes).
    ("Connection.send_bytes 64 MiB, recv_bytes_into + ack", "pipe_bandwidth_64MiB",
     "BM_ConnectionSendBytes64MiB/recv_into", "BM_RawSocketStream64MiB", "raw socketpair stream", "bw"),
    ("Connection.send_bytes 64 MiB, recv_bytes (fresh buffer) + ack", "pipe_bandwidth_64MiB",
     "BM_ConnectionSendBytes64MiB/recv_bytes", "BM_RawSocketStream64MiB", "raw socketpair stream", "bw"),
    ("Queue 1→1, 1 MiB messages", "queue_1MiB", "BM_Queue1MiB", "BM_Memcpy64MiB", "memcpy 64 MiB", "bw"),
    # Pool with large items: Pool(2).map, chunksize 1, 128 MiB of items a map (bench_bulk.cpp); the
    # task returns a checksum ("arguments") or its item ("echo"); bytes one way.
    ("Pool.map 64 KiB items, arguments only", "pool_map_bulk_args_64KiB", "BM_PoolMapBulk/args/65536",
     "BM_Memcpy64MiB", "memcpy 64 MiB", "bw"),
    ("Pool.map 1 MiB items, arguments only", "pool_map_bulk_args_1MiB", "BM_PoolMapBulk/args/1048576",
     "BM_Memcpy64MiB", "memcpy 64 MiB", "bw"),
    ("Pool.map 16 MiB items, arguments only", "pool_map_bulk_args_16MiB", "BM_PoolMapBulk/args/16777216",
     "BM_Memcpy64MiB", "memcpy 64 MiB", "bw"),
    ("Pool.map 64 KiB items, echo", "pool_map_bulk_echo_64KiB", "BM_PoolMapBulk/echo/65536",
     "BM_Memcpy64MiB", "memcpy 64 MiB", "bw"),
    ("Pool.map 1 MiB items, echo", "pool_map_bulk_echo_1MiB", "BM_PoolMapBulk/echo/1048576",
     "BM_Memcpy64MiB", "memcpy 64 MiB", "bw"),
    ("Pool.map 16 MiB items, echo", "pool_map_bulk_echo_16MiB", "BM_PoolMapBulk/echo/16777216",
     "BM_Memcpy64MiB", "memcpy 64 MiB", "bw"),
    # The same maps with mproc::SharedBytes items (bench_shared_bytes.cpp): handles travel, the
    # worker maps the buffer; CPython has no zero-copy analogue, so its bytes echo is the comparison.
    ("Pool.map 1 MiB SharedBytes, echo", "pool_map_bulk_echo_1MiB", "BM_PoolMapSharedBytes/echo/1048576",
     "BM_Memcpy64MiB", "memcpy 64 MiB", "bw"),
    ("Pool.map 16 MiB SharedBytes, echo", "pool_map_bulk_echo_16MiB", "BM_PoolMapSharedBytes/echo/16777216",
     "BM_Memcpy64MiB", "memcpy 64 MiB", "bw"),
    ("Pool.map 1 MiB SharedBytes, new buffer back", "pool_map_bulk_echo_1MiB",
     "BM_PoolMapSharedBytes/fresh/1048576", "BM_Memcpy64MiB", "memcpy 64 MiB", "bw"),
    ("Pool.map 16 MiB SharedBytes, new buffer back", "pool_map_bulk_echo_16MiB",
     "BM_PoolMapSharedBytes/fresh/16777216", "BM_Memcpy64MiB", "memcpy 64 MiB", "bw"),
    ("Executor submit of a 16 MiB vector, 1 worker", "executor_submit_16MiB", "BM_ExecutorSubmit16MiB",
     "BM_RawSocketStream64MiB", "raw socketpair stream", "bw"),
    # Issue 5: managers (bench/bench_managers.cpp), over the local Unix socket.
    ("Manager dict set+get pairs", "manager_dict_setget", "BM_ManagerDictSetGet/tcp:0", None, None, "rate"),
    ("Manager dict: 10^5 items in one update (CPython: item by item)", "manager_dict_itemwise",
     "BM_ManagerDictUpdate100k/tcp:0", None, None, "rate"),
]
# Round trips are run a second time with both sides pinned to one CPU: on this
# VM a cross-CPU wakeup costs ~35 µs and the scheduler flips between placing
# the two processes on one CPU or two, so unpinned figures are bimodal.
ONE_CPU = "1cpu:"
ONE_CPU_FILTER = "PingPong|PipeRoundTrip"
ONE_CPU_PY = ["pipe_pingpong_small", "pipe_pingpong_small_simplex"]
FLOORS = [
    ("BM_BareFork", "fork + _exit + waitpid", "time"),
    ("BM_RawPipePingPong", "1-byte ping-pong over two pipes", "time"),
    ("BM_RawSocketPingPong", "1-byte ping-pong over a socketpair", "time"),
    ("BM_RawSocketStream64MiB", "64 MiB over a socketpair + 1-byte ack", "bw"),
    ("BM_Memcpy64MiB", "memcpy of 64 MiB between buffers already faulted in", "bw"),
    ("BM_FreshResults/1048576", "128 fresh 1 MiB vectors prefaulted and filled, no IPC (an echo's results)", "bw"),
    ("BM_FreshResults/16777216", "8 fresh 16 MiB vectors prefaulted and filled, no IPC (an echo's results)", "bw"),
    ("BM_RawFutexPingPong", "ping-pong through a shared futex word (wait/wake, no spin)", "time"),
    ("1cpu:BM_RawPipePingPong", "1-byte ping-pong over two pipes, both on 1 CPU", "time"),
    ("1cpu:BM_RawSocketPingPong", "1-byte ping-pong over a socketpair, both on 1 CPU", "time"),
]
PY_UNIT_TO_SECONDS = {"ms/process": 1e-3, "us/roundtrip": 1e-6, "us/task": 1e-6, "ms/pool": 1e-3}
PY_RATE_UNITS = {"tasks/s", "msgs/s", "ops/s", "pairs/s", "items/s"}
GB_UNIT_TO_S = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def pick_python():
    if os.path.exists("/usr/bin/python3"):
        return "/usr/bin/python3"
    return shutil.which("python3") or sys.executable


PIN = None  # CPU set for the whole run, from --pin


def run(cmd, timeout, cpus=None):
    cpus = cpus or PIN
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                       preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    if r.returncode != 0:
        sys.stderr.write(f"compare: {' '.join(cmd)} exited {r.returncode}\n{r.stderr[-4000:]}\n")
    return r, time.perf_counter() - t


def run_mproc(exe, min_time, bench_filter, timeout, cpus=None, prefix=""):
    cmd = [exe, "--benchmark_format=json", f"--benchmark_min_time={min_time}"]
    if bench_filter:
        cmd.append(f"--benchmark_filter={bench_filter}")
    r, dt = run(cmd, timeout, cpus)
    out = {}
    try:
        data = json.loads(r.stdout)
    except json.JSONDecodeError:
        sys.stderr.write(f"compare: no JSON from mproc_bench\n{r.stdout[-2000:]}\n")
        return out, None, dt
    for b in data.get("benchmarks", []):
        name = b.get("run_name") or b["name"]
        name = prefix + name.replace("/real_time", "")
        if b.get("error_occurred"):
            out[name] = ("error", b.get("error_message", "error"))
            continue
        if "bytes_per_second" in b:
            out[name] = ("bw", float(b["bytes_per_second"]))
        elif "items_per_second" in b:
            out[name] = ("rate", float(b["items_per_second"]))
        else:
            out[name] = ("time", float(b["real_time"]) * GB_UNIT_TO_S[b.get("time_unit", "ns")])
    fork = out.get(prefix + "BM_BareFork")
    if fork and fork[0] == "time":
        out[prefix + TWO_FORKS] = ("time", 2 * fork[1])
    return out, data.get("context", {}), dt


def run_python(py, scale, workloads, timeout, cpus=None, prefix=""):
    cmd = [py, os.path.join(HERE, "python_baseline.py"), f"--scale={scale}", *workloads]
    r, dt = run(cmd, timeout, cpus)
    out, header = {}, ""
    for line in r.stdout.splitlines():
        if line.startswith("#"):
            header = line.lstrip("# ").strip()
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        name, value, unit = prefix + parts[0], float(parts[1]), parts[2]
        if unit == "GB/s":
            out[name] = ("bw", value * 1e9)
        elif unit in PY_RATE_UNITS:
            out[name] = ("rate", value)
        else:
            out[name] = ("time", value * PY_UNIT_TO_SECONDS[unit])
    return out, header, dt


def median_of(rounds, name):
    vals = [r[name][1] for r in rounds if name in r and r[name][0] != "error"]
    if vals:
        return statistics.median(vals)
    errs = [r[name][1] for r in rounds if name in r]
    return errs[0] if errs else None


def paired_median(fn, rounds_a, name_a, rounds_b, name_b, kind):
    """Median over rounds of fn(a_i, b_i): values taken close together in time,
    so drift between rounds (load from other jobs) cancels out."""
    vals = []
    for ra, rb in zip(rounds_a, rounds_b):
        a, b = ra.get(name_a), rb.get(name_b)
        if a and b and a[0] != "error" and b[0] != "error":
            v = fn(a[1], b[1], kind)
            if v is not None:
                vals.append(v)
    return statistics.median(vals) if vals else None


def fmt_time(s):
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} µs"


def fmt_val(v, kind):
    if v is None:
        return "—"
    if isinstance(v, str):
        return f"error: {v}"
    if kind == "rate":
        return fmt_rate(v)
    return fmt_time(v) if kind == "time" else f"{v / 1e9:.2f} GB/s"


def fmt_rate(v):
    if v >= 1e6:
        return f"{v / 1e6:.2f}M/s"
    return f"{v / 1e3:.1f}k/s" if v >= 1e3 else f"{v:.0f}/s"


def speedup(py, mp_, kind):
    """CPython/mproc as 'times faster' (>1 = mproc faster)."""
    if not isinstance(py, float) or not isinstance(mp_, float) or py <= 0 or mp_ <= 0:
        return None
    return py / mp_ if kind == "time" else mp_ / py


def slowdown(mp_, floor, kind):
    """mproc/floor as 'times slower than the floor' (1 = at the floor)."""
    if not isinstance(floor, float) or not isinstance(mp_, float) or floor <= 0 or mp_ <= 0:
        return None
    return mp_ / floor if kind == "time" else floor / mp_


def x(v):
    return "—" if v is None else f"{v:.2f}×"


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "os": platform.platform()}


def draw_chart(rows, path):
    """A horizontal bar chart of CPython/mproc per workload (log scale) with
    gnuplot, as a PNG beside docs/benchmarks.md. False when gnuplot is missing."""
    gnuplot = shutil.which("gnuplot")
    bars = [(r["label"], r["speedup"]) for r in rows if r["speedup"]]
    if not gnuplot or not bars:
        return False
    data = "\n".join(f'"{label}" {v:.4f}' for label, v in reversed(bars)) + "\n"
    script = f"""
set terminal pngcairo size 1100,{120 + 34 * len(bars)} font "DejaVu Sans,10"
set output "{path}"
set title "mproc vs CPython multiprocessing: how many times faster (log scale; 1 = same speed)"
set style fill solid 0.8 noborder
set logscale x 10
set xrange [0.5:{max(v for _, v in bars) * 3:.1f}]
set yrange [-0.7:{len(bars) - 0.3}]
set grid xtics
set key off
set arrow from 1, graph 0 to 1, graph 1 nohead dt 2 lc rgb "#cc0000"
set arrow from 10, graph 0 to 10, graph 1 nohead dt 3 lc rgb "#008800"
plot "-" using (0.5 * ($2 + 0.5)):0:(0.5):($2):($0 - 0.35):($0 + 0.35):ytic(1) with boxxyerror lc rgb "#3465a4", \\
     "-" using ($2 * 1.08):0:(sprintf("%.1f×", $2)) with labels left font ",9"
{data}e
{data}e
"""
    r = subprocess.run([gnuplot], input=script, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(f"compare: gnuplot failed: {r.stderr[-2000:]}\n")
        return False
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build", help="CMake build directory (default: build)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is shown")
    ap.add_argument("--min-time", type=float, default=0.3, help="--benchmark_min_time for mproc_bench (s)")
    ap.add_argument("--scale", type=float, default=1.0, help="iteration scale for the CPython baseline")
    ap.add_argument("--python", default=None, help="interpreter for the baseline (default /usr/bin/python3)")
    ap.add_argument("--filter", default=None, help="--benchmark_filter for mproc_bench")
    ap.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    ap.add_argument("--timeout", type=float, default=300, help="timeout per program run (s)")
    ap.add_argument("--pin", default=None, metavar="CPUS",
                    help="pin the whole run to these CPUs (e.g. 0 or 0,1)")
    ap.add_argument("--one-cpu", default=None, metavar="CPU",
                    help="CPU for the extra one-CPU round-trip rows (default: the first allowed; 'none' skips)")
    args = ap.parse_args()

    build = args.build if os.path.isabs(args.build) else os.path.join(ROOT, args.build)
    exe = os.path.join(build, "bench", "mproc_bench")
    if not os.path.exists(exe):
        sys.exit(f"compare: {exe} not found; build it first (cmake --build {args.build} --target mproc_bench)")
    py = args.python or pick_python()
    global PIN
    if args.pin:
        PIN = {int(c) for c in args.pin.split(",")}
    one_cpu = None
    if args.one_cpu != "none":
        one_cpu = {int(args.one_cpu) if args.one_cpu else min(os.sched_getaffinity(0))}
    workloads = sorted({r[1] for r in ROWS if not r[1].startswith(ONE_CPU)
                        and (not args.filter or re.search(args.filter, r[2]))})  # a subset: its rows only

    mp_rounds, py_rounds = [], []
    context, py_header = {}, ""
    t0 = time.perf_counter()
    for i in range(args.rounds):
        order = ["mproc", "python"] if i % 2 == 0 else ["python", "mproc"]
        mp_rounds.append({})
        py_rounds.append({})
        for pinned in ([False, True] if one_cpu else [False]):
            for who in order:
                cpus, prefix = (one_cpu, ONE_CPU) if pinned else (None, "")
                if who == "mproc":
                    res, ctx, dt = run_mproc(exe, args.min_time, ONE_CPU_FILTER if pinned else args.filter,
                                             args.timeout, cpus, prefix)
                    mp_rounds[-1].update(res)
                    context = ctx or context
                else:
                    res, hdr, dt = run_python(py, args.scale, ONE_CPU_PY if pinned else workloads,
                                              args.timeout, cpus, prefix)
                    py_rounds[-1].update(res)
                    py_header = hdr or py_header
                what = f"{who} on CPU {sorted(cpus)}" if pinned else who
                print(f"round {i + 1}/{args.rounds}: {what} {dt:.1f} s", file=sys.stderr, flush=True)
    total = time.perf_counter() - t0

    rows = []
    for label, pyname, mpname, floorname, floorlabel, kind in ROWS:
        if pyname.startswith(ONE_CPU) and not one_cpu:
            continue
        pv, mv = median_of(py_rounds, pyname), median_of(mp_rounds, mpname)
        fv = median_of(mp_rounds, floorname) if floorname else None
        rows.append({"label": label, "kind": kind, "py": pv, "mp": mv, "floor": fv, "floorlabel": floorlabel,
                     "speedup": paired_median(speedup, py_rounds, pyname, mp_rounds, mpname, kind),
                     "slowdown": (paired_median(slowdown, mp_rounds, mpname, mp_rounds, floorname, kind)
                                  if floorname else None)})

    header = "| workload | CPython | mproc | CPython/mproc (>1 = mproc faster) | floor | mproc/floor |"
    lines = [header, "|---|---|---|---|---|---|"]
    for r in rows:
        floor = "—" if r["floor"] is None else f"{fmt_val(r['floor'], r['kind'])} ({r['floorlabel']})"
        lines.append(f"| {r['label']} | {fmt_val(r['py'], r['kind'])} | {fmt_val(r['mp'], r['kind'])} | "
                     f"{x(r['speedup'])} | {floor} | {x(r['slowdown'])} |")
    table = "\n".join(lines)

    floor_lines = ["| floor (same binary) | what | median |", "|---|---|---|"]
    for name, what, kind in FLOORS:
        if name.startswith(ONE_CPU) and not one_cpu:
            continue
        floor_lines.append(f"| `{name}` | {what} | {fmt_val(median_of(mp_rounds, name), kind)} |")
    floors = "\n".join(floor_lines)

    by = {r["label"]: r for r in rows}
    fork_row = by["Process start+join, fork"]
    targets = []

    def target(text, value, ok):
        status = "not measured" if value is None else ("**met**" if ok else "**not met**")
        targets.append(f"| {text} | {x(value)} | {status} |")

    v = fork_row["slowdown"]
    target("Process start+join (fork) within 2× of bare fork+_exit+waitpid", v, v is not None and v <= 2.0)
    for lbl, tag in (("Pipe round trip, int (duplex Pipe())", "duplex Pipe()"),
                     ("Pipe round trip, int (two Pipe(false))", "two Pipe(false)"),
                     ("Pipe round trip, int (duplex Pipe()), 1 CPU", "duplex Pipe(), 1 CPU"),
                     ("Pipe round trip, int (two Pipe(false)), 1 CPU", "two Pipe(false), 1 CPU")):
        if lbl not in by:
            continue
        r = by[lbl]
        target(f"Pipe round trip ({tag}) ≥ 4× faster than CPython's Pipe", r["speedup"],
               r["speedup"] is not None and r["speedup"] >= 4.0)
        target(f"Pipe round trip ({tag}) within 1.5× of a raw pipe ping-pong", r["slowdown"],
               r["slowdown"] is not None and r["slowdown"] <= 1.5)
    target_table = "\n".join(["| target (issue 2) | measured | status |", "|---|---|---|", *targets])

    # Issue 3: ratios to CPython (or to the floor) that the pool must reach.
    targets = []
    for lbl, text, field, need in (
            ("Executor submit→result round trip, 1 worker",
             "Executor submit→result round trip ≥ 10× faster than CPython", "speedup", 10.0),
            ("Pool.map trivial, chunksize 1, 2 workers", "Pool.map chunksize 1 ≥ 10× CPython's items/s",
             "speedup", 10.0),
            ("Pool.map trivial, default chunks, 2 workers", "Pool.map default chunks ≥ 3× CPython's items/s",
             "speedup", 3.0),
            ("Executor throughput, trivial submits, 2 workers",
             "Executor throughput (2 workers) ≥ 10× CPython's tasks/s", "speedup", 10.0),
            ("Pool(2) start+shutdown, fork", "Pool(2) start+shutdown (fork) within 2× of two bare forks",
             "slowdown", 2.0)):
        if lbl not in by:
            continue
        v = by[lbl][field]
        target(text, v, v is not None and (v >= need if field == "speedup" else v <= need))
    pool_target_table = "\n".join(["| target (issue 3) | measured | status |", "|---|---|---|", *targets])

    # Issues 4 and 5: ratios to CPython, and the queue latency to its floor.
    targets = []
    for lbl, text, field, need in (
            ("Queue 1→1, small messages", "Queue 1→1 ≥ 10× CPython's msgs/s", "speedup", 10.0),
            ("Value += 1 under get_lock(), 2 processes", "Value += 1 under its lock ≥ 10× CPython", "speedup", 10.0),
            ("64 MiB array to a worker (CPython: Pipe.send_bytes)",
             "64 MiB array to a worker ≥ 10× CPython's Pipe.send_bytes", "speedup", 10.0),
            ("Queue round trip (put→get→put→get), idle consumer",
             "Queue latency within 2× of a raw futex ping-pong", "slowdown", 2.0),
            ("Manager dict set+get pairs", "Manager dict set+get ≥ 5× CPython's Manager", "speedup", 5.0),
            ("Manager dict: 10^5 items in one update (CPython: item by item)",
             "Batched update of 10^5 items ≥ 50× CPython item by item", "speedup", 50.0)):
        if lbl not in by:
            continue
        v = by[lbl][field]
        target(text, v, v is not None and (v >= need if field == "speedup" else v <= need))
    shared_target_table = "\n".join(["| target (issues 4, 5) | measured | status |", "|---|---|---|", *targets])

    # Issue 13: bulk data, against the floors (slowdown <= 1.25 is >= 80% of the floor).
    targets = []
    for lbl, text, field, need in (
            ("Connection.send_bytes 64 MiB, recv_bytes_into + ack",
             "Connection.send_bytes 64 MiB ≥ 80% of a raw socketpair stream", "slowdown", 1.25),):
        if lbl not in by:
            continue
        v = by[lbl][field]
        target(text, v, v is not None and v <= need)
    # Pool.map with large items: >= 10x CPython, and echo >= 40% of memcpy
    # (mproc/floor <= 2.5). The SharedBytes rows are the zero-copy path for
    # the same work (the task reads the caller's buffer, no copy).
    for lbl, text, field, need in (
            ("Pool.map 1 MiB items, arguments only", "Pool.map 1 MiB arguments only ≥ 10× CPython", "speedup", 10.0),
            ("Pool.map 1 MiB items, echo", "Pool.map 1 MiB echo ≥ 10× CPython", "speedup", 10.0),
            ("Pool.map 1 MiB items, echo", "Pool.map 1 MiB echo ≥ 40% of memcpy", "slowdown", 2.5),
            ("Pool.map 1 MiB SharedBytes, echo", "Pool.map 1 MiB SharedBytes echo ≥ 10× CPython's bytes echo",
             "speedup", 10.0),
            ("Pool.map 1 MiB SharedBytes, echo", "Pool.map 1 MiB SharedBytes echo ≥ 40% of memcpy", "slowdown", 2.5)):
        if lbl not in by:
            continue
        v = by[lbl][field]
        target(text, v, v is not None and (v >= need if field == "speedup" else v <= need))
    # Informative: an echo against what its caller must do anyway, allocate
    # and fill fresh result vectors (BM_FreshResults, no IPC); 100% = at it.
    for size, tag in ((1048576, "1 MiB"), (16777216, "16 MiB")):
        echo_bw = median_of(mp_rounds, f"BM_PoolMapBulk/echo/{size}")
        fresh_bw = median_of(mp_rounds, f"BM_FreshResults/{size}")
        if isinstance(echo_bw, float) and isinstance(fresh_bw, float) and fresh_bw > 0:
            targets.append(f"| (informative) Pool.map {tag} echo as a share of its fresh-result floor "
                           f"({fmt_val(fresh_bw, 'bw')}) | {100 * echo_bw / fresh_bw:.0f}% | — |")
    q = by.get("Queue 1→1, 1 MiB messages")
    if q:
        v = median_of(mp_rounds, "BM_Queue1MiB")
        ok = isinstance(v, float) and v >= 2e9
        targets.append(f"| Queue 1 MiB messages ≥ 2 GB/s | {fmt_val(v, 'bw')} | {'**met**' if ok else '**not met**'} |")
    bulk_target_table = "\n".join(["| target (issue 13) | measured | status |", "|---|---|---|", *targets])

    print(table)
    print()
    print(floors)
    print()
    print(target_table)
    print()
    print(pool_target_table)
    print()
    print(shared_target_table)
    print()
    print(bulk_target_table)
    print(f"\n({args.rounds} interleaved rounds, {total:.0f} s; python: {py_header})", file=sys.stderr)

    if args.no_docs:
        return 0
    m = machine()
    cmd = "python3 " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])
    lib = context.get("library_build_type", "?")
    build_type = "?"
    try:
        with open(os.path.join(build, "CMakeCache.txt")) as f:
            for line in f:
                if line.startswith("CMAKE_BUILD_TYPE:"):
                    build_type = line.split("=", 1)[1].strip() or "(none)"
    except OSError:
        pass
    spread = ["| benchmark | min | median | max | rounds |", "|---|---|---|---|---|"]
    for rounds, names in ((mp_rounds, [r[2] for r in ROWS] + [f[0] for f in FLOORS]),
                          (py_rounds, [r[1] for r in ROWS])):
        for name in dict.fromkeys(names):
            vals = [r[name] for r in rounds if name in r and r[name][0] != "error"]
            if not vals:
                continue
            kind = vals[0][0]
            nums = sorted(v[1] for v in vals)
            who = "CPython " if rounds is py_rounds else ""
            spread.append(f"| {who}`{name}` | {fmt_val(nums[0], kind)} | {fmt_val(statistics.median(nums), kind)} | "
                          f"{fmt_val(nums[-1], kind)} | {len(nums)} |")
    spread_table = "\n".join(spread)
    doc = f"""# Benchmarks

Generated by `bench/compare.py`; do not edit by hand (re-run `make bench`).

## Run

- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}
- command: `{cmd}` (from the repository root; `make bench` runs `python3 bench/compare.py --build $(BUILD)`)
- machine: {m['nproc']} CPUs, {m['cpu']}, Linux {m['kernel']} ({m['os']})
- CPython baseline: `{py}` — {py_header or 'unknown'} (stdlib `multiprocessing`, `bench/python_baseline.py`)
- mproc: `{os.path.relpath(exe, ROOT)}` built with `CMAKE_BUILD_TYPE={build_type}` (Google Benchmark,
  `--benchmark_min_time={args.min_time}`, real time; the Debian Google Benchmark library reports
  itself as a {lib} build, which affects only its own bookkeeping)
- pinning: {('`taskset -c ' + args.pin + '` on both sides') if args.pin else 'none'}
- method: {args.rounds} rounds, each running the mproc binary and the CPython script one after
  the other (order alternating), medians over rounds; whole run {total:.0f} s.

## mproc vs CPython vs the floor

{table}

CPython/mproc is how many times faster mproc is than CPython (>1: mproc faster).
mproc/floor is how many times slower mproc is than the raw floor (1: at the
floor). Both ratios are medians of the per-round ratios (each round's two
values were taken seconds apart), so they need not equal the ratio of the
median columns. Both sides use `fork` for the ping-pong and bandwidth children. The
ping-pong sends a small `int` and receives it back; `Pipe()` is duplex (a
Unix socketpair in both CPython and mproc); the other row uses two one-way
`Pipe(false)` connections (both CPython and mproc make those with a kernel
pipe). The issue's floor is the raw pipe ping-pong; the socketpair floor is
listed below for reference: a duplex `Pipe()` cannot beat it, and mproc's
duplex round trip sits on it. Note on the "≥ 4× CPython's Pipe" target: it was
set against a CPython round trip of 89 µs (`../shared/anchors/`); on this
machine CPython's own pipe round trip is only about 3× the raw pipe floor, so
4× faster than CPython would be faster than the kernel pipe itself. No
kernel-transport `Connection` can meet it here; the measured ratio is shown
as it is.

## Floors

Measured inside `mproc_bench` (same binary, same address-space size), so the
comparison to mproc is like for like:

{floors}

## Spread over rounds

This is a shared 2-CPU VM. The cross-process round trip has two modes here:
a quiet one (raw pipe ping-pong about 5 µs) and a slow one (about 35-40 µs,
seen for minutes at a time while other jobs run), and every ping-pong figure,
CPython's included, moves with it. In the slow mode the fixed cost hides
per-message overhead, so mproc/floor looks better than in the quiet mode;
the "1 CPU" rows (both processes pinned to one CPU, so no cross-CPU wakeup)
are the steady measure of per-message overhead; judge the 1.5× target there
too.

{spread_table}

## Targets (issue 2, Performance)

{target_table}

## Targets (issue 3, Performance)

{pool_target_table}

## Targets (issues 4 and 5, Performance)

{shared_target_table}

Shared-state and manager rows: the queue carries 8-byte integers (CPython:
small ints through `multiprocessing.Queue`, which pickles them and a feeder
thread writes them to a pipe); the round trip puts into one queue, a child
gets it and puts it into a second queue, the caller gets it back. The `Value`
row counts the increments of both processes per second. The 64 MiB row is
the bandwidth of making 64 MiB available to a worker: CPython sends the bytes
through a `Pipe`; mproc passes an `Array<double>` (a shared-memory handle of a
few dozen bytes) to a pool task that reads the last element. The manager
rows: one `d[k] = v` plus one `d[k]` per pair, over the manager's Unix socket
(CPython: its default, also a Unix socket); the batch row is mproc's
`update()` of 10^5 items in one round trip against CPython setting items one
at a time (CPython has no batched form), both as items per second.

The pool rows use trivial `int` identity tasks, as `../shared/anchors/python_mp_bench.py`:
the round trip submits one task to a 1-worker executor and waits for it; the
throughput row submits 10,000 (CPython: 20,000) to 2 workers, then gets them all;
`Pool.map` runs over 20,000 items with chunksize 1 and 200,000 items with
Python's default chunksize (len / (4 × workers)). Pool start+shutdown builds a
`Pool(2)`, waits until both workers are forked, then `close()` + `join()`
(CPython: `Pool(2)`, `close()`, `join()`); its floor is twice `BM_BareFork`.
Under `fork` the pool row stays above 2× that floor: a fork that `_exit`s at
once pays no copy-on-write faults, while a live worker (and its parent, which
keeps running) do (`perf record` shows `do_wp_page`, `copy_page_range` and
page faults in the workers). Under `forkserver`, the default after
`mproc::init`, the workers are forked from the small server process and the
row is at about 2×.

## Bulk data (issue 13)

{bulk_target_table}

A Connection message of at least 256 KiB on a Unix socket goes through a
reused, sealed memfd slab (one copy into it, one copy out of the receiver's
cached mapping); the rows above compare it with a raw socketpair stream of
64 MiB whose reader reuses one buffer, and with the same send into a fresh
`Bytes` (`recv_bytes()`, which pays the page faults of a new 64 MiB buffer).
`BM_ConnectionMessageBySize/<bytes>/<0 stream, 1 shared memory>` measured
the threshold. Queue rows: 1 MiB `std::string` messages from a forked
producer through a `Queue(4)` (CPython: 1 MiB `bytes` through
`multiprocessing.Queue(4)`).

## Reproduce

```sh
make bench                                   # or:
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build --target mproc_bench -j2
python3 bench/compare.py --build build       # this table, rewrites docs/benchmarks.md
build/bench/mproc_bench                      # the Google Benchmark suite alone
/usr/bin/python3 bench/python_baseline.py    # the CPython side alone
```

The reference figures in `../shared/anchors/README.md` were measured on a
machine of the same kind; quote ratios only from one run like this one.
"""
    path = os.path.join(ROOT, "docs", "benchmarks.md")
    chart = os.path.join(ROOT, "docs", "benchmarks.png")
    if draw_chart(rows, chart):
        doc = doc.replace("## mproc vs CPython vs the floor\n",
                          "## mproc vs CPython vs the floor\n\n![CPython/mproc per workload](benchmarks.png)\n", 1)
    # Hand-written remarks on the latest run (docs/benchmarks-notes.md) are
    # kept across runs, after the generated tables.
    notes = os.path.join(ROOT, "docs", "benchmarks-notes.md")
    if os.path.exists(notes):
        with open(notes) as f:
            doc = doc.replace("## Reproduce\n", "## Notes (docs/benchmarks-notes.md, by hand)\n\n" + f.read().strip() +
                              "\n\n## Reproduce\n", 1)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(doc)
    print(f"wrote {os.path.relpath(path, ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
