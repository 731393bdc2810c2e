"""Sum of Euler's totient phi(k) for k = 1..n with a sieve in the style of Eratosthenes.

phi is multiplicative: a sieve over the primes sets phi(p) = p - 1 and, for each composite,
phi(i * p) = phi(i) * p when p divides i, else phi(i) * (p - 1).
"""


def totient_sum(n: int) -> int:
    if n < 1:
        return 0
    phi = list(range(n + 1))
    for p in range(2, n + 1):
        if phi[p] == p:  # p is prime: no smaller prime has touched it
            for m in range(p, n + 1, p):
                phi[m] -= phi[m] // p
    return sum(phi[1:])

