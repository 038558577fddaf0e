"""pytest-benchmark suite: cyneuron next to numpy / PyTorch CPU / scikit-learn, same group, same run.

Run it (pyproject's testpaths is tests/, so name the folder or the files):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python -m pytest benchmarks/bench_matmul.py benchmarks/bench_mlp.py --benchmark-only
    python -m pytest benchmarks --benchmark-only          # the same: this file collects bench_*.py
    python -m pytest benchmarks --benchmark-disable       # each benchmark once, as a smoke test

Each group (a matmul shape, the MLP train step, MLP inference) holds cyneuron and its
references; benchmark.extra_info records GFLOP/s or samples/s.

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, which the machine's environment may set, force numpy's
OpenBLAS onto a slower kernel; OpenBLAS reads them once, when numpy is first imported. If they
are set and numpy is not imported yet when this file loads, they are removed from the
environment here (set CYNEURON_BENCH_KEEP_OPENBLAS_ENV=1 to keep them); otherwise a warning
says that the numpy reference is handicapped.
"""
import os
import sys

OPENBLAS_HANDICAP_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

_handicap = {k: os.environ[k] for k in OPENBLAS_HANDICAP_VARS if k in os.environ}
_removed = {}
if _handicap and "numpy" not in sys.modules and not os.environ.get("CYNEURON_BENCH_KEEP_OPENBLAS_ENV"):
    for _k in _handicap:
        del os.environ[_k]  # unsetenv(): OpenBLAS has not read it yet
    _removed, _handicap = _handicap, {}

import pytest  # noqa: E402

try:
    import pytest_benchmark  # noqa: F401
except ImportError:  # without the plugin the `benchmark` fixture does not exist
    collect_ignore_glob = ["bench_*.py"]
    _HAVE_PLUGIN = False
else:
    _HAVE_PLUGIN = True


def pytest_collection_modifyitems(config, items):
    """Installed but disabled (-p no:benchmark): skip rather than error on the missing fixture."""
    if config.pluginmanager.hasplugin("benchmark"):
        return
    skip = pytest.mark.skip(reason="pytest-benchmark is disabled (-p no:benchmark)")
    for item in items:
        if "benchmark" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


def _fmt(d):
    return ", ".join(f"{k}={v}" for k, v in d.items())


def pytest_collect_file(file_path, parent):
    """Collect benchmarks/bench_*.py (pytest's python_files only matches test_*.py); files named
    on the command line are collected by pytest itself."""
    if (_HAVE_PLUGIN and file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_report_header(config):
    lines = []
    if _removed:
        lines.append(f"cyneuron benchmarks: removed {_fmt(_removed)} from the environment before "
                     "numpy was imported, so that numpy's reference uses its best OpenBLAS kernel")
    if _handicap:
        lines.append(f"cyneuron benchmarks: WARNING {_fmt(_handicap)} is set: the numpy reference "
                     "is handicapped (run under `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`)")
    if not _HAVE_PLUGIN:
        lines.append("cyneuron benchmarks: pytest-benchmark is not installed; bench_*.py skipped")
    try:
        import cyneuron as cn

        lines.append(f"cyneuron {cn.__version__}: SIMD path {cn.get_isa()}, "
                     f"{cn.get_num_threads()} threads")
    except Exception as exc:  # noqa: BLE001 - the header must not break the run
        lines.append(f"cyneuron: not importable ({exc})")
    return lines


def pytest_configure(config):
    if _handicap:
        config.issue_config_time_warning(pytest.PytestWarning(
            f"{_fmt(_handicap)} is set and numpy was imported before benchmarks/conftest.py could "
            "remove it: numpy's OpenBLAS runs a slower kernel, so the numpy reference is "
            "handicapped. Run under `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`."), stacklevel=2)
