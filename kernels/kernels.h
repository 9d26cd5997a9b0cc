// The one interface to every numerical operation deltaserve's models need.
//
// CpuKernels (kernels/cpu) is plain fp32 C++ and the oracle; CudaKernels
// (kernels/cuda) must match it within tolerance. Arguments are TensorViews
// plus a stream; a method checks shapes and dtypes and returns
// INVALID_ARGUMENT naming the argument when they do not fit, INTERNAL for a
// device failure. Unless a method says otherwise, tensors are f32 and
// row-contiguous (last stride 1), and `out` may not alias an input.
//
// Variable-length batches ("varlen"): the tokens of B sequences are
// concatenated along the first dimension; `cu_seqlens` (i32 [B + 1]) holds
// the offsets, cu_seqlens[0] = 0 and cu_seqlens[B] = T. Per-sequence
// persistent state lives in pools indexed by `slots` (i32 [B]): kernels read
// a sequence's initial state from its slot and write the final state back in
// place.
//
// Implementations are thread-compatible: one caller at a time per instance.
#ifndef DELTASERVE_KERNELS_KERNELS_H_
#define DELTASERVE_KERNELS_KERNELS_H_

#include <memory>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "kernels/tensor.h"

namespace deltaserve {

class DeviceMemory;  // kernels/memory.h

// An opaque execution stream (cudaStream_t for CUDA; ignored on CPU).
struct Stream {
  void* native = nullptr;
};

// Work recorded once and replayed many times (a CUDA graph), see
// Kernels::Record. Owned by the caller; thread-compatible.
class RecordedWork {
 public:
  virtual ~RecordedWork() = default;
  // Enqueues the recorded work on `stream`. INTERNAL on a device failure.
  virtual absl::Status Replay(Stream stream) = 0;
};

class Kernels {
 public:
  virtual ~Kernels() = default;

  // Name of the implementation ("cpu", "cuda").
  virtual const char* name() const = 0;

  // The memory this implementation's tensors live in (owned by it; never
  // null).
  virtual DeviceMemory* memory() = 0;

  // Makes the calling thread able to run this instance's work (selects its
  // device). INTERNAL when that fails. The CPU needs nothing.
  virtual absl::Status BindThread() { return absl::OkStatus(); }

  // The stream the engine runs its work on (owned by the implementation;
  // null on the CPU).
  virtual Stream stream() = 0;

  // Records the kernels and copies `body` enqueues on `stream` instead of
  // running them, for replay. The body must not read results on the host.
  // UNIMPLEMENTED where recording is not supported (the CPU); a body's
  // error is returned as is; INTERNAL when recording fails.
  virtual absl::StatusOr<std::unique_ptr<RecordedWork>> Record(
      Stream stream, absl::FunctionRef<absl::Status()> body) {
    (void)stream;
    (void)body;
    return absl::UnimplementedError(
        absl::StrCat(name(), " kernels cannot record work"));
  }

  // out[r] = the index of the largest entry of row r of logits[R, V] (the
  // lowest index on ties; NaN is never chosen unless the row is all NaN).
  // logits f32 (any row stride), out i32 [R].
  virtual absl::Status Argmax(const TensorView& logits, const TensorView& out,
                              Stream stream) = 0;

