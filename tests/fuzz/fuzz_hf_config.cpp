// libFuzzer target for limarp::io::parse_mistral_config on arbitrary JSON text: it must only ever
// throw FormatError or UnsupportedError, and accepted configs must round-trip through to_hf_json.
#include <cstddef>
#include <cstdint>

#include "limarp/io/hf_config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const char* text = reinterpret_cast<const char*>(data);
    try {
        const auto j = limarp::io::detail::parse_json_strict(text, text + size, "fuzz.json");
        const limarp::MistralConfig c = limarp::io::parse_mistral_config(j, "fuzz.json");
        const limarp::MistralConfig d = limarp::io::parse_mistral_config(limarp::io::to_hf_json(c), "rt");
        if (c.d_model != d.d_model || c.head_dim != d.head_dim || c.window != d.window || c.vocab != d.vocab ||
            c.eos_token_id != d.eos_token_id || c.torch_dtype != d.torch_dtype)
            __builtin_trap();
    } catch (const limarp::FormatError&) {
    } catch (const limarp::UnsupportedError&) {
    }
    return 0;
}
