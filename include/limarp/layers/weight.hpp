#pragma once
/// \file weight.hpp
/// \brief `Weight` (a typed, shaped reference to frozen parameters, usually inside a file mapping)
/// and `LoadContext` (where layers find their weights when a model is built).

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "limarp/core/dtype.hpp"
#include "limarp/core/error.hpp"
#include "limarp/core/tensor.hpp"
#include "limarp/io/peft_adapter.hpp"
#include "limarp/io/safetensors.hpp"

namespace limarp {

/// A frozen parameter tensor: a pointer to f32 or bf16 elements with a shape.
/// Usually it points into a safetensors mapping (zero copy); `owner` keeps converted or
/// generated storage alive when it does not.
struct Weight {
    const void* data = nullptr;        ///< first element
    DType dtype = DType::F32;          ///< F32 or BF16
    Shape shape;                       ///< extents, e.g. [n_out, n_in]
    std::string name;                  ///< tensor name, for messages
    std::shared_ptr<const void> owner; ///< keeps owned storage alive (null for mapped weights)
    bool on_device = false;            ///< `data` is in a device's memory (see `BackendMemory::place`)

    /// Typed pointer. \pre `T` matches `dtype`.
    template <class T>
    const T* as() const noexcept {
        return static_cast<const T*>(data);
    }
    /// Number of elements.
    std::int64_t size() const { return numel(shape); }
    /// Element `i` converted to f32. \pre host memory (`!on_device`).
    float at(std::int64_t i) const noexcept { return load_as_f32(data, dtype, static_cast<std::size_t>(i)); }

    /// A non-owning f32 view of `t` (valid while `t` lives and keeps its storage).
    static Weight view(const Tensor<float>& t, std::string name) {
        Weight w;
        w.data = t.data();
        w.dtype = DType::F32;
        w.shape = t.shape();
        w.name = std::move(name);
        return w;
    }
    /// A weight that owns an f32 tensor.
    static Weight owned(Tensor<float> t, std::string name) {
        auto p = std::make_shared<Tensor<float>>(std::move(t));
        Weight w;
        w.data = p->data();
        w.dtype = DType::F32;
        w.shape = p->shape();
        w.name = std::move(name);
        w.owner = std::move(p);
        return w;
    }
    /// A weight that owns a bf16 buffer.
    static Weight owned(Tensor<bf16> t, std::string name) {
        auto p = std::make_shared<Tensor<bf16>>(std::move(t));
        Weight w;
        w.data = p->data();
        w.dtype = DType::BF16;
        w.shape = p->shape();
        w.name = std::move(name);
        w.owner = std::move(p);
        return w;
    }
};

/// Calls `f(const T* data)` with the weight's elements typed as `float` or `bf16`.
template <class F>
decltype(auto) visit_weight(const Weight& w, F&& f) {
    if (w.dtype == DType::BF16) return std::forward<F>(f)(w.as<bf16>());
    return std::forward<F>(f)(w.as<float>());
}

/// Where layers find their parameters while a model is built: a checkpoint (or any weight
/// provider, e.g. a benchmark's random weights) plus options.
/// Layer types provide `static L load(const LoadContext&, const std::string& name, ...)`;
/// `name` is the module path without the ".weight" suffix (e.g. "model.layers.0.self_attn.q_proj").
/// User-defined layers may read `extra` (free-form options keyed by name).
class LoadContext {
public:
    /// Returns the weight `name`, which must have shape `expected`.
    using Provider = std::function<Weight(const std::string& name, const Shape& expected)>;
    /// Tells whether weight `name` exists.
    using Lookup = std::function<bool(const std::string& name)>;

    /// A context over an opened checkpoint. Weights keep the checkpoint's mapping alive.
    explicit LoadContext(std::shared_ptr<const io::SafeTensorsCheckpoint> ckpt) {
        provider_ = [ckpt](const std::string& name, const Shape& expected) { return from_checkpoint(ckpt, name, expected); };
        lookup_ = [ckpt](const std::string& name) { return ckpt->contains(name); };
        ckpt_ = std::move(ckpt);
    }
    /// A context over any weight source.
    LoadContext(Provider provider, Lookup lookup) : provider_(std::move(provider)), lookup_(std::move(lookup)) {}

    /// The checkpoint behind this context, or null for a provider-based context. Layers that
    /// read non-float tensors (pre-quantized weights, scales) use it directly.
    const std::shared_ptr<const io::SafeTensorsCheckpoint>& checkpoint() const noexcept { return ckpt_; }

    /// True when the source holds tensor `name`.
    bool has(const std::string& name) const { return lookup_(name); }

    /// The tensor `name` with shape `expected`, as a zero-copy f32 or bf16 weight
    /// (f16 tensors are converted to an owned f32 copy).
    /// \throws FormatError when missing or of another dtype, ShapeError when the shape differs.
    Weight weight(const std::string& name, const Shape& expected) const { return provider_(name, expected); }

    /// An adapter to attach to every `Lora` layer built from this context, with its run-time scale.
    struct AdapterRef {
        std::shared_ptr<const io::PeftAdapter> adapter;  ///< the opened adapter
        float scale = 1.0f;                              ///< multiplier of its alpha/r scale
    };
    /// Adapters attached at load (see layers/lora.hpp).
    std::vector<AdapterRef> adapters;

    /// Free-form options for user-defined layers (e.g. a path to extra parameters).
    std::vector<std::pair<std::string, std::string>> extra;
    /// Returns the value of option `key` in `extra`, or `fallback`.
    std::string option(const std::string& key, const std::string& fallback = "") const {
        for (const auto& [k, v] : extra)
            if (k == key) return v;
        return fallback;
    }

    /// Reads `name` from a checkpoint, checking shape and dtype (see `weight`).
    static Weight from_checkpoint(const std::shared_ptr<const io::SafeTensorsCheckpoint>& ckpt, const std::string& name,
                                  const Shape& expected) {
        const io::TensorInfo& t = ckpt->get(name);
        if (t.shape != expected)
            throw ShapeError(t.file + ": tensor " + name + " has shape " + shape_str(t.shape) + ", expected " +
                             shape_str(expected));
        Weight w;
        w.name = name;
        w.shape = t.shape;
        switch (t.dtype) {
            case DType::F32:
            case DType::BF16:
                w.data = t.data;
                w.dtype = t.dtype;
                w.owner = ckpt;  // the mapping stays alive as long as the weight
                return w;
            case DType::F16: {
                Tensor<float> f(t.shape);
                const auto* src = reinterpret_cast<const std::uint16_t*>(t.data);
                for (std::int64_t i = 0; i < f.size(); ++i) f[i] = f16_to_f32(src[i]);
                return Weight::owned(std::move(f), name);
            }
            default:
                throw FormatError(t.file + ": tensor " + name + " has dtype " + std::string(dtype_name(t.dtype)) +
                                  ", expected F32, BF16 or F16");
        }
    }

private:
    Provider provider_;
    Lookup lookup_;
    std::shared_ptr<const io::SafeTensorsCheckpoint> ckpt_;
};

}  // namespace limarp
