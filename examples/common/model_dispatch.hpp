#pragma once
// The one place where the programs' run-time choices (--quant, --adapter, a file's format) become
// types. Supported combinations (CPU backend):
//
//   --quant      projection type                              weights
//   none         Lora<DenseLinear<Cpu<>>>                     f32/bf16/f16 files, used in place
//   int8         Lora<QuantizedLinear<Int8Rowwise, Cpu<>>>    quantized at load, or pre-quantized (limarp-quantize)
//   q8_0         Lora<QuantizedLinear<Q8_0, Cpu<>>>           quantized at load, or pre-quantized (limarp-quantize)
//   auto         whatever the checkpoint holds (pre-quantized files carry "limarp.quant" metadata)
//
// Every projection is Lora-wrapped: with no adapter attached the wrapper only forwards to the base.
//
// --device cuda (builds linked with limarp::cuda, which defines LIMARP_WITH_CUDA_BACKEND): the same
// model templates with Cuda<>: --quant none -> Lora<DenseLinear<Cuda<>>> (f32/bf16 weights uploaded
// once), int8 -> Lora<QuantizedLinear<Int8Rowwise, Cuda<>>> (weight-only int8); q8_0 is CPU-only.
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#if defined(LIMARP_WITH_CUDA_BACKEND)
#include <cuda_runtime_api.h>
#endif

#include "common/program.hpp"
#include "limarp/io/hf_config.hpp"
#include "limarp/io/peft_adapter.hpp"
#include "limarp/layers/lora.hpp"
#include "limarp/layers/quantized_linear.hpp"
#include "limarp/model/adapters.hpp"
#include "limarp/model/mistral_model.hpp"

