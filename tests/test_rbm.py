"""RBMs: the compiled (P)CD-k update against a numpy reference with the same random draws,
determinism, scikit-learn's estimator checks and semantics, pseudo-likelihood against
scikit-learn's BernoulliRBM, save/load, bad input."""
import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.datasets import load_digits  # noqa: E402
from sklearn.neural_network import BernoulliRBM as SkRBM  # noqa: E402
from sklearn.utils import check_random_state, gen_even_slices  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import cyneuron as cn  # noqa: E402
from cyneuron._kernels import rbm as K  # noqa: E402
from cyneuron.rbm import BernoulliRBM, GaussianBernoulliRBM, _key  # noqa: E402


def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def _u(key, counter, shape):
    return K.uniforms(key, counter, int(np.prod(shape))).reshape(shape)


def reference_fit(X, n_components, batch_size, n_iter, random_state, k, persistent, lr,
                  momentum, weight_decay, gaussian=False):
    """The documented algorithm in numpy, with the kernel's draws (uniforms(key, counter))."""
    rng = check_random_state(random_state)
    D = X.shape[1]
    W = rng.normal(0, 0.01, (n_components, D))
    bh, bv = np.zeros(n_components), np.zeros(D)
    chain = np.zeros((batch_size, n_components))
    vW, vbh, vbv = np.zeros_like(W), np.zeros_like(bh), np.zeros_like(bv)
    key = _key(rng)
    n_batches = int(np.ceil(len(X) / batch_size))
    slices = list(gen_even_slices(n_batches * batch_size, n_batches, n_samples=len(X)))
    phases, counter = 2 * k + 2, 0
    for _ in range(n_iter):
        for sl in slices:
            V0 = X[sl]
            B = len(V0)
            Hp = _sig(V0 @ W.T + bh)
            if persistent:
                Hs = chain
            else:
                Hs = (_u(key, counter, Hp.shape) < Hp).astype(float)
            for s in range(k):
                Vn = Hs @ W + bv
                if not gaussian:
                    Vn = (_u(key, counter + 1 + 2 * s, Vn.shape) < _sig(Vn)).astype(float)
                Hn = _sig(Vn @ W.T + bh)
                if s < k - 1 or persistent:
                    Hs = (_u(key, counter + 2 + 2 * s, Hn.shape) < Hn).astype(float)
            if persistent:
                chain = Hs
            Bn = len(Vn)
            gW = Hp.T @ V0 / B - Hn.T @ Vn / Bn - weight_decay * W
            gbh = Hp.sum(0) / B - Hn.sum(0) / Bn
            gbv = V0.sum(0) / B - Vn.sum(0) / Bn
            vW = momentum * vW + lr * gW
            vbh = momentum * vbh + lr * gbh
            vbv = momentum * vbv + lr * gbv
            W, bh, bv = W + vW, bh + vbh, bv + vbv
            counter += phases
    return W, bh, bv, chain


@pytest.fixture(scope="module")
def binary_digits():
    x, y = load_digits(return_X_y=True)
    return (x > 7).astype(np.float64), y


@pytest.mark.parametrize("k, persistent, momentum, weight_decay", [
    (1, True, 0.0, 0.0), (1, False, 0.0, 0.0), (3, True, 0.5, 1e-3), (2, False, 0.9, 1e-2)])
