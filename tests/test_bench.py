"""`python -m cyneuron bench matmul` (cyneuron._bench): its cases, what they multiply, the
report's structure and the target verdicts. Tiny subsets and few repeats; no timing asserts."""
import argparse
import math

import numpy as np
import pytest

import cyneuron as cn
from cyneuron import _bench as B
from cyneuron import _config


def _args(**kw):
    base = {"repeats": 2, "target": 0.001, "stat": "best", "peak": None, "quick": False}
    base.update(kw)
    return argparse.Namespace(**base)


# --------------------------------------------------------------------------- the cases
def test_full_case_list_is_the_issue_s():
    cases = B.matmul_cases()
    by = {}
    for c in cases:
        by.setdefault(c.section, []).append(c)
    assert [c.m for c in by[B.SQUARE]] == [64, 128, 256, 512, 1024, 2048]
    assert all(c.m == c.k == c.n and c.dtype == "float32" and not c.threads for c in by[B.SQUARE])
    # n = 64 and 128: call overhead included (no out=); the others into a preallocated out
    assert [c.out for c in by[B.SQUARE]] == [False, False, True, True, True, True]
    assert [(c.m, c.dtype) for c in by[B.FLOAT64]] == [(512, "float64"), (1024, "float64"),
                                                      (2048, "float64")]
    assert [(c.m, c.threads) for c in by[B.ONE_THREAD]] == [(512, 1), (1024, 1), (2048, 1)]
    dense = by[B.DENSE]
    assert len(dense) == 48
    assert {c.product for c in dense} == {"forward", "dX", "dW"}
    assert len({c.ident for c in cases}) == len(cases)  # unique pytest ids


def test_quick_case_list():
    cases = B.matmul_cases(quick=True)
    squares = [c.m for c in cases if c.section == B.SQUARE]
    assert squares == [64, 128, 512, 1024]
    assert sum(c.section == B.DENSE for c in cases) == 48
    assert all(c.section in (B.SQUARE, B.DENSE) for c in cases)


@pytest.mark.parametrize("batch, k_in, n_out", [(3, 5, 7), (32, 784, 256)])
def test_dense_products_are_the_layer_s(batch, k_in, n_out):
    """forward X @ W, dX = dY @ W^T, dW = X^T @ dY with X (M,K), W (K,N), dY (M,N) stored as the
    layer stores them; both libraries compute the same product."""
    for product in B.DENSE_PRODUCTS:
        case = B.dense_case(batch, k_in, n_out, product)
        a, b, _, _, _, _ = B.matmul_operands(case.m, case.k, case.n, case.dtype,
                                             case.trans_a, case.trans_b)
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        if product == "forward":  # a = X, b = W
            assert (a.shape, b.shape) == ((batch, k_in), (k_in, n_out))
            want = a64 @ b64
        elif product == "dX":  # a = dY, b = W
            assert (a.shape, b.shape) == ((batch, n_out), (k_in, n_out))
            want = a64 @ b64.T
        else:  # a = X, b = dY
            assert (a.shape, b.shape) == ((batch, k_in), (batch, n_out))
            want = a64.T @ b64
        fns = B.case_callables(case)
        for name in ("cyneuron", "numpy"):
            got = fns[name]()
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
        assert B.gemm_flops(case.m, case.k, case.n) == 2.0 * batch * k_in * n_out


def test_no_out_cases_allocate_a_fresh_result():
    fns = B.matmul_callables(8, 8, 8, "float32", out=False)
    for fn in fns.values():
        assert fn() is not fn()
    fns = B.matmul_callables(8, 8, 8, "float32", out=True)
    for fn in fns.values():
        assert fn() is fn()


def test_matmul_error_flags_a_wrong_result():
    want = np.ones((4, 4), np.float32)
    assert B.matmul_error(want.copy(), want) == (0.0, True)
    bad = want.copy()
    bad[1, 2] = 1.5
    err, ok = B.matmul_error(bad, want)
    assert err == pytest.approx(0.5) and not ok


