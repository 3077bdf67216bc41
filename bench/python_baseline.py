"""CPython baseline for mproc's benchmarks: the same workloads as
bench/bench_process.cpp, bench/bench_connection.cpp and bench/bench_pool.cpp, done with the stdlib
`multiprocessing` (adapted from ../shared/anchors/python_mp_bench.py).

    python3 bench/python_baseline.py [--scale S] [WORKLOAD ...]

Prints one line per workload: name<TAB>value<TAB>unit (a leading '#' line
names the interpreter). With no WORKLOAD, runs them all.
"""
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor


def noop():
    pass


def ident(x):
    return x


def report(name, value, unit):
    print(f"{name}\t{value:.3f}\t{unit}", flush=True)


def bench_process_start(method, n):
    ctx = mp.get_context(method)
    # One process outside the timing: starts the fork server, warms imports.
    p = ctx.Process(target=noop)
    p.start()
    p.join()
    t = time.perf_counter()
    for _ in range(n):
        p = ctx.Process(target=noop)
        p.start()
        p.join()
    dt = time.perf_counter() - t
    return dt / n * 1e3


def _relay(get, put):
    """The far side of every ping-pong: hands back what arrives until None."""
    while True:
        m = get()
        if m is None:
            return
        put(m)


def _pingpong(put, get, n):
    """The near side: n round trips through put/get, in µs each."""
    put(1)
    get()
    t = time.perf_counter()
    for i in range(n):
        put(i)
        get()
    dt = time.perf_counter() - t
    put(None)
    return dt / n * 1e6


def bench_pipe_pingpong(n):
    a, b = mp.Pipe()
    p = mp.get_context("fork").Process(target=_relay, args=(b.recv, b.send))
    p.start()
    b.close()
    r = _pingpong(a.send, a.recv, n)
    p.join()
    return r


def bench_pipe_pingpong_simplex(n):
    down_r, down_w = mp.Pipe(False)
    up_r, up_w = mp.Pipe(False)
    p = mp.get_context("fork").Process(target=_relay, args=(down_r.recv, up_w.send))
    p.start()
    down_r.close()
    up_w.close()
    r = _pingpong(down_w.send, up_r.recv, n)
    p.join()
    return r


def _sink(conn):
    while True:
        m = conn.recv_bytes()
        if not m:
            return
        conn.send_bytes(b"k")


def bench_pipe_bandwidth(size, reps):
    a, b = mp.Pipe()
    p = mp.get_context("fork").Process(target=_sink, args=(b,))
    p.start()
    b.close()
    buf = os.urandom(size)
    a.send_bytes(buf)
    a.recv_bytes()
    t = time.perf_counter()
    for _ in range(reps):
        a.send_bytes(buf)
        a.recv_bytes()
    dt = time.perf_counter() - t
    a.send_bytes(b"")
    p.join()
    return size * reps / dt / 1e9


def bench_pool_map(n, chunksize):
    with mp.Pool(2) as pool:
        pool.map(ident, range(1000))  # warm
        t = time.perf_counter()
        pool.map(ident, range(n), chunksize=chunksize)
        dt = time.perf_counter() - t
    return n / dt


def _sum_ends(b):
    return len(b) + (b[0] + b[-1] if b else 0)


