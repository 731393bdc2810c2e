"""Median of two sorted arrays in O(log min(m, n)) by binary search on the partition.

Cut the shorter array at i and the longer at j = (m + n + 1) // 2 - i so the left halves hold
half the elements; the cut is right when both left maxima are <= both right minima.
"""


def find_median(a: list, b: list) -> float:
    if len(a) > len(b):
        a, b = b, a
    m, n = len(a), len(b)
    if m + n == 0:
        raise ValueError("both arrays are empty")
    lo, hi, half = 0, m, (m + n + 1) // 2
    inf = float("inf")
    while True:
        i = (lo + hi) // 2
        j = half - i
        a_left = a[i - 1] if i > 0 else -inf
        a_right = a[i] if i < m else inf
        b_left = b[j - 1] if j > 0 else -inf
        b_right = b[j] if j < n else inf
        if a_left > b_right:
            hi = i - 1
        elif b_left > a_right:
            lo = i + 1
        else:
            left = max(a_left, b_left)
            if (m + n) % 2:
                return float(left)
            return (left + min(a_right, b_right)) / 2