# --------------------------------------------------------------------------- threads, peak
def test_both_on_threads_restores(restore_threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    cn.set_num_threads(2)
    blas = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    with B.both_on_threads(1) as limited:
        assert limited
        assert cn.get_num_threads() == 1
        assert all(i["num_threads"] == 1 for i in threadpoolctl.threadpool_info()
                   if i["user_api"] == "blas")
    assert cn.get_num_threads() == 2
    assert [i["num_threads"] for i in threadpoolctl.threadpool_info()
            if i["user_api"] == "blas"] == blas


def test_measured_peak_is_positive():
    assert B.measure_fma_peak(1, seconds=0.01, tries=1, settle_s=0) > 0


def test_transformer_bench_measures_the_peak_as_the_others_do(monkeypatch):
    """Best of several measurements after the threads settle (the harness's), not one
    short one that another process can halve; --peak wins."""
    from cyneuron.bench import transformer

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(transformer, "measure_fma_peak", lambda threads: 123.0)
    monkeypatch.setattr(transformer, "attention_callables", stop)
    for given, line in ((None, "(measured): 123 GFLOP/s"), (456.0, "(--peak): 456 GFLOP/s")):
        lines = []
        with pytest.raises(Stop):
            transformer.bench_transformer(_args(peak=given), lines.append)
        assert lines == [f"  float32 FMA peak on {cn.get_num_threads()} threads {line}"]


def test_peak_given_and_fallback(monkeypatch):
    peak = B.matmul_peak(2, given=100.0)
    assert (peak.source, peak.per_thread, peak.total) == ("--peak", 50.0, 100.0)
    assert peak.gflops("float32") == 100.0
    assert peak.gflops("float64") == 50.0
    assert peak.gflops("float32", threads=1) == 50.0
    # measuring fails: the clock-based estimate, or nothing
    monkeypatch.setattr(B, "measure_fma_peak", lambda *a, **k: None)
    peak = B.matmul_peak(2)
    assert peak.source in ("clock estimate", "unknown")
    assert (peak.total is None) == (peak.source == "unknown")


def test_print_peak_names_the_isa():
    lines = []
    peak = B.Peak(_config.get_isa(), 2, 50.0, 100.0, "measured", None)
    B.print_peak(peak, lines.append)
    text = "\n".join(lines)
    assert "1 thread 50.0 GFLOP/s" in text and "2 threads 100.0 GFLOP/s" in text
    if "avx512" not in _config.supported_isas():
        assert "this CPU has no AVX-512" in text


# --------------------------------------------------------------------------- the run
def test_bench_matmul_report_structure(restore_threads):
    cn.set_num_threads(2)
    cases = (B.square_cases((16, 32)) + B.square_cases((24,), "float64")
             + [B.dense_case(4, 16, 8, p) for p in B.DENSE_PRODUCTS]
             + B.square_cases((16,), threads=1))
    lines = []
    peak = B.matmul_peak(2, given=100.0)
    report = B.bench_matmul(_args(), lines.append, cases=cases, peak=peak, settle_s=0.001)
    assert set(report) == {"peak", "results", "skipped", "dense_geomeans", "targets"}
    assert report["peak"] is peak
    ran = [r["case"] for r in report["results"]] + [c for c, _ in report["skipped"]]
    assert sorted(ran, key=cases.index) == cases
    for r in report["results"]:
        c = r["case"]
        assert r["ok"], r
        assert r["cyneuron_gflops"] > 0 and r["numpy_gflops"] > 0
        assert r["ratio"] == pytest.approx(r["cyneuron_gflops"] / r["numpy_gflops"])
        assert r["pct_peak"] == pytest.approx(100 * r["cyneuron_gflops"]
                                              / peak.gflops(c.dtype, c.threads))
    assert set(report["dense_geomeans"]) == {"forward", "dX", "dW", "all"}
    assert report["dense_geomeans"]["all"][1] == 3
    assert len(report["targets"]) == 15
    assert cn.get_num_threads() == 2  # the 1-thread case restored it
    text = "\n".join(lines)
    for section in (B.SQUARE, B.FLOAT64, B.DENSE):
        assert f"matmul, {section}" in text
    assert "geometric mean ratio" in text
    assert "matmul targets" in text and "of 15 targets met" in text


# --------------------------------------------------------------------------- the verdicts
def _result(case, ratio, ok=True, g_cn=100.0):
    return {"case": case, "cyneuron_gflops": g_cn, "numpy_gflops": g_cn / ratio, "ratio": ratio,
            "pct_peak": None, "error": 0.0 if ok else 1.0, "ok": ok}


def _status(targets, start):
    [t] = [t for t in targets if t.target.startswith(start)]
    return t


def test_targets_verdicts():
    cases = B.matmul_cases()
    ratios = {B.SQUARE: 1.05, B.FLOAT64: 1.0, B.ONE_THREAD: 1.2}
    results = []
    for i, c in enumerate(cases):
        if c.section == B.DENSE:
            results.append(_result(c, 2.0 if i % 2 else 1.0))
        else:
            results.append(_result(c, ratios[c.section], g_cn=90.0 if c.m == 512 else 80.0))
    results[1] = _result(cases[1], 3.0, ok=False)  # n=128: fast but wrong
    peak = B.Peak("avx512", 2, 50.0, 100.0, "measured", 100.0)
    targets = B.matmul_targets(results, peak)
    assert len(targets) == 15
    assert _status(targets, "float32 n=512, 2 threads: >= 1.05x").status == "met"  # boundary
    assert _status(targets, "float32 n=512, 2 threads: >= 88%").status == "met"
    assert _status(targets, "float32 n=512, 2 threads: >= 88%").value == pytest.approx(0.9)
    assert _status(targets, "float32 n=1024, 2 threads: >= 88%").status == "NOT met"
    assert _status(targets, "float32 n=2048, 1 thread").status == "met"
    dense = _status(targets, "dense layer products")
    assert dense.value == pytest.approx(math.sqrt(2.0)) and dense.status == "met"
    assert _status(targets, "float32 n=64, 2 threads, call overhead").status == "NOT met"
    assert _status(targets, "float32 n=128, 2 threads, call overhead").status.startswith(
        "NOT met (wrong result")
    assert _status(targets, "float64 n=1024").status == "NOT met"
    assert sum(t.met for t in targets) == 8


def test_targets_not_measured_and_no_avx512():
    quick = [_result(c, 1.5) for c in B.matmul_cases(quick=True)]
    peak = B.Peak("avx2", 2, 50.0, 100.0, "measured", None)
    targets = B.matmul_targets(quick[:-1], peak)  # one dense case short
    assert _status(targets, "float32 n=2048, 2 threads: >= 1.05x").status == "not measured"
    assert _status(targets, "float64 n=512").status == "not measured"
    assert _status(targets, "float32 n=512, 1 thread").status == "not measured"
    assert _status(targets, "float32 n=512, 2 threads: >= 88%").status.startswith("n/a")
    assert _status(targets, "dense layer products").status == "not measured (only 47 of 48 cases)"
    # n = 64 timed with out= is not the call-overhead case
    with_out = [_result(B.MatmulCase(B.SQUARE, "n=64", 64, 64, 64), 2.0)]
    assert _status(B.matmul_targets(with_out, peak),
                   "float32 n=64, 2 threads, call").status == "not measured"


# --------------------------------------------------------------------------- the command line
@pytest.mark.parametrize("argv", [["matmul", "--repeats", "0"], ["matmul", "--peak", "-1"],
                                  ["matmul", "--target", "0"], ["nothing"],
                                  ["matmul", "--clock", "cpu"], ["matmul", "--clock", "sundial"]])
def test_main_rejects_bad_options(argv, monkeypatch):
    for k in B.OPENBLAS_HANDICAP_VARS:
        monkeypatch.delenv(k, raising=False)  # never re-execute from a test
    with pytest.raises(SystemExit) as exc:
        B.main(argv)
    assert exc.value.code == 2


def test_time_blocks_samples():
    calls = []
    samples = B.time_blocks({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                            repeats=3, target_s=1e-4, settle_s=0)
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3}
    assert all(s > 0 for v in samples.values() for s in v)


def test_time_blocks_interleaves_rounds_in_rotating_order():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    B.time_blocks(fns, repeats=3, target_s=1e-4, settle_s=0)
    runs = [name for i, name in enumerate(calls) if i == 0 or calls[i - 1] != name]
    assert "".join(runs) == "abc" + "bca" + "cab"


def test_cpu_clock_leaves_out_sleeping(monkeypatch):
    """--clock cpu: time a thread spends off the CPU does not count."""
    import time

    monkeypatch.setattr(B, "_clock", B._clock)      # restored after the test
    B.set_clock("cpu")
    samples = B.time_blocks({"sleeper": lambda: time.sleep(0.002)}, repeats=2, target_s=0.004,
                            settle_s=0)
    assert max(samples["sleeper"]) < 0.001
    B.set_clock("wall")
    samples = B.time_blocks({"sleeper": lambda: time.sleep(0.002)}, repeats=2, target_s=0.004,
                            settle_s=0)
    assert min(samples["sleeper"]) >= 0.002
    with pytest.raises(ValueError, match="clock"):
        B.set_clock("sundial")


def test_spread_is_flagged_above_the_threshold():
    assert B.spread([1.0, 1.1, 1.05]) == pytest.approx(0.1 / 1.05)
    assert "(!)" not in B.spread_cell([1.0, 1.1, 1.05])
    assert B.spread_cell([1.0, 1.5, 1.1]).endswith("(!)")
    lines = []
    B.spread_note([[1.0, 1.02], [2.0, 2.01]], lines.append)
    assert lines == []
    B.spread_note([[1.0, 1.02], [2.0, 3.0]], lines.append)
    assert len(lines) == 1 and "another process" in lines[0]


def test_round_trip_is_recorded_and_far_rows_are_marked(restore_threads):
    """Each timed round records the pool's cache-line round trip (on 2+ threads); a row
    timed while it was above FAR_ROUND_TRIP_NS is marked, and the run ends with a note."""
    from cyneuron.bench import harness

    cn.set_num_threads(2)
    mark = len(harness.round_trips)
    B.time_blocks({"a": lambda: None}, repeats=2, target_s=1e-4, settle_s=0)
    recorded = harness.round_trips[mark:]
    assert len(recorded) <= 2 and all(ns > 0 and math.isfinite(ns) for ns in recorded)
    assert harness.round_trip_cell(None) == "" and harness.round_trip_cell(80.0) == ""
    assert "(!)" in harness.round_trip_cell(400.0) and "400 ns" in harness.round_trip_cell(400.0)
    lines = []
    saved = harness.round_trips[:]
    try:
        harness.round_trips[:] = [90.0, 410.0]
        assert harness.worst_round_trip(0) == 410.0 and harness.worst_round_trip(2) is None
        harness.round_trip_note(lines.append)
    finally:
        harness.round_trips[:] = saved
    assert "90-410 ns" in lines[0] and "(!)" in lines[1]
    from cyneuron.bench import matmul

    assert matmul._far_mark({"round_trip_ns": 400.0}) == " far"
    assert matmul._far_mark({"round_trip_ns": 90.0}) == matmul._far_mark({}) == ""


# -- the end-to-end MLP comparison (issue 8) -------------------------------------------------
def test_mlp_train_flops_count_every_product():
    from cyneuron import _bench_mlp

    # forward + weight gradients for both layers, input gradient for the second only
    assert _bench_mlp.train_flops_per_sample((4, 3, 2)) == 2 * (2 * (12 + 6) + 6)


def test_mlp_bench_reports_every_kind_on_a_tiny_run():
    from cyneuron import _bench_mlp

    lines = []
    results = _bench_mlp.bench(lines.append, threads=1, peak32=100.0, repeats=1,
                               architectures=["784-256-128-10"], batch_sizes=[256],
                               n_samples=512)
    kinds = [r["kind"] for r in results]
    assert kinds == ["train", "latency", "predict"]
    train = results[0]
    assert train["rates"]["cyneuron"] > 0 and train["gflops"] > 0 and train["pct_peak"] > 0
    assert len(lines) == 3 and "samples/s" in lines[0] and " us" in lines[1]
    assert "cyneuron-functional" in train["rates"]      # the graph twin, timed alongside


# -- the ResNet-style CNN through the graph engine (issue 15) ---------------------------------
def test_resnet_bench_networks_match():
    """cyneuron's functional ResNet and the PyTorch one compute the same function: with
    cyneuron's weights copied into the torch net, the same probabilities; each training
    callable runs and returns a finite loss."""
    from cyneuron import _bench_graph as graph

    torch = pytest.importorskip("torch")
    x, y = graph.resnet_data(n=4)
    model = graph.make_cyneuron_resnet()
    _, net, _, _ = graph.make_torch_resnet(1)
    convs = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"]
    torch_convs = [net.stem] + [c for block in net.blocks for c in block]
    with torch.no_grad():
        for layer, conv in zip(convs, torch_convs):
            kernel, bias = layer.get_weights()
            conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
            conv.bias.copy_(torch.from_numpy(bias))
        kernel, bias = model.layers[-1].get_weights()
        net.head.weight.copy_(torch.from_numpy(kernel.T.copy()))
        net.head.bias.copy_(torch.from_numpy(bias))
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        expected = torch.softmax(net(xt), dim=1).numpy()
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-4, atol=1e-6)
    fns, _ = graph.train_callables(1, x, y)
    for fn in fns.values():
        assert np.isfinite(float(fn()))


def test_inference_bench_reports_every_model_and_batch(monkeypatch):
    """`bench inference`: each model and batch size has a table row for cyneuron and for
    onnxruntime (which ran the exported file and matched predict before being timed)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from cyneuron import _bench_onnx

    lines = []
    results = _bench_onnx.bench_inference(_args(repeats=1, target=1e-4), lines.append)
    assert sorted(results) == sorted((label, b) for label, _, _ in _bench_onnx.models()
                                     for b in _bench_onnx.BATCHES)
    for rates in results.values():
        assert set(rates) == {"cyneuron", "onnxruntime"}
        assert all(r > 0 for r in rates.values())
    assert sum("inference, batch" in line for line in lines) == 6
