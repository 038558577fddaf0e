"""The float32 vector math of the transcendental activations (csrc/vmath.h) on every SIMD
path this CPU has: against float64 references, at ragged lengths, with the special
values, through the activation kernels, the GEMM epilogue and the softmax
cross-entropies; and the same bits for an element wherever it sits in the array and
whatever the thread count."""
import math

import numpy as np
import pytest

import cyneuron as cn
from cyneuron._kernels import activations as act
from cyneuron._kernels import losses as lk
from cyneuron._kernels import gemm as _gemm

SQRT2, C_TANH = math.sqrt(2), math.sqrt(2 / math.pi)
_ERFC = np.vectorize(math.erfc, otypes=[float])


def _sigmoid(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _limit_neg_inf(x, v):
    return np.where(np.isneginf(x), 0.0, v)


REFERENCES = {   # name: (float64 reference, kernel call on (x, out))
    "sigmoid": (_sigmoid, act.sigmoid_forward),
    "tanh": (np.tanh, act.tanh_forward),
    "swish": (lambda x: _limit_neg_inf(x, x * _sigmoid(x)), act.swish_forward),
    "gelu": (lambda x: _limit_neg_inf(x, x * _ERFC(-x / SQRT2) / 2), act.gelu_forward),
    "gelu_tanh": (lambda x: _limit_neg_inf(
        x, np.where(x > 100, x, np.where(x < -100, 0.0,
                    x * _sigmoid(2 * C_TANH * (x + 0.044715 * np.clip(x, -100, 100) ** 3))))),
                  act.gelu_tanh_forward),
    "exponential": (np.exp, act.exponential_forward),
    "elu": (lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
            lambda x, out: act.elu_forward(x, out, 1.0, 1.0)),
    "selu": (lambda x: 1.0507 * np.where(x > 0, x, 1.6733 * np.expm1(np.minimum(x, 0))),
             lambda x, out: act.elu_forward(x, out, 1.6733, 1.0507)),
}
SPECIAL = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, -1e-30, 1e30, -1e30, 0.5, -0.5, 0.625,
           -0.625, 15.0, -15.0, 44.5, -44.5, 87.3, -87.4, 88.8, -103.0, -105.0, 100.5, -100.5]
LENGTHS = [0, 1, 7, 15, 16, 17, 31, 33, 2047, 2049, 4099]


def _inputs(n, seed):
    x = np.random.default_rng(seed).standard_normal(n) * 6
    k = min(n, len(SPECIAL))
    x[:k] = SPECIAL[:k]
    return x.astype(np.float32)


def _assert_close(got, x, ref_fn, name):
    with np.errstate(all="ignore"):
        ref = ref_fn(x.astype(np.float64))
    got = got.astype(np.float64)
    assert np.array_equal(np.isnan(got), np.isnan(ref)), name
    fin = np.isfinite(ref) & (np.abs(ref) < np.finfo(np.float32).max)
    with np.errstate(over="ignore"):       # past float32's range: inf, as exp gives
        assert np.array_equal(got[~fin & ~np.isnan(ref)],
                              ref[~fin & ~np.isnan(ref)].astype(np.float32)), name
    # 16 ulps, plus the tails' condition number (|x f'/f| ~ x^2 for gelu, e^x-like ones)
    xd = np.where(np.isfinite(x), x, 0).astype(np.float64)
    cond = 1 + xd ** 2
    eps = np.finfo(np.float32).eps
    tol = 16 * eps * cond[fin] * np.abs(ref[fin]) + 4 * np.finfo(np.float32).tiny
    err = np.abs(got[fin] - ref[fin])
    worst = np.argmax(err - tol) if err.size else 0
    assert np.all(err <= tol), f"{name}: x={x[fin][worst]!r} got {got[fin][worst]!r} " \
                               f"expected {ref[fin][worst]!r}"


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_vector_activations_match_float64(name, n, isa, kernel_threads):
    ref_fn, kernel = REFERENCES[name]
    x = _inputs(n, n)
    out = np.empty_like(x)
    kernel(x, out)
    _assert_close(out, x, ref_fn, f"{name} on {isa}")
    inplace = x.copy()
    kernel(inplace, inplace)                 # out may be x
    np.testing.assert_array_equal(inplace, out)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_an_element_gets_the_same_bits_wherever_it_sits(name, isa, restore_threads):
    """The ragged end runs the vector code too (padded), and chunks are fixed: shifting an
    array or changing the thread count changes no bit."""
    _, kernel = REFERENCES[name]
    x = _inputs(5000, 3)
    whole = np.empty_like(x)
    cn.set_num_threads(1)
    kernel(x, whole)
    for shift in (1, 5, 13):
        part = np.empty(len(x) - shift, np.float32)
        kernel(np.ascontiguousarray(x[shift:]), part)
        np.testing.assert_array_equal(part, whole[shift:])
    cn.set_num_threads(2)
    again = np.empty_like(x)
    kernel(x, again)
    np.testing.assert_array_equal(again, whole)


