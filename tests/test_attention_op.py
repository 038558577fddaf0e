"""cn.ops.scaled_dot_product_attention: the fused kernel against a plain numpy reference,
finite differences, PyTorch, on every SIMD path and thread count; dropout; bad input."""
import tracemalloc

import numpy as np
import pytest

import cyneuron as cn
from cyneuron._kernels import attention as _attn
from cyneuron._kernels import normalization as _norm

sdpa = cn.ops.scaled_dot_product_attention
sdpa_grad = cn.ops.scaled_dot_product_attention_grad


def reference(q, k, v, mask=None, causal=False, scale=None, drop=None):
    """softmax(q kᵀ scale) v in float64 numpy, the T_q x T_k matrix formed; rows that
    may attend to nothing give zeros. drop: an inverted-dropout multiplier on P."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    s = q @ np.swapaxes(k, -1, -2) * scale
    ok = np.ones(s.shape, bool)
    if mask is not None:
        ok &= np.broadcast_to(np.asarray(mask, bool), s.shape)
    if causal:
        ok &= np.tril(np.ones(s.shape[-2:], bool))
    s = np.where(ok, s, -np.inf)
    m = s.max(-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    p = np.exp(s - m)
    den = p.sum(-1, keepdims=True)
    p = np.where(den > 0, p / np.where(den > 0, den, 1), 0)
    if drop is not None:
        p = p * drop
    return p @ v, p


def reference_grads(q, k, v, do, mask=None, causal=False, scale=None, drop=None):
    q, k, v, do = (np.asarray(a, np.float64) for a in (q, k, v, do))
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    _, p = reference(q, k, v, mask, causal, scale)
    pd = p if drop is None else p * drop
    dv = np.swapaxes(pd, -1, -2) @ do
    dp = do @ np.swapaxes(v, -1, -2)
    if drop is not None:
        dp = dp * drop
    ds = p * (dp - (dp * p).sum(-1, keepdims=True)) * scale
    return ds @ k, np.swapaxes(ds, -1, -2) @ q, dv


def _data(rng, shape_q, tk, dv, dtype):
    *lead, tq, dk = shape_q
    q = rng.standard_normal(shape_q).astype(dtype)
    k = rng.standard_normal((*lead, tk, dk)).astype(dtype)
    v = rng.standard_normal((*lead, tk, dv)).astype(dtype)
    return q, k, v


SHAPES = [((2, 3, 37, 16), 53, 8), ((1, 1, 1, 4), 1, 4), ((2, 2, 130, 64), 130, 64),
          ((1, 2, 70, 5), 33, 7), ((3, 1, 200, 8), 129, 8)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_numpy_reference(dtype, causal, masked, isa, kernel_threads):
    rng = np.random.default_rng(1)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    for shape_q, tk, dv in SHAPES:
        q, k, v = _data(rng, shape_q, tk, dv, dtype)
        mask = rng.random((shape_q[0], 1, shape_q[2], tk)) > 0.3 if masked else None
        out, lse = sdpa(q, k, v, mask=mask, causal=causal, return_lse=True)
        assert out.dtype == dtype and out.shape == shape_q[:-1] + (dv,)
        want, _ = reference(q, k, v, mask, causal)
        np.testing.assert_allclose(out, want, atol=tol, rtol=tol)
        do = rng.standard_normal(out.shape).astype(dtype)
        got = sdpa_grad(do, q, k, v, out, lse, mask=mask, causal=causal)
        for g, w in zip(got, reference_grads(q, k, v, do, mask, causal)):
            assert g.dtype == dtype
            np.testing.assert_allclose(g, w, atol=5 * tol, rtol=5 * tol)


@pytest.mark.parametrize("bq,bk", [(1, 1), (3, 5), (16, 32), (64, 128), (128, 7)])
def test_tile_sizes_and_chunks(bq, bk):
    """Tiles that straddle T (prime sizes, 1) and the split backward give the reference."""
    rng = np.random.default_rng(2)
    q, k, v = _data(rng, (2, 2, 41, 6), 29, 5, np.float64)
    mask = np.broadcast_to((rng.random((2, 1, 1, 29)) > 0.2).view(np.uint8), (2, 2, 41, 29))
    for causal in (False, True):
        out = np.empty((2, 2, 41, 5))
        lse = np.empty((2, 2, 41))
        _attn.forward(q, k, v, out, lse, mask, causal, 0.3, 0.0, 0, bq, bk)
        np.testing.assert_allclose(out, reference(q, k, v, mask, causal, 0.3)[0], atol=1e-12)
        do = rng.standard_normal(out.shape)
        want = reference_grads(q, k, v, do, mask, causal, 0.3)
        for chunks in (1, 2, 3, 50):
            dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
            _attn.backward(do, q, k, v, out, lse, dq, dk, dv, mask, causal, 0.3, 0.0, 0, bq,
                           bk, chunks)
            for g, w in zip((dq, dk, dv), want):
                np.testing.assert_allclose(g, w, atol=1e-12)


def _fd_check(f, args, grads, eps=1e-6, rtol=1e-5, atol=1e-8):
    for a, g in zip(args, grads):
        num = np.zeros_like(a)
        it = np.nditer(a, flags=["multi_index"])
        for _ in it:
            i = it.multi_index
            old = a[i]
            a[i] = old + eps
            up = f()
            a[i] = old - eps
            down = f()
            a[i] = old
            num[i] = (up - down) / (2 * eps)
        np.testing.assert_allclose(g, num, rtol=rtol, atol=atol)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_finite_differences(causal, masked, dropout):
    rng = np.random.default_rng(3)
    q, k, v = _data(rng, (2, 2, 5, 3), 7, 4, np.float64)
    mask = rng.random((2, 1, 5, 7)) > 0.3 if masked else None
    w = rng.standard_normal((2, 2, 5, 4))

    def loss():
        return float((sdpa(q, k, v, mask=mask, causal=causal, dropout=dropout, seed=11)
                      * w).sum())
    out, lse = sdpa(q, k, v, mask=mask, causal=causal, dropout=dropout, seed=11,
                    return_lse=True)
    grads = sdpa_grad(w, q, k, v, out, lse, mask=mask, causal=causal, dropout=dropout,
                      seed=11)
    _fd_check(loss, (q, k, v), grads)


def test_dropout_matches_reference_and_threads(restore_threads):
    rng = np.random.default_rng(4)
    q, k, v = _data(rng, (2, 3, 45, 8), 70, 6, np.float64)
    rate, seed = 0.25, 1234
    z = np.empty(2 * 3 * 45 * 70)
    _norm.dropout_mask(z, rate, seed)           # the same counter-based stream
    z = z.reshape(2, 3, 45, 70)
    outs = []
    for threads in (1, 2):
        cn.set_num_threads(threads)
        out, lse = sdpa(q, k, v, causal=True, dropout=rate, seed=seed, return_lse=True)
        np.testing.assert_allclose(out, reference(q, k, v, None, True, drop=z)[0], atol=1e-12)
        do = np.ones_like(out)
        got = sdpa_grad(do, q, k, v, out, lse, causal=True, dropout=rate, seed=seed)
        for g, w in zip(got, reference_grads(q, k, v, do, None, True, drop=z)):
            np.testing.assert_allclose(g, w, atol=1e-12)
        outs.append((out,) + got)
    for a, b in zip(*outs):
        assert np.array_equal(a, b)
    # the fraction of weights dropped is the rate, and another seed draws other masks
    other = sdpa(q, k, v, causal=True, dropout=rate, seed=seed + 1)
    assert not np.allclose(other, outs[0][0])
    assert abs((z == 0).mean() - rate) < 0.02


def test_same_bits_on_one_and_two_threads(restore_threads):
    rng = np.random.default_rng(5)
    q, k, v = _data(rng, (1, 2, 300, 32), 300, 32, np.float32)     # split backward
    results = []
    for threads in (1, 2):
        cn.set_num_threads(threads)
        out, lse = sdpa(q, k, v, causal=True, return_lse=True)
        results.append((out,) + sdpa_grad(np.ones_like(out), q, k, v, out, lse, causal=True))
    for a, b in zip(*results):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("tk", [1, 15, 16, 17, 31, 33, 47, 48, 130, 256])
def test_row_max_found_wherever_it_sits(isa, tk):
    """The online softmax subtracts each row's largest score before e^x: scores up to
    200 with the rest at most 100 give e^100 (inf in float32) unless the max is found,
    wherever it sits in the row (each lane, vector block and the scalar tail of the
    row-max loop)."""
    rng = np.random.default_rng(7)
    k = rng.uniform(-200, 100, (1, 1, tk, 1)).astype(np.float32)
    v = rng.standard_normal((1, 1, tk, 3)).astype(np.float32)
    q = np.ones((1, 1, tk, 1), np.float32)
    for p in range(tk):
        k_p = k.copy()
        k_p[0, 0, p, 0] = 200
        out, lse = sdpa(q, k_p, v, scale=1.0, return_lse=True)
        want, _ = reference(q.astype(np.float64), k_p.astype(np.float64), v.astype(np.float64),
                            None, False, 1.0)
        np.testing.assert_allclose(out, want, atol=1e-5, err_msg=f"max at {p} of {tk} {isa}")
        np.testing.assert_allclose(lse, 200, rtol=1e-6)


def test_simd_path_follows_the_gemm(isa):
    assert _attn.simd_path() == isa
    assert cn._config.kernel_isas()["attention row loops (float32 softmax exp, max, sums)"][0] \
        == isa


def test_ranks_and_strided_inputs():
    rng = np.random.default_rng(6)
    q, k, v = _data(rng, (3, 10, 4), 12, 5, np.float32)        # (batch, T, d)
    np.testing.assert_allclose(sdpa(q, k, v), reference(q, k, v)[0], atol=2e-6)
    np.testing.assert_allclose(sdpa(q[0], k[0], v[0]), reference(q[0], k[0], v[0])[0],
                               atol=2e-6)
    # (batch, T, heads, d) projections seen as (batch, heads, T, d) without copies
    x = rng.standard_normal((2, 9, 3, 8))
    qt = x.transpose(0, 2, 1, 3)
    np.testing.assert_allclose(sdpa(qt, qt, qt), reference(qt, qt, qt)[0], atol=1e-12)
    # non-contiguous last axis: copied, not misread
    y = rng.standard_normal((2, 3, 9, 16))[..., ::2]
    np.testing.assert_allclose(sdpa(y, y, y), reference(y, y, y)[0], atol=1e-12)
    # integer inputs become float64; a (T_q, T_k) mask broadcasts; int masks are booleans
    qi = np.arange(24).reshape(1, 1, 4, 6) % 5
    mask = np.tril(np.ones((4, 4), int))
    got = sdpa(qi, qi, qi, mask=mask)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, reference(qi, qi, qi, causal=True)[0], atol=1e-12)
    np.testing.assert_allclose(got, sdpa(qi, qi, qi, causal=True), atol=1e-12)


def test_rows_that_see_nothing_give_zeros():
    rng = np.random.default_rng(7)
    q, k, v = _data(rng, (1, 1, 4, 3), 5, 2, np.float64)
    mask = np.ones((4, 5), bool)
    mask[2] = False
    out, lse = sdpa(q, k, v, mask=mask, return_lse=True)
    assert np.all(out[0, 0, 2] == 0) and np.all(np.isfinite(out))
    dq, dk, dv = sdpa_grad(np.ones_like(out), q, k, v, out, lse, mask=mask)
    assert np.all(dq[0, 0, 2] == 0)
    keep = [0, 1, 3]
    want = reference_grads(q[:, :, keep], k, v, np.ones((1, 1, 3, 2)), mask[keep])
    np.testing.assert_allclose(dk, want[1], atol=1e-12)
    np.testing.assert_allclose(dv, want[2], atol=1e-12)


def test_memory_stays_linear_in_t():
    """At T = 2048 the op allocates its output and lse, nothing of size T x T."""
    rng = np.random.default_rng(8)
    t, d = 2048, 32
    q, k, v = _data(rng, (1, 2, t, d), t, d, np.float32)
    sdpa(q, k, v)
    tracemalloc.start()
    out = sdpa(q, k, v, causal=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out.shape == (1, 2, t, d)
    assert peak < 2 * q.nbytes < t * t * 4


def test_torch_parity():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    F = torch.nn.functional
    for causal, masked in ((False, False), (True, False), (False, True)):
        q, k, v = _data(rng, (2, 4, 33, 16), 33 if causal else 47, 16, np.float32)
        mask = rng.random((2, 1, 33, k.shape[2])) > 0.2 if masked else None
        tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
        tm = None if mask is None else torch.tensor(mask)
        want = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=tm, is_causal=causal)
        do = rng.standard_normal(want.shape).astype(np.float32)
        want.backward(torch.tensor(do))
        out, lse = sdpa(q, k, v, mask=mask, causal=causal, return_lse=True)
        np.testing.assert_allclose(out, want.detach().numpy(), atol=2e-5)
        got = sdpa_grad(do, q, k, v, out, lse, mask=mask, causal=causal)
        for g, t in zip(got, (tq, tk, tv)):
            np.testing.assert_allclose(g, t.grad.numpy(), atol=5e-5)


def test_bad_input():
    q = np.zeros((2, 3, 4, 5), np.float32)
    k = np.zeros((2, 3, 6, 5), np.float32)
    v = np.zeros((2, 3, 6, 7), np.float32)
    with pytest.raises(ValueError, match="mask"):
        sdpa(q, k, v, mask=np.ones((3, 4, 4), bool))
    with pytest.raises(TypeError, match="mask"):
        sdpa(q, k, v, mask=np.zeros((4, 6), np.float32))
    with pytest.raises(ValueError, match="k's last axis"):
        sdpa(q, k[..., :4], v)
    with pytest.raises(ValueError, match="k .* and v"):
        sdpa(q, k, v[:, :, :5])
    with pytest.raises(ValueError, match="q .* and k"):
        sdpa(q, k[:1], v[:1])
    with pytest.raises(ValueError, match="dropout"):
        sdpa(q, k, v, dropout=1.0)
    with pytest.raises(ValueError, match="q must have shape"):
        sdpa(q[0, 0, 0], k, v)
    with pytest.raises(TypeError, match="q must hold real numbers"):
        sdpa(q.astype(object), k, v)
    out, lse = sdpa(q, k, v, dropout=0.1, return_lse=True)
    with pytest.raises(ValueError, match="seed"):
        sdpa_grad(out, q, k, v, out, lse, dropout=0.1)
    with pytest.raises(ValueError, match="lse"):
        sdpa_grad(out, q, k, v, out, lse[..., :2])
