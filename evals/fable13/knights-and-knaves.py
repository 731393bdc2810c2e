"""Knights (always truthful) and knaves (always lying), by exhaustive search.

Each of the 2**5 assignments is consistent when every speaker's statement is true exactly when
the speaker is a knight; itertools.product enumerates them all.
"""
from itertools import product


def solve():
    solutions = []
    for a, b, c, d, e in product([True, False], repeat=5):
        statements = {
            "A": not b,
            "B": a == c,
            "C": d or not e,
            "D": (a + b + c) == 2,
            "E": a == (not d),
        }
        speakers = {"A": a, "B": b, "C": c, "D": d, "E": e}
        if all(speakers[s] == statements[s] for s in speakers):
            solutions.append(speakers)
    return solutions


if __name__ == "__main__":
    for s in solve():
        print(" ".join(f"{k}={'knight' if v else 'knave'}" for k, v in s.items()))
