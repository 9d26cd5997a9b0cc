#!/usr/bin/env python3
"""Writes a random-weight checkpoint in the Hugging Face layout deltaserve loads.

The output directory gets `config.json`, `model.safetensors` (bf16, text-only
`model.*` names, tied embeddings so no `lm_head.weight`) and, unless
--no_tokenizer, the tokenizer files of the demo model. Such a checkpoint has the
shapes (so the cost) of a real model without downloading one: benchmarks use it.

  tests/bench/make_random_checkpoint.py --shape=qwen3.5-0.8b --out=/tmp/q08b
  tests/bench/make_random_checkpoint.py --shape=tiny --out=/tmp/tiny --seed=1

The safetensors file is written tensor by tensor, each in pieces of at most
--chunk_elements values, so memory stays small whatever the model's size.
Needs numpy.

Shapes:
  qwen3.5-0.8b  the text model of Qwen3.5-0.8B (values below, with sources).
  tiny          the config of tests/testdata/qwen35-tiny, with vocab_size
                raised from 512 to 4096 so that the demo tokenizer fits.

Initialisation (seeded by --seed): matrices, embeddings and conv weights
normal(0, 0.02); the zero-centred RMSNorm weights (scale 1 + w: input, post-
attention, final, q_norm, k_norm) zeros; the gated output RMSNorm of the
DeltaNet layers (plain scale w) ones; A_log = log(uniform(1, 16)); dt_bias ones
(as HF's Qwen3.5 initialises them).
"""

import argparse
import json
import os
import shutil
import struct
import sys
import time
from pathlib import Path

try:
    import numpy as np
except ImportError:  # pragma: no cover - depends on the machine
    sys.exit("make_random_checkpoint.py: error: needs numpy "
             "(pip install numpy, or apt-get install python3-numpy)")

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_MODEL_DIR = REPO_ROOT / "engine" / "model" / "demo-qwen35"
# What a model directory may hold besides weights and config.json; those that
# exist in the tokenizer directory are copied.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)


def _hybrid_layer_types(num_layers, interval=4):
    return ["full_attention" if (i + 1) % interval == 0 else "linear_attention"
            for i in range(num_layers)]


# Qwen3.5-0.8B's language model, as in the text_config of its config.json
# (https://huggingface.co/Qwen/Qwen3.5-0.8B/blob/main/config.json). Values as
# published on the model's spec page https://apxml.com/models/qwen35-08b
# (hidden 1024, 24 layers, FFN 3584, 8 query / 2 KV heads of 256, RoPE theta
# 1e7, vocab 248320) and https://www.fitmygpu.com/models/qwen-3.5-0.8b (24
# layers, hidden 1024, 8 / 2 heads, 6 attention layers), and as copied into
# public code that mirrors that config.json (linear_num_key_heads 16,
# linear_num_value_heads 16, linear key/value head dims 128, conv kernel 4,
# partial_rotary_factor 0.25 with mrope_section [11, 11, 10],
# full_attention_interval 4, tie_word_embeddings true, eos 248044,
# max_position_embeddings 262144).
#
# One departure: max_position_embeddings defaults to 1048576 here (the real
# config says 262144, natively; Qwen extends it to about 1M with YaRN) so that
# a million-token session fits; --max_position_embeddings sets it.
QWEN35_08B = {
    "architectures": ["Qwen3_5ForCausalLM"],
    "model_type": "qwen3_5_text",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "attn_output_gate": True,
    "bos_token_id": None,
    "eos_token_id": 248044,
    "pad_token_id": None,
    "dtype": "bfloat16",
    "full_attention_interval": 4,
    "head_dim": 256,
    "hidden_act": "silu",
    "hidden_size": 1024,
    "initializer_range": 0.02,
    "intermediate_size": 3584,
    "layer_types": _hybrid_layer_types(24),
    "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 128,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 16,
    "linear_value_head_dim": 128,
    "mamba_ssm_dtype": "float32",
    "max_position_embeddings": 1048576,
    "num_attention_heads": 8,
    "num_hidden_layers": 24,
    "num_key_value_heads": 2,
    "partial_rotary_factor": 0.25,
    "rms_norm_eps": 1e-06,
    "rope_parameters": {
        "mrope_interleaved": True,
        "mrope_section": [11, 11, 10],
        "partial_rotary_factor": 0.25,
        "rope_theta": 10000000,
        "rope_type": "default",
    },
    "tie_word_embeddings": True,
    "use_cache": True,
    "vocab_size": 248320,
}

