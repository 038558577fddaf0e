"""Thread count, SIMD path report and show_config."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cyneuron as cn
from cyneuron import _config

SRC_DIR = str(Path(cn.__file__).resolve().parent.parent)


@pytest.mark.parametrize("n", [1, 2, 3, 1])
def test_set_get_num_threads_round_trip(n, restore_threads):
    cn.set_num_threads(n)
    assert cn.get_num_threads() == n
    # Kernels still give the right answer at that setting.
    a = np.arange(1200, dtype=np.float64).reshape(40, 30) / 1200
    np.testing.assert_allclose(cn.ops.matmul(a, a.T), a @ a.T, rtol=1e-12)


def test_set_num_threads_last_call_wins(restore_threads):
    cn.set_num_threads(1)
    cn.set_num_threads(2)
    assert cn.get_num_threads() == 2
    cn.set_num_threads(1)
    assert cn.get_num_threads() == 1


@pytest.mark.parametrize("bad", [0, -1, "2", 1.5, 2.0, None, True, False, [2]])
def test_set_num_threads_rejects_bad_values(bad, restore_threads):
    before = cn.get_num_threads()
    with pytest.raises(ValueError, match="n must be a positive integer"):
        cn.set_num_threads(bad)
    assert cn.get_num_threads() == before


def test_show_config_prints_the_essentials(capsys):
    cn.show_config()
    printed = capsys.readouterr().out
    fields = {}
    for line in printed.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    for key in ("version", "isa", "openmp", "num_threads"):
        assert key in fields, f"show_config does not print {key!r}:\n{printed}"
    assert fields["version"] == cn.__version__
    assert fields["isa"] == cn.get_isa()
    assert fields["openmp"] in ("True", "False")
    assert fields["num_threads"] == str(cn.get_num_threads())


def test_show_config_follows_thread_setting(capsys, restore_threads):
    cn.set_num_threads(1)
    cn.show_config()
    assert any(line.split(":")[0].strip() == "num_threads" and line.split(":", 1)[1].strip() == "1"
               for line in capsys.readouterr().out.splitlines())


def test_config_is_consistent():
    cfg = _config.config()
    assert cfg["isa"] == cn.get_isa()
    assert cfg["isa"] in cfg["supported_isas"]
    assert cfg["num_threads"] == cn.get_num_threads()
    assert isinstance(cfg["openmp"], bool)
    assert cn.get_isa() in ("generic", "avx2", "avx512")


def test_openmp_is_enabled_in_this_build():
    """The build probes the OpenMP flag; without it every kernel silently runs on one thread."""
    assert _config.config()["openmp"] is True


def _child_threads(omp_value):
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC_DIR + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = omp_value
    code = ("import numpy as np, cyneuron as cn\n"
            "a = np.ones((200, 200))\n"
            "assert (cn.ops.matmul(a, a) == 200).all()\n"
            "print(cn.get_num_threads())\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1])


@pytest.mark.parametrize("omp", ["1", "2", "3"])
def test_omp_num_threads_sets_the_default(omp):
    assert _child_threads(omp) == int(omp)


def test_kernel_families_report_the_isa_they_run(isa, capsys):
    """`info` names each kernel family's instruction set, following the path in use."""
    families = _config.kernel_isas()
    assert families["GEMM micro-kernels"][0] == isa
    assert families["optimizers (Adam, AdamW, RMSprop, Adagrad)"][0] == isa
    epilogue = families["GEMM epilogue (bias, relu, leaky_relu, derivatives, column sums)"][0]
    gates = families["recurrent gate math (float32 sigmoid/tanh)"][0]
    layer_norm = families["layer normalization rows (forward, backward)"][0]
    if isa == "generic":
        assert epilogue == "generic" and gates == "generic" and layer_norm == "generic"
    else:
        assert epilogue == "avx2" and gates == ("avx2+fma" if isa == "avx2" else isa)
        assert layer_norm == "avx2"
    vector = [v for k, v in families.items() if k.startswith("activations (float32")]
    assert len(vector) == 1 and vector[0][0] == isa
    assert all(why for _, why in families.values())
    cn.show_config()
    printed = capsys.readouterr().out
    for family in families:
        assert family in printed