  // Stochastic sampling: out[r] = a token drawn from row r of
  // logits[R, V] (f32, any row stride, 1 ≤ V ≤ kMaxSampleVocab = 2^24) with
  // temperature[r], top_k[r], top_p[r] and the uniform number uniform[r]
  // (temperature, top_p, uniform f32 [R]; top_k, out i32 [R]). Every
  // implementation chooses the same token for the same inputs, by this rule
  // (kernels/sampling_rule.h holds its arithmetic):
  //  1. temperature 0: out = the Argmax of the row (Argmax's tie rule).
  //  2. Candidates are the non-NaN entries; a logit counts as its canonical
  //     value: +inf as the largest finite float, magnitudes below 2^-64 as
  //     +0. No candidate, or all −inf: out = the Argmax of the row.
  //  3. m = the largest canonical value. Each candidate weighs the integer
  //     w = floor(2^38 · 2^y), y = (c − m) · s, s = log2(e) / T with T the
  //     temperature clamped to [2^-64, 2^64], 2^y a fixed float polynomial
  //     (w = 2^38 for c = m, 0 for y < −38).
  //  4. top-k (0 < top_k < number of candidates): the survivors are the
  //     candidates whose value is at least the top_k-th largest value
  //     (counting repeats), so every token tied with it survives.
  //  5. top-p (top_p < 1): of those, the survivors are the ones whose value
  //     is at least t, the largest surviving value for which the survivors
  //     with value ≥ t weigh at least ceil(top_p · W), W the survivors'
  //     total weight (ties at the threshold survive together).
  //  6. With M the survivors' total weight and target = floor(uniform · M)
  //     (both exact integers), out = the lowest token id whose survivors up
  //     to and including it (walked by id) weigh more than target.
  // So each survivor is chosen with probability weight / M when uniform is
  // uniform on [0, 1), and top_k = 1 (without ties) is the argmax.
  // INVALID_ARGUMENT names the argument for a bad shape, dtype or stride, V
  // outside [1, 2^24] and, where the values can be read on the host (CPU),
  // a temperature not finite and ≥ 0, a negative top_k, a top_p outside
  // (0, 1] or a uniform outside [0, 1).
  virtual absl::Status SampleTokens(const TensorView& logits,
                                    const TensorView& temperature,
                                    const TensorView& top_k,
                                    const TensorView& top_p,
                                    const TensorView& uniform,
                                    const TensorView& out, Stream stream) = 0;

  // out[M, N] = x[M, K] · w[N, K]ᵀ (+ out when accumulate). w is f32 (CPU)
  // or f32/bf16 (CUDA). x and out may have any row stride.
  virtual absl::Status Gemm(const TensorView& x, const TensorView& w,
                            const TensorView& out, bool accumulate,
                            Stream stream) = 0;

  // out[T, D] = table[ids[t], :]. ids i32 [T]; table [V, D] f32 (or bf16 on
  // CUDA). An id outside [0, V) is INVALID_ARGUMENT.
  virtual absl::Status Embedding(const TensorView& ids, const TensorView& table,
                                 const TensorView& out, Stream stream) = 0;

  // Row-wise RMSNorm of x[R, D]: out = x / sqrt(mean(x²) + eps) · w', with
  // w' = 1 + w when zero_centered, else w. out may alias x. (CUDA: out may
  // be bf16 for an f32 x.)
  virtual absl::Status RmsNorm(const TensorView& x, const TensorView& weight,
                               float eps, bool zero_centered,
                               const TensorView& out, Stream stream) = 0;

  // Gated RMSNorm: out = RmsNorm(x) · w · silu(z), rows of x[R, D], z[R, D].
  // out may alias x. (CUDA: out may be bf16 for an f32 x and z.)
  virtual absl::Status RmsNormGated(const TensorView& x, const TensorView& z,
                                    const TensorView& weight, float eps,
                                    const TensorView& out, Stream stream) = 0;

  // In-place rotary embedding of x[T, H, head_dim] on its first rot_dim
  // dims, rotate-half (GPT-NeoX) pairing: dim i pairs with i + rot_dim/2,
  // angle positions[t] · theta^(−2i/rot_dim). positions i32 [T].
  virtual absl::Status Rope(const TensorView& x, const TensorView& positions,
                            int rot_dim, float theta, Stream stream) = 0;

  // out = a + b, same shapes [R, N]. out may alias a or b.
  virtual absl::Status Add(const TensorView& a, const TensorView& b,
                           const TensorView& out, Stream stream) = 0;

  // out = silu(gate) · up, all [R, N]. out may alias gate or up.
  virtual absl::Status SwiGlu(const TensorView& gate, const TensorView& up,
                              const TensorView& out, Stream stream) = 0;