def test_cd_k_matches_numpy_reference(binary_digits, k, persistent, momentum, weight_decay):
    X = binary_digits[0][:97]           # 97 rows, batches of 10: uneven last batches
    params = dict(n_components=23, batch_size=10, n_iter=2, random_state=5, k=k,
                  persistent=persistent, momentum=momentum, weight_decay=weight_decay)
    rbm = BernoulliRBM(learning_rate=0.1, **params).fit(X)
    W, bh, bv, chain = reference_fit(X, lr=0.1, **params)
    np.testing.assert_allclose(rbm.components_, W, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(rbm.intercept_hidden_, bh, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(rbm.intercept_visible_, bv, rtol=1e-9, atol=1e-12)
    if persistent:
        np.testing.assert_array_equal(rbm.h_samples_, chain)


def test_gaussian_rbm_matches_numpy_reference():
    X = np.random.default_rng(0).standard_normal((64, 9))
    params = dict(n_components=7, batch_size=16, n_iter=3, random_state=1, k=2,
                  persistent=False, momentum=0.3, weight_decay=1e-3)
    rbm = GaussianBernoulliRBM(learning_rate=0.01, **params).fit(X)
    W, bh, bv, _ = reference_fit(X, lr=0.01, gaussian=True, **params)
    np.testing.assert_allclose(rbm.components_, W, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(rbm.intercept_visible_, bv, rtol=1e-9, atol=1e-12)


def test_float32_follows_float64(binary_digits):
    X = binary_digits[0][:200]
    a = BernoulliRBM(n_components=32, n_iter=2, random_state=0).fit(X)
    b = BernoulliRBM(n_components=32, n_iter=2, random_state=0).fit(X.astype(np.float32))
    assert b.components_.dtype == np.float32 and b.transform(X).dtype == np.float32
    np.testing.assert_allclose(b.components_, a.components_, atol=2e-3)


def test_determinism_and_threads(binary_digits):
    X = binary_digits[0][:300]
    a = BernoulliRBM(n_components=64, n_iter=2, random_state=3).fit(X)
    b = BernoulliRBM(n_components=64, n_iter=2, random_state=3).fit(X)
    c = BernoulliRBM(n_components=64, n_iter=2, random_state=4).fit(X)
    np.testing.assert_array_equal(a.components_, b.components_)
    assert not np.array_equal(a.components_, c.components_)
    # the kernel on one and on two threads: the same bits (each thread owns its units)
    results = []
    for nt in (1, 2):
        rbm = BernoulliRBM(n_components=64, random_state=3)
        rbm._init_state(X.shape[1], np.float64, check_random_state(3))
        W, bh, bv, ch = rbm.components_, rbm.intercept_hidden_, rbm.intercept_visible_, rbm.h_samples_
        starts = np.arange(0, 301, 30, dtype=np.int64)
        z = lambda *s: np.zeros(s)  # noqa: E731
        K.cd_fit(X, starts, W, bh, bv, ch, z(64, 64), z(64), z(64), z(30, 64), z(30, 64),
                 z(30, 64), z(30, 64), z(64, 64), 2, 2, True, False, 0.1, 0.5, 1e-3,
                 rbm._key, 0, n_threads=nt)
        results.append((W.copy(), bh.copy(), bv.copy(), ch.copy()))
    for x, y in zip(*results):
        np.testing.assert_array_equal(x, y)


def test_bernoulli_sampler():
    p = np.random.default_rng(0).random((300, 70))
    out = np.empty_like(p)
    K.bernoulli_sample(p, out, 12345, 7)
    np.testing.assert_array_equal(out, (_u(12345, 7, p.shape) < p).astype(float))
    big = np.full((400, 500), 0.3)
    K.bernoulli_sample(big, big, 1, 0)
    assert abs(big.mean() - 0.3) < 0.005
    u = K.uniforms(99, 0, 100000)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.005


def test_scikit_learn_semantics(binary_digits):
    X = binary_digits[0][:150]
    sk = SkRBM(n_components=16, n_iter=1, random_state=0).fit(X)
    ours = BernoulliRBM(n_components=16, n_iter=1, random_state=0)
    ours.fit(X)
    # same initial draws, attributes and shapes; transform / score_samples on the same weights
    ours.components_ = sk.components_.copy()
    ours.intercept_hidden_ = sk.intercept_hidden_.copy()
    ours.intercept_visible_ = sk.intercept_visible_.copy()
    np.testing.assert_allclose(ours.transform(X), sk.transform(X), rtol=1e-12)
    np.testing.assert_allclose(ours.score_samples(X), sk.score_samples(X), rtol=1e-10)
    assert ours.h_samples_.shape == sk.h_samples_.shape
    assert set(ours.h_samples_.ravel()) <= {0.0, 1.0}
    v = ours.gibbs(X[:5])
    assert v.dtype == bool and v.shape == (5, 64)
    assert list(ours.get_feature_names_out()) == [f"bernoullirbm{i}" for i in range(16)]
    # partial_fit: one update per call, continuing the chain
    p = BernoulliRBM(n_components=16, random_state=0)
    for i in range(0, 150, 10):
        p.partial_fit(X[i:i + 10])
    assert p.components_.shape == (16, 64) and np.isfinite(p.components_).all()


def test_pseudo_likelihood_against_scikit_learn(binary_digits, restore_threads):
    """The issue's criterion, binarised digits, n_iter=20, defaults otherwise: cyneuron's
    pseudo-likelihood is at least scikit-learn's. Both run the same algorithm (PCD-1, the
    same mini-batches, initial weights and learning-rate scaling) with different random
    streams, so they are equal in expectation and any one seed's gap is sampling noise
    (paired gaps of about +-1 between seeds): over 8 paired seeds the mean gap must not be
    below zero by more than two standard errors of that mean. (Over 16 seeds, measured:
    -15.36 +- 1.07 against -15.15 +- 1.04, mean gap -0.21 +- 0.19.)"""
    cn.set_num_threads(1)
    X = binary_digits[0]
    gaps = []
    for seed in range(8):
        ours = BernoulliRBM(n_iter=20, random_state=seed).fit(X).score_samples(X).mean()
        theirs = SkRBM(n_iter=20, random_state=seed).fit(X).score_samples(X).mean()
        assert -20 < ours < -10 and -20 < theirs < -10, (seed, ours, theirs)
        gaps.append(ours - theirs)
    mean, se = np.mean(gaps), np.std(gaps, ddof=1) / np.sqrt(len(gaps))
    assert mean >= -2 * se, (gaps, mean, se)


def test_save_load_round_trip(tmp_path, binary_digits):
    X = binary_digits[0][:200]
    for est in (BernoulliRBM(n_components=8, n_iter=2, random_state=0, momentum=0.5),
                GaussianBernoulliRBM(n_components=8, n_iter=2, random_state=0)):
        est.fit(X)
        path = tmp_path / f"{type(est).__name__}.npz"
        est.save(path)
        back = type(est).load(path)
        assert back.get_params() == est.get_params()
        np.testing.assert_array_equal(back.transform(X), est.transform(X))
        np.testing.assert_array_equal(back.score_samples(X), est.score_samples(X))
        # training continues identically
        est.partial_fit(X[:20])
        back.partial_fit(X[:20])
        np.testing.assert_array_equal(back.components_, est.components_)
        assert type(cn.load_estimator(path)) is type(est)
    BernoulliRBM(n_components=3).save(tmp_path / "unfitted.npz")
    assert not hasattr(BernoulliRBM.load(tmp_path / "unfitted.npz"), "components_")
    (tmp_path / "junk.npz").write_bytes(b"not a file")
    with pytest.raises(ValueError):
        BernoulliRBM.load(tmp_path / "junk.npz")


@pytest.mark.parametrize("X, message", [
    (np.array([[0.0, -0.5], [1.0, 0.0]]), "Negative values"),
    (np.array([[0.0, np.inf], [1.0, 0.0]]), "infinity"),
    (np.array([[0.0, np.nan], [1.0, 0.0]]), "NaN"),
    (np.zeros((0, 3)), "0 sample"),
    (np.zeros(5), "2D array"),
])
def test_bad_input(X, message):
    with pytest.raises(ValueError, match=message):
        BernoulliRBM(n_iter=1).fit(X)


def test_values_above_one_warn():
    with pytest.warns(UserWarning, match="expects X in \\[0, 1\\]"):
        BernoulliRBM(n_components=2, n_iter=1).fit(np.array([[0.0, 2.0], [1.0, 0.0]]))


@pytest.mark.parametrize("param, value", [
    ("n_components", 0), ("learning_rate", 0.0), ("batch_size", 0), ("n_iter", -1), ("k", 0),
    ("momentum", 1.0), ("weight_decay", -1.0), ("persistent", "yes"), ("n_components", 2.5)])
def test_bad_parameters(param, value):
    with pytest.raises(ValueError, match=param):
        BernoulliRBM(**{param: value}).fit(np.zeros((4, 3)))


def test_wrong_feature_count(binary_digits):
    rbm = BernoulliRBM(n_components=4, n_iter=1).fit(binary_digits[0][:20])
    with pytest.raises(ValueError, match="features"):
        rbm.transform(np.zeros((3, 5)))


@parametrize_with_checks([BernoulliRBM(n_components=4, n_iter=3, random_state=0),
                          GaussianBernoulliRBM(n_components=4, n_iter=3, random_state=0)],
                         expected_failed_checks=lambda est: {
                             # score_samples flips one random feature per sample, drawn in
                             # row order, as scikit-learn's BernoulliRBM (which marks the
                             # same two checks as expected failures)
                             "check_methods_subset_invariance": "random flips per row",
                             "check_methods_sample_order_invariance": "random flips per row",
                         } if isinstance(est, BernoulliRBM) else {})
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)
