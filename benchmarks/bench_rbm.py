"""BernoulliRBM.fit: cyneuron against scikit-learn's BernoulliRBM, same settings, same group.

Cases (cyneuron.bench.rbm): the binarised digits with scikit-learn's defaults and
n_iter=20, and 6000 random binary vectors of 784 features (batch 100, n_iter=2).
extra_info records samples/s and the pseudo-likelihood of the fitted model. The same
callables are timed by `python -m cyneuron bench rbm`.
"""
import pytest

from cyneuron.bench.harness import settle_threads
from cyneuron.bench.rbm import (RBM_DIGITS, RBM_WIDE, rbm_digits_data, rbm_fit_callables,
                                     rbm_wide_data)

pytest.importorskip("sklearn")

CASES = {"digits": (rbm_digits_data, RBM_DIGITS), "wide784": (rbm_wide_data, RBM_WIDE)}


@pytest.fixture(scope="module")
def datasets():
    return {name: make() for name, (make, _) in CASES.items()}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", ["cyneuron", "scikit-learn"])
def test_rbm_fit(benchmark, datasets, case, name):
    x = datasets[case]
    params = CASES[case][1]
    fns, missing = rbm_fit_callables(x, params)
    if name in missing:
        pytest.skip(missing[name])
    benchmark.group = f"BernoulliRBM.fit {case} " + " ".join(f"{k}={v}" for k, v in params.items())
    settle_threads()
    model = benchmark.pedantic(fns[name], rounds=3, iterations=1, warmup_rounds=0)
    score = float(model.score_samples(x).mean())
    benchmark.extra_info["pseudo_likelihood"] = round(score, 3)
    assert score > -1000
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["samples_per_s"] = round(params["n_iter"] * len(x) / stats.stats.median, 1)
