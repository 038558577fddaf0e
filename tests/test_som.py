"""Self-organising map: the compiled winner search and updates against numpy references,
the same maps and errors as MiniSom (when installed), save/load, plot, bad input."""
import numpy as np
import pytest

import cyneuron as cn
from cyneuron._kernels import som as K
from cyneuron.som import SOM

NEIGHBORHOODS = ("gaussian", "mexican_hat", "bubble", "triangle")
TOPOLOGIES = ("rectangular", "hexagonal")


def _iris():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    x, y = sklearn_datasets.load_iris(return_X_y=True)
    return (x - x.mean(0)) / x.std(0), y


def _coords(m, n, topology):
    i, j = np.divmod(np.arange(m * n), n)
    ex = i.astype(float)
    ey = j.astype(float)
    if topology == "hexagonal":
        ex = ex - 0.5 * ((n - 1 - j) % 2 == 0)
        ey = ey * np.sqrt(3) / 2
    return ex, ey, i, j


def reference_neighbourhood(m, n, c, sigma, kind, topology):
    ex, ey, i, j = _coords(m, n, topology)
    d = 2 * sigma * sigma
    if kind == "gaussian":
        return np.exp(-(ex - ex[c]) ** 2 / d) * np.exp(-(ey - ey[c]) ** 2 / d)
    if kind == "mexican_hat":
        p = (ex - ex[c]) ** 2 + (ey - ey[c]) ** 2
        return np.exp(-p / d) * (1 - 2 / d * p)
    ci, cj = divmod(c, n)
    if kind == "bubble":
        return ((i > ci - sigma) & (i < ci + sigma) & (j > cj - sigma) & (j < cj + sigma)) * 1.0
    return np.maximum(0, sigma - abs(ci - i)) * np.maximum(0, sigma - abs(cj - j))


def reference_online(w, x, order, m, n, sigma, lr, kind, topology):
    """Online SOM training in numpy (asymptotic decay), node-major weights (m*n, D)."""
    w = w.copy()
    T = len(order)
    for t, r in enumerate(order):
        c = np.argmin(((x[r] - w) ** 2).sum(1))
        eta = lr / (1 + t / (T / 2))
        sig = sigma / (1 + t / (T / 2))
        h = reference_neighbourhood(m, n, c, sig, kind, topology)
        w += (eta * h)[:, None] * (x[r] - w)
    return w


