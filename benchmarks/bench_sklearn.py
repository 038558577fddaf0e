"""MLPClassifier fit on the digits: cyneuron.sklearn against scikit-learn, same group, same run.

Both fit scikit-learn's default network (one hidden layer of 100 ReLU units, adam, batch 200)
for exactly SKLEARN_EPOCHS epochs from the same random_state on the same 75% split; cyneuron
also in float32 (scikit-learn computes in float64). extra_info records samples/s and the
test accuracy, and each benchmark checks that cyneuron reaches scikit-learn's accuracy.
The callables are the ones `python -m cyneuron bench sklearn` times (cyneuron.bench.sklearn).
"""
import pytest

from cyneuron.bench.harness import settle_threads
from cyneuron.bench.sklearn import SKLEARN_EPOCHS, sklearn_digits_data, sklearn_fit_callables

pytest.importorskip("sklearn")

GROUP = f"MLPClassifier fit on digits ({SKLEARN_EPOCHS} epochs)"
IMPLEMENTATIONS = ["cyneuron", "cyneuron float32", "scikit-learn"]


@pytest.fixture(scope="module")
def data():
    return sklearn_digits_data()


@pytest.fixture(scope="module")
def fits(data):
    (x_train, y_train), _ = data
    fns, _ = sklearn_fit_callables(x_train, y_train)
    return fns


@pytest.fixture(scope="module")
def reference_accuracy(data, fits):
    _, (x_test, y_test) = data
    return fits["scikit-learn"]().score(x_test, y_test)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_fit_digits(benchmark, data, fits, reference_accuracy, name):
    (x_train, _), (x_test, y_test) = data
    fit = fits[name]
    benchmark.group = GROUP
    settle_threads()
    model = benchmark.pedantic(fit, rounds=5, iterations=1, warmup_rounds=1)
    accuracy = model.score(x_test, y_test)
    benchmark.extra_info["test_accuracy"] = round(float(accuracy), 4)
    stats = getattr(benchmark, "stats", None)   # None under --benchmark-disable
    if stats is not None:
        benchmark.extra_info["samples_per_s"] = round(
            SKLEARN_EPOCHS * len(x_train) / stats.stats.min, 1)
    tolerance = 0.01 if name == "cyneuron float32" else 0.0
    assert accuracy >= reference_accuracy - tolerance
