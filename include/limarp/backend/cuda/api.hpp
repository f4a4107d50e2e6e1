#pragma once
/// \file api.hpp
/// \brief `cuda_api::`: the compiled boundary of the CUDA backend — plain (non-template) host
/// functions over device pointers that the layer templates reach through the `ops::` overloads
/// of backend/cuda/ops.hpp.
///
/// Why a boundary: the library is header-only and its host code (layers, model, programs) is
/// compiled by the host C++ compiler; only the kernels need nvcc. They are defined in
/// backend/cuda/api_impl.cuh, which exactly one CUDA translation unit of the program includes —
/// CMake's `limarp::cuda` target (cmake/limarp_cuda.cu) does this and also defines
/// `LIMARP_WITH_CUDA_BACKEND` for its users, which makes the layer headers see the `Cuda<Sm>`
/// overloads. This header holds no device code: it compiles with any C++20 compiler given the
/// CUDA include folder.
///
/// Execution model: every call is asynchronous on one CUDA stream per host thread (`stream()`,
/// created on first use, synchronising with the legacy default stream, so blocking `cudaMemcpy`
/// uploads are ordered with it); only `to_host` waits. Every CUDA and cuBLAS call is checked and
/// failures throw `CudaError` naming the call (and, for allocations, the bytes needed and free).

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <utility>

#include "limarp/backend/attention_shape.hpp"
#include "limarp/backend/cuda/device_int8_weight.cuh"
#include "limarp/backend/memory.hpp"
#include "limarp/backend/scaled_product.hpp"
#include "limarp/generate/sampler.hpp"
#include "limarp/generate/step_picker.hpp"
#include "limarp/quant/scheme.hpp"

