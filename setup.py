"""Build fastmp._fastmp from every C file in src/.

Set FASTMP_WERROR=1 to turn warnings into errors (CI does),
FASTMP_SANITIZE=1 to build with AddressSanitizer and UBSan (run the
tests with the ASan runtime preloaded; see docs/development.md), and
FASTMP_DEBUG=1 for -O0 -g.
"""

import glob
import os
import sys

from setuptools import Extension, setup

if not sys.platform.startswith("linux"):
    # The platform layer (src/platform_linux.c) is Linux-only for now.
    raise SystemExit("fastmp currently builds on Linux only")

# -fvisibility=hidden: only PyInit__fastmp is exported, so the calls from
# one src/*.c file to another are direct (no PLT) and functions shared
# between files can still be inlined within their own file.
cflags = [
    "-std=gnu11",
    "-Wall",
    "-Wextra",
    "-Wno-missing-field-initializers",
    "-Werror=implicit-function-declaration",
    "-fvisibility=hidden",
]
ldflags = []
if os.environ.get("FASTMP_WERROR"):
    cflags += ["-Werror"]
if os.environ.get("FASTMP_DEBUG"):
    cflags += ["-O0", "-g3"]
else:
    cflags += ["-O2"]
if os.environ.get("FASTMP_SANITIZE"):
    san = [
        "-fsanitize=address,undefined",
        "-fno-omit-frame-pointer",
        "-fno-sanitize-recover=undefined",
    ]
    cflags += san + ["-g"]
    ldflags += san

setup(
    ext_modules=[
        Extension(
            "fastmp._fastmp",
            sources=sorted(glob.glob("src/*.c")),
            depends=sorted(glob.glob("src/*.h")),
            include_dirs=["src"],
            extra_compile_args=cflags,
            extra_link_args=ldflags,
        )
    ],
)
