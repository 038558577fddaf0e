"""Deep belief networks: greedy pre-training, the Keras-layout hand-over to a Sequential,
the fine-tuned classifier's accuracy on the digits, save/load, scikit-learn checks."""
import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import cyneuron as cn  # noqa: E402
from cyneuron.rbm import DBN, BernoulliRBM, DBNClassifier, GaussianBernoulliRBM  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    (x_tr, y_tr), (x_te, y_te) = cn.datasets.load_digits()
    return x_tr.astype(np.float64), y_tr, x_te.astype(np.float64), y_te


def test_greedy_pretraining_and_to_model(digits):
    x = digits[0][:400]
    dbn = DBN((32, 16), n_iter=3, random_state=0).fit(x)
    assert [type(r) for r in dbn.rbms_] == [BernoulliRBM, BernoulliRBM]
    assert dbn.rbms_[0].components_.shape == (32, 64) and dbn.rbms_[1].components_.shape == (16, 32)
    # layer 2 is the RBM trained on layer 1's probabilities
    again = BernoulliRBM(n_components=16, learning_rate=0.05, n_iter=3,
                         random_state=dbn.rbms_[1].random_state).fit(dbn.rbms_[0].transform(x))
    np.testing.assert_array_equal(again.components_, dbn.rbms_[1].components_)
    h = dbn.transform(x)
    assert h.shape == (400, 16)
    model = dbn.to_model(10, "softmax", dtype="float64")
    w = model.get_weights()
    np.testing.assert_array_equal(w[0], dbn.rbms_[0].components_.T)
    np.testing.assert_array_equal(w[1], dbn.rbms_[0].intercept_hidden_)
    np.testing.assert_array_equal(w[2], dbn.rbms_[1].components_.T)
    # the network's hidden layers compute the DBN's transform
    z = x
    for layer in model.layers[:-1]:
        z = layer.forward(z)
    np.testing.assert_allclose(z, h, rtol=1e-10, atol=1e-12)
    p = model.predict(x)
    assert p.shape == (400, 10)
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-9)
    gauss = DBN((8,), gaussian_visible=True, n_iter=2, random_state=0).fit(
        (x - x.mean(0)) / (x.std(0) + 1e-9))
    assert isinstance(gauss.rbms_[0], GaussianBernoulliRBM)


def test_dbn_classifier_digits_accuracy(digits):
    """Pre-training 256 hidden units, then fine-tuning: >= 0.97 on the held-out 20%."""
    x_tr, y_tr, x_te, y_te = digits
    before = cn.get_num_threads()
    cn.set_num_threads(1)   # batches of 16: one thread is the fast choice on a busy machine
    try:
        clf = DBNClassifier(random_state=0).fit(x_tr, y_tr)
    finally:
        cn.set_num_threads(before)
    assert clf.score(x_te, y_te) >= 0.97
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]
    again = DBNClassifier(random_state=0, epochs=2).fit(x_tr[:300], y_tr[:300])
    same = DBNClassifier(random_state=0, epochs=2).fit(x_tr[:300], y_tr[:300])
    np.testing.assert_array_equal(again.predict_proba(x_te), same.predict_proba(x_te))


def test_save_load(tmp_path, digits):
    x_tr, y_tr, x_te, _ = digits
    dbn = DBN((16, 8), n_iter=2, random_state=0).fit(x_tr[:200])
    dbn.save(tmp_path / "dbn.npz")
    back = DBN.load(tmp_path / "dbn.npz")
    np.testing.assert_array_equal(back.transform(x_te), dbn.transform(x_te))
    labels = np.array(["zero", "one", "two"])[y_tr[:300] % 3]
    clf = DBNClassifier((16,), rbm_n_iter=2, epochs=3, random_state=0).fit(x_tr[:300], labels)
    clf.save(tmp_path / "clf.npz")
    back = cn.load_estimator(tmp_path / "clf.npz")
    assert isinstance(back, DBNClassifier)
    np.testing.assert_array_equal(back.predict(x_te), clf.predict(x_te))
    np.testing.assert_allclose(back.predict_proba(x_te), clf.predict_proba(x_te), rtol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(hidden_layer_sizes=()), "at least one"), (dict(hidden_layer_sizes=(4, 0)), "hidden_layer_sizes"),
    (dict(hidden_layer_sizes="big"), "hidden_layer_sizes")])
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DBN(**kwargs).fit(np.zeros((4, 3)))


def test_bad_classifier_input():
    with pytest.raises(ValueError, match="Negative values"):
        DBNClassifier(epochs=1).fit(-np.ones((4, 3)), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="optimizer"):
        DBNClassifier(optimizer="lbfgs", rbm_n_iter=1).fit(np.zeros((4, 3)), [0, 1, 0, 1])
    with pytest.raises(ValueError):
        DBNClassifier(epochs=1).fit(np.zeros((4, 3)), [0, 1, 0])


@parametrize_with_checks([DBN((4,), n_iter=2, random_state=0),
                          DBNClassifier((8,), rbm_n_iter=2, epochs=20, batch_size=8,
                                        learning_rate=0.01, random_state=0)])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)