@pytest.mark.parametrize("kind", NEIGHBORHOODS)
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_neighbourhood_and_online_update_match_numpy(kind, topology):
    rng = np.random.default_rng(1)
    m, n, D = 5, 7, 3
    for c in (0, 17, 34):
        np.testing.assert_allclose(K.neighbourhood(m, n, c // n, c % n, 2.0, ["gaussian", "mexican_hat", "bubble", "triangle"].index(kind), TOPOLOGIES.index(topology)).ravel(),
                                   reference_neighbourhood(m, n, c, 2.0, kind, topology), atol=1e-14)
    x = rng.standard_normal((40, D))
    som = SOM(m, n, D, sigma=2.0, learning_rate=0.3, neighborhood_function=kind,
              topology=topology, random_state=0)
    w0 = som.get_weights().reshape(m * n, D)
    order = np.arange(60) % 40
    som.train(x, 60)
    want = reference_online(w0, x, order, m, n, 2.0, 0.3, kind, topology)
    np.testing.assert_allclose(som.get_weights().reshape(m * n, D), want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 7), (13, 11, 20), (200, 97, 33)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_winner_search_against_brute_force(shape, dtype):
    n_samples, nodes, D = shape
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal((n_samples, D)).astype(dtype)
    w = rng.standard_normal((nodes, D)).astype(dtype)
    wsq = np.empty(nodes, dtype)
    K.squared_norms(w, wsq)
    first, second = np.empty(n_samples, np.int64), np.empty(n_samples, np.int64)
    dist = np.empty(n_samples, dtype)
    K.best_two(x, w, wsq, first, second, dist)
    d2 = ((x[:, None, :].astype(float) - w[None].astype(float)) ** 2).sum(-1)
    order = np.argsort(d2, axis=1)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    rows = np.arange(n_samples)
    np.testing.assert_allclose(d2[rows, first], d2[rows, order[:, 0]], rtol=tol, atol=tol)
    np.testing.assert_allclose(dist, d2[rows, order[:, 0]], rtol=tol * 10, atol=tol * 10)
    if nodes > 1:
        np.testing.assert_allclose(d2[rows, second], d2[rows, order[:, 1]], rtol=tol, atol=tol)
    else:
        assert (second == -1).all()


def test_winners_do_not_depend_on_threads():
    rng = np.random.default_rng(0)
    som = SOM(20, 20, 10, random_state=0)
    x = rng.standard_normal((5000, 10))
    before = cn.get_num_threads()
    try:
        cn.set_num_threads(1)
        a = som.winners(x)
        cn.set_num_threads(2)
        b = som.winners(x)
    finally:
        cn.set_num_threads(before)
    np.testing.assert_array_equal(a, b)


def test_batch_training_against_numpy():
    x, _ = _iris()
    som = SOM(6, 5, 4, sigma=2.0, learning_rate=0.5, random_state=3)
    w = som.get_weights().reshape(30, 4)
    som.train_batch(x, 5)
    for t in range(5):
        eta, sig = 0.5 / (1 + t / 2.5), 2.0 / (1 + t / 2.5)
        c = np.argmin(((x[:, None] - w[None]) ** 2).sum(-1), axis=1)
        h = np.stack([reference_neighbourhood(6, 5, ci, sig, "gaussian", "rectangular") for ci in c])
        num, den = h.T @ x, h.sum(0)
        mask = den > 0
        w[mask] = (1 - eta) * w[mask] + eta * num[mask] / den[mask, None]
    np.testing.assert_allclose(som.get_weights().reshape(30, 4), w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", NEIGHBORHOODS)
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_same_as_minisom_on_iris(kind, topology):
    """Same seed, same initialisation, same sample order: MiniSom's map up to rounding,
    hence the same quantisation error (within 1e-9) and topographic error (exactly)."""
    minisom = pytest.importorskip("minisom")
    x, y = _iris()
    sigma = 1.5 if kind in ("gaussian", "mexican_hat") else 2.0
    kw = dict(sigma=sigma, learning_rate=0.5, neighborhood_function=kind, topology=topology)
    with _no_check():
        a = minisom.MiniSom(7, 7, 4, random_seed=1, **kw)
    b = SOM(7, 7, 4, random_state=1, **kw)
    a.random_weights_init(x)
    b.random_weights_init(x)
    np.testing.assert_array_equal(a.get_weights(), b.get_weights())
    a.train(x, 600, random_order=True)
    b.train(x, 600, random_order=True)
    if kind != "mexican_hat":      # the mexican hat's weights diverge in both (same values)
        np.testing.assert_allclose(b.get_weights(), a.get_weights(), rtol=1e-9, atol=1e-9)
        assert abs(a.quantization_error(x) - b.quantization_error(x)) < 1e-9
        assert a.topographic_error(x) == b.topographic_error(x)
        np.testing.assert_allclose(b.distance_map(), a.distance_map(), atol=1e-9)
        np.testing.assert_array_equal(b.activation_response(x), a.activation_response(x))
        assert dict(b.labels_map(x, y)) == dict(a.labels_map(x, y))
        assert b.winner(x[3]) == a.winner(x[3])
    a.train_batch_offline(x, 8)
    b.train_batch(x, 8)
    if kind != "mexican_hat":
        np.testing.assert_allclose(b.get_weights(), a.get_weights(), rtol=1e-9, atol=1e-9)
        assert abs(a.quantization_error(x) - b.quantization_error(x)) < 1e-9


class _no_check:
    def __enter__(self):
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def test_queries_and_errors():
    x, y = _iris()
    som = SOM(8, 8, 4, sigma=1.5, random_state=0)
    som.pca_weights_init(x)
    qe0 = som.quantization_error(x)
    som.train(x, 1500, random_order=True)
    assert som.quantization_error(x) < qe0
    assert 0 <= som.topographic_error(x) < 0.3
    assert som.activation_response(x).sum() == len(x)
    um = som.distance_map()
    assert um.shape == (8, 8) and um.max() == 1.0 and (um >= 0).all()
    assert som.distance_map("mean").shape == (8, 8)
    wm = som.win_map(x, return_indices=True)
    assert sum(len(v) for v in wm.values()) == len(x)
    lm = som.labels_map(x, y)
    assert sum(sum(c.values()) for c in lm.values()) == len(x)
    d = som.distances(x)
    np.testing.assert_allclose(d.min(1), np.linalg.norm(x - som.quantization(x), axis=1), atol=1e-9)
    assert som.fit(x, 20, mode="batch") is som
    hexa = SOM(6, 6, 4, topology="hexagonal", random_state=0).fit(x, 2000)
    assert 0 <= hexa.topographic_error(x) <= 1


def test_float32_map():
    x, _ = _iris()
    a = SOM(6, 6, 4, random_state=0).fit(x, 500)
    b = SOM(6, 6, 4, random_state=0, dtype="float32").fit(x, 500)
    assert b.get_weights().dtype == np.float32
    assert abs(a.quantization_error(x) - b.quantization_error(x)) < 1e-3


def test_save_load_round_trip(tmp_path):
    x, _ = _iris()
    som = SOM(5, 4, 4, sigma=1.2, neighborhood_function="triangle", topology="hexagonal",
              random_state=7).fit(x, 400)
    som.save(tmp_path / "som.npz")
    back = SOM.load(tmp_path / "som.npz")
    assert back.get_params() == som.get_params()
    np.testing.assert_array_equal(back.get_weights(), som.get_weights())
    # the random generator continues where it was: the same shuffled training follows
    som.train(x, 100, random_order=True)
    back.train(x, 100, random_order=True)
    np.testing.assert_array_equal(back.get_weights(), som.get_weights())
    assert isinstance(cn.load_estimator(tmp_path / "som.npz"), SOM)


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    x, y = _iris()
    som = SOM(6, 6, 4, random_state=0).fit(x, 300)
    som.plot(x, y, filename=tmp_path / "u.png")
    assert (tmp_path / "u.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("kwargs, match", [
    (dict(m=0), "m must"), (dict(sigma=-1.0), "sigma"), (dict(learning_rate=np.nan), "learning_rate"),
    (dict(neighborhood_function="cosine"), "neighborhood_function"), (dict(topology="torus"), "topology"),
    (dict(decay="fast"), "decay"), (dict(input_len=2.5), "input_len"), (dict(dtype="int32"), "dtype")])
def test_bad_parameters(kwargs, match):
    params = dict(m=3, n=3, input_len=2)
    params.update(kwargs)
    with pytest.raises(ValueError, match=match):
        SOM(**params)


def test_bad_data():
    som = SOM(3, 3, 2, random_state=0)
    with pytest.raises(ValueError, match="features"):
        som.train(np.zeros((5, 3)), 10)
    with pytest.raises(ValueError, match="NaN"):
        som.train(np.array([[0.0, np.nan]]), 10)
    with pytest.raises(ValueError, match="empty"):
        som.quantization_error(np.zeros((0, 2)))
    with pytest.raises(ValueError, match="2-D"):
        som.winners(np.zeros((2, 2, 2)))
    with pytest.raises(TypeError, match="numeric"):
        som.winners(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="num_iteration"):
        som.train(np.zeros((5, 2)), 0)
    with pytest.raises(ValueError, match="same length"):
        som.labels_map(np.zeros((5, 2)), [1, 2])