  // out = x · sigmoid(gate), all [R, N]. out may alias x.
  virtual absl::Status SigmoidGate(const TensorView& x, const TensorView& gate,
                                   const TensorView& out, Stream stream) = 0;

  // Depthwise causal conv over the varlen batch x[T, C] with weight [C, W]
  // (no bias), then SiLU when `silu`. conv_state pool [S, C, W − 1] holds
  // each sequence's last W − 1 inputs (oldest first); it is read as the
  // inputs before the sequence's first token and updated in place.
  // out [T, C] may alias x.
  virtual absl::Status CausalConv1d(const TensorView& x,
                                    const TensorView& weight,
                                    const TensorView& cu_seqlens,
                                    const TensorView& conv_state,
                                    const TensorView& slots, bool silu,
                                    const TensorView& out, Stream stream) = 0;

  // Decode form of CausalConv1d: one token per sequence, x[B, C].
  virtual absl::Status CausalConv1dUpdate(const TensorView& x,
                                          const TensorView& weight,
                                          const TensorView& conv_state,
                                          const TensorView& slots, bool silu,
                                          const TensorView& out,
                                          Stream stream) = 0;

  // Gates of a gated-delta-rule layer from its projections a, b [T, H]:
  // g = −exp(a_log) · softplus(a + dt_bias) (log decay), beta = sigmoid(b).
  // a_log, dt_bias [H]. g, beta [T, H].
  virtual absl::Status GdnGates(const TensorView& a, const TensorView& b,
                                const TensorView& a_log,
                                const TensorView& dt_bias, const TensorView& g,
                                const TensorView& beta, Stream stream) = 0;

  // Gated delta rule over a varlen batch, per value head h (key head
  // h·Hk/Hv):
  //   S_t = exp(g_t) · S_{t−1} · (I − β_t k_t k_tᵀ) + β_t k_t v_tᵀ   (S: [K,
  //   V]) o_t = S_tᵀ · (scale · q_t)
  // q, k [T, Hk, K]; v [T, Hv, V]; g [T, Hv] log decay (empty view: no decay,
  // plain DeltaNet); beta [T, Hv]; state pool [S, Hv, K, V] f32 read from and
  // written to slots; out [T, Hv, V]. When l2norm_qk, q and k are first
  // divided by sqrt(Σx² + 1e-6) per head.
  //
  // Chunked (WY/UT) form, chunks of kGdrChunkSize tokens: the prefill path.
  virtual absl::Status GatedDeltaRuleChunked(
      const TensorView& q, const TensorView& k, const TensorView& v,
      const TensorView& g, const TensorView& beta, const TensorView& cu_seqlens,
      const TensorView& state, const TensorView& slots, float scale,
      bool l2norm_qk, const TensorView& out, Stream stream) = 0;

  // The same function, token by token (the decode path; also the oracle the
  // chunked form is tested against).
  virtual absl::Status GatedDeltaRuleRecurrent(
      const TensorView& q, const TensorView& k, const TensorView& v,
      const TensorView& g, const TensorView& beta, const TensorView& cu_seqlens,
      const TensorView& state, const TensorView& slots, float scale,
      bool l2norm_qk, const TensorView& out, Stream stream) = 0;