# tests/testdata/qwen35-tiny/config.json, vocab_size 512 -> 4096.
TINY = {
    "architectures": ["Qwen3_5ForCausalLM"],
    "model_type": "qwen3_5_text",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": None,
    "eos_token_id": None,
    "pad_token_id": None,
    "dtype": "bfloat16",
    "head_dim": 32,
    "hidden_act": "silu",
    "hidden_size": 128,
    "initializer_range": 0.05,
    "intermediate_size": 256,
    "layer_types": _hybrid_layer_types(4),
    "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 32,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_value_head_dim": 32,
    "max_position_embeddings": 32768,
    "num_attention_heads": 4,
    "num_hidden_layers": 4,
    "num_key_value_heads": 2,
    "partial_rotary_factor": 0.25,
    "rms_norm_eps": 1e-06,
    "rope_parameters": {
        "partial_rotary_factor": 0.25,
        "rope_theta": 10000.0,
        "rope_type": "default",
    },
    "tie_word_embeddings": True,
    "use_cache": True,
    "vocab_size": 4096,
}

SHAPES = {"qwen3.5-0.8b": QWEN35_08B, "tiny": TINY}

# Initialisers: how each tensor's values are drawn.
NORMAL, ZEROS, ONES, A_LOG = "normal", "zeros", "ones", "a_log"


def tensor_list(cfg):
    """(name, shape, init) for every tensor the loader reads, by name order."""
    d = cfg["hidden_size"]
    inter = cfg["intermediate_size"]
    nk, nv = cfg["linear_num_key_heads"], cfg["linear_num_value_heads"]
    dk, dv = cfg["linear_key_head_dim"], cfg["linear_value_head_dim"]
    conv_dim = 2 * nk * dk + nv * dv
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg["head_dim"]
    gate = 2 if cfg.get("attn_output_gate", True) else 1
    tensors = [
        ("model.embed_tokens.weight", (cfg["vocab_size"], d), NORMAL),
        ("model.norm.weight", (d,), ZEROS),
    ]
    if not cfg["tie_word_embeddings"]:
        tensors.append(("lm_head.weight", (cfg["vocab_size"], d), NORMAL))
    for i, kind in enumerate(cfg["layer_types"]):
        p = f"model.layers.{i}."
        tensors += [
            (p + "input_layernorm.weight", (d,), ZEROS),
            (p + "post_attention_layernorm.weight", (d,), ZEROS),
            (p + "mlp.gate_proj.weight", (inter, d), NORMAL),
            (p + "mlp.up_proj.weight", (inter, d), NORMAL),
            (p + "mlp.down_proj.weight", (d, inter), NORMAL),
        ]
        if kind == "linear_attention":
            m = p + "linear_attn."
            tensors += [
                (m + "A_log", (nv,), A_LOG),
                (m + "conv1d.weight", (conv_dim, 1, cfg["linear_conv_kernel_dim"]),
                 NORMAL),
                (m + "dt_bias", (nv,), ONES),
                (m + "in_proj_a.weight", (nv, d), NORMAL),
                (m + "in_proj_b.weight", (nv, d), NORMAL),
                (m + "in_proj_qkv.weight", (conv_dim, d), NORMAL),
                (m + "in_proj_z.weight", (nv * dv, d), NORMAL),
                (m + "norm.weight", (dv,), ONES),
                (m + "out_proj.weight", (d, nv * dv), NORMAL),
            ]
        elif kind == "full_attention":
            m = p + "self_attn."
            tensors += [
                (m + "q_proj.weight", (heads * hd * gate, d), NORMAL),
                (m + "k_proj.weight", (kv_heads * hd, d), NORMAL),
                (m + "v_proj.weight", (kv_heads * hd, d), NORMAL),
                (m + "o_proj.weight", (d, heads * hd), NORMAL),
                (m + "q_norm.weight", (hd,), ZEROS),
                (m + "k_norm.weight", (hd,), ZEROS),
            ]
        else:
            raise ValueError(f"unknown layer type {kind!r}")
    tensors.sort(key=lambda t: t[0])
    return tensors


