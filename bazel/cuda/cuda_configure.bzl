"""Repository rule that finds the local CUDA toolkit, if any.

It writes @local_cuda with:
  defs.bzl  HAS_CUDA (bool), NVCC (path), CUDA_ARCH (e.g. "sm_90")
  BUILD     :cuda_headers (the toolkit's include/ tree) and :cudart (links
            libcudart with an rpath), both empty when no toolkit is found.
The toolkit is searched at $CUDA_PATH, then /usr/local/cuda. Setting
DELTASERVE_NO_CUDA=1 forces a CPU-only build.
"""

def _cuda_configure_impl(ctx):
    cuda_path = ""
    if ctx.os.environ.get("DELTASERVE_NO_CUDA", "") != "1":
        for candidate in [ctx.os.environ.get("CUDA_PATH", ""), "/usr/local/cuda"]:
            if candidate and ctx.path(candidate + "/bin/nvcc").exists:
                cuda_path = candidate
                break
    has_cuda = cuda_path != ""
    if has_cuda:
        ctx.symlink(cuda_path + "/include", "include")
        build = """
package(default_visibility = ["//visibility:public"])

cc_library(
    name = "cuda_headers",
    hdrs = glob(["include/**/*.h", "include/**/*.hpp", "include/**/*.cuh", "include/**/*.inl"]),
    includes = ["include"],
)

cc_library(
    name = "cudart",
    linkopts = ["-L{lib}", "-Wl,-rpath,{lib}", "-lcudart", "-lcublas", "-lcublasLt"],
    deps = [":cuda_headers"],
)
""".format(lib = cuda_path + "/lib64")
    else:
        build = """
package(default_visibility = ["//visibility:public"])

cc_library(name = "cuda_headers")

cc_library(name = "cudart")
"""
    ctx.file("BUILD", build)
    ctx.file("defs.bzl", "HAS_CUDA = {}\nNVCC = \"{}\"\nCUDA_ARCH = \"sm_90\"\n".format(
        has_cuda,
        cuda_path + "/bin/nvcc" if has_cuda else "",
    ))

cuda_configure = repository_rule(
    implementation = _cuda_configure_impl,
    environ = ["CUDA_PATH", "DELTASERVE_NO_CUDA"],
    local = True,
)
