"""Build the compiled core: Cython kernels (OpenMP) plus per-ISA C micro-kernels.

Environment switches:
  CYNEURON_REQUIRE_OPENMP=1  fail the build when the compiler has no OpenMP (CI sets it)
  CYNEURON_DEBUG=1           bounds checks on in the Cython kernels, -O0 -g
  CYNEURON_SANITIZE=address,undefined
                             build csrc and the Cython extensions with
                             -fsanitize=<list> -fno-omit-frame-pointer (-O1 -g) and the
                             Cython checks on (boundscheck, wraparound, initializedcheck).
                             Run with the sanitizer runtime preloaded, e.g.
                             LD_PRELOAD=$(gcc -print-file-name=libasan.so)
                             ASAN_OPTIONS=detect_leaks=0 (see README, "Sanitizer build").
                             Build it in a separate copy of the tree: the generated .c
                             files differ from the normal build's.
"""
import glob
import os
import platform
import shutil
import sys
import tempfile
import textwrap

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("CYNEURON_DEBUG") == "1"
SANITIZERS = [s.strip() for s in os.environ.get("CYNEURON_SANITIZE", "").split(",") if s.strip()]
_KNOWN_SANITIZERS = {"address", "undefined", "leak", "thread"}
if set(SANITIZERS) - _KNOWN_SANITIZERS:
    sys.exit(f"error: CYNEURON_SANITIZE={os.environ['CYNEURON_SANITIZE']!r}: unknown sanitizer(s) "
             f"{sorted(set(SANITIZERS) - _KNOWN_SANITIZERS)}; known: {sorted(_KNOWN_SANITIZERS)}")
SANITIZE_FLAGS = (["-fsanitize=" + ",".join(SANITIZERS), "-fno-omit-frame-pointer"]
                  if SANITIZERS else [])
CHECKED = DEBUG or bool(SANITIZERS)   # Cython's bounds / wraparound / initialized checks
REQUIRE_OPENMP = os.environ.get("CYNEURON_REQUIRE_OPENMP") == "1"
IS_X86_64 = platform.machine().lower() in ("x86_64", "amd64")

# -fno-math-errno: sqrt and friends need not set errno, so loops using them vectorize
# (results are unchanged; this is not -ffast-math).
OPT_FLAGS = ["-O0", "-g"] if DEBUG else ["-O3", "-fno-math-errno"]
if SANITIZERS:
    OPT_FLAGS = ["-O1", "-g"] + SANITIZE_FLAGS
# Per instruction set C files; each is compiled with its own flags and only
# reached after the runtime CPU check (csrc/cpu.c). Never -march=native.
ISA_SOURCES = [("csrc/gemm_generic.c", [])]
if IS_X86_64:
    ISA_SOURCES += [
        ("csrc/gemm_avx2.c", ["-mavx2", "-mfma"]),
        ("csrc/gemm_avx512.c", ["-mavx512f"]),
    ]
C_MACROS = [("CN_HAVE_X86_KERNELS", "1")] if IS_X86_64 else []

KERNELS = ["_openmp", "gemm", "activations", "losses", "optim", "normalization", "conv", "arrays",
           "pooling", "recurrent", "winograd", "attention", "rbm", "som", "tree"]


def openmp_flag(compiler):
    """Return the OpenMP flag this compiler accepts (compile and link), or None."""
    code = textwrap.dedent(
        """
        #include <omp.h>
        int main(void) {
            int n = 0;
            #pragma omp parallel reduction(+:n)
            n += 1;
            return n > 0 && omp_get_max_threads() > 0 ? 0 : 1;
        }
        """
    )
    for flag in ("-fopenmp", "-qopenmp", "/openmp"):
        tmp = tempfile.mkdtemp()
        try:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as f:
                f.write(code)
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=[flag])
            compiler.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=[flag])
            return flag
        except Exception:
            continue
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return None


class BuildExt(build_ext):
    def build_extensions(self):
        flag = openmp_flag(self.compiler)
        if flag is None:
            msg = "cyneuron: the C compiler has no OpenMP support; kernels will run on one thread"
            if REQUIRE_OPENMP:
                sys.exit("error: " + msg + " (CYNEURON_REQUIRE_OPENMP=1)")
            print("warning: " + msg, file=sys.stderr)
        print(f"cyneuron: OpenMP flag {flag!r}", file=sys.stderr)

        isa_objects = []
        for src, flags in ISA_SOURCES:
            isa_objects += self.compiler.compile(
                [src], output_dir=self.build_temp, macros=C_MACROS,
                include_dirs=["csrc"], extra_postargs=OPT_FLAGS + ["-fPIC"] + flags,
            )
        for ext in self.extensions:
            if flag:
                ext.extra_compile_args.append(flag)
                ext.extra_link_args.append(flag)
            if ext.name.endswith(".gemm"):
                ext.extra_objects += isa_objects
        super().build_extensions()


def kernel_extension(name):
    sources = [f"src/cyneuron/_kernels/{name}.pyx"]
    if name == "gemm":
        sources.append("csrc/cpu.c")
    return Extension(
        f"cyneuron._kernels.{name}",
        sources=sources,
        include_dirs=[np.get_include(), "csrc"],
        define_macros=C_MACROS + [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=list(OPT_FLAGS),
        extra_link_args=list(SANITIZE_FLAGS),
        # The C core: a change to any of it relinks the extensions that use it.
        depends=sorted(glob.glob("csrc/*.h") + glob.glob("csrc/*.c")),
    )


setup(
    ext_modules=cythonize(
        [kernel_extension(name) for name in KERNELS],
        compiler_directives={
            "language_level": 3,
            "boundscheck": CHECKED,
            "wraparound": bool(SANITIZERS),
            "cdivision": True,
            "initializedcheck": CHECKED,
        },
    ),
    cmdclass={"build_ext": BuildExt},
)
