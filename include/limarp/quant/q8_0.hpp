#pragma once
/// \file q8_0.hpp
/// \brief `Q8_0`, the GGUF/ggml 8-bit block scheme: every row of a weight [n_out, n_in] is split
/// into blocks of 32 inputs, each stored as `BlockQ8_0` { f16 d; int8 qs[32]; } (34 bytes, the
/// byte layout of ggml's `block_q8_0`), and `QuantizedWeight<Q8_0>` that holds them.
///
/// Storage (what `limarp-quantize` writes and `QuantizedLinear` loads zero copy), for a module
/// "<name>":
/// - "<name>.weight": dtype U8, shape [n_out, n_in / 32 * 34]: row o holds the n_in / 32 blocks of
///   output row o in input order, each block 2 bytes of little-endian IEEE half d followed by 32
///   int8 values, exactly as a GGUF tensor of type Q8_0 with ne0 = n_in, ne1 = n_out stores them
///   (GGUF import/export is a copy). W[o, 32 b + i] ~= d * qs[i].
/// The U8 dtype with that shape identifies Q8_0 blocks (no other limarp tensor is U8); the file's
/// `__metadata__` also carries "limarp.quant": "q8_0" (informational).
/// n_in must be a multiple of 32.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "limarp/core/dtype.hpp"
#include "limarp/core/error.hpp"
#include "limarp/core/tensor.hpp"
#include "limarp/core/thread_pool.hpp"
#include "limarp/io/safetensors.hpp"
#include "limarp/layers/weight.hpp"
#include "limarp/quant/detail/quantize_row.hpp"
#include "limarp/quant/scheme.hpp"

namespace limarp {

/// Scheme tag: GGUF Q8_0 blocks (32 int8 + one f16 scale). Empty: run-time choices are `QuantOptions`.
struct Q8_0 {
    /// Scheme name as in `--quant`.
    static constexpr std::string_view name = "q8_0";
    /// The enum value of this scheme.
    static constexpr QuantScheme scheme = QuantScheme::Q8_0;
};

/// Inputs per Q8_0 block.
inline constexpr std::int64_t kQ8_0BlockSize = 32;

/// One Q8_0 block, byte for byte ggml's `block_q8_0`: the scale as IEEE half bits, then 32 int8.
struct BlockQ8_0 {
    std::uint16_t d;      ///< scale d = max|x| / 127, as f16 bits (little-endian)
    std::int8_t qs[32];   ///< round(x / d) (ties to even), in [-127, 127]
};
static_assert(sizeof(BlockQ8_0) == 34, "BlockQ8_0 must be 34 bytes like ggml's block_q8_0");
static_assert(offsetof(BlockQ8_0, qs) == 2, "BlockQ8_0::qs must follow the 2-byte scale");

/// Quantizes 32 values into one block at `out` (34 bytes, any alignment): d = max|x| / 127
/// computed in f32, qs = round-half-even(x * (1/d)) with the unrounded d (as ggml), then d is
/// stored rounded to f16.
inline void quantize_block_q8_0(const float* x /*[32]*/, void* out /*34 bytes*/) noexcept {
    BlockQ8_0 b;
    const float d = quantize_row_int8(x, kQ8_0BlockSize, b.qs);
    b.d = f32_to_f16(d);
    std::memcpy(out, &b, sizeof(b));
}

/// Dequantizes one block at `in` (34 bytes, any alignment) into 32 floats: d * qs[i].
inline void dequantize_block_q8_0(const void* in /*34 bytes*/, float* x /*[32]*/) noexcept {
    BlockQ8_0 b;
    std::memcpy(&b, in, sizeof(b));
    const float d = f16_to_f32(b.d);
    for (int i = 0; i < 32; ++i) x[i] = d * static_cast<float>(b.qs[i]);
}

/// Q8_0 weights [n_out, n_in]: n_out rows of n_in / 32 `BlockQ8_0`, row-major, in a file
/// mapping (zero copy, kept alive by `owner`) or an owned buffer. Copies share the storage.
/// Blocks are read through byte pointers: the storage needs no alignment.
template <>
class QuantizedWeight<Q8_0> {
public:
    /// An empty weight (0 x 0).
    QuantizedWeight() = default;

    /// Wraps `n_out * n_in / 32` blocks at `blocks` (34 bytes each, row-major).
    /// \pre the int8 values lie in [-127, 127] (ggml's quantizer and ours never produce -128).
    /// \throws ShapeError naming `name` when n_out < 1, n_in < 32 or n_in is not a multiple of 32.
    QuantizedWeight(const void* blocks, std::int64_t n_out, std::int64_t n_in, std::string name,
                    std::shared_ptr<const void> owner)
        : data_(static_cast<const std::uint8_t*>(blocks)), n_out_(n_out), n_in_(n_in), name_(std::move(name)),
          owner_(std::move(owner)) {
        check_shape(name_, n_out, n_in);
    }

    /// Throws ShapeError naming `name` unless [n_out, n_in] can be stored as Q8_0.
    static void check_shape(const std::string& name, std::int64_t n_out, std::int64_t n_in) {
        if (n_in % kQ8_0BlockSize != 0 || n_in < kQ8_0BlockSize || n_out < 1)
            throw ShapeError(name + ": Q8_0 needs an input dimension that is a positive multiple of 32, got shape [" +
                             std::to_string(n_out) + ", " + std::to_string(n_in) +
                             "] (use int8 row-wise quantization for this layer)");
    }

