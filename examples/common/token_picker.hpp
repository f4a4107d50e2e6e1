#pragma once
// Where the programs pick each token: on the GPU when the model runs there (--device cuda) and
// the device sampler takes the settings (penalties, top-k, top-p, min-p, temperature in an order
// it can follow): the logits stay on the device, the pick is part of the model's step (recorded
// into the decode step's CUDA graph) and only the chosen id comes back. Otherwise, and
// with --host-sampling, the logits are copied back and the CPU `generate::Sampler` picks.
#include <cstdint>
#include <cstdio>
#include <optional>
#include <span>
#include <string>
#include <type_traits>

#include "limarp/core/error.hpp"
#include "limarp/generate/generator.hpp"
#include "limarp/generate/sampler.hpp"

#if defined(LIMARP_WITH_CUDA_BACKEND)
#include "limarp/backend/cuda/api.hpp"
#endif

namespace limarp::programs {

/// The help text of the programs' --host-sampling flag.
inline constexpr const char* kHostSamplingHelp =
    "with --device cuda: copy the logits back and sample on the CPU (default: on the GPU, when its sampler takes "
    "the settings: penalties first, then top-k, top-p, min-p, temperature)";

/// The token picker of one program run for a model of type `Model` (see the file comment).
template <class Model>
class TokenPicker {
public:
    /// Picks with `cpu` (which must outlive this), or on the device when `Model` runs on the GPU,
    /// `host_sampling` is false and the device sampler takes `cpu.params()`; when it does not,
    /// says why on stderr and keeps the CPU sampler.
    TokenPicker(generate::Sampler& cpu, bool host_sampling) : cpu_(&cpu) {
#if defined(LIMARP_WITH_CUDA_BACKEND)
        if constexpr (std::is_same_v<typename Model::backend_type, Cuda<>>) {
            if (!host_sampling) {
                try {
                    dev_.emplace(cpu.params());
                } catch (const ArgumentError& e) {
                    std::fprintf(stderr, "limarp: sampling on the CPU (%s)\n", e.what());
                }
            }
        }
#else
        (void)host_sampling;
#endif
    }

    /// True when the tokens are picked on the GPU.
    bool on_device() const noexcept {
#if defined(LIMARP_WITH_CUDA_BACKEND)
        return dev_.has_value();
#else
        return false;
#endif
    }

    /// `gen.generate(prompt, ...)` with this picker.
    generate::GenerationResult generate(generate::Generator<Model>& gen, std::span<const std::int32_t> prompt,
                                        const generate::GenerationOptions& opt,
                                        const generate::TextCallback& on_text = {},
                                        const generate::TokenCallback& on_token = {}) {
#if defined(LIMARP_WITH_CUDA_BACKEND)
        if constexpr (std::is_same_v<typename Model::backend_type, Cuda<>>) {
            if (dev_) return gen.generate(prompt, *dev_, opt, on_text, on_token);  // the pick inside each step
        }
#endif
        return gen.generate(prompt, *cpu_, opt, on_text, on_token);
    }

private:
    generate::Sampler* cpu_;
#if defined(LIMARP_WITH_CUDA_BACKEND)
    std::optional<cuda_api::TokenSampler> dev_;
#endif
};

}  // namespace limarp::programs
