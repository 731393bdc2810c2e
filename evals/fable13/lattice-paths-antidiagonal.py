"""Lattice paths from (0, n) to (n, 0) with steps right (1, 0) and down (0, -1).

`count_paths(n)` counts paths that never go strictly below the anti-diagonal x + y = n; by the
reflection principle (reflect the part after the first bad step across x + y = n - 1) the bad
paths are C(2n, n + 1), so the answer is the Catalan number C(2n, n) - C(2n, n + 1).
`count_paths(n, touch=False)` also forbids touching it between the endpoints: the first step
must be right and the last down, leaving a path that stays weakly above x + y = n + 1: Catalan(n - 1).
"""
from math import comb


def catalan(k: int) -> int:
    return comb(2 * k, k) - comb(2 * k, k + 1)


def count_paths(n: int, touch: bool = True) -> int:
    if n == 0:
        return 1
    return catalan(n) if touch else catalan(n - 1)
