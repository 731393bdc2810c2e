"""Shortest paths on a weighted grid: Dijkstra vs A*.

Entering cell (r, c) costs grid[r][c] (None is a wall); moves are 4-connected. Both use a heap
(priority queue) and skip stale entries; A* orders by g + h with the Manhattan distance times
the smallest cell cost as heuristic: admissible and consistent, so A* is optimal and expands no
more nodes than Dijkstra.
"""
import heapq


def _search(grid, start, goal, heuristic):
    rows, cols = len(grid), len(grid[0])
    best = {start: 0}
    heap = [(heuristic(start), 0, start)]
    closed = set()
    while heap:
        _, g, cell = heapq.heappop(heap)
        if cell in closed:
            continue
        closed.add(cell)
        if cell == goal:
            return g, len(closed)
        r, c = cell
        for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if 0 <= nr < rows and 0 <= nc < cols and grid[nr][nc] is not None:
                ng = g + grid[nr][nc]
                if ng < best.get((nr, nc), float("inf")):
                    best[(nr, nc)] = ng
                    heapq.heappush(heap, (ng + heuristic((nr, nc)), ng, (nr, nc)))
    return None, len(closed)


def dijkstra(grid, start, goal):
    return _search(grid, start, goal, lambda cell: 0)


def astar(grid, start, goal):
    cheapest = min(w for row in grid for w in row if w is not None)
    return _search(
        grid,
        start,
        goal,
        lambda cell: cheapest * (abs(cell[0] - goal[0]) + abs(cell[1] - goal[1])),
    )