  // Linear attention (Katharopoulos et al. 2020) over a varlen batch. With
  // the feature map φ(x) = elu(x) + 1 applied element-wise to q and k, per
  // key/value head j (query head h reads kv head h·Hkv/H):
  //   S_t = S_{t−1} + φ(k_t) v_tᵀ          (S: [K, V])
  //   z_t = z_{t−1} + φ(k_t)               (z: [K], the normaliser)
  //   o_t = scale · S_tᵀ φ(q_t)            (normalize false), or
  //   o_t = scale · S_tᵀ φ(q_t) / (scale · z_tᵀ φ(q_t) + 1e-10)  (true).
  // q [T, H, K]; k [T, Hkv, K]; v [T, Hkv, V]; state pool [S, Hkv, K, V] and
  // normalizer pool [S, Hkv, K] (f32; any outer strides) are read from and
  // written back to `slots` (z is kept either way); out [T, H, V].
  //
  // Chunked form (prefill path): chunks of kLinearChunkSize tokens, the
  // causal quadratic form within a chunk and the state across chunks.
  virtual absl::Status LinearAttentionChunked(
      const TensorView& q, const TensorView& k, const TensorView& v,
      const TensorView& cu_seqlens, const TensorView& state,
      const TensorView& normalizer, const TensorView& slots, float scale,
      bool normalize, const TensorView& out, Stream stream) = 0;

  // The same function, token by token (the decode path and the oracle).
  virtual absl::Status LinearAttentionRecurrent(
      const TensorView& q, const TensorView& k, const TensorView& v,
      const TensorView& cu_seqlens, const TensorView& state,
      const TensorView& normalizer, const TensorView& slots, float scale,
      bool normalize, const TensorView& out, Stream stream) = 0;

  // Gated symmetric power attention of even degree p (Buckman et al.,
  // "Symmetric Power Transformers") over a varlen batch. Per kv head j
  // (query head h reads kv head h·Hkv/H), with log gates g [T, Hkv] (an
  // empty view: no gating, g = 0) and G(s, t] = Σ_{s<r≤t} g_r, token t
  // weighs every earlier or equal token s of its sequence's whole history
  // (the state holds the part before this call) by
  //   w_ts = (scale · q_t·k_s)^p · exp(G(s, t])
  //   o_t = Σ_s w_ts v_s                       (normalize false), or
  //   o_t = Σ_s w_ts v_s / (Σ_s w_ts + 1e-6)   (true).
  // As a recurrence over the symmetric power embedding φ_p (F =
  // PowerFeatureDim(K, p) features, φ_p(a)·φ_p(b) = (a·b)^p):
  //   S_t = exp(g_t) S_{t−1} + φ_p(k_t) v_tᵀ    (S: [F, V])
  //   z_t = exp(g_t) z_{t−1} + φ_p(k_t)         (z: [F])
  //   o_t = S_tᵀ φ_p(scale q_t) [/ (z_tᵀ φ_p(scale q_t) + 1e-6)].
  // Feature α of φ_p is a multiset i_1 ≤ … ≤ i_p of [0, K), in
  // lexicographic order, φ_p(x)_α = sqrt(p! / Π_i m_i!) · Π_m x_{i_m} (m_i:
  // how often i occurs in α). q [T, H, K]; k [T, Hkv, K]; v [T, Hkv, V];
  // state pool [S, Hkv, F, V] and normalizer pool [S, Hkv, F] (f32; any
  // outer strides) read from and written back to `slots`; out [T, H, V].
  //
  // Chunked form (prefill path): chunks of kLinearChunkSize tokens, the
  // gated quadratic form within a chunk and the state across chunks.
  virtual absl::Status PowerAttentionChunked(
      const TensorView& q, const TensorView& k, const TensorView& v,
      const TensorView& g, const TensorView& cu_seqlens,
      const TensorView& state, const TensorView& normalizer,
      const TensorView& slots, int degree, float scale, bool normalize,
      const TensorView& out, Stream stream) = 0;

  // The same function, token by token (the decode path and the oracle).
  virtual absl::Status PowerAttentionRecurrent(
      const TensorView& q, const TensorView& k, const TensorView& v,
      const TensorView& g, const TensorView& cu_seqlens,
      const TensorView& state, const TensorView& normalizer,
      const TensorView& slots, int degree, float scale, bool normalize,
      const TensorView& out, Stream stream) = 0;

