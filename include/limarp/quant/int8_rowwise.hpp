#pragma once
/// \file int8_rowwise.hpp
/// \brief `Int8Rowwise`, the LLM.int8() / bitsandbytes 8-bit scheme: int8 weights [n_out, n_in]
/// with one f32 absmax scale per output row, and `QuantizedWeight<Int8Rowwise>` that holds them.
///
/// Storage (what `limarp-quantize` writes and `QuantizedLinear` loads zero copy), for a module
/// "<name>" (e.g. "model.layers.0.mlp.down_proj"):
/// - "<name>.weight":       dtype I8,  shape [n_out, n_in], row-major, values in [-127, 127];
/// - "<name>.weight_scale": dtype F32, shape [n_out]: scale[o] = max_k |W[o, k]| / 127
///   (bitsandbytes' `SCB` divided by 127), so W[o, k] ~= weight[o, k] * weight_scale[o].
/// The file's `__metadata__` carries "limarp.quant": "int8" (informational; loading looks at the
/// tensors' dtypes).

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "limarp/core/error.hpp"
#include "limarp/core/tensor.hpp"
#include "limarp/core/thread_pool.hpp"
#include "limarp/io/safetensors.hpp"
#include "limarp/layers/weight.hpp"
#include "limarp/quant/detail/quantize_row.hpp"
#include "limarp/quant/scheme.hpp"

namespace limarp {

/// Scheme tag: int8 weights with one absmax scale per output row (LLM.int8()). Empty: run-time
/// choices (int8 or f32 activations, outlier threshold) are `QuantOptions`.
struct Int8Rowwise {
    /// Scheme name as in `--quant`.
    static constexpr std::string_view name = "int8";
    /// The enum value of this scheme.
    static constexpr QuantScheme scheme = QuantScheme::Int8;
};

/// Int8 row-wise weights [n_out, n_in] plus scales [n_out] and the int32 row sums of the int8
/// values (used by the u8 x s8 VNNI kernels: sum (q_x + 128) * q_w = sum q_x q_w + 128 sum q_w).
/// The int8 values and scales may live in a file mapping (zero copy, kept alive by `owner`) or in
/// owned buffers. Copies share the storage.
template <>
class QuantizedWeight<Int8Rowwise> {
public:
    /// Suffix of the scale tensor after the module name.
    static constexpr const char* kScaleSuffix = ".weight_scale";
    /// Largest n_in: keeps every int32 accumulation (255 * 127 * n_in) exact.
    static constexpr std::int64_t kMaxIn = 65536;

    /// An empty weight (0 x 0).
    QuantizedWeight() = default;

    /// Wraps existing int8 values `q` [n_out, n_in] and scales [n_out]; computes the row sums (in
    /// parallel on `pool`, or the global pool).
    /// `owner` keeps `q` and `scale` alive (null when the caller guarantees their lifetime).
    /// \throws ShapeError naming `name` for n_out < 1, n_in < 1 or n_in > kMaxIn; FormatError
    ///         when a value is -128 (the kernels need the symmetric range [-127, 127]).
    QuantizedWeight(const std::int8_t* q, const float* scale, std::int64_t n_out, std::int64_t n_in, std::string name,
                    std::shared_ptr<const void> owner, ThreadPool* pool = nullptr)
        : q_(q), scale_(scale), n_out_(n_out), n_in_(n_in), name_(std::move(name)), owner_(std::move(owner)) {
        if (n_out < 1 || n_in < 1 || n_in > kMaxIn)
            throw ShapeError(name_ + ": int8 weight shape [" + std::to_string(n_out) + ", " + std::to_string(n_in) +
                             "] not supported (need n_out >= 1 and 1 <= n_in <= " + std::to_string(kMaxIn) + ")");
        auto sums = std::make_shared<std::vector<std::int32_t>>(static_cast<std::size_t>(n_out));
        ThreadPool& p = pool ? *pool : ThreadPool::global();
        std::vector<char> bad_rows(static_cast<std::size_t>(n_out), 0);
        p.parallel_for(0, n_out, [&](std::int64_t b, std::int64_t e, unsigned) {
            for (std::int64_t o = b; o < e; ++o) {
                const std::int8_t* r = q_ + o * n_in_;
                std::int32_t s = 0;
                std::int8_t mn = 0;
                for (std::int64_t k = 0; k < n_in_; ++k) {
                    s += r[k];
                    mn = std::min(mn, r[k]);
                }
                (*sums)[static_cast<std::size_t>(o)] = s;
                bad_rows[static_cast<std::size_t>(o)] = mn == -128;
            }
        }, 64);
        for (std::int64_t o = 0; o < n_out; ++o)
            if (bad_rows[static_cast<std::size_t>(o)])
                throw FormatError(name_ + ": row " + std::to_string(o) +
                                  " holds the value -128; int8 weights must lie in [-127, 127]");
        rowsum_ = sums->data();
        sums_ = std::move(sums);
    }

