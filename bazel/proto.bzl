"""ds_proto_library: C++ messages and gRPC stubs from .proto files, generated
by the system protoc and grpc_cpp_plugin."""

def ds_proto_library(name, srcs, deps = [], visibility = None):
    """srcs are .proto files under this package; deps are other
    ds_proto_library targets whose protos these import."""
    outs = []
    for src in srcs:
        base = native.package_name() + "/" + src[:-len(".proto")]
        stem = src[:-len(".proto")]
        outs += [stem + ".pb.h", stem + ".pb.cc", stem + ".grpc.pb.h", stem + ".grpc.pb.cc"]
    native.genrule(
        name = name + "_codegen",
        srcs = srcs + [d + "_srcs" for d in deps],
        outs = outs,
        cmd = " ".join([
            "protoc",
            "--proto_path=.",
            "--cpp_out=$(GENDIR)",
            "--grpc_out=$(GENDIR)",
            "--plugin=protoc-gen-grpc=$$(command -v grpc_cpp_plugin)",
        ] + ["$(location {})".format(s) for s in srcs]),
    )
    native.filegroup(
        name = name + "_srcs",
        srcs = srcs + [d + "_srcs" for d in deps],
        visibility = visibility,
    )
    native.cc_library(
        name = name,
        srcs = [o for o in outs if o.endswith(".cc")],
        hdrs = [o for o in outs if o.endswith(".h")],
        deps = deps + ["//bazel/third_party:grpc++"],
        visibility = visibility,
    )
