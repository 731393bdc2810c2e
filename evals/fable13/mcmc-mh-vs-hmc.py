"""Random-walk Metropolis-Hastings vs Hamiltonian Monte Carlo on a correlated Gaussian.

MH proposes x + step * N(0, I) and accepts with probability min(1, p(x') / p(x)). HMC draws a
momentum p ~ N(0, I), runs n_leapfrog leapfrog steps of the Hamiltonian
H = -log p(x) + |p|^2 / 2 and accepts with probability min(1, exp(H_old - H_new)); its long,
gradient-guided moves give far lower autocorrelation per sample at a high acceptance rate.
"""
import math


def metropolis_hastings(log_prob, x0, n_samples, step, rng):
    x, lp = list(x0), log_prob(x0)
    samples, accepted = [], 0
    for _ in range(n_samples):
        proposal = [xi + step * rng.gauss(0.0, 1.0) for xi in x]
        lp_new = log_prob(proposal)
        if math.log(rng.random() + 1e-300) < lp_new - lp:
            x, lp = proposal, lp_new
            accepted += 1
        samples.append(list(x))
    return samples, accepted / n_samples


def hmc(log_prob, grad_log_prob, x0, n_samples, step_size, n_leapfrog, rng):
    x = list(x0)
    samples, accepted = [], 0
    for _ in range(n_samples):
        p = [rng.gauss(0.0, 1.0) for _ in x]
        h_old = -log_prob(x) + 0.5 * sum(pi * pi for pi in p)
        q = list(x)
        g = grad_log_prob(q)
        p = [pi + 0.5 * step_size * gi for pi, gi in zip(p, g)]
        for i in range(n_leapfrog):
            q = [qi + step_size * pi for qi, pi in zip(q, p)]
            g = grad_log_prob(q)
            if i < n_leapfrog - 1:
                p = [pi + step_size * gi for pi, gi in zip(p, g)]
        p = [pi + 0.5 * step_size * gi for pi, gi in zip(p, g)]
        h_new = -log_prob(q) + 0.5 * sum(pi * pi for pi in p)
        if math.log(rng.random() + 1e-300) < h_old - h_new:
            x = q
            accepted += 1
        samples.append(list(x))
    return samples, accepted / n_samples