namespace limarp::programs {

/// Options shared by the programs that load a model.
struct ModelOptions {
    std::filesystem::path dir;                 ///< Hugging Face model folder
    std::string quant = "auto";                ///< none | int8 | q8_0 | auto
    std::string activations;                   ///< "" | int8 | f32 (quantized paths)
    std::string outlier_threshold;             ///< "" = default 6.0
    std::vector<std::string> adapters;         ///< DIR[:SCALE] each
    std::string device = "cpu";                ///< cpu | cuda
    std::string kv_cache = "auto";             ///< auto | f32 | bf16 (key/value cache rows)
    WindowConvention convention = WindowConvention::HuggingFace;
};

/// Splits "DIR[:SCALE]" (the scale is taken only when the part after the last ':' is a number).
inline std::pair<std::filesystem::path, float> parse_adapter_arg(const std::string& s) {
    const auto p = s.rfind(':');
    if (p != std::string::npos && p + 1 < s.size()) {
        char* end = nullptr;
        const std::string tail = s.substr(p + 1);
        const float v = std::strtof(tail.c_str(), &end);
        if (end && *end == '\0') return {s.substr(0, p), v};
    }
    return {s, 1.0f};
}

template <class Proj>
using LoraMistral = MistralModel<typename Proj::backend_type, MistralBlock<typename Proj::backend_type, Lora<Proj>>>;

/// True when this program was built with the CUDA backend (`--device cuda` available).
inline constexpr bool kHaveCuda =
#if defined(LIMARP_WITH_CUDA_BACKEND)
    true;
#else
    false;
#endif

/// Checks a --device value. \throws ArgumentError for an unknown device, or cuda in a CPU-only build.
inline void check_device(const std::string& d) {
    if (d != "cpu" && d != "cuda") throw ArgumentError("--device must be cpu or cuda, got \"" + d + "\"");
    if (d == "cuda" && !kHaveCuda)
        throw ArgumentError("--device cuda: this build has no CUDA backend (configure on a machine with nvcc; "
                            "CMake -DLIMARP_CUDA=ON)");
}

/// The help text of --kv-cache.
inline constexpr const char* kKvCacheHelp =
    "auto | f32 | bf16: key/value cache rows (auto: bf16 for int8/q8_0 weights on the CPU, half the cache memory; "
    "f32 otherwise, and with --activations f32)";

/// The key/value cache type for --kv-cache `name` with `scheme` weights on `device` (auto: bf16
/// for quantized weights on the CPU unless `activations` is "f32", which asks for f32 products).
/// \throws ArgumentError for an unknown name, or bf16 with --device cuda.
inline DType resolve_kv_cache(const std::string& name, const std::string& device, QuantScheme scheme,
                              const std::string& activations) {
    if (name == "auto") return auto_kv_cache_dtype(device == "cpu", scheme != QuantScheme::None, activations == "f32");
    if (name != "f32" && name != "bf16") throw ArgumentError("--kv-cache must be auto, f32 or bf16, got \"" + name + "\"");
    if (name == "bf16" && device != "cpu")
        throw ArgumentError("--kv-cache bf16: the CUDA backend keeps an f32 cache (use f32 or auto)");
    return kv_cache_dtype(name);
}

/// Loads the model described by `o` and calls `f(model)` with the concrete model type; the
/// model's caches hold rows of the type --kv-cache resolves to.
template <class F>
decltype(auto) with_model(const ModelOptions& o, F&& f) {
    MistralConfig cfg = io::read_mistral_config(o.dir);
    cfg.window_convention = o.convention;
    auto ckpt = std::make_shared<io::SafeTensorsCheckpoint>(io::SafeTensorsCheckpoint::open(o.dir));
    LoadContext ctx(ckpt);
    if (!o.activations.empty()) ctx.extra.emplace_back(kQuantActivationsOption, o.activations);
    if (!o.outlier_threshold.empty()) ctx.extra.emplace_back(kQuantOutlierOption, o.outlier_threshold);
    for (const auto& a : o.adapters) {
        const auto [dir, scale] = parse_adapter_arg(a);
        ctx.adapters.push_back({std::make_shared<io::PeftAdapter>(io::PeftAdapter::open(dir)), scale});
    }
    check_device(o.device);
    QuantScheme scheme = o.quant == "auto" ? detect_quant_scheme(*ckpt) : parse_quant_scheme(o.quant);
    const DType kv = resolve_kv_cache(o.kv_cache, o.device, scheme, o.activations);  // before the weights load
    auto build = [&]<class Proj>() -> decltype(auto) {
        LoraMistral<Proj> model(cfg, ctx);
        model.set_cache_dtype(kv);
        // every adapter file must fit this model: no factors for modules it lacks
        for (const auto& a : ctx.adapters) check_adapter_modules(model, *a.adapter);
        return f(model);
    };
#if defined(LIMARP_WITH_CUDA_BACKEND)
    if (o.device == "cuda") {
        int devices = 0;
        const cudaError_t err = cudaGetDeviceCount(&devices);
        if (err != cudaSuccess || devices == 0) {
            (void)cudaGetLastError();
            throw ArgumentError(std::string("--device cuda: no usable CUDA device (") +
                                (err != cudaSuccess ? cudaGetErrorString(err) : "none found") + "); use --device cpu");
        }
        // --activations f32 asks for products close to f32: the prefill attention too
        if (o.activations == "f32") cuda_api::set_prefill_attention(cuda_api::PrefillAttention::f32);
        switch (scheme) {
            case QuantScheme::Int8: return build.template operator()<QuantizedLinear<Int8Rowwise, Cuda<>>>();
            case QuantScheme::Q8_0:
                throw ArgumentError("--device cuda runs --quant none or int8; q8_0 is CPU-only (" + o.dir.string() +
                                    (o.quant == "auto" ? " holds q8_0 weights" : "") + ")");
            case QuantScheme::None: break;
        }
        return build.template operator()<DenseLinear<Cuda<>>>();
    }
#endif
    switch (scheme) {
        case QuantScheme::Int8: return build.template operator()<QuantizedLinear<Int8Rowwise, Cpu<>>>();
        case QuantScheme::Q8_0: return build.template operator()<QuantizedLinear<Q8_0, Cpu<>>>();
        case QuantScheme::None: break;
    }
    return build.template operator()<DenseLinear<Cpu<>>>();
}

}  // namespace limarp::programs
