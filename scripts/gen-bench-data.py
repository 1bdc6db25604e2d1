#!/usr/bin/env python3
"""Generates the benchmark data set: about 2 GiB in about 54,000 files.

- 52,000 small files (0.5-12 KiB) of text-like, compressible content in a
  three-level tree, like a home directory of documents and source code;
- 1,900 medium files (64-512 KiB), half random, half compressible;
- 20 large files (4-16 MiB) of random data, like photos and archives;
- one 1 GiB file, half random and half compressible, for streaming reads.

Deterministic for a given seed, so every tool backs up the same bytes.
Usage: gen-bench-data.py DIR [SCALE]   (SCALE 0.1 makes a tenth of it)
"""
import os
import random
import sys

root = sys.argv[1]
scale = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
rng = random.Random(20261121)
words = [("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10)))) for _ in range(4000)]


def text(n):
    ws = rng.choices(words, k=n // 5 + 8)
    for i in range(11, len(ws), 12):
        ws[i] += "\n"
    return " ".join(ws).encode()[:n]


def rand_bytes(n):
    return rng.randbytes(n)


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


pool = [text(64 * 1024) for _ in range(64)]
small = int(52000 * scale)
for i in range(small):
    d = os.path.join(root, "docs", f"p{i % 20:02d}", f"q{(i // 20) % 130:03d}")
    n = rng.randint(512, 12 * 1024)
    base = pool[i % len(pool)]
    start = rng.randint(0, len(base) - n)
    write(os.path.join(d, f"file{i:05d}.txt"), base[start:start + n] + f"\nfile {i}\n".encode())
for i in range(int(1900 * scale)):
    n = rng.randint(64 * 1024, 512 * 1024)
    data = rand_bytes(n) if i % 2 else text(n)
    write(os.path.join(root, "media", f"m{i % 19:02d}", f"medium{i:04d}.bin"), data)
for i in range(int(20 * scale)):
    write(os.path.join(root, "large", f"large{i:02d}.bin"), rand_bytes(rng.randint(4, 16) << 20))
big = int((1 << 30) * scale)
with open(os.path.join(root, "big-1GiB.bin"), "wb") as f:
    half = big // 2
    done = 0
    while done < half:
        n = min(8 << 20, half - done)
        f.write(rand_bytes(n))
        done += n
    chunk = text(8 << 20)
    while done < big:
        n = min(len(chunk), big - done)
        f.write(chunk[:n])
        done += n
