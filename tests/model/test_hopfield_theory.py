"""The paper's theory as tests (Ramsauer et al. 2020, Section 2 and Theorems 1-4), on raw patterns."""

import math

import torch

from model.hopfield import hopfield_energy, hopfield_retrieve, hopfield_update


def test_energy_never_increases_under_the_update():
    # Theorem 1/2 (CCCP): E(xi_new) <= E(xi) for every beta, from random and adversarial starts.
    g = torch.Generator().manual_seed(0)
    for beta in (0.05, 0.5, 2.0, 8.0):
        X = torch.randn(16, 40, generator=g, dtype=torch.float64) * 2.0  # d=16, N=40
        xi = torch.randn(32, 16, generator=g, dtype=torch.float64) * 5.0  # 32 starts
        X = X.expand(32, 16, 40)
        e_prev = hopfield_energy(X, xi, beta)
        for _ in range(25):
            xi = hopfield_update(X, xi, beta)
            e = hopfield_energy(X, xi, beta)
            assert (e <= e_prev + 1e-9 * e_prev.abs().clamp_min(1)).all(), (beta, (e - e_prev).max())
            e_prev = e
        # and the energy is bounded below by 0 (the constant terms make E >= 0)
        assert (e_prev >= -1e-9).all()


def test_one_step_retrieval_from_half_masked_queries_at_d64_with_1e4_patterns():
    # Capacity tested: N = 10^4 random +-1 patterns in d = 64 (N/d ~ 156, versus ~0.14 d ~ 9 for the classical
    # Hopfield net), i.e. the exponential-capacity regime of Theorem 3. Half of each query is masked (set to 0);
    # ONE update must return the stored pattern, including the masked half (Theorem 4: one-step retrieval).
    g = torch.Generator().manual_seed(1)
    d, N, n_query, beta = 64, 10_000, 400, 1.0
    X = torch.randint(0, 2, (d, N), generator=g).double() * 2 - 1  # (d, N), columns are patterns
    idx = torch.randperm(N, generator=g)[:n_query]
    target = X[:, idx].T  # (n_query, d)
    mask = torch.zeros(n_query, d, dtype=torch.bool)
    for r in range(n_query):
        mask[r, torch.randperm(d, generator=g)[: d // 2]] = True
    query = target.masked_fill(mask, 0.0)  # half-masked
    new = hopfield_update(X.expand(n_query, d, N), query, beta)  # (n_query, d)
    rel_err = (new - target).norm(dim=-1) / target.norm(dim=-1)
    sign_ok = (new.sign() == target).all(dim=-1).float().mean()
    assert sign_ok >= 0.99, sign_ok  # masked half restored exactly in sign for >= 99% of queries
    assert rel_err.median() < 0.01, rel_err.median()  # and with an (exponentially) small error


def test_small_beta_converges_to_the_global_average():
    # Section 2, "small beta: global fixed point near the arithmetic mean of the patterns".
    g = torch.Generator().manual_seed(2)
    X = torch.randn(32, 50, generator=g, dtype=torch.float64)
    xi0 = torch.randn(5, 32, generator=g, dtype=torch.float64) * 3
    fixed = hopfield_retrieve(X.expand(5, 32, 50), xi0, beta=1e-3, max_steps=200)
    mean = X.mean(dim=1)
    assert ((fixed - mean).norm(dim=-1) / mean.norm() < 0.05).all()
    # every start lands on the same point
    assert (fixed - fixed[0]).abs().max() < 1e-6


def test_large_beta_retrieves_single_patterns():
    # Section 2, "large beta, well separated patterns: fixed points near single patterns".
    g = torch.Generator().manual_seed(3)
    d, N = 32, 50
    X = torch.randn(d, N, generator=g, dtype=torch.float64)
    X = X / X.norm(dim=0, keepdim=True) * math.sqrt(d)
    starts = X[:, :10].T + 0.5 * torch.randn(10, d, generator=g, dtype=torch.float64)
    fixed = hopfield_retrieve(X.expand(10, d, N), starts, beta=4.0, max_steps=100)
    assert torch.allclose(fixed, X[:, :10].T, atol=1e-6)


def test_clusters_of_similar_patterns_give_metastable_states():
    # Section 2, "patterns that are close form metastable states": a state near a cluster converges to (about)
    # the cluster's average, not to one of its patterns nor to the global average.
    g = torch.Generator().manual_seed(4)
    d, k, per = 32, 4, 10
    centers = torch.randn(k, d, generator=g, dtype=torch.float64) * 3
    pats = (centers[:, None, :] + 0.1 * torch.randn(k, per, d, generator=g, dtype=torch.float64)).reshape(k * per, d)
    X = pats.T  # (d, N)
    beta = 0.1  # 1/beta far above the within-cluster spread, far below the between-cluster distance
    starts = centers + 0.5 * torch.randn(k, d, generator=g, dtype=torch.float64)
    fixed = hopfield_retrieve(X.expand(k, d, k * per), starts, beta=beta, max_steps=200)
    cluster_means = pats.view(k, per, d).mean(dim=1)
    to_mean = (fixed - cluster_means).norm(dim=-1)
    to_nearest_pattern = torch.cdist(fixed, pats).min(dim=-1).values
    to_global = (fixed - pats.mean(0)).norm(dim=-1)
    assert (to_mean < 0.1).all(), to_mean
    assert (to_mean < 0.5 * to_nearest_pattern).all()
    assert (to_global > 1.0).all()
    # the state is a fixed point of the update (metastable state)
    again = hopfield_update(X.expand(k, d, k * per), fixed, beta)
    assert torch.allclose(again, fixed, atol=1e-6)
