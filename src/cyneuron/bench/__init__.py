"""`python -m cyneuron bench [matmul|mlp|conv|resnet|rnn|transformer|sklearn|rbm|som|all]`:
cyneuron next to its references, same run.

matmul: cyneuron.ops.matmul against numpy's matmul (OpenBLAS) on the cases of issue 3's
        targets (squares n = 64 ... 2048, float64 squares, the 48 products of Dense layers,
        squares on 1 thread): GFLOP/s, the ratio (cyneuron speed / numpy speed), the share of
        the float32 FMA peak measured at the start, and a table of the targets, met or not.
        --quick: squares 64/128/512/1024 and the dense products, 4 repeats.
mlp:    training epochs (Adam) of the 784-256-128-10 and 784-512-512-10 ReLU/softmax MLPs
        at batch 32, 128 and 512, in samples/s, against PyTorch CPU and scikit-learn where
        they are installed; one-sample predict latency and batched predict.
sklearn: cyneuron.sklearn.MLPClassifier against scikit-learn's MLPClassifier fitting the
        digits (same architecture, solver, batch size, epochs and random_state): seconds
        per fit, test accuracy and the speed-up.
conv:   one training step (forward + backward + Adam) of a LeNet-style CNN on 28x28x1
        images, batch 64, float32, in samples/s, against the same network in PyTorch CPU,
        in its default NCHW layout ("torch") and in channels_last ("torch-channels-last",
        NHWC like cyneuron; PyTorch's faster CPU layout for this network); and inference
        (softmax probabilities) on the same batch. Adam comes from
        cn.optimizers.get("adam"); where this build has no Adam yet, all sides use SGD
        with momentum 0.9 instead, and the table says so.
rnn:    one training step of LSTM(128) -> Dense(10, softmax) on the last step (T = 50,
        32 features, batch 32, Adam, float32) and the same with GRU(128), in sequences/s,
        against PyTorch CPU (nn.LSTM / nn.GRU + nn.Linear, torch.optim.Adam); and inference
        on 256 sequences. Runs on 2 threads unless --threads says otherwise.
transformer: the fused attention op (batch 8, 8 heads, head_dim 64, T = 128 / 512 / 2048,
        forward and forward + backward, and its peak memory at T = 2048) against
        torch.nn.functional.scaled_dot_product_attention, and a 2-layer Transformer
        encoder classifier (training and inference) against nn.TransformerEncoder.
inference: predict of the MLP, LeNet CNN and LSTM classifier at batch 1 and 256 against
        onnxruntime running the same models exported by cn.onnx.export.
rbm, som: BernoulliRBM.fit against scikit-learn's, SOM training against MiniSom's.
tree:   TreeLSTM training steps against two PyTorch CPU versions (per-node, level-batched).
gan:    one DCGAN training step (both updates) against the same GAN in PyTorch CPU.

The machine's environment may set OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, which force numpy's
OpenBLAS onto a slower kernel. OpenBLAS reads them when numpy is first imported, and
cyneuron has imported numpy by the time this runs, so main() re-executes the interpreter
without them before it times anything (--keep-openblas-env keeps them, to measure the
handicapped reference on purpose).

Layout: one module per group (GROUPS below; each has `run(args, out)`), the shared
timing, clocks, FMA peak and tables in harness.py, and this module's main() (the command
line). Only numpy and cyneuron are imported up front; a group's module is imported when it
runs, and torch, scikit-learn and threadpoolctl are optional. The helpers that build the
models are shared with the pytest-benchmark suite in benchmarks/.
"""
import argparse
import importlib
import os
import sys
import time

from .harness import (_REEXEC_MARKER, CLOCKS, MIN_ROUNDS, _header, _limit_blas_threads,
                      _reexec_without_handicap, openblas_handicap, round_trip_note, set_clock)

# The groups in the order `all` runs them: one module of this package each.
GROUPS = ("matmul", "mlp", "conv", "resnet", "rnn", "transformer", "sklearn", "inference", "rbm",
          "som", "tree", "gan")


def main(argv=None):
    """Entry point of `python -m cyneuron bench`; argv is what follows 'bench'."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m cyneuron bench",
        description="Time cyneuron against numpy, PyTorch CPU and scikit-learn, in one run.")
    parser.add_argument("what", nargs="?", default="all",
                        choices=tuple(GROUPS) + ("all",))
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for cyneuron, torch and (with threadpoolctl) numpy's BLAS")
    parser.add_argument("--quick", action="store_true",
                        help="matmul: squares 64/128/512/1024 and the dense-layer products only; "
                             "mlp: the first network only; 5 rounds unless --repeats says otherwise")
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved rounds, each timing every contender once "
                             "(default 8, --quick 5)")
    parser.add_argument("--target", type=float, default=0.04,
                        help="seconds per repeat (default 0.04)")
    parser.add_argument("--stat", choices=("best", "median"), default="median",
                        help="summary of the rounds (default median; the spread is printed "
                             "beside it)")
    parser.add_argument("--peak", type=float, default=None,
                        help="float32 peak GFLOP/s of this machine on the threads in use, for "
                             "the %% of peak column (default: measured at the start)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall clock (default) or the thread's CPU time, which a busy "
                             "machine disturbs far less; cpu needs --threads 1")
    parser.add_argument("--keep-openblas-env", action="store_true",
                        help="do not re-execute without OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = MIN_ROUNDS if args.quick else 8
    if args.repeats < 1 or args.target <= 0:
        parser.error("--repeats must be >= 1 and --target > 0")
    if args.peak is not None and not args.peak > 0:
        parser.error("--peak must be > 0 (GFLOP/s)")
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu needs --threads 1 (every contender computing in this thread)")
    set_clock(args.clock)

    if openblas_handicap() and not args.keep_openblas_env and not os.environ.get(_REEXEC_MARKER):
        _reexec_without_handicap(argv)  # does not return

    import cyneuron as cn

    limiter = None
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        cn.set_num_threads(args.threads)
        limiter = _limit_blas_threads(args.threads)

    def out(line=""):
        print(line, flush=True)

    t0 = time.perf_counter()
    _header(args, out)
    if args.threads is not None and limiter is None:
        out("  note:       threadpoolctl is not installed: numpy's BLAS threads are not limited")
    for group in GROUPS if args.what == "all" else (args.what,):
        importlib.import_module(f"{__name__}.{group}").run(args, out)
    round_trip_note(out)
    out(f"\n({time.perf_counter() - t0:.1f} s)")
    return 0
