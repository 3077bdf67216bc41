"""CPython + Pillow doing what resize_images.cpp does: every JPEG/PNG of SRC
resized to 300x300 into OUT, one process and then multiprocessing.Pool.

    python3 examples/resize_images.py SRC OUT [WORKERS]

Pillow's best practice, as Image.thumbnail() does it (but to exactly 300x300,
as the C++ program): Image.draft() lets libjpeg decode a JPEG at 1/2, 1/4 or
1/8 scale (shrink-on-load), and reducing_gap shrinks by an integer factor with
a box filter before the bicubic pass.
"""
import multiprocessing as mp
import os
import sys
import time

from PIL import Image

SIDE = 300


def resize_one(job):
    src, dst = job
    with Image.open(src) as img:
        img.draft("RGB", (SIDE, SIDE))  # JPEG only: scaled decoding
        out = img.convert("RGB").resize((SIDE, SIDE), Image.BICUBIC, reducing_gap=2.0)
        if dst.lower().endswith((".jpg", ".jpeg")):
            out.save(dst, quality=90)
        else:
            out.save(dst)
    return dst


def main():
    src, out = sys.argv[1], sys.argv[2]
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else len(os.sched_getaffinity(0))
    os.makedirs(out, exist_ok=True)
    names = sorted(n for n in os.listdir(src) if n.lower().endswith((".jpg", ".jpeg", ".png")))
    jobs = [(os.path.join(src, n), os.path.join(out, n)) for n in names]
    t0 = time.perf_counter()
    for job in jobs:
        resize_one(job)
    one = time.perf_counter() - t0
    t0 = time.perf_counter()  # the Pool's start-up is timed, as in the C++ program
    with mp.Pool(workers) as pool:
        pool.map(resize_one, jobs, chunksize=1)
    many = time.perf_counter() - t0
    print(f"one process {one:.3f} s   Pool({workers}).map {many:.3f} s   speed-up {one / many:.2f}x")


if __name__ == "__main__":
    main()
