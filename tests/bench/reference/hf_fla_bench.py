#!/usr/bin/env python3
"""Reference numbers for the same model shapes deltaserve serves, run through the Python stack.

Builds two models with random bf16 weights on one GPU and times them through their own
Hugging Face-style forward with a cache:

  deltanet-1.3b   fla ``DeltaNetForCausalLM``: hidden 2048, 24 layers, 16 heads of dim 128,
                  vocab 32000, fla's defaults otherwise (chunk mode for prefill; fla switches to
                  its fused recurrent kernel by itself for inputs of 64 tokens or fewer).
  qwen3.5-0.8b    transformers ``Qwen3_5ForCausalLM`` (model_type qwen3_5_text) with the text
                  shape of Qwen3.5-0.8B (see QWEN35_08B below). Its Gated DeltaNet layers use
                  fla's kernels when transformers finds fla; the kernel probe rows show which ran.

For each model:
  prefill  B=1, one forward over the whole prompt (T = 4096 and 65536 by default) with
           use_cache=True and logits for the last position only; tokens/s and ms.
  decode   B = 1, 32, 128: a prefill of --decode-context tokens per sequence, a few warm-up
           steps, then --decode-steps single-token forwards through the cache, timed with CUDA
           events (median of --repeats runs); ms/step and tokens/s (B / step time).

Every case runs on its own: a failure (out of memory, an unsupported path) is reported in its
row and the rest still run. The table is printed as markdown and, with --out, written as JSON
(rewritten after every case, so a run stopped early still leaves what it measured).

fla is imported from <repo>/.ref/fla when that folder exists (tests/bench/reference/
prepare_fla.sh exports it there), else from the installed packages.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import sys
import time
import traceback
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_FLA_PATH = REPO_ROOT / ".ref" / "fla"

MODEL_NAMES = ("deltanet-1.3b", "qwen3.5-0.8b")

# 1.3B DeltaNet shape as fla's DeltaNetConfig spells it; anything not named keeps fla's default.
DELTANET_13B = dict(
    hidden_size=2048,
    num_hidden_layers=24,
    num_heads=16,  # head dim = hidden_size * expand_k / num_heads = 128
    vocab_size=32000,
    attn_mode="chunk",
)

# Qwen3.5-0.8B, text part (the checkpoint's text_config). Sources:
#  - Qwen/Qwen3.5-0.8B model card, "Model Overview" (a copy: https://friendli.ai/models/Yuqi123/
#    Qwen3.5-0.8B-modelopt-fp8-hflayout): hidden dimension 1024; token embedding 248320 (padded);
#    24 layers laid out 6 x (3 x (Gated DeltaNet -> FFN) -> 1 x (Gated Attention -> FFN));
#    Gated DeltaNet 16 heads for V and 16 for QK, head dim 128; Gated Attention 8 Q heads and
#    2 KV heads, head dim 256; rotary position embedding dimension 64 (= 0.25 x 256).
#  - github.com/THUDM/slime scripts/models/qwen3.5-0.8B.sh (commit f8879db2b7a9): ffn hidden
#    size 3584, 8 attention heads / 2 query groups, kv channels 256, rotary percent 0.25, rotary
#    base 10000000, norm eps 1e-6, vocab 248320; unlike the same repo's qwen3.5-27B.sh it does not
#    pass --untie-embeddings-and-output-weights, so the LM head is tied to the embedding.
#  - https://apxml.com/models/qwen35-08b: FFN intermediate size 3584, RoPE theta 10,000,000,
#    vocabulary 248,320, 8 attention heads / 2 KV heads of dim 256, 24 layers, context 262K.
#  - transformers' Qwen3_5TextConfig defaults for what the sources above leave out: conv kernel 4,
#    full attention every 4th layer, partial_rotary_factor 0.25.
# Not read from the checkpoint's config.json itself (it was not found); tied embeddings are also
# what the size says: about 0.75B text parameters tied, 1.0B untied.
QWEN35_08B = dict(
    vocab_size=248320,
    hidden_size=1024,
    intermediate_size=3584,
    num_hidden_layers=24,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=256,
    linear_num_key_heads=16,
    linear_num_value_heads=16,
    linear_key_head_dim=128,
    linear_value_head_dim=128,
    linear_conv_kernel_dim=4,
    layer_types=(["linear_attention"] * 3 + ["full_attention"]) * 6,
    tie_word_embeddings=True,
    max_position_embeddings=262144,
    rms_norm_eps=1e-6,
    hidden_act="silu",
)
QWEN35_ROPE = dict(
    rope_type="default",
    rope_theta=10_000_000.0,
    partial_rotary_factor=0.25,
    mrope_section=[11, 11, 10],
    mrope_interleaved=True,
)

# Names of delta-rule kernels (fla's Triton kernels carry these words); used by the kernel probe.
DELTA_KERNEL_RE = re.compile(r"delta_rule|gated_delta|recurrent|kkt|solve_tril|recompute_w_u|chunk_\w*fwd", re.I)


# --------------------------------------------------------------------------------------------
# Results


class Results:
    """Collects rows and writes them as a markdown table and as JSON."""

    def __init__(self, out_path: str | None, meta: dict):
        self.out_path = out_path
        self.meta = meta
        self.rows: list[dict] = []

    def add(self, model: str, what: str, value, unit: str, **extra) -> None:
        row = {"model": model, "what": what, "value": value, "unit": unit}
        row.update({k: v for k, v in extra.items() if v is not None})
        self.rows.append(row)
        print(f"  {model} | {what} | {format_value(value)} | {unit}", flush=True)
        self.write()

    def add_error(self, model: str, what: str, unit: str, err: BaseException) -> None:
        text = describe_error(err)
        self.add(model, what, text, unit, error=text)

    def write(self) -> None:
        if not self.out_path:
            return
        path = Path(self.out_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps({"meta": self.meta, "results": self.rows}, indent=2) + "\n")
        tmp.replace(path)

    def markdown(self) -> str:
        lines = ["| model | what | value | unit |", "|---|---|---:|---|"]
        for r in self.rows:
            value = format_value(r["value"]).replace("|", "/")
            lines.append(f"| {r['model']} | {r['what']} | {value} | {r['unit']} |")
        return "\n".join(lines)


def format_value(value) -> str:
    if isinstance(value, float):
        if value >= 1000:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.3f}"
    return str(value)


def describe_error(err: BaseException) -> str:
    name = type(err).__name__
    if "OutOfMemory" in name or "out of memory" in str(err).lower():
        return "OOM (out of GPU memory)"
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = f"error: {name}: {first}" if first else f"error: {name}"
    return text[:200]


# --------------------------------------------------------------------------------------------
# Environment


def put_fla_on_path(fla_path: str | None) -> str | None:
    """Puts the exported fla tree first on sys.path; returns the folder used, if any."""
    candidate = Path(fla_path) if fla_path else DEFAULT_FLA_PATH
    if (candidate / "fla" / "__init__.py").is_file():
        sys.path.insert(0, str(candidate))
        return str(candidate)
    if fla_path:
        print(f"warning: --fla-path {fla_path} has no fla/__init__.py; using installed packages")
    return None


def preflight(models: list[str]) -> tuple[list[tuple[str | None, str]], dict]:
    """Imports what the requested models need.

    Returns (problems, modules); each problem is (model it blocks, or None for all; message).
    """
    problems: list[tuple[str | None, str]] = []
    modules: dict = {}
    wanted = [
        ("torch", "PyTorch"),
        ("triton", "Triton"),
        ("einops", "needed by fla"),
        ("transformers", "Hugging Face transformers"),
        ("fla", "flash-linear-attention: run tests/bench/reference/prepare_fla.sh and carry .ref"),
    ]
    for name, what in wanted:
        if importlib.util.find_spec(name) is None:
            problems.append((None, f"missing package: {name} ({what})"))
    if problems:
        return problems, modules

    # fla first: transformers picks fla's kernels when its Qwen3.5 modeling module is imported.
    for name in ("torch", "triton", "einops", "transformers", "fla"):
        try:
            modules[name] = importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - report any import failure as a missing package
            problems.append((None, f"cannot import {name}: {describe_error(err)}"))
    if problems:
        return problems, modules

    if "deltanet-1.3b" in models:
        try:
            mod = importlib.import_module("fla.models.delta_net")
            modules["DeltaNetConfig"] = mod.DeltaNetConfig
            modules["DeltaNetForCausalLM"] = mod.DeltaNetForCausalLM
        except Exception as err:  # noqa: BLE001
            problems.append(("deltanet-1.3b",
                             f"missing model class: fla.models.DeltaNetForCausalLM ({describe_error(err)})"))
    if "qwen3.5-0.8b" in models:
        try:
            importlib.import_module("fla.ops.gated_delta_rule")
        except Exception as err:  # noqa: BLE001
            problems.append(("qwen3.5-0.8b", f"cannot import fla.ops.gated_delta_rule ({describe_error(err)})"))
        tf = modules["transformers"]
        for cls in ("Qwen3_5TextConfig", "Qwen3_5ForCausalLM"):
            try:
                modules[cls] = getattr(tf, cls)
            except Exception as err:  # noqa: BLE001
                problems.append(("qwen3.5-0.8b",
                                 f"missing model class: transformers.{cls} (transformers {tf.__version__}; "
                                 f"Qwen3.5 arrived in transformers in Feb 2026) [{describe_error(err)}]"))
    return problems, modules


def environment(modules: dict, args, fla_dir: str | None) -> dict:
    torch = modules["torch"]
    meta = {
        "script": "tests/bench/reference/hf_fla_bench.py",
        "argv": sys.argv[1:],
        "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": getattr(modules.get("triton"), "__version__", None),
        "transformers": getattr(modules.get("transformers"), "__version__", None),
        "fla": getattr(modules.get("fla"), "__version__", None),
        "fla_from": str(Path(modules["fla"].__file__).resolve().parent.parent) if "fla" in modules else None,
        "dtype": "bfloat16",
        "device": args.device,
    }
    if fla_dir and (Path(fla_dir) / "REVISION").is_file():
        meta["fla_revision"] = (Path(fla_dir) / "REVISION").read_text().strip()
    if args.device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(args.device))
        meta["gpu"] = props.name
        meta["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        meta["sm_count"] = props.multi_processor_count
    try:
        from transformers.utils import is_flash_linear_attention_available

        meta["transformers_sees_fla"] = bool(is_flash_linear_attention_available())
    except Exception as err:  # noqa: BLE001
        meta["transformers_sees_fla"] = describe_error(err)
    return meta


# --------------------------------------------------------------------------------------------
# Models


def build_deltanet(modules: dict, device: str):
    torch = modules["torch"]
    config = modules["DeltaNetConfig"](**DELTANET_13B)
    with torch.device(device):
        model = modules["DeltaNetForCausalLM"](config)
    return model.to(device=device, dtype=torch.bfloat16).eval(), config


def make_qwen35_config(modules: dict):
    """Qwen3_5TextConfig for QWEN35_08B; tries the RoPE spellings of successive transformers."""
    config_cls = modules["Qwen3_5TextConfig"]
    attempts = [
        dict(rope_parameters=dict(QWEN35_ROPE)),
        dict(
            rope_parameters={k: QWEN35_ROPE[k] for k in ("rope_type", "rope_theta", "partial_rotary_factor")}
        ),
        dict(rope_theta=QWEN35_ROPE["rope_theta"], partial_rotary_factor=QWEN35_ROPE["partial_rotary_factor"]),
    ]
    errors = []
    for rope in attempts:
        try:
            return config_cls(**QWEN35_08B, **rope)
        except Exception as err:  # noqa: BLE001 - try the next spelling
            errors.append(describe_error(err))
    raise RuntimeError("Qwen3_5TextConfig rejected every RoPE spelling: " + " / ".join(errors))


def build_qwen35(modules: dict, device: str):
    torch = modules["torch"]
    config = make_qwen35_config(modules)
    try:
        config._attn_implementation = "sdpa"
    except Exception:  # noqa: BLE001 - keep whatever transformers picks
        pass
    with torch.device(device):
        model = modules["Qwen3_5ForCausalLM"](config)
    return model.to(device=device, dtype=torch.bfloat16).eval(), config


def qwen35_shape_check(config) -> list[str]:
    """Differences between the built config and QWEN35_08B / QWEN35_ROPE, if any."""
    diffs = []
    for key, want in QWEN35_08B.items():
        got = getattr(config, key, None)
        if key == "layer_types" and got is not None:
            got = list(got)
        if got != want:
            diffs.append(f"{key}={got!r} (wanted {want!r})")
    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    factor = rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None))
    if theta is None or not math.isclose(float(theta), QWEN35_ROPE["rope_theta"]):
        diffs.append(f"rope_theta={theta!r}")
    if factor is None or not math.isclose(float(factor), QWEN35_ROPE["partial_rotary_factor"]):
        diffs.append(f"partial_rotary_factor={factor!r}")
    return diffs


def qwen35_gdn_path() -> str:
    """Where transformers' Qwen3.5 Gated DeltaNet functions come from (best effort)."""
    try:
        mod = importlib.import_module("transformers.models.qwen3_5.modeling_qwen3_5")
    except Exception as err:  # noqa: BLE001
        return describe_error(err)
    found = []
    for name in ("chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule",
                 "torch_chunk_gated_delta_rule", "torch_recurrent_gated_delta_rule"):
        fn = getattr(mod, name, None)
        if fn is None:
            continue
        inner = getattr(fn, "__wrapped__", fn)
        found.append(f"{name}->{getattr(inner, '__module__', '?')}.{getattr(inner, '__name__', '?')}")
    return "; ".join(found) if found else "no gated delta rule function found in modeling_qwen3_5"


