"""Primes in [lo, hi) near 10**12 with a segmented sieve of Eratosthenes.

The base primes up to sqrt(hi) come from an ordinary sieve; each marks its multiples inside
the segment only, starting at max(p * p, first multiple >= lo). Memory is O(sqrt(hi) + hi - lo).
"""
from math import isqrt


def base_primes(limit: int) -> list:
    sieve = bytearray([1]) * (limit + 1)
    sieve[0:2] = b"\x00\x00"
    for p in range(2, isqrt(limit) + 1):
        if sieve[p]:
            sieve[p * p :: p] = bytearray(len(range(p * p, limit + 1, p)))
    return [i for i, is_p in enumerate(sieve) if is_p]


def primes_in_range(lo: int, hi: int) -> list:
    lo = max(lo, 2)
    if hi <= lo:
        return []
    seg = bytearray([1]) * (hi - lo)
    for p in base_primes(isqrt(hi - 1)):
        start = max(p * p, (lo + p - 1) // p * p)
        if start < hi:
            seg[start - lo :: p] = bytearray(len(range(start, hi, p)))
    return [lo + i for i, is_p in enumerate(seg) if is_p]
