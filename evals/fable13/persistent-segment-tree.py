"""k-th smallest in a subarray with a persistent segment tree.

Compress the values to ranks; version v is a count tree over ranks holding arr[:v], built from
version v - 1 by copying only the O(log n) nodes on one root-to-leaf path. For a query (l, r, k)
the counts of version r + 1 minus version l give the multiset of arr[l..r]; walk down, going
left when the left child's count difference is >= k.
"""


def kth_smallest_queries(arr: list, queries: list) -> list:
    values = sorted(set(arr))
    rank = {v: i for i, v in enumerate(values)}
    size = len(values)
    left, right, count = [0], [0], [0]  # node 0 is the shared empty tree

    def insert(prev: int, lo: int, hi: int, pos: int) -> int:
        node = len(count)
        left.append(left[prev])
        right.append(right[prev])
        count.append(count[prev] + 1)
        if lo < hi:
            mid = (lo + hi) // 2
            if pos <= mid:
                left[node] = insert(left[prev], lo, mid, pos)
            else:
                right[node] = insert(right[prev], mid + 1, hi, pos)
        return node

    roots = [0]
    for x in arr:
        roots.append(insert(roots[-1], 0, size - 1, rank[x]))

    out = []
    for l, r, k in queries:
        a, b = roots[l], roots[r + 1]
        lo, hi = 0, size - 1
        while lo < hi:
            mid = (lo + hi) // 2
            in_left = count[left[b]] - count[left[a]]
            if k <= in_left:
                a, b, hi = left[a], left[b], mid
            else:
                k -= in_left
                a, b, lo = right[a], right[b], mid + 1
        out.append(values[lo])
    return out