def count_params(model) -> int:
    seen = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


# --------------------------------------------------------------------------------------------
# Timing


def forward(model, ids, cache=None):
    return model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)


def time_prefill(torch, model, vocab: int, seq_len: int, device: str, warmup: int, repeats: int) -> list[float]:
    """Milliseconds of one B=1 prefill over seq_len tokens, each run on a fresh cache."""
    gen = torch.Generator(device=device).manual_seed(seq_len)
    ids = torch.randint(0, vocab, (1, seq_len), device=device, generator=gen)
    for _ in range(warmup):
        out = forward(model, ids)
        del out
    torch.cuda.synchronize(device)
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        out = forward(model, ids)
        end.record()
        torch.cuda.synchronize(device)
        times.append(start.elapsed_time(end))
        del out
    return times


def time_decode(torch, model, vocab: int, batch: int, context: int, device: str,
                warmup: int, steps: int, repeats: int) -> list[float]:
    """Milliseconds per single-token step at batch `batch`, after a `context`-token prefill."""
    gen = torch.Generator(device=device).manual_seed(1000 + batch)
    prompt = torch.randint(0, vocab, (batch, context), device=device, generator=gen)
    tokens = torch.randint(0, vocab, (steps, batch, 1), device=device, generator=gen)
    cache = forward(model, prompt).past_key_values
    for i in range(warmup):
        cache = forward(model, tokens[i % steps], cache).past_key_values
    torch.cuda.synchronize(device)
    per_step = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(steps):
            cache = forward(model, tokens[i], cache).past_key_values
        end.record()
        torch.cuda.synchronize(device)
        per_step.append(start.elapsed_time(end) / steps)
    del cache
    return per_step


