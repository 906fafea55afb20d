"""How much of a step at 1e6 elements is the square root and the division.

docs/performance.md quotes this script's output. It times, each in its own loop of
consecutive calls (so that its buffers stay in the caches, as a kernel timed alone
does), over float32 buffers of ``--size`` elements with numba's threads:

- ``ceiling``: Adam's in-place loads and stores (4 reads, 3 writes) and one add per store,
  as ``fastmoments bench``'s ceiling;
- ``ceiling + sqrt + div``: the same, plus one square root and one division per element
  (``p += g / (sqrt(v) + eps)``): the least arithmetic of a rule that divides by a root
  (Adam, AdamW, Adagrad, RMSprop, NAdam, RAdam, Yogi, AdaBelief, ...);
- ``Adam``: fastmoments' Adam step on a FlatParams of the same size;

and, on one thread over 2048 elements (in L1), the throughput of the square root and the
division alone. Where the second row is much slower than the first, the rules with a root
and a division are bound by that arithmetic, not by memory traffic, at that size.

    python tools/sqrt_div_floor.py [--size 1e6] [--budget 2]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from numba import get_num_threads, njit, prange

import fastmoments as fm


@njit(parallel=True, error_model="numpy")
def ceiling(p, g, m, v):
    for i in prange(p.shape[0]):
        x = g[i]
        p[i] += x
        m[i] += x
        v[i] += x


@njit(parallel=True, error_model="numpy")
def ceiling_sqrt_div(p, g, m, v, eps):
    for i in prange(p.shape[0]):
        x = g[i]
        p[i] += x / (math.sqrt(v[i]) + eps)
        m[i] += x
        v[i] += x


@njit(error_model="numpy")
def sqrt_div_l1(out, a, b, eps, repeats):
    for _ in range(repeats):
        for i in range(out.shape[0]):
            out[i] = a[i] / (math.sqrt(b[i]) + eps)


@njit(error_model="numpy")
def div_l1(out, a, b, eps, repeats):
    for _ in range(repeats):
        for i in range(out.shape[0]):
            out[i] = a[i] / (b[i] + eps)


@njit(error_model="numpy")
def sqrt_l1(out, a, b, eps, repeats):
    for _ in range(repeats):
        for i in range(out.shape[0]):
            out[i] = a[i] * (math.sqrt(b[i]) + eps)


@njit(error_model="numpy")
def multiply_l1(out, a, b, eps, repeats):
    for _ in range(repeats):
        for i in range(out.shape[0]):
            out[i] = a[i] * (b[i] + eps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=1e6)
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of rounds")
    args = parser.parse_args()
    n = int(args.size)
    rng = np.random.default_rng(0)
    eps = np.float32(1e-8)

    def buffers():
        return [rng.random(n, dtype=np.float32) + np.float32(0.5) for _ in range(4)]

    a, b = buffers(), buffers()
    flat = fm.FlatParams([rng.standard_normal(n).astype(np.float32)])
    flat.grad[:] = rng.standard_normal(n).astype(np.float32)
    adam = fm.Adam(flat, lr=1e-6)
    calls = {
        "ceiling (4r/3w, no math)": lambda: ceiling(*a),
        "ceiling + sqrt + div": lambda: ceiling_sqrt_div(*b, eps),
        "fastmoments Adam": adam.step,
    }
    for call in calls.values():  # compile
        call()
        call()
    fm.wait_compiled()
    best = dict.fromkeys(calls, math.inf)
    for name, call in calls.items():  # each in its own loop: its buffers stay in cache
        deadline = time.perf_counter() + args.budget / len(calls)
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - t)
    print(f"{n:.0e} float32 elements, numba threads {get_num_threads()}, "
          f"each timed alone in consecutive calls, best of {args.budget / len(calls):.2g} s:")
    for name, seconds in best.items():
        print(f"  {name:28s} {seconds * 1e6:9.1f} us")

    small = 2048
    x, y = rng.random(small, dtype=np.float32), rng.random(small, dtype=np.float32) + 0.5
    out = np.empty_like(x)
    print(f"one thread, {small} elements (in L1), per element:")
    for kernel in (sqrt_div_l1, sqrt_l1, div_l1, multiply_l1):
        kernel(out, x, y, eps, 1)
        fastest = math.inf
        for _ in range(20):
            t = time.perf_counter()
            kernel(out, x, y, eps, 2000)
            fastest = min(fastest, time.perf_counter() - t)
        ns = fastest / (2000 * small) * 1e9
        print(f"  {kernel.__name__:14s} {ns:.3f} ns")


if __name__ == "__main__":
    main()