  // Per-token scalars of a power-attention layer from their projections
  // [T, Hkv]: the log gate g = logsigmoid(gate_logits + gate_bias) and the
  // rotary rate = softplus(rate_logits). Either input/output pair may be
  // empty views (not computed); an output may alias its input.
  virtual absl::Status PowerAttentionGates(const TensorView& gate_logits,
                                           const TensorView& rate_logits,
                                           float gate_bias, const TensorView& g,
                                           const TensorView& rate,
                                           Stream stream) = 0;

  // Data-dependent rotary embedding (conformal-sympow) of q [T, H, D] and
  // k [T, Hkv, D] in place, on their first rot_dim dims with rotate-half
  // pairing (dim i with i + rot_dim/2, as Rope). Per sequence and kv head
  // j, the angle of pair i advances at every token t by
  // rate[t, j] · theta^(−2i/rot_dim); token t's key and its query heads
  // (query head h uses kv head h·Hkv/H) are rotated by the angles after
  // that advance. angle pool [S, Hkv, rot_dim/2] (f32, radians, kept in
  // [−π, π]; any outer strides) holds each sequence's angles and is read
  // from and written back to `slots`. rate [T, Hkv] ≥ 0 by convention.
  virtual absl::Status CumulativeRope(const TensorView& q, const TensorView& k,
                                      const TensorView& rate,
                                      const TensorView& cu_seqlens,
                                      const TensorView& angle,
                                      const TensorView& slots, int rot_dim,
                                      float theta, Stream stream) = 0;

  // Writes the new keys and values of a varlen batch into paged KV. Only the
  // page-table entries a call touches are read, so unused entries may hold
  // −1. Slots and pages of different sequences in one batch must differ.
  // k, v [T, Hkv, D]; k_pages, v_pages [P, page_size, Hkv, D];
  // page_table i32 [B, max_pages] (physical page of each logical page);
  // start_pos i32 [B]: position of each sequence's first new token.
  // Token t of sequence b lands at logical position start_pos[b] + t − cu[b].
  virtual absl::Status KvAppend(const TensorView& k, const TensorView& v,
                                const TensorView& k_pages,
                                const TensorView& v_pages,
                                const TensorView& page_table,
                                const TensorView& cu_seqlens,
                                const TensorView& start_pos, Stream stream) = 0;

  // Causal softmax attention of a varlen batch of queries q[T, Hq, D] over
  // paged KV (already holding the new tokens). context_lens i32 [B]: each
  // sequence's length including its new tokens, so query i of sequence b
  // (of n_b) sits at position context_lens[b] − n_b + i and sees positions p
  // with p ≤ its own and, when window > 0, p > its own − window. GQA: query
  // head h uses KV head h·Hkv/Hq. out [T, Hq, D].
  virtual absl::Status PagedAttention(
      const TensorView& q, const TensorView& k_pages, const TensorView& v_pages,
      const TensorView& page_table, const TensorView& cu_seqlens,
      const TensorView& context_lens, int window, float scale,
      const TensorView& out, Stream stream) = 0;

  // Makes the host wait for the stream's work (no-op on CPU).
  virtual absl::Status Synchronize(Stream stream) = 0;
};

// Chunk length of the chunked gated delta rule.
inline constexpr int kGdrChunkSize = 64;

// Chunk length of the chunked linear and power attention.
inline constexpr int kLinearChunkSize = 64;

// Features of the symmetric power embedding of degree p of a d-vector:
// C(d + p − 1, p) (the multisets of size p of [0, d)); −1 when d < 1, p < 1
// or the count exceeds 2^31 − 1.
inline int64_t PowerFeatureDim(int64_t d, int p) {
  if (d < 1 || p < 1 || d > int64_t{0x7fffffff}) return -1;
  // C(d − 1 + i, i) for i = 1 … p, each an exact integer.
  int64_t c = 1;
  for (int i = 1; i <= p; ++i) {
    c = c * (d - 1 + i) / i;
    if (c > int64_t{0x7fffffff}) return -1;
  }
  return c;
}

}  // namespace deltaserve

#endif  // DELTASERVE_KERNELS_KERNELS_H_