def bench_pool_map_bulk(size, echo, rounds):
    """Pool(2).map over 128 MiB of `size`-byte items (8..512 of them), chunksize 1,
    as BM_PoolMapBulk; GB/s of item bytes one way."""
    count = min(512, max(8, (128 << 20) // size))
    items = [bytes([5]) * size for _ in range(count)]
    fn = ident if echo else _sum_ends
    with mp.Pool(2) as pool:
        pool.map(_sum_ends, items, chunksize=1)  # warm
        t = time.perf_counter()
        for _ in range(rounds):
            pool.map(fn, items, chunksize=1)
        dt = time.perf_counter() - t
    return count * size * rounds / dt / 1e9


def _sum_u32(a):
    return sum(a)


def bench_executor_submit_16MiB(n):
    """ProcessPoolExecutor(1).submit of 16 MiB of uint32 (array('I')), as BM_ExecutorSubmit16MiB."""
    import array
    v = array.array("I", [1]) * (4 << 20)
    with ProcessPoolExecutor(1) as ex:
        ex.submit(len, v).result()
        t = time.perf_counter()
        for _ in range(n):
            ex.submit(len, v).result()
        dt = time.perf_counter() - t
    return 16 * (1 << 20) * n / dt / 1e9


def bench_executor_roundtrip(n):
    with ProcessPoolExecutor(1) as ex:
        ex.submit(ident, 0).result()
        t = time.perf_counter()
        for i in range(n):
            ex.submit(ident, i).result()
        dt = time.perf_counter() - t
    return dt / n * 1e6


def bench_executor_throughput(n):
    with ProcessPoolExecutor(2) as ex:
        list(ex.map(ident, range(100)))
        t = time.perf_counter()
        futs = [ex.submit(ident, i) for i in range(n)]
        for f in futs:
            f.result()
        dt = time.perf_counter() - t
    return n / dt


def bench_pool_start(method, n):
    """Pool(2) start (both workers forked) + close + join (workers reaped)."""
    ctx = mp.get_context(method)
    p = ctx.Pool(2)  # warm: imports, the fork server
    p.close()
    p.join()
    t = time.perf_counter()
    for _ in range(n):
        p = ctx.Pool(2)
        p.close()
        p.join()
    dt = time.perf_counter() - t
    return dt / n * 1e3


def _consume(q, n):
    for _ in range(n):
        q.get()


def bench_queue_throughput(n):
    """1 producer (this process) -> 1 consumer, small ints, as the anchor."""
    q = mp.Queue()
    p = mp.get_context("fork").Process(target=_consume, args=(q, n))
    p.start()
    t = time.perf_counter()
    for i in range(n):
        q.put(i)
    p.join()
    return n / (time.perf_counter() - t)


def _produce_big(q, size, n):
    buf = b"x" * size
    for _ in range(n):
        q.put(buf)


def bench_queue_big(size, n):
    """1 producer (a child) -> 1 consumer (this process), `size`-byte bytes messages: GB/s."""
    ctx = mp.get_context("fork")
    q = ctx.Queue(4)
    p = ctx.Process(target=_produce_big, args=(q, size, n + 2))
    p.start()
    q.get()
    q.get()  # warm-up
    t = time.perf_counter()
    for _ in range(n):
        q.get()
    dt = time.perf_counter() - t
    p.join()
    return size * n / dt / 1e9


def bench_queue_pingpong(n):
    """put -> get in a child -> put back -> get: the round trip, in µs."""
    ctx = mp.get_context("fork")
    to, back = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=_relay, args=(to.get, back.put))
    p.start()
    r = _pingpong(to.put, back.get, n)
    p.join()
    return r


def _incr(v, n):
    for _ in range(n):
        with v.get_lock():
            v.value += 1


def bench_value_lock(n):
    """Value += 1 under get_lock() in 2 processes: total increments/s."""
    ctx = mp.get_context("fork")
    v = ctx.Value("q", 0)
    ps = [ctx.Process(target=_incr, args=(v, n)) for _ in range(2)]
    t = time.perf_counter()
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    dt = time.perf_counter() - t
    assert v.value == 2 * n
    return 2 * n / dt


def bench_manager_dict_setget(n):
    """Manager().dict(): d[k] = v then d[k], pairs/s (2 round trips each)."""
    with mp.Manager() as m:
        d = m.dict()
        d["key"] = 0
        t = time.perf_counter()
        for i in range(n):
            d["key"] = i
            d["key"]
        dt = time.perf_counter() - t
    return n / dt


def bench_manager_dict_itemwise(n):
    """What CPython has for a batch: n items set one by one, items/s."""
    with mp.Manager() as m:
        d = m.dict()
        d[-1] = -1
        t = time.perf_counter()
        for i in range(n):
            d[i] = i
        dt = time.perf_counter() - t
    return n / dt


# name -> (function of the scale helper s, unit)
WORKLOADS = {
    "process_start_join_fork": (lambda s: bench_process_start("fork", s(200)), "ms/process"),
    "process_start_join_forkserver": (lambda s: bench_process_start("forkserver", s(100)), "ms/process"),
    "process_start_join_spawn": (lambda s: bench_process_start("spawn", s(20)), "ms/process"),
    "pipe_pingpong_small": (lambda s: bench_pipe_pingpong(s(20_000)), "us/roundtrip"),
    "pipe_pingpong_small_simplex": (lambda s: bench_pipe_pingpong_simplex(s(20_000)), "us/roundtrip"),
    "pipe_bandwidth_64MiB": (lambda s: bench_pipe_bandwidth(64 << 20, max(1, s(10))), "GB/s"),
    "pool_map_trivial_default_chunks": (lambda s: bench_pool_map(s(200_000), None), "tasks/s"),
    "pool_map_trivial_chunksize1": (lambda s: bench_pool_map(s(20_000), 1), "tasks/s"),
    "pool_map_trivial_chunksize10": (lambda s: bench_pool_map(s(200_000), 10), "tasks/s"),
    "pool_map_trivial_chunksize100": (lambda s: bench_pool_map(s(200_000), 100), "tasks/s"),
    "executor_submit_roundtrip": (lambda s: bench_executor_roundtrip(s(2_000)), "us/task"),
    "executor_submit_throughput": (lambda s: bench_executor_throughput(s(20_000)), "tasks/s"),
    "pool_start_shutdown_2_fork": (lambda s: bench_pool_start("fork", s(30)), "ms/pool"),
    "pool_start_shutdown_2_forkserver": (lambda s: bench_pool_start("forkserver", s(20)), "ms/pool"),
    "queue_throughput_small": (lambda s: bench_queue_throughput(s(100_000)), "msgs/s"),
    "queue_pingpong": (lambda s: bench_queue_pingpong(s(10_000)), "us/roundtrip"),
    "queue_1MiB": (lambda s: bench_queue_big(1 << 20, s(200)), "GB/s"),
    "pool_map_bulk_args_64KiB": (lambda s: bench_pool_map_bulk(64 << 10, False, max(1, s(2))), "GB/s"),
    "pool_map_bulk_args_1MiB": (lambda s: bench_pool_map_bulk(1 << 20, False, max(1, s(2))), "GB/s"),
    "pool_map_bulk_args_16MiB": (lambda s: bench_pool_map_bulk(16 << 20, False, max(1, s(2))), "GB/s"),
    "pool_map_bulk_echo_64KiB": (lambda s: bench_pool_map_bulk(64 << 10, True, max(1, s(2))), "GB/s"),
    "pool_map_bulk_echo_1MiB": (lambda s: bench_pool_map_bulk(1 << 20, True, max(1, s(2))), "GB/s"),
    "pool_map_bulk_echo_16MiB": (lambda s: bench_pool_map_bulk(16 << 20, True, max(1, s(2))), "GB/s"),
    "executor_submit_16MiB": (lambda s: bench_executor_submit_16MiB(max(1, s(10))), "GB/s"),
    "value_lock_increments": (lambda s: bench_value_lock(s(50_000)), "ops/s"),
    "manager_dict_setget": (lambda s: bench_manager_dict_setget(s(5_000)), "pairs/s"),
    "manager_dict_itemwise": (lambda s: bench_manager_dict_itemwise(s(10_000)), "items/s"),
}


def main(argv):
    scale = 1.0
    names = []
    it = iter(argv)
    for a in it:
        if a in ("-h", "--help"):
            print(__doc__.strip())
            print("workloads: " + " ".join(WORKLOADS))
            return 0
        if a == "--scale":
            scale = float(next(it))
        elif a.startswith("--scale="):
            scale = float(a.split("=", 1)[1])
        elif a in WORKLOADS:
            names.append(a)
        else:
            try:  # a bare number is the scale, as in the anchor script
                scale = float(a)
            except ValueError:
                print(f"unknown workload {a!r}; known: {' '.join(WORKLOADS)}", file=sys.stderr)
                return 2
    s = lambda n: max(1, int(n * scale))  # noqa: E731
    print(f"# python {sys.version.split()[0]} {sys.executable} cpus={os.cpu_count()}", flush=True)
    for name in names or list(WORKLOADS):
        fn, unit = WORKLOADS[name]
        report(name, fn(s), unit)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
