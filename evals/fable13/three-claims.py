"""Verify three claims by computation, reporting a counterexample when one fails.

1. sum of cubes: 1^3 + ... + n^3 == (n (n + 1) / 2)^2 for every n <= 1000.
2. Goldbach: every even number 4..10000 is a sum of two primes (sieve, then search).
3. Euler's polynomial n^2 + n + 41 is prime for every 0 <= n < 50: false, n = 40 gives 41^2.
"""


def _sieve(limit):
    is_p = [True] * (limit + 1)
    is_p[0] = is_p[1] = False
    for p in range(2, int(limit**0.5) + 1):
        if is_p[p]:
            for m in range(p * p, limit + 1, p):
                is_p[m] = False
    return is_p


def _is_prime(n):
    if n < 2:
        return False
    f = 2
    while f * f <= n:
        if n % f == 0:
            return False
        f += 1
    return True


def verify_claims():
    result = {}
    total, bad = 0, None
    for n in range(1, 1001):
        total += n**3
        if total != (n * (n + 1) // 2) ** 2:
            bad = n
            break
    result["sum_of_cubes"] = (bad is None, bad)

    is_p = _sieve(10000)
    bad = None
    for even in range(4, 10001, 2):
        if not any(is_p[p] and is_p[even - p] for p in range(2, even // 2 + 1)):
            bad = even
            break
    result["goldbach"] = (bad is None, bad)

    bad = next((n for n in range(50) if not _is_prime(n * n + n + 41)), None)
    result["euler_polynomial"] = (bad is None, bad)
    return result


if __name__ == "__main__":
    print(verify_claims())
