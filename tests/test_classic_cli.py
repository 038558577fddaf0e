"""`python -m cyneuron demo som|dbn` and the rbm / som benchmark callables, run once each
on small inputs (correctness only: nothing here is timed)."""
import numpy as np
import pytest

pytest.importorskip("sklearn")

import cyneuron as cn  # noqa: E402
from cyneuron import __main__ as cli  # noqa: E402
from cyneuron import _bench_classic as bc  # noqa: E402


def test_demo_som_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "u.png"
    assert cli.main(["demo", "som", "--output", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "topographic error" in capsys.readouterr().out


def test_demo_dbn(capsys):
    before = cn.get_num_threads()
    cn.set_num_threads(1)
    try:
        accuracy = cli.demo_dbn()
    finally:
        cn.set_num_threads(before)
    assert accuracy >= 0.97
    assert "test accuracy" in capsys.readouterr().out


def test_rbm_bench_callables():
    x = bc.rbm_digits_data()[:200]
    fns, missing = bc.rbm_fit_callables(x, dict(bc.RBM_DIGITS, n_iter=1, n_components=16))
    assert set(fns) | set(missing) == {"cyneuron", "scikit-learn"}
    for fn in fns.values():
        assert fn().components_.shape == (16, 64)


def test_som_bench_callables():
    x = bc.som_data(n=300, d=5)
    assert x.shape == (300, 5) and np.allclose(x.mean(0), 0, atol=1e-9)
    for mode in ("online", "batch"):
        fns, missing = bc.som_callables(x, mode)
        assert set(fns) | set(missing) == {"cyneuron", "MiniSom"}
        errors = {name: fn().quantization_error(x) for name, fn in fns.items()}
        if len(errors) == 2:   # the same map: the same error
            assert abs(errors["cyneuron"] - errors["MiniSom"]) < 1e-6
