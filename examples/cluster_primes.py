"""Count the primes below 2,000,000 in blocks, with a Pool: CPU-bound work
that runs unchanged on a Dask cluster.

    python examples/cluster_primes.py
    python -m fastmp examples/cluster_primes.py
    python -m fastmp --cluster local:2 examples/cluster_primes.py
    python -m fastmp --cluster tcp://scheduler:8786 examples/cluster_primes.py
"""

import sys
from multiprocessing import Pool

LIMIT = 2_000_000
BLOCK = 50_000


def count_primes(bounds):
    """The number of primes in [lo, hi), by trial division by odd
    numbers."""
    lo, hi = bounds
    n = 0
    for k in range(max(lo, 2), hi):
        if k < 4:
            n += 1
            continue
        if k % 2 == 0:
            continue
        d = 3
        while d * d <= k:
            if k % d == 0:
                break
            d += 2
        else:
            n += 1
    return n


if __name__ == "__main__":
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else LIMIT
    blocks = [(lo, min(lo + BLOCK, limit)) for lo in range(0, limit, BLOCK)]
    with Pool(2) as pool:
        counts = pool.map(count_primes, blocks)
    print("blocks:", len(blocks))
    print("primes below %d: %d" % (limit, sum(counts)))
    print("first blocks:", counts[:5])
