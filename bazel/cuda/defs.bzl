"""cuda_library: compiles .cu sources with nvcc for sm_90 into a cc_library.

Without a CUDA toolkit (HAS_CUDA False) no targets are created. BUILD files
cannot hold a top-level `if`, so host-compiled targets that need CUDA use
cuda_cc_library / cuda_cc_test / cuda_cc_binary, which likewise create
nothing without a toolkit.
"""

load("@local_cuda//:defs.bzl", "CUDA_ARCH", "HAS_CUDA", "NVCC")

def cuda_library(name, srcs, hdrs = [], deps = [], nvcc_flags = [], visibility = None, tags = []):
    """Each .cu in srcs becomes one object compiled by nvcc; hdrs are the
    headers those sources (and dependants) include."""
    if not HAS_CUDA:
        return
    objs = []
    for src in srcs:
        obj = "_{}_objs/{}.o".format(name, src.replace("/", "_"))
        native.genrule(
            name = "{}_{}_nvcc".format(name, src.replace("/", "_").replace(".", "_")),
            srcs = [src] + hdrs + native.glob(["*.h", "*.cuh"], exclude = hdrs),
            outs = [obj],
            cmd = " ".join([
                NVCC,
                "-c",
                "-std=c++20",
                "-O3",
                "--use_fast_math",
                "-lineinfo",
                "-arch=" + CUDA_ARCH,
                "-Xcompiler=-fPIC",
                "-I.",
                "-I$(GENDIR)",
            ] + nvcc_flags + ["$(location {})".format(src), "-o", "$@"]),
            tags = tags,
        )
        objs.append(obj)
    native.cc_library(
        name = name,
        srcs = objs,
        hdrs = hdrs,
        deps = deps + ["@local_cuda//:cudart"],
        visibility = visibility,
        tags = tags,
        alwayslink = True,
    )

def cuda_cc_library(**kwargs):
    """A native.cc_library that exists only when a CUDA toolkit was found."""
    if HAS_CUDA:
        native.cc_library(**kwargs)

def cuda_cc_test(**kwargs):
    """A native.cc_test that exists only when a CUDA toolkit was found."""
    if HAS_CUDA:
        native.cc_test(**kwargs)

def cuda_cc_binary(**kwargs):
    """A native.cc_binary that exists only when a CUDA toolkit was found."""
    if HAS_CUDA:
        native.cc_binary(**kwargs)