@pytest.mark.parametrize("cols", [1, 3, 10, 15, 16, 17, 31, 32, 37, 130])
def test_softmax_rows_on_every_path(cols, isa, kernel_threads):
    """Against float64; short rows (fewer than two vectors: one exp over a block of rows)
    give each row the bits it gets alone, in place too, and on any thread count."""
    x = np.random.default_rng(cols).standard_normal((9, cols)).astype(np.float32) * 8
    big = np.random.default_rng(cols + 1).standard_normal((700, cols)).astype(np.float32) * 8
    whole = np.empty_like(big)
    act.softmax_forward(big, whole)
    for i in (0, 1, 101, 102, 699):
        row = np.empty((1, cols), np.float32)
        act.softmax_forward(big[i:i + 1], row)
        np.testing.assert_array_equal(row[0], whole[i])
    in_place = big.copy()
    act.softmax_forward(in_place, in_place)
    np.testing.assert_array_equal(in_place, whole)
    x[0, 0] = 80.0                          # a large logit: the shift by the row max
    out = np.empty_like(x)
    act.softmax_forward(x, out)
    xd = x.astype(np.float64)
    e = np.exp(xd - xd.max(axis=1, keepdims=True))
    ref = e / e.sum(axis=1, keepdims=True)
    # x - max is rounded to float32 before e^: a relative error of |x - max| ulps
    shift = np.abs(xd - xd.max(axis=1, keepdims=True))
    tol = 8 * np.finfo(np.float32).eps * (1 + shift) * ref + 4 * np.finfo(np.float32).tiny
    assert np.all(np.abs(out - ref) <= tol)


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "gelu", "gelu_tanh", "swish", "elu"])
def test_epilogue_activations_on_every_path(activation, isa):
    """Dense(activation=...) applies these in the GEMM epilogue: the vector math there
    gives the activation kernel's values."""
    rng = np.random.default_rng(7)
    a = rng.standard_normal((37, 50)).astype(np.float32)
    b = rng.standard_normal((50, 133)).astype(np.float32)
    bias = rng.standard_normal(133).astype(np.float32)
    fused = cn.ops.matmul(a, b, bias=bias, activation=activation)
    z = cn.ops.matmul(a, b, bias=bias)
    separate = cn.activations.get(activation).forward(z)
    np.testing.assert_allclose(fused, separate, rtol=1e-6, atol=1e-7)
    assert _gemm.get_isa() == isa


@pytest.mark.parametrize("rows, cols", [(1, 1), (3, 2), (103, 10), (205, 10), (6000, 10),
                                        (40, 17), (9, 33), (4, 1500)])
def test_softmax_cross_entropies_on_every_path(rows, cols, isa, kernel_threads):
    """The float32 sparse and dense softmax cross-entropies (the fused softmax + loss of
    training) run on the vector exp in blocks of rows: against float64 with weights, the
    per-row losses, a masked (-inf) logit and a large one, across block boundaries."""
    rng = np.random.default_rng(rows * 100 + cols)
    z = (rng.standard_normal((rows, cols)) * 6).astype(np.float32)
    z[0, 0] = 80.0
    if cols > 2:
        z[-1, 1] = -np.inf
    labels = rng.integers(0, cols, rows)
    labels[-1] = 0
    w = rng.random(rows).astype(np.float32)
    targets = rng.random((rows, cols)).astype(np.float32)
    if cols > 2:
        targets[-1, 1] = 0      # a target of 0 on the masked logit: 0 log 0 = 0
    zd = z.astype(np.float64)
    m = zd.max(axis=1, keepdims=True)
    e = np.exp(zd - m)
    p = e / e.sum(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(e.sum(axis=1))
    onehot = np.zeros((rows, cols))
    onehot[np.arange(rows), labels] = 1
    with np.errstate(invalid="ignore"):
        dense_losses = np.where(targets != 0, targets * (lse[:, None] - zd), 0).sum(axis=1)
    cases = [("sparse", lambda g, out: lk.softmax_cross_entropy_sparse(
                  z, labels, g, 0.25, sample_weight=w, losses=out),
              w * (lse - zd[np.arange(rows), labels]), (p - onehot) * w[:, None] * 0.25),
             ("dense", lambda g, out: lk.softmax_cross_entropy_dense(
                  z, targets, g, 0.25, sample_weight=w, losses=out),
              w * dense_losses,
              (p * targets.sum(axis=1, keepdims=True) - targets) * w[:, None] * 0.25)]
    for name, call, ref_losses, ref_grad in cases:
        grad, losses = np.empty_like(z), np.empty(rows, np.float32)
        total = call(grad, losses)
        scale = 1 + np.abs(ref_losses)
        assert np.all(np.abs(losses - ref_losses) <= 1e-5 * scale), name
        assert abs(total - ref_losses.sum()) <= 1e-5 * scale.sum(), name
        tol = 1e-5 * (np.abs(ref_grad) + np.abs(targets) * w[:, None] + 1e-2)
        assert np.all(np.abs(grad - ref_grad) <= tol), (name, np.abs(grad - ref_grad).max())