def probe_kernels(torch, model, vocab: int, device: str) -> tuple[str, str]:
    """Names of delta-rule GPU kernels seen in one 256-token prefill and in one decode step."""
    from torch.profiler import ProfilerActivity, profile

    ids = torch.randint(0, vocab, (1, 256), device=device)
    step = torch.randint(0, vocab, (1, 1), device=device)

    def kernels(fn) -> str:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize(device)
        names = sorted({evt.key for evt in prof.key_averages() if DELTA_KERNEL_RE.search(evt.key)})
        if not names:
            return "no delta-rule kernel seen (torch fallback?)"
        shown = ", ".join(n[:60] for n in names[:4])
        return f"{len(names)} kernels: {shown}" + (", ..." if len(names) > 4 else "")

    cache = forward(model, ids).past_key_values  # also warms the path outside the profiler
    forward(model, step, cache)
    torch.cuda.synchronize(device)
    prefill = kernels(lambda: forward(model, ids))
    cache = forward(model, ids).past_key_values
    decode = kernels(lambda: forward(model, step, cache))
    return prefill, decode


def free_memory(torch) -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_model(name: str, modules: dict, args, results: Results) -> None:
    torch = modules["torch"]
    device = args.device
    print(f"\n== {name}", flush=True)
    try:
        t0 = time.perf_counter()
        if name == "deltanet-1.3b":
            model, config = build_deltanet(modules, device)
        else:
            model, config = build_qwen35(modules, device)
        build_s = time.perf_counter() - t0
    except Exception as err:  # noqa: BLE001
        traceback.print_exc()
        results.add_error(name, "build model", "-", err)
        free_memory(torch)
        return

    vocab = int(config.vocab_size)
    results.add(name, "parameters", round(count_params(model) / 1e6, 1), "M", build_s=round(build_s, 1))
    if name == "qwen3.5-0.8b":
        diffs = qwen35_shape_check(config)
        results.add(name, "config check", "ok" if not diffs else "; ".join(diffs), "-")
        results.meta["qwen35_gdn_functions"] = qwen35_gdn_path()
        results.meta["qwen35_attn_implementation"] = getattr(config, "_attn_implementation", None)
        results.write()

    with torch.inference_mode():
        for seq_len in args.prefill_lens:
            what = f"prefill B=1 T={seq_len}"
            try:
                torch.cuda.reset_peak_memory_stats(device)
                repeats = args.repeats if seq_len <= 16384 else max(1, min(args.repeats, 2))
                times = time_prefill(torch, model, vocab, seq_len, device, args.warmup, repeats)
                ms = statistics.median(times)
                peak = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                results.add(name, what, seq_len / (ms / 1000.0), "tokens/s",
                            ms=round(ms, 3), runs_ms=[round(t, 3) for t in times], peak_gib=peak)
                results.add(name, f"{what} latency", ms, "ms")
            except Exception as err:  # noqa: BLE001
                traceback.print_exc()
                results.add_error(name, what, "tokens/s", err)
            free_memory(torch)

        for batch in args.decode_batches:
            what = f"decode B={batch}"
            try:
                torch.cuda.reset_peak_memory_stats(device)
                per_step = time_decode(torch, model, vocab, batch, args.decode_context, device,
                                       args.decode_warmup, args.decode_steps, args.repeats)
                ms = statistics.median(per_step)
                peak = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                results.add(name, what, ms, "ms/step", context=args.decode_context,
                            steps=args.decode_steps, runs_ms=[round(t, 3) for t in per_step],
                            peak_gib=peak)
                results.add(name, f"{what} throughput", batch / (ms / 1000.0), "tokens/s")
            except Exception as err:  # noqa: BLE001
                traceback.print_exc()
                results.add_error(name, what, "ms/step", err)
            free_memory(torch)

        if args.probe:
            try:
                prefill, decode = probe_kernels(torch, model, vocab, device)
                results.add(name, "kernel probe: prefill T=256", prefill, "-")
                results.add(name, "kernel probe: decode B=1", decode, "-")
            except Exception as err:  # noqa: BLE001
                results.add_error(name, "kernel probe", "-", err)

    del model
    free_memory(torch)


