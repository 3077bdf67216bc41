"""CPython + Pillow doing what resize_images.cpp does: every JPEG/PNG of SRC
resized to 300x300 into OUT, one process and then multiprocessing.Pool.

    python3 examples/resize_images.py SRC OUT
"""
import multiprocessing as mp
import os
import sys
import time

from PIL import Image


def resize_one(job):
    src, dst = job
    with Image.open(src) as img:
        out = img.convert("RGB").resize((300, 300), Image.BICUBIC)
        if dst.lower().endswith((".jpg", ".jpeg")):
            out.save(dst, quality=90)
        else:
            out.save(dst)
    return dst


def main():
    src, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    names = sorted(n for n in os.listdir(src) if n.lower().endswith((".jpg", ".jpeg", ".png")))
    jobs = [(os.path.join(src, n), os.path.join(out, n)) for n in names]
    t0 = time.perf_counter()
    for job in jobs:
        resize_one(job)
    one = time.perf_counter() - t0
    workers = len(os.sched_getaffinity(0))
    t0 = time.perf_counter()
    with mp.Pool(workers) as pool:
        pool.map(resize_one, jobs, chunksize=1)
    many = time.perf_counter() - t0
    print(f"one process {one:.3f} s   Pool({workers}).map {many:.3f} s   speed-up {one / many:.2f}x")


if __name__ == "__main__":
    main()
