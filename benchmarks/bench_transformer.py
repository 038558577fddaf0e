"""Attention and Transformer encoder, float32: cyneuron vs PyTorch CPU, each group in the same
run; GFLOP/s (and sequences/s) in extra_info.

(a) The attention op, batch 8, 8 heads, head_dim 64, T = 128, 512, 2048, forward and
    forward + backward: cn.ops.scaled_dot_product_attention (+ _grad) against
    torch.nn.functional.scaled_dot_product_attention. Peak memory (T = 512 to 2048,
    against PyTorch's default and its materialising math backend) is measured by
    `python -m cyneuron bench transformer` (a fresh process per side and T), not here.
(b) A 2-layer encoder classifier (d_model 128, 4 heads, ff 512, T 64, batch 32, Adam):
    train step and inference on 256 sequences against nn.TransformerEncoder.
The callables are the ones `python -m cyneuron bench transformer` times
(cyneuron.bench.transformer). Threads: cn.get_num_threads() for both sides.
"""
import numpy as np
import pytest

import cyneuron as cn
from cyneuron.bench.harness import settle_threads
from cyneuron.bench.transformer import (
    ATT_LENGTHS,
    ENC_BATCH,
    ENC_PREDICT,
    IMPLEMENTATIONS,
    attention_callables,
    attention_flops,
    encoder_data,
    encoder_flops,
    encoder_predict_callables,
    encoder_train_callables,
)


def _pick(fns, missing, name):
    if name not in fns:
        pytest.skip(f"{name}: {missing.get(name, 'unavailable')}")
    return fns[name]


def _record(benchmark, flops, per_call=None):
    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
    if stats is None:
        return
    s = stats.stats
    benchmark.extra_info["gflops_median"] = round(flops / s.median / 1e9, 1)
    if per_call:
        benchmark.extra_info["sequences_per_s_median"] = round(per_call / s.median, 1)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward_backward"])
@pytest.mark.parametrize("T", ATT_LENGTHS)
def test_attention(benchmark, T, backward, name):
    fns, missing = attention_callables(T, backward, cn.get_num_threads())
    fn = _pick(fns, missing, name)
    benchmark.group = f"attention {'forward + backward' if backward else 'forward'} T={T}"
    fn()
    settle_threads()
    benchmark(fn)
    _record(benchmark, attention_flops(T, backward))


@pytest.fixture(scope="module")
def train_fns():
    return encoder_train_callables(cn.get_num_threads(), *encoder_data())


@pytest.fixture(scope="module")
def predict_fns():
    return encoder_predict_callables(cn.get_num_threads(), encoder_data(ENC_PREDICT, seed=1)[0])


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_encoder_train_step(benchmark, train_fns, name):
    step = _pick(*train_fns, name)
    benchmark.group = f"2-layer encoder classifier train step (batch {ENC_BATCH}, Adam)"
    assert np.isfinite(float(step()))
    settle_threads()
    benchmark(step)
    _record(benchmark, encoder_flops(ENC_BATCH, True), ENC_BATCH)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_encoder_predict(benchmark, predict_fns, name):
    predict = _pick(*predict_fns, name)
    benchmark.group = f"2-layer encoder classifier inference ({ENC_PREDICT} sequences)"
    assert predict().shape == (ENC_PREDICT, 10)
    settle_threads()
    benchmark(predict)
    _record(benchmark, encoder_flops(ENC_PREDICT, False), ENC_PREDICT)
