#pragma once
/// \file mistral_model.hpp
/// \brief `MistralModel<B, Block, Head>`: embeddings, decoder blocks, final norm and an untied
/// (or tied) lm_head, with chunked prefill and one-token decode through a rolling `KvCache`.

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "limarp/backend/backend.hpp"
#include "limarp/backend/memory.hpp"
#include "limarp/core/error.hpp"
#include "limarp/core/tensor.hpp"
#include "limarp/generate/step_picker.hpp"
#include "limarp/io/hf_config.hpp"
#include "limarp/io/safetensors.hpp"
#include "limarp/layers/embedding.hpp"
#include "limarp/layers/linear.hpp"
#include "limarp/layers/rms_norm.hpp"
#include "limarp/model/kv_cache.hpp"
#include "limarp/model/mistral_block.hpp"
#include "limarp/model/mistral_config.hpp"

namespace limarp {

/// Which rows of logits `MistralModel::forward` computes.
enum class LogitsRows : std::uint8_t {
    All,   ///< one row per input token: [T, vocab]
    Last,  ///< only the last token's row: [1, vocab]
    None,  ///< no logits (prefill only)
};

/// \cond
namespace detail {
template <class Block, class Fallback>
struct block_norm {
    using type = Fallback;
};
template <class Block, class Fallback>
    requires requires { typename Block::norm_type; }
struct block_norm<Block, Fallback> {
    using type = typename Block::norm_type;
};
}  // namespace detail
/// \endcond

/// A Mistral causal language model composed of `Block`s (default: dense bf16/f32 projections).
/// The final norm has the blocks' norm type (`Block::norm_type`, else `RmsNorm<B>`); `Head` is the
/// output projection and `Embed` the token-embedding layer (e.g. the trained layers of
/// layers/trainable.hpp for full-parameter training).
template <Backend B, class Block = MistralBlock<B>, Linear Head = DenseLinear<B>, class Embed = Embedding<B>>
class MistralModel {
public:
    using backend_type = B;   ///< backend tag
    using block_type = Block; ///< decoder block type
    using head_type = Head;   ///< output projection type
    using embedding_type = Embed;  ///< token-embedding type
    using norm_type = typename detail::block_norm<Block, RmsNorm<B>>::type;  ///< final-norm type
    using cache_type = KvCacheFor<B>;  ///< key/value cache type (`KvCache` on the CPU)

    /// Builds the model from `ctx` (weights named as Hugging Face's MistralForCausalLM).
    /// \throws FormatError / ShapeError naming the tensor when a weight is missing or mis-shaped.
    MistralModel(const MistralConfig& cfg, const LoadContext& ctx) : cfg_(cfg) {
        embed_ = Embed::load(ctx, "model.embed_tokens", cfg.vocab, cfg.d_model);
        blocks_.reserve(static_cast<std::size_t>(cfg.n_layers));
        for (std::int64_t l = 0; l < cfg.n_layers; ++l) blocks_.push_back(Block::load(ctx, cfg, l));
        norm_ = norm_type::load(ctx, "model.norm", cfg.d_model, cfg.rms_norm_eps);
        if (!cfg.tie_word_embeddings || ctx.has("lm_head.weight"))
            head_ = Head::load(ctx, "lm_head", cfg.d_model, cfg.vocab);
        else
            head_ = Head::load(ctx, "model.embed_tokens", cfg.d_model, cfg.vocab);
    }

    /// Opens a Hugging Face model folder (config.json + model.safetensors or a sharded index).
    /// `configure` may edit the `LoadContext` (options for user-defined layers) and the config
    /// (e.g. the window convention) before the weights are loaded.
    template <class Configure = void (*)(MistralConfig&, LoadContext&)>
    static MistralModel from_dir(const std::filesystem::path& dir, Configure configure = [](MistralConfig&, LoadContext&) {}) {
        MistralConfig cfg = io::read_mistral_config(dir);
        auto ckpt = std::make_shared<io::SafeTensorsCheckpoint>(io::SafeTensorsCheckpoint::open(dir));
        LoadContext ctx(std::move(ckpt));
        configure(cfg, ctx);
        return MistralModel(cfg, ctx);
    }

