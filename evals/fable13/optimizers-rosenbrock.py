"""Gradient descent, heavy-ball momentum and Adam on the Rosenbrock function.

f(x, y) = (1 - x)^2 + 100 (y - x^2)^2 has its minimum 0 at (1, 1) at the end of a curved,
narrow valley: plain gradient descent crawls along it, momentum accumulates speed, and Adam's
per-coordinate step sizes (bias-corrected first and second moments) cope with the curvature.
"""
import math


def rosenbrock(p):
    x, y = p
    return (1 - x) ** 2 + 100 * (y - x * x) ** 2


def rosenbrock_grad(p):
    x, y = p
    return (-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x))


def gradient_descent(grad, x0, lr, steps):
    xs = [tuple(x0)]
    x = list(x0)
    for _ in range(steps):
        g = grad(x)
        x = [xi - lr * gi for xi, gi in zip(x, g)]
        xs.append(tuple(x))
    return xs


def momentum(grad, x0, lr, beta, steps):
    xs = [tuple(x0)]
    x, v = list(x0), [0.0] * len(x0)
    for _ in range(steps):
        g = grad(x)
        v = [beta * vi + gi for vi, gi in zip(v, g)]
        x = [xi - lr * vi for xi, vi in zip(x, v)]
        xs.append(tuple(x))
    return xs


def adam(grad, x0, lr, steps, beta1=0.9, beta2=0.999, eps=1e-8):
    xs = [tuple(x0)]
    x, m, v = list(x0), [0.0] * len(x0), [0.0] * len(x0)
    for t in range(1, steps + 1):
        g = grad(x)
        m = [beta1 * mi + (1 - beta1) * gi for mi, gi in zip(m, g)]
        v = [beta2 * vi + (1 - beta2) * gi * gi for vi, gi in zip(v, g)]
        m_hat = [mi / (1 - beta1**t) for mi in m]
        v_hat = [vi / (1 - beta2**t) for vi in v]
        x = [xi - lr * mh / (math.sqrt(vh) + eps) for xi, mh, vh in zip(x, m_hat, v_hat)]
        xs.append(tuple(x))
    return xs
