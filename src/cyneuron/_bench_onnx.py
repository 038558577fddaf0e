"""`python -m cyneuron bench inference`: cyneuron's predict next to onnxruntime running
the same model exported with cn.onnx.export, in the same run.

Models (those of the other benchmark groups): the 784-256-128-10 MLP, the LeNet-style
CNN (28x28x1) and the LSTM(128) classifier (T = 50, 32 features). Each at batch 1
(latency: the ms/call column) and batch 256 (throughput), float32. onnxruntime uses its
default CPU execution provider with intra-op threads = cyneuron's threads, one inter-op
thread and sequential execution; both sides return a numpy array of the outputs.
Target (issue 20): cyneuron >= 1.0x onnxruntime on every row.
"""
import os
import tempfile

import numpy as np

BATCHES = (1, 256)
IMPLEMENTATIONS = ("cyneuron", "onnxruntime")


def models():
    """[(label, model, per-sample input shape)] built with the other groups' helpers."""
    from ._bench import RNN_FEATURES, RNN_TIMESTEPS, CONV_INPUT, make_cyneuron_cnn, \
        make_cyneuron_rnn
    from ._bench_mlp import make_cyneuron

    return [("MLP 784-256-128-10", make_cyneuron([784, 256, 128, 10]), (784,)),
            ("LeNet-style CNN 28x28x1", make_cyneuron_cnn(), CONV_INPUT),
            (f"LSTM(128) classifier T={RNN_TIMESTEPS}", make_cyneuron_rnn("lstm")[1],
             (RNN_TIMESTEPS, RNN_FEATURES))]


def onnx_session(model, threads, folder):
    """(run(x) -> outputs, None) for `model` exported to `folder`, or (None, why)."""
    try:
        import onnxruntime as ort
        import cyneuron as cn
    except ImportError:
        return None, "not installed"
    path = os.path.join(folder, f"{model.name}.onnx")
    try:
        cn.onnx.export(model, path)
    except ImportError:
        return None, "onnx not installed"
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return (lambda x: sess.run(None, {name: x})[0]), None


def inference_callables(model, run_onnx, x):
    """{name: predict on x}, after checking that both give the same outputs."""
    fns = {"cyneuron": lambda: model.predict(x, batch_size=len(x))}
    if run_onnx is not None:
        want, got = fns["cyneuron"](), run_onnx(x)
        if not np.allclose(got, want, rtol=1e-3, atol=1e-5):
            raise AssertionError(f"{model.name}: onnxruntime's outputs differ from predict's "
                                 f"by {np.max(np.abs(got - want)):.3g}")
        fns["onnxruntime"] = lambda: run_onnx(x)
    return fns


def bench_inference(args, out):
    """Tables of samples/s (and ms/call) per model and batch size; {(label, batch): rates}."""
    import cyneuron as cn

    from ._bench import _rate_table

    threads = cn.get_num_threads()
    rng = np.random.default_rng(0)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for label, model, shape in models():
            run_onnx, why = onnx_session(model, threads, folder)
            missing = {} if run_onnx is not None else {"onnxruntime": why}
            for batch in BATCHES:
                x = rng.standard_normal((batch,) + tuple(shape)).astype(np.float32)
                fns = inference_callables(model, run_onnx, x)
                title = (f"{label} inference, batch {batch}, float32, {threads} threads "
                         f"(onnxruntime {_ort_version()}, CPU execution provider)")
                results[label, batch] = _rate_table(title, fns, missing, batch, args, out,
                                                    "samples/s", IMPLEMENTATIONS)
    return results


def _ort_version():
    try:
        import onnxruntime
    except ImportError:
        return "not installed"
    return onnxruntime.__version__
