#pragma once
/// \file mistral_config.hpp
/// \brief Hyper-parameters of a Mistral-architecture model (the fields of Hugging Face's MistralConfig).

#include <cstdint>
#include <optional>
#include <string>

namespace limarp {

/// Which keys a query at position i sees under a sliding window of size W.
enum class WindowConvention : std::uint8_t {
    /// Hugging Face transformers: keys i-W+1 .. i (W keys, the query's own included). The default.
    HuggingFace,
    /// mistral-inference and older flash-attention code: keys i-W .. i (W+1 keys).
    MistralInference,
};

/// Mistral hyper-parameters. Names follow the design card (d_model, n_heads, ...);
/// the comments give the config.json field each one comes from.
struct MistralConfig {
    std::int64_t vocab = 32000;          ///< vocab_size
    std::int64_t d_model = 4096;         ///< hidden_size
    std::int64_t d_ff = 14336;           ///< intermediate_size
    std::int64_t n_layers = 32;          ///< num_hidden_layers
    std::int64_t n_heads = 32;           ///< num_attention_heads
    std::int64_t n_kv_heads = 8;         ///< num_key_value_heads
    std::int64_t head_dim = 128;         ///< head_dim (default hidden_size / num_attention_heads)
    double rms_norm_eps = 1e-5;          ///< rms_norm_eps
    double rope_theta = 10000.0;         ///< rope_theta, or rope_parameters.rope_theta
    std::optional<std::int64_t> window = 4096;  ///< sliding_window; nullopt = full attention
    std::int64_t max_position_embeddings = 32768;  ///< max_position_embeddings
    bool tie_word_embeddings = false;    ///< tie_word_embeddings (lm_head shares embed_tokens)
    std::int64_t bos_token_id = 1;       ///< bos_token_id
    std::int64_t eos_token_id = 2;       ///< eos_token_id (first one when config.json has a list)
    std::string torch_dtype = "bfloat16";  ///< dtype / torch_dtype as written in config.json
    WindowConvention window_convention = WindowConvention::HuggingFace;  ///< not in config.json; a switch

    /// Number of keys a query sees (its own included); 0 means unlimited (full causal attention).
    std::int64_t window_keys() const noexcept {
        if (!window) return 0;
        return *window + (window_convention == WindowConvention::MistralInference ? 1 : 0);
    }
    /// n_heads * head_dim: width of the attention output.
    std::int64_t q_dim() const noexcept { return n_heads * head_dim; }
    /// n_kv_heads * head_dim: width of k and v.
    std::int64_t kv_dim() const noexcept { return n_kv_heads * head_dim; }
};

}  // namespace limarp