    /// Quantizes a float or bf16 weight [n_out, n_in] (in parallel over rows on `pool`, or the
    /// global pool): scale[o] = max|W[o, :]| / 127, q = round-half-even(W / scale) (see
    /// `quantize_row_int8`).
    /// \throws ShapeError naming the weight unless it is 2-D with a supported shape.
    static QuantizedWeight quantize(const Weight& w, ThreadPool* pool = nullptr) {
        if (w.shape.size() != 2)
            throw ShapeError(w.name + ": a linear weight must be 2-D, got " + shape_str(w.shape));
        const std::int64_t n_out = w.shape[0], n_in = w.shape[1];
        if (n_out < 1 || n_in < 1 || n_in > kMaxIn)
            throw ShapeError(w.name + ": int8 weight shape " + shape_str(w.shape) +
                             " not supported (need n_out >= 1 and 1 <= n_in <= " + std::to_string(kMaxIn) + ")");
        const std::size_t qbytes = static_cast<std::size_t>(n_out * n_in);
        const std::size_t qpad = (qbytes + 63) / 64 * 64;
        auto buf = quant_detail::make_buffer(qpad + static_cast<std::size_t>(n_out) * sizeof(float));
        auto* q = reinterpret_cast<std::int8_t*>(buf.get());
        auto* s = reinterpret_cast<float*>(buf.get() + qpad);
        ThreadPool& p = pool ? *pool : ThreadPool::global();
        p.parallel_for(0, n_out, [&](std::int64_t b, std::int64_t e, unsigned) {
            std::vector<float> row(static_cast<std::size_t>(n_in));
            for (std::int64_t o = b; o < e; ++o) {
                quant_detail::row_to_f32(w.data, w.dtype, o, n_in, row.data());
                s[o] = quantize_row_int8(row.data(), n_in, q + o * n_in);
            }
        }, 16);
        return QuantizedWeight(q, s, n_out, n_in, w.name, std::shared_ptr<const void>(std::move(buf)), pool);
    }

    /// True when `ckpt` holds module `name` pre-quantized in this format ("<name>.weight" of dtype I8).
    static bool stored_in(const io::SafeTensorsCheckpoint& ckpt, const std::string& name) {
        const std::string wn = name + ".weight";
        return ckpt.contains(wn) && ckpt.get(wn).dtype == DType::I8;
    }

    /// Loads module `name` pre-quantized from `ckpt`, zero copy (the weight keeps `ckpt` alive).
    /// \throws FormatError naming the tensor when one is missing or has another dtype; ShapeError
    ///         naming the tensor when "<name>.weight" is not [n_out, n_in] or "<name>.weight_scale"
    ///         is not [n_out]; FormatError for a -128 value.
    static QuantizedWeight from_checkpoint(const std::shared_ptr<const io::SafeTensorsCheckpoint>& ckpt,
                                           const std::string& name, std::int64_t n_in, std::int64_t n_out) {
        const io::TensorInfo& wt = ckpt->get(name + ".weight");
        const io::TensorInfo& st = ckpt->get(name + kScaleSuffix);
        if (wt.dtype != DType::I8)
            throw FormatError(wt.file + ": tensor " + wt.name + " has dtype " + std::string(dtype_name(wt.dtype)) +
                              ", expected I8 (int8 row-wise weights)");
        if (wt.shape != Shape{n_out, n_in})
            throw ShapeError(wt.file + ": tensor " + wt.name + " has shape " + shape_str(wt.shape) + ", expected " +
                             shape_str({n_out, n_in}));
        if (st.dtype != DType::F32)
            throw FormatError(st.file + ": tensor " + st.name + " has dtype " + std::string(dtype_name(st.dtype)) +
                              ", expected F32 (one scale per output row)");
        if (st.shape != Shape{n_out})
            throw ShapeError(st.file + ": scale tensor " + st.name + " has shape " + shape_str(st.shape) +
                             ", expected " + shape_str({n_out}) + " (one scale per output row of " + wt.name + ")");
        const float* scale = st.view<float>().data();  // checks alignment
        return QuantizedWeight(reinterpret_cast<const std::int8_t*>(wt.data), scale, n_out, n_in, name + ".weight",
                               ckpt);
    }

    /// Output features (rows).
    std::int64_t n_out() const noexcept { return n_out_; }
    /// Input features (columns).
    std::int64_t n_in() const noexcept { return n_in_; }
    /// Tensor name, for messages.
    const std::string& name() const noexcept { return name_; }
    /// The int8 values [n_out, n_in], row-major.
    const std::int8_t* data() const noexcept { return q_; }
    /// The per-row scales [n_out].
    const float* scales() const noexcept { return scale_; }
    /// Sum of the int8 values of each row [n_out].
    const std::int32_t* row_sums() const noexcept { return rowsum_; }
    /// Pointer to row `o` of the int8 values.
    const std::int8_t* row(std::int64_t o) const noexcept { return q_ + o * n_in_; }
    /// Bytes of weight data streamed by one product (values + scales).
    std::size_t nbytes() const noexcept {
        return static_cast<std::size_t>(n_out_ * n_in_) + static_cast<std::size_t>(n_out_) * sizeof(float);
    }

    /// The f32 weights [n_out, n_in]: q[o, k] * scale[o].
    Tensor<float> dequantize() const {
        Tensor<float> t({n_out_, n_in_});
        for (std::int64_t o = 0; o < n_out_; ++o)
            for (std::int64_t k = 0; k < n_in_; ++k) t[o * n_in_ + k] = static_cast<float>(q_[o * n_in_ + k]) * scale_[o];
        return t;
    }

    /// Adds "<module>.weight" (I8) and "<module>.weight_scale" (F32) to `w` without copying.
    /// \pre this weight's storage outlives the writer's last `write`.
    void write_to(io::SafeTensorsWriter& w, const std::string& module) const {
        w.add_borrowed(module + ".weight", DType::I8, {n_out_, n_in_}, q_, static_cast<std::size_t>(n_out_ * n_in_));
        w.add_borrowed(module + kScaleSuffix, DType::F32, {n_out_}, scale_,
                       static_cast<std::size_t>(n_out_) * sizeof(float));
    }

private:
    const std::int8_t* q_ = nullptr;
    const float* scale_ = nullptr;
    const std::int32_t* rowsum_ = nullptr;
    std::int64_t n_out_ = 0, n_in_ = 0;
    std::string name_;
    std::shared_ptr<const void> owner_;
    std::shared_ptr<const std::vector<std::int32_t>> sums_;
};

}  // namespace limarp