    /// The configuration.
    const MistralConfig& config() const noexcept { return cfg_; }
    /// A fresh cache for this model, its rows of type `cache_dtype()`.
    cache_type make_cache(std::int64_t rewind_slack = 0) const {
        return cache_type(cfg_, rewind_slack, 256, cache_dtype_);
    }
    /// Element type of the caches that `make_cache` makes (F32 unless set).
    DType cache_dtype() const noexcept { return cache_dtype_; }
    /// Sets the element type of later caches: F32, or BF16 (half the memory; host backends only).
    /// \throws ArgumentError for another type or BF16 on a device backend (nothing changed).
    void set_cache_dtype(DType t) {
        cache_type::check_dtype(t);
        cache_dtype_ = t;
    }
    /// The default prefill chunk of backend `B`: 256 tokens on host backends (the CPU's working
    /// set stays in cache), 4096 on device backends, where a 256-token chunk leaves most of the
    /// GPU idle (H200, int8, 4096-token prompt: 15.3k tok/s at 256, 36k at 4096;
    /// benchmarks/NOTES.md, session 17) and 4096 tokens' activations (an estimated 1.3-1.5 GB
    /// for Mistral-7B) fit next to the weights.
    static constexpr std::int64_t kDefaultChunk = B::host_memory ? 256 : 4096;
    /// Number of tokens processed per internal step of a long prefill (`kDefaultChunk` unless set).
    std::int64_t chunk_size() const noexcept { return chunk_; }
    /// Sets the prefill chunk length (>= 1).
    void set_chunk_size(std::int64_t c) { chunk_ = std::max<std::int64_t>(1, c); }

    /// Runs `ids` [T] after the tokens already in `cache`, in chunks, and appends them to it.
    /// Writes logits [T, vocab] (`LogitsRows::All`), [1, vocab] (`Last`) or nothing (`None`)
    /// into host memory, whatever the backend (a device backend copies them out).
    /// \throws ArgumentError when an id is outside the vocabulary (the cache is left unchanged).
    void forward(float* logits, std::span<const std::int32_t> ids, cache_type& cache, LogitsRows rows = LogitsRows::All) {
        check_ids(ids);
        chunks(logits, ids, cache, rows);
    }

    /// Runs `ids` [T >= 1] after the cached tokens as `forward(..., LogitsRows::Last)` does, but
    /// leaves the last row's logits in the backend's memory (a device backend copies nothing out)
    /// and returns `pick(logits, vocab)`, where `logits` [vocab] is that row (scratch the pick may
    /// overwrite, e.g. with penalties). A device sampler as the pick: only its id crosses to the
    /// host.
    /// \throws ArgumentError when `ids` is empty or an id is outside the vocabulary
    template <class Pick>
        requires std::invocable<Pick&, float*, std::int64_t>
    decltype(auto) forward_pick(std::span<const std::int32_t> ids, cache_type& cache, Pick&& pick) {
        if (ids.empty()) throw ArgumentError("forward_pick: no ids");
        check_ids(ids);
        return pick(chunks(nullptr, ids, cache, LogitsRows::Last), static_cast<std::int64_t>(cfg_.vocab));
    }

    /// Runs `ids` [T >= 1] after the cached tokens and picks the next id with `pick`, whose device
    /// work runs inside the step (see `generate::StepPicker`): `pick.prepare(vocab, history)`
    /// first, `pick.enqueue` on the last row's logits after the lm_head (on CUDA a one-token step
    /// records it into the step's graph with the model's kernels), then returns `pick.finish()`.
    /// `history` is what the picker's penalties read (prompt and generated ids).
    /// \throws ArgumentError when `ids` is empty or an id is outside the vocabulary (checked before
    ///         anything runs), or as `pick.prepare`
    std::int32_t forward_pick(std::span<const std::int32_t> ids, cache_type& cache, generate::StepPicker& pick,
                              std::span<const std::int32_t> history) {
        if (ids.empty()) throw ArgumentError("forward_pick: no ids");
        check_ids(ids);
        pick.prepare(static_cast<std::int64_t>(cfg_.vocab), history);
        chunks(nullptr, ids, cache, LogitsRows::Last, &pick);
        return pick.finish();
    }

    /// Convenience: scores `ids` from an empty cache and returns logits [T, vocab].
    Tensor<float> logits(std::span<const std::int32_t> ids) {
        cache_type cache = make_cache();
        Tensor<float> out({static_cast<std::int64_t>(ids.size()), cfg_.vocab});
        forward(out.data(), ids, cache, LogitsRows::All);
        return out;
    }