namespace limarp::cuda_api {

/// The calling thread's limarp stream (created on first use).
cudaStream_t stream();
/// Waits until everything queued on `stream()` has finished. \throws CudaError for a failed kernel
void synchronize();

/// Allocates `bytes` of device memory and copies `host` there (waits for the copy); the memory is
/// freed when the last copy of the returned pointer goes. \throws CudaError naming `what`
std::shared_ptr<void> upload(const void* host, std::size_t bytes, const std::string& what);
/// Host -> device copy on `stream()` (`host` may be reused when the call returns).
void to_device(void* dst, const void* host, std::size_t bytes);
/// Device -> device copy on `stream()`.
void copy(void* dst, const void* src, std::size_t bytes);
/// Device -> host copy; waits for it (and everything queued before it).
void to_host(void* host, const void* src, std::size_t bytes);

/// y = x · Wᵀ (+ y when `accumulate`), W [n_out, n_in] f32 row-major: cuBLAS SGEMM (f32 math).
/// With `alpha`: y (=|+=) alpha · (x · Wᵀ) (the same for `matmul_wt_bf16`, where alpha is applied
/// inside the GEMV / the GEMM's epilogue: no extra pass).
void matmul_wt_f32(float* y, const float* x, const float* w, std::int64_t T, std::int64_t n_in, std::int64_t n_out,
                   bool accumulate, float alpha = 1.0f);
/// The same with bf16 weights: one token through a bf16 GEMV (exact products, f32 sums); more
/// tokens through cuBLAS on the tensor cores with x split into bf16 hi + lo rows (one GEMM over
/// 2T rows, f32 accumulation; about 2^-16 relative per input instead of bf16's 2^-9).
void matmul_wt_bf16(float* y, const float* x, const void* w_bf16, std::int64_t T, std::int64_t n_in,
                    std::int64_t n_out, bool accumulate, float alpha = 1.0f);
/// y = x · Wᵀ (+ y) with an int8 row-wise weight, run-time options `opt`:
/// - one token (T == 1): the int8 GEMV (`ops::qgemv_int8`; an x that is not 16-byte aligned is
///   copied to an aligned scratch first), weight-only with f32 x whatever `opt` says (decode is
///   bound by the weight bytes, not by the arithmetic);
/// - more tokens with `opt.int8_activations` (the default): LLM.int8() as the CPU
///   `ops::qmatmul_wt` computes it (backend/cuda/qgemm_int8.cuh): outlier columns (some |x| >=
///   `opt.outlier_threshold` > 0) multiplied close to f32 (x split into bf16 hi + lo, the int8
///   weight columns exact) on the tensor cores, the other columns quantized per row (absmax /
///   127, ties to even) and multiplied int8 x int8 -> int32 (cuBLAS); a shape cuBLAS has no int8
///   kernel for runs the same quantized operands through a bf16 GEMM. With outliers on, the
///   outlier count is read on the host (one wait per product) except while a graph is recorded.
/// - more tokens with f32 activations (`opt.int8_activations` false, weight-only): the int8 values
///   (exact in bf16) widened into a scratch buffer, x split into bf16 hi + lo rows as
///   `matmul_wt_bf16` does, one cuBLAS GEMM on the tensor cores, the row scales applied after
///   the product (products close to f32's).
void qmatmul_int8(float* y, const float* x, const DeviceInt8Weight& w, std::int64_t T, bool accumulate,
                  const QuantOptions& opt);

/// y (=|+=) x · Wᵀ + z · Bᵀ (B bf16 [n_out, r], z [T, r]; added to y when `accumulate`): one token
/// through the int8 GEMV with the B term in the same pass (r % 8 == 0, 16-byte aligned pointers);
/// otherwise `qmatmul_int8` and then `matmul_wt_bf16` accumulating z · Bᵀ.
void qmatmul_int8_lora(float* y, const float* x, const DeviceInt8Weight& w, std::int64_t T, const QuantOptions& opt,
                       const void* b_bf16, const float* z, std::int64_t r, bool accumulate = false);

/// Up to three one-token products y_i = alpha_i · x W_iᵀ with bf16 weights that share x [n_in]
/// (the LoRA A products of q/k/v or gate/up) in one GEMV launch, each with the numerics of
/// `matmul_wt_bf16`'s one-token form. Returns false, doing nothing, when it cannot (T != 1, more
/// than three, n_in % 8 != 0, unaligned x or W): the caller runs them one by one.
bool matmul_wt_bf16_group(const float* x, std::int64_t T, std::int64_t n_in, const ops::ScaledProduct* p, int n);

/// One product of a fused one-token launch: y = x · Wᵀ (+ z · Bᵀ when b_bf16 is not null: B bf16
/// [n_out, r], z [r] = scale · x Aᵀ, r % 8 == 0, 16-byte aligned).
struct FusedGemv {
    float* y = nullptr;                   ///< [n_out] output (device)
    const DeviceInt8Weight* w = nullptr;  ///< the weight
    const void* b_bf16 = nullptr;         ///< LoRA B, or null
    const float* z = nullptr;             ///< the scaled LoRA A product
    std::int64_t r = 0;                   ///< LoRA rank
};

/// Up to three one-token products that share x (16-byte aligned, n_in the same) in one GEMV launch
/// (`ops::qgemv_int8_group`: q/k/v). Returns false, doing nothing, when it cannot (T != 1, more
/// than three, an x or LoRA operand that is not aligned): the caller runs the products one by one.
bool qmatmul_int8_group(const float* x, std::int64_t T, const FusedGemv* products, int n);

/// y_i = x · W_iᵀ for n >= 1 int8 weights that read the same x [T, n_in] (q/k/v, gate/up) at
/// T > 1 tokens with int8 activations (LLM.int8(), threshold `opt.outlier_threshold`): x's outlier
/// columns are found and its rows quantized once for all of them, then each weight's int8 GEMM,
/// epilogue and outlier GEMM run (the same values as `qmatmul_int8` per weight). Returns false,
/// doing nothing, when it cannot (T < 2, weight-only options, weights whose n_in or row stride
/// differ): the caller runs `qmatmul_int8` per weight.
bool qmatmul_int8_shared(const float* x, std::int64_t T, const DeviceInt8Weight* const* w, float* const* y, int n,
                         const QuantOptions& opt);

/// h = silu(x · Gateᵀ (+ its LoRA term)) * (x · Upᵀ (+ its LoRA term)) for one token in one GEMV
/// launch (`ops::qgemv_int8_swiglu`): gate and up are never written. Returns false, doing nothing,
/// when it cannot (T != 1, shapes that differ, unaligned operands): the caller runs gate, up and
/// `swiglu`.
bool qmatmul_int8_swiglu(float* h, const float* x, std::int64_t T, const FusedGemv& gate, const FusedGemv& up);

/// RMSNorm rows of width d (weight f32, or bf16 when `w_bf16`); y may alias x.
void rms_norm(float* y, const float* x, const void* w, bool w_bf16, std::int64_t T, std::int64_t d, float eps);
/// x += a; h = RMSNorm(x) (one kernel); h, x and a do not overlap.
void add_rms_norm(float* h, float* x, const float* a, const void* w, bool w_bf16, std::int64_t T, std::int64_t d,
                  float eps);
/// RoPE on q [T, n_heads, head_dim] and k [T, n_kv_heads, head_dim] in one kernel.
void rope_rotate_half_qk(float* q, float* k, const std::int64_t* positions, std::int64_t T, std::int64_t n_heads,
                         std::int64_t n_kv_heads, std::int64_t head_dim, double theta);
/// y[t] = table[ids[t]] (table f32 or bf16 [vocab, d]); ids on the device, in range.
void embedding_gather(float* y, const void* table, bool table_bf16, const std::int32_t* ids, std::int64_t T,
                      std::int64_t d);
/// RoPE (rotate-half) in place on x [T, n_heads, head_dim]; positions [T] on the device.
void rope_rotate_half(float* x, const std::int64_t* positions, std::int64_t T, std::int64_t n_heads,
                      std::int64_t head_dim, double theta);
/// One attention layer over the rolling cache, as the CPU `ops::attention_with_cache`: token t
/// (position positions[t]) attends to the ring and itself, then its key and value go to row
/// pos % C. One token: the f32 split-K decode kernel; more: the prefill kernel that
/// `set_prefill_attention` chose (tensor cores with bf16 operands by default).
void attention_with_cache(float* out, const float* q, const float* k_new, const float* v_new, float* k_cache,
                          float* v_cache, std::int64_t C, const std::int64_t* positions, std::int64_t T,
                          const ops::AttentionShape& s, float scale);
/// RoPE (rotate-half, base `theta`) on q [T, n_heads, head_dim] and k_new, then
/// `attention_with_cache`: one token in one launch (the decode kernel rotates q and k_new in
/// shared memory and stores the rotated key; q and k_new stay as they were), more tokens through
/// `rope_rotate_half_qk` in place and then the prefill. \throws ArgumentError when theta <= 0
void attention_with_cache_rope(float* out, float* q, float* k_new, const float* v_new, float* k_cache, float* v_cache,
                               std::int64_t C, const std::int64_t* positions, std::int64_t T,
                               const ops::AttentionShape& s, float scale, double theta);
/// Which kernel runs the attention of a prefill (T > 1; decode always runs the f32 decode kernel).
enum class PrefillAttention {
    tensor_cores,  ///< bf16 operands on the tensor cores, f32 softmax (the default; head_dim 32/64/128)
    f32,           ///< the register-tiled f32 kernel on the CUDA cores (products as the CPU's)
};
/// Chooses the prefill attention kernel for the whole process (all threads, all models). The
/// starting value comes from LIMARP_CUDA_PREFILL_ATTENTION: f32 (or tiled) the f32 kernel,
/// simple the first f32 kernel (measurements only); anything else (mma) the tensor cores.
void set_prefill_attention(PrefillAttention mode);
/// The current choice (see `set_prefill_attention`).
PrefillAttention prefill_attention();

/// y += x.
void add_inplace(float* y, const float* x, std::int64_t n);
/// h = silu(gate) * up (h may alias gate or up).
void swiglu(float* h, const float* gate, const float* up, std::int64_t n);
/// x *= s.
void scale_inplace(float* x, float s, std::int64_t n);

/// Sampling on the device for host code: backend/cuda/sampler.cuh's `DeviceSampler` behind the
/// compiled boundary. Penalties, top-k, top-p, min-p and temperature run on the GPU and only the
/// chosen id crosses to the host; see `DeviceSamplingParams::from` for the settings it takes.
/// As a `generate::StepPicker` (`MistralModel::forward_pick(ids, cache, sampler, history)`,
/// `Generator::generate(prompt, sampler)`) its launches are part of the model's step, recorded
/// into the decode step's CUDA graph.
class TokenSampler : public generate::StepPicker {
public:
    /// \throws ArgumentError for settings the device sampler lacks (top-a, tail-free, typical-p,
    ///         an order it cannot follow), naming the stage; CudaError when the allocation fails
    explicit TokenSampler(const generate::SamplerParams& params);
    ~TokenSampler();
    /// Takes `o`'s state.
    TokenSampler(TokenSampler&& o) noexcept;
    /// Takes `o`'s state.
    TokenSampler& operator=(TokenSampler&& o) noexcept;
    /// Applies the penalties from `history` (prompt and generated ids) to the device `logits`
    /// [vocab] in place, picks a token on `stream()` and returns it (waits for the stream).
    /// \throws ArgumentError for a history id outside the vocabulary; CudaError
    std::int32_t sample(float* logits, std::int64_t vocab, std::span<const std::int32_t> history);
    /// Restarts the random sequence from `seed` (a recorded step that contains this sampler's pick
    /// is recorded again).
    void reseed(std::uint64_t seed);
    /// Counts and uploads the penalties' ids of `history`, sizes the prefilter's scratch.
    /// \throws ArgumentError for a history id outside [0, vocab); CudaError
    void prepare(std::int64_t vocab, std::span<const std::int32_t> history) override;
    /// Launches the prepared pick on `stream()` (penalties on `logits` in place, then the pick).
    void enqueue(float* logits, std::int64_t vocab) override;
    /// The id of the last pick (a 4-byte copy; waits for `stream()`).
    std::int32_t finish() override;
    /// See `generate::StepPicker::version`.
    std::uint64_t version() const override;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

/// A model step recorded as a CUDA graph: the key it was recorded under, the key seen last, the
/// executable graph. Move-only; destroys the graph.
class StepGraph {
public:
    StepGraph() = default;
    ~StepGraph() { reset(); }
    StepGraph(const StepGraph&) = delete;
    StepGraph& operator=(const StepGraph&) = delete;
    /// Takes `o`'s graph.
    StepGraph(StepGraph&& o) noexcept
        : seen(o.seen), captured(o.captured), exec(std::exchange(o.exec, nullptr)), stream(o.stream),
          disabled(o.disabled) {}
    /// Drops this graph, takes `o`'s.
    StepGraph& operator=(StepGraph&& o) noexcept {
        if (this != &o) {
            reset();
            seen = o.seen;
            captured = o.captured;
            exec = std::exchange(o.exec, nullptr);
            stream = o.stream;
            disabled = o.disabled;
        }
        return *this;
    }
    /// Destroys the executable graph.
    void reset() noexcept {
        if (exec) (void)cudaGraphExecDestroy(exec);
        exec = nullptr;
    }
    StepKey seen;                    ///< key of the last eager run
    StepKey captured;                ///< key `exec` was recorded under
    cudaGraphExec_t exec = nullptr;  ///< the recorded step
    cudaStream_t stream = nullptr;   ///< the recording thread's stream (replays only there)
    bool disabled = false;           ///< recording failed once: run eagerly from then on
};

/// Runs a model step: replays `g` when `key` is the key it was recorded under (on the same
/// thread); records `body` into `g` (stream capture on `stream()`) and replays it when `key` was
/// seen on the step before; otherwise runs `body` eagerly and remembers `key_now()` (the key after
/// the eager run, whose workspaces may have grown). Only one-token steps (decode) are recorded.
/// `LIMARP_CUDA_GRAPHS=0` in the environment turns recording off. A step whose recording fails
/// (an operation that cannot be captured) runs eagerly, and `g` stays eager from then on.
/// Limitation: the stream synchronises with the legacy default stream, so while one thread
/// records, other threads must not upload weights (blocking cudaMemcpy) on the same device;
/// that recording then fails and the model runs eagerly.
void run_step(StepGraph& g, const StepKey& key, const std::function<void()>& body,
              const std::function<StepKey()>& key_now);

}  // namespace limarp::cuda_api