def to_bf16(x):
    """float32 array -> little-endian bf16 bit patterns (round to nearest even)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    u = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
    return (u >> np.uint32(16)).astype("<u2")


def numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def write_safetensors(path, tensors, seed, std, chunk_elements):
    """Writes `tensors` as one bf16 safetensors file, a chunk at a time."""
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, _ in tensors:
        nbytes = 2 * numel(shape)
        header[name] = {"dtype": "BF16", "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((-(8 + len(text))) % 8)  # data starts 8-byte aligned
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for index, (name, shape, init) in enumerate(tensors):
            # One stream per tensor: a tensor's values depend only on the seed
            # and its place in the (sorted) list.
            rng = np.random.default_rng([seed, index])
            n = numel(shape)
            done = 0
            while done < n:
                m = min(chunk_elements, n - done)
                if init == NORMAL:
                    x = rng.standard_normal(m, dtype=np.float32)
                    x *= np.float32(std)
                elif init == ZEROS:
                    x = np.zeros(m, dtype=np.float32)
                elif init == ONES:
                    x = np.ones(m, dtype=np.float32)
                elif init == A_LOG:
                    x = np.log(rng.uniform(1.0, 16.0, m)).astype(np.float32)
                else:
                    raise ValueError(init)
                f.write(to_bf16(x).tobytes())
                done += m
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return 8 + len(text) + offset


def tokenizer_vocab_size(tokenizer_json):
    with open(tokenizer_json, encoding="utf-8") as f:
        tok = json.load(f)
    ids = list(tok.get("model", {}).get("vocab", {}).values())
    ids += [t["id"] for t in tok.get("added_tokens", [])]
    return max(ids) + 1 if ids else 0


def tokenizer_eos_id(tokenizer_dir):
    """The id of tokenizer_config.json's eos_token in tokenizer.json, or None."""
    try:
        with open(tokenizer_dir / "tokenizer_config.json", encoding="utf-8") as f:
            eos = json.load(f).get("eos_token")
        with open(tokenizer_dir / "tokenizer.json", encoding="utf-8") as f:
            tok = json.load(f)
    except (OSError, ValueError):
        return None
    if isinstance(eos, dict):
        eos = eos.get("content")
    for t in tok.get("added_tokens", []):
        if t.get("content") == eos:
            return t["id"]
    return tok.get("model", {}).get("vocab", {}).get(eos)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", required=True, choices=sorted(SHAPES))
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--std", type=float, default=0.02,
                        help="standard deviation of the normal weights")
    parser.add_argument("--tokenizer_dir", default=str(DEMO_MODEL_DIR),
                        help="where the tokenizer files are copied from")
    parser.add_argument("--no_tokenizer", action="store_true",
                        help="write no tokenizer (the server then takes token "
                             "ids only)")
    parser.add_argument("--vocab_size", type=int, default=None,
                        help="override the shape's vocab_size")
    parser.add_argument("--max_position_embeddings", type=int, default=None,
                        help="override the shape's context length")
    parser.add_argument("--chunk_elements", type=int, default=1 << 24,
                        help="values generated per piece (memory bound)")
    args = parser.parse_args(argv)

    cfg = json.loads(json.dumps(SHAPES[args.shape]))  # a deep copy
    if args.vocab_size is not None:
        cfg["vocab_size"] = args.vocab_size
    if args.max_position_embeddings is not None:
        cfg["max_position_embeddings"] = args.max_position_embeddings
    if cfg["vocab_size"] <= 0 or cfg["max_position_embeddings"] <= 0:
        parser.error("--vocab_size and --max_position_embeddings must be positive")
    if args.chunk_elements <= 0:
        parser.error("--chunk_elements must be positive")

    tokenizer_dir = None
    if not args.no_tokenizer:
        tokenizer_dir = Path(args.tokenizer_dir)
        tok_json = tokenizer_dir / "tokenizer.json"
        if not tok_json.is_file():
            parser.error(f"no tokenizer.json in {tokenizer_dir} "
                         "(--tokenizer_dir=DIR or --no_tokenizer)")
        tok_vocab = tokenizer_vocab_size(tok_json)
        if tok_vocab > cfg["vocab_size"]:
            parser.error(f"{tok_json} has {tok_vocab} tokens but vocab_size is "
                         f"{cfg['vocab_size']} (raise --vocab_size or pass "
                         "--no_tokenizer)")
        # The end of sequence follows the tokenizer that is shipped.
        eos = tokenizer_eos_id(tokenizer_dir)
        if eos is not None:
            cfg["eos_token_id"] = eos
            cfg["pad_token_id"] = eos

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = tensor_list(cfg)
    num_params = sum(numel(s) for _, s, _ in tensors)
    start = time.monotonic()
    file_bytes = write_safetensors(out / "model.safetensors", tensors, args.seed,
                                   args.std, args.chunk_elements)
    seconds = time.monotonic() - start
    with open(out / "config.json", "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    copied = []
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            src = tokenizer_dir / name
            if src.is_file():
                shutil.copyfile(src, out / name)
                copied.append(name)
    print(f"wrote {out}: shape {args.shape}, {len(tensors)} tensors, "
          f"{num_params:,} parameters, model.safetensors {file_bytes:,} bytes "
          f"({file_bytes / 2**30:.2f} GiB) in {seconds:.1f} s "
          f"({file_bytes / 2**20 / max(seconds, 1e-9):.0f} MiB/s); "
          f"tokenizer: {', '.join(copied) if copied else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
