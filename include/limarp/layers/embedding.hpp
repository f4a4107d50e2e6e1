#pragma once
/// \file embedding.hpp
/// \brief `Embedding<B>`: a frozen token-embedding table lookup.

#include <cstdint>
#include <string>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/cpu/ops.hpp"
#include "limarp/backend/memory.hpp"
#include "limarp/core/error.hpp"
#include "limarp/layers/weight.hpp"

namespace limarp {

/// Token embeddings: y[t] = table[ids[t]].
template <Backend B>
class Embedding {
public:
    using backend_type = B;  ///< backend tag

    Embedding() = default;
    /// Wraps `table` [vocab, d], placed in the backend's memory (`BackendMemory<B>::place`).
    explicit Embedding(Weight table) : w_(BackendMemory<B>::place(std::move(table))) {}
    /// Loads "<name>.weight" [vocab, d].
    static Embedding load(const LoadContext& ctx, const std::string& name, std::int64_t vocab, std::int64_t d) {
        return Embedding(ctx.weight(name + ".weight", {vocab, d}));
    }
    /// Number of rows.
    std::int64_t vocab() const noexcept { return w_.shape.empty() ? 0 : w_.shape[0]; }
    /// Width.
    std::int64_t dim() const noexcept { return w_.shape.empty() ? 0 : w_.shape[1]; }
    /// The table [vocab, d].
    const Weight& weight() const noexcept { return w_; }
    /// Gathers rows; `ids` are in the backend's memory (`BackendMemory<B>::stage`).
    /// \throws ArgumentError naming the position when an id is outside [0, vocab) (checked here on
    /// the CPU; a device backend cannot read them, and `MistralModel::forward` checks them first).
    void forward(float* y /*[T, d]*/, const std::int32_t* ids /*[T]*/, std::int64_t T) const {
        if constexpr (B::host_memory)
            for (std::int64_t t = 0; t < T; ++t)
                if (ids[t] < 0 || ids[t] >= vocab())
                    throw ArgumentError("token id " + std::to_string(ids[t]) + " at position " + std::to_string(t) +
                                        " is outside the vocabulary [0, " + std::to_string(vocab()) + ")");
        visit_weight(w_, [&](const auto* w) { ops::embedding_gather(B{}, y, w, ids, T, dim()); });
    }

private:
    Weight w_;
};

}  // namespace limarp