# --------------------------------------------------------------------------------------------
# Main


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODEL_NAMES),
                   help=f"comma-separated, from: {', '.join(MODEL_NAMES)} (default: all)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: T=512,2048; B=1,8; fewer steps and repeats")
    p.add_argument("--device", default="cuda", help="torch device (default: cuda)")
    p.add_argument("--out", help="write the results as JSON to this path")
    p.add_argument("--fla-path", default=os.environ.get("FLA_PATH"),
                   help=f"folder holding the fla package (default: {DEFAULT_FLA_PATH} if present)")
    p.add_argument("--prefill-lens", type=int_list, help="prompt lengths for prefill (default 4096,65536)")
    p.add_argument("--decode-batches", type=int_list, help="batch sizes for decode (default 1,32,128)")
    p.add_argument("--decode-context", type=int, default=128, help="prompt tokens per sequence before decode")
    p.add_argument("--decode-steps", type=int, help="timed decode steps per run (default 32)")
    p.add_argument("--decode-warmup", type=int, default=5, help="untimed decode steps first")
    p.add_argument("--warmup", type=int, default=1, help="untimed prefills per length first")
    p.add_argument("--repeats", type=int, help="timed runs per case; the median is reported (default 3)")
    p.add_argument("--no-probe", dest="probe", action="store_false",
                   help="skip the profiler run that lists the delta-rule kernels used")
    p.add_argument("--skip-missing", action="store_true",
                   help="run the models whose requirements are met instead of stopping")
    args = p.parse_args(argv)

    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODEL_NAMES]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODEL_NAMES)}")
    if args.prefill_lens is None:
        args.prefill_lens = [512, 2048] if args.quick else [4096, 65536]
    if args.decode_batches is None:
        args.decode_batches = [1, 8] if args.quick else [1, 32, 128]
    if args.decode_steps is None:
        args.decode_steps = 8 if args.quick else 32
    if args.repeats is None:
        args.repeats = 2 if args.quick else 3
    if not args.device.startswith("cuda"):
        p.error("only CUDA devices are supported (fla's kernels are Triton GPU kernels)")
    if args.decode_steps < 1 or args.repeats < 1 or args.decode_context < 1:
        p.error("--decode-steps, --repeats and --decode-context must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    fla_dir = put_fla_on_path(args.fla_path)

    problems, modules = preflight(args.models)
    if problems:
        for _, line in problems:
            print(line, file=sys.stderr)
        blocked = {model for model, _ in problems}
        if None in blocked or not args.skip_missing:
            return 2
        args.models = [m for m in args.models if m not in blocked]
        if not args.models:
            return 2
        print(f"--skip-missing: running {', '.join(args.models)} only", file=sys.stderr)

    torch = modules["torch"]
    if not torch.cuda.is_available():
        print("no CUDA device visible to torch", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    device = torch.device(args.device)
    if device.index is not None:
        torch.cuda.set_device(device)

    meta = environment(modules, args, fla_dir)
    meta["settings"] = {
        "prefill_lens": args.prefill_lens,
        "decode_batches": args.decode_batches,
        "decode_context": args.decode_context,
        "decode_steps": args.decode_steps,
        "decode_warmup": args.decode_warmup,
        "warmup": args.warmup,
        "repeats": args.repeats,
    }
    print("environment: " + json.dumps({k: v for k, v in meta.items() if k != "argv"}), flush=True)
    results = Results(args.out, meta)

    for name in args.models:
        run_model(name, modules, args, results)

    print()
    print(results.markdown())
    results.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