    /// Quantizes a float or bf16 weight [n_out, n_in] block by block (`quantize_block_q8_0`), in
    /// parallel over rows on `pool` (or the global pool).
    /// \throws ShapeError naming the weight unless it is 2-D with n_in a positive multiple of 32.
    static QuantizedWeight quantize(const Weight& w, ThreadPool* pool = nullptr) {
        if (w.shape.size() != 2)
            throw ShapeError(w.name + ": a linear weight must be 2-D, got " + shape_str(w.shape));
        const std::int64_t n_out = w.shape[0], n_in = w.shape[1];
        check_shape(w.name, n_out, n_in);
        const std::int64_t rb = row_bytes(n_in);
        auto buf = quant_detail::make_buffer(static_cast<std::size_t>(n_out * rb));
        std::uint8_t* dst = reinterpret_cast<std::uint8_t*>(buf.get());
        ThreadPool& p = pool ? *pool : ThreadPool::global();
        p.parallel_for(0, n_out, [&](std::int64_t b, std::int64_t e, unsigned) {
            std::vector<float> row(static_cast<std::size_t>(n_in));
            for (std::int64_t o = b; o < e; ++o) {
                quant_detail::row_to_f32(w.data, w.dtype, o, n_in, row.data());
                for (std::int64_t k = 0; k < n_in / kQ8_0BlockSize; ++k)
                    quantize_block_q8_0(row.data() + k * kQ8_0BlockSize, dst + o * rb + k * sizeof(BlockQ8_0));
            }
        }, 16);
        return QuantizedWeight(dst, n_out, n_in, w.name, std::shared_ptr<const void>(std::move(buf)));
    }

    /// True when `ckpt` holds module `name` pre-quantized in this format ("<name>.weight" of dtype U8).
    static bool stored_in(const io::SafeTensorsCheckpoint& ckpt, const std::string& name) {
        const std::string wn = name + ".weight";
        return ckpt.contains(wn) && ckpt.get(wn).dtype == DType::U8;
    }

    /// Loads module `name` pre-quantized from `ckpt`, zero copy (the weight keeps `ckpt` alive).
    /// \throws ShapeError naming the tensor when n_in is not a multiple of 32 or "<name>.weight"
    ///         is not [n_out, n_in / 32 * 34]; FormatError when it is missing or not U8.
    static QuantizedWeight from_checkpoint(const std::shared_ptr<const io::SafeTensorsCheckpoint>& ckpt,
                                           const std::string& name, std::int64_t n_in, std::int64_t n_out) {
        const io::TensorInfo& wt = ckpt->get(name + ".weight");
        check_shape(wt.file + ": tensor " + wt.name, n_out, n_in);
        if (wt.dtype != DType::U8)
            throw FormatError(wt.file + ": tensor " + wt.name + " has dtype " + std::string(dtype_name(wt.dtype)) +
                              ", expected U8 (Q8_0 blocks)");
        if (wt.shape != Shape{n_out, row_bytes(n_in)})
            throw ShapeError(wt.file + ": tensor " + wt.name + " has shape " + shape_str(wt.shape) + ", expected " +
                             shape_str({n_out, row_bytes(n_in)}) + " (Q8_0 blocks of [" + std::to_string(n_out) +
                             ", " + std::to_string(n_in) + "])");
        return QuantizedWeight(wt.data, n_out, n_in, name + ".weight", ckpt);
    }

    /// Bytes of one row of blocks for `n_in` inputs: n_in / 32 * 34.
    static constexpr std::int64_t row_bytes(std::int64_t n_in) noexcept {
        return n_in / kQ8_0BlockSize * static_cast<std::int64_t>(sizeof(BlockQ8_0));
    }

    /// Output features (rows).
    std::int64_t n_out() const noexcept { return n_out_; }
    /// Input features (columns).
    std::int64_t n_in() const noexcept { return n_in_; }
    /// Blocks per row: n_in / 32.
    std::int64_t blocks_per_row() const noexcept { return n_in_ / kQ8_0BlockSize; }
    /// Tensor name, for messages.
    const std::string& name() const noexcept { return name_; }
    /// The raw blocks, n_out * n_in / 32 of 34 bytes, row-major (no alignment guarantee).
    const std::uint8_t* data() const noexcept { return data_; }
    /// First byte of row `o`.
    const std::uint8_t* row(std::int64_t o) const noexcept { return data_ + o * row_bytes(n_in_); }
    /// A copy of block `b` of row `o`.
    BlockQ8_0 block(std::int64_t o, std::int64_t b) const noexcept {
        BlockQ8_0 r;
        std::memcpy(&r, row(o) + b * static_cast<std::int64_t>(sizeof(BlockQ8_0)), sizeof(r));
        return r;
    }
    /// Bytes of weight data streamed by one product.
    std::size_t nbytes() const noexcept { return static_cast<std::size_t>(n_out_ * row_bytes(n_in_)); }

    /// The f32 weights [n_out, n_in]: d * qs for every block.
    Tensor<float> dequantize() const {
        Tensor<float> t({n_out_, n_in_});
        const std::int64_t nb = blocks_per_row();
        for (std::int64_t o = 0; o < n_out_; ++o)
            for (std::int64_t b = 0; b < nb; ++b)
                dequantize_block_q8_0(row(o) + b * static_cast<std::int64_t>(sizeof(BlockQ8_0)),
                                      t.data() + o * n_in_ + b * kQ8_0BlockSize);
        return t;
    }

    /// Adds "<module>.weight" (U8 [n_out, n_in / 32 * 34]) to `w` without copying.
    /// \pre this weight's storage outlives the writer's last `write`.
    void write_to(io::SafeTensorsWriter& w, const std::string& module) const {
        w.add_borrowed(module + ".weight", DType::U8, {n_out_, row_bytes(n_in_)}, data_, nbytes());
    }

private:
    const std::uint8_t* data_ = nullptr;
    std::int64_t n_out_ = 0, n_in_ = 0;
    std::string name_;
    std::shared_ptr<const void> owner_;
};

}  // namespace limarp
