"""Build of the extension: sources, and build flags mapped from the environment only.

SHMQ_DEBUG=1     -O0 -g, assertions on
SHMQ_SANITIZE=1  ASan + UBSan (load with LD_PRELOAD=$(gcc -print-file-name=libasan.so))
"""
import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("SHMQ_DEBUG") == "1"
sanitize = os.environ.get("SHMQ_SANITIZE") == "1"

cflags = ["-std=gnu11", "-mcx16", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-unused-function",
          "-fno-strict-aliasing"]
ldflags = []
if debug or sanitize:
    cflags += ["-O1" if sanitize else "-O0", "-g", "-fno-omit-frame-pointer", "-UNDEBUG"]
else:
    cflags += ["-O2"]
if sanitize:
    cflags += ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
    ldflags += ["-fsanitize=address,undefined"]

ext = Extension(
    "shmq._core",
    sources=["src/shmq/_core.pyx"] + sorted(glob.glob("csrc/*.c")),
    include_dirs=["csrc"],
    extra_compile_args=cflags,
    extra_link_args=ldflags,
)

setup(
    ext_modules=cythonize([ext], include_path=["src"], language_level=3,
                          compiler_directives={"embedsignature": True}),
)
