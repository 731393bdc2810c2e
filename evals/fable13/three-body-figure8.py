"""The Chenciner-Montgomery figure-eight orbit of three equal masses (G = m = 1).

Velocity Verlet (leapfrog, symplectic) keeps the energy error bounded and O(dt^2) instead of
drifting; energy conservation is the check: E = kinetic - sum over pairs 1 / r_ij.
"""
import math

X1 = (0.97000436, -0.24308753)
V3 = (-0.93240737, -0.86473146)


def initial_state():
    pos = [list(X1), [-X1[0], -X1[1]], [0.0, 0.0]]
    vel = [[-V3[0] / 2, -V3[1] / 2], [-V3[0] / 2, -V3[1] / 2], list(V3)]
    return pos, vel


def accelerations(pos):
    acc = [[0.0, 0.0] for _ in pos]
    for i in range(3):
        for j in range(i + 1, 3):
            dx, dy = pos[j][0] - pos[i][0], pos[j][1] - pos[i][1]
            inv_r3 = (dx * dx + dy * dy) ** -1.5
            acc[i][0] += dx * inv_r3
            acc[i][1] += dy * inv_r3
            acc[j][0] -= dx * inv_r3
            acc[j][1] -= dy * inv_r3
    return acc


def energy(pos, vel):
    kinetic = sum(0.5 * (vx * vx + vy * vy) for vx, vy in vel)
    potential = 0.0
    for i in range(3):
        for j in range(i + 1, 3):
            potential -= 1.0 / math.dist(pos[i], pos[j])
    return kinetic + potential


def simulate(dt, t_end):
    pos, vel = initial_state()
    e0 = energy(pos, vel)
    acc = accelerations(pos)
    worst = 0.0
    for _ in range(round(t_end / dt)):
        for i in range(3):
            vel[i][0] += 0.5 * dt * acc[i][0]
            vel[i][1] += 0.5 * dt * acc[i][1]
            pos[i][0] += dt * vel[i][0]
            pos[i][1] += dt * vel[i][1]
        acc = accelerations(pos)
        for i in range(3):
            vel[i][0] += 0.5 * dt * acc[i][0]
            vel[i][1] += 0.5 * dt * acc[i][1]
        worst = max(worst, abs(energy(pos, vel) - e0) / abs(e0))
    return pos, worst