    /// The decoder blocks.
    std::vector<Block>& blocks() noexcept { return blocks_; }
    /// The token embeddings.
    Embed& embedding() noexcept { return embed_; }
    /// The final norm.
    norm_type& final_norm() noexcept { return norm_; }
    /// The output projection.
    Head& lm_head() noexcept { return head_; }

private:
    void check_ids(std::span<const std::int32_t> ids) const {
        for (std::size_t t = 0; t < ids.size(); ++t)
            if (ids[t] < 0 || ids[t] >= cfg_.vocab)
                throw ArgumentError("token id " + std::to_string(ids[t]) + " at position " + std::to_string(t) +
                                    " is outside the vocabulary [0, " + std::to_string(cfg_.vocab) + ")");
    }

    // `ids` in chunks of chunk_ tokens. Logits rows as `rows` says, into host `logits`, or with a
    // null `logits` (LogitsRows::Last) kept in the backend's memory. Returns the last chunk's
    // logits in the backend's memory (null when it computed none). `pick` (LogitsRows::Last with a
    // null `logits` only) enqueues its pick inside the last chunk's step.
    float* chunks(float* logits, std::span<const std::int32_t> ids, cache_type& cache, LogitsRows rows,
                  generate::StepPicker* pick = nullptr) {
        const std::int64_t T = static_cast<std::int64_t>(ids.size());
        float* y = nullptr;
        for (std::int64_t c0 = 0; c0 < T; c0 += chunk_) {
            const std::int64_t n = std::min(chunk_, T - c0);
            float* out = nullptr;
            std::int64_t first_row = -1;  // no logits
            if (rows == LogitsRows::All) {
                out = logits + c0 * cfg_.vocab;
                first_row = 0;
            } else if (rows == LogitsRows::Last && c0 + n == T) {
                out = logits;
                first_row = n - 1;
            }
            y = step(out, first_row, ids.subspan(static_cast<std::size_t>(c0), static_cast<std::size_t>(n)), cache,
                     c0 + n == T ? pick : nullptr);
        }
        return y;
    }

    // One chunk: logits for rows [first_row, n) written to `out` when it is not null; with a null
    // `out` and first_row >= 0 they stay in the backend's memory. Returns the logits in the
    // backend's memory (null when none were computed). `pick` (one logits row) enqueues its pick
    // on them inside the step (recorded with it).
    float* step(float* out, std::int64_t first_row, std::span<const std::int32_t> ids, cache_type& cache,
                generate::StepPicker* pick = nullptr) {
        using Mem = BackendMemory<B>;
        const std::int64_t n = static_cast<std::int64_t>(ids.size()), d = cfg_.d_model;
        float* x = Mem::ensure(x_, n * d);
        pos_.resize(static_cast<std::size_t>(n));
        std::iota(pos_.begin(), pos_.end(), cache.n_past());
        const std::int64_t* pos = Mem::stage(pos_b_, pos_.data(), n);  // in the backend's memory
        const std::int32_t* id = Mem::stage(ids_b_, ids.data(), n);
        cache.reserve(n);
        const std::int64_t m = n - first_row;
        float* y = out ? Mem::output(logits_b_, out, m * cfg_.vocab)
                       : first_row >= 0 ? Mem::ensure(logits_b_, m * cfg_.vocab) : nullptr;
        // The kernels of the step (recorded once and replayed on CUDA while the key holds).
        const auto key = [&] {
            return StepKey{this, blocks_.empty() ? nullptr : cache.layer(0).data(), cache.capacity(), n,
                           y ? first_row : -1, backend_epoch().load(), pick && y ? pick->version() : 0};
        };
        Mem::run_step(steps_, key(), [&] {
            embed_.forward(x, id, n);
            for (std::size_t l = 0; l < blocks_.size(); ++l)
                blocks_[l].forward(x, n, pos, cache.layer(static_cast<std::int64_t>(l)));
            if (!y) return;
            float* h = x + first_row * d;
            norm_.forward(h, h, m);
            head_.forward(y, h, m);
            if (pick) pick->enqueue(y + (m - 1) * cfg_.vocab, static_cast<std::int64_t>(cfg_.vocab));
        }, key);
        cache.advance(ids);
        if (out) Mem::to_host(out, y, m * cfg_.vocab);
        return y;
    }

    MistralConfig cfg_;
    Embed embed_;
    std::vector<Block> blocks_;
    norm_type norm_;
    Head head_;
    std::int64_t chunk_ = kDefaultChunk;
    DType cache_dtype_ = DType::F32;
    Buffer<B, float> x_, logits_b_;
    Buffer<B, std::int64_t> pos_b_;
    Buffer<B, std::int32_t> ids_b_;
    typename BackendMemory<B>::step_cache steps_;
    std::vector<std::int64_t> pos_;
};

}  // namespace limarp
