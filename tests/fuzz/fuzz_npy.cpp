// libFuzzer target for limarp::io::parse_npy: FormatError or a tensor whose bytes came from the input.
#include <cstddef>
#include <cstdint>

#include "limarp/io/npy.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto* bytes = reinterpret_cast<const std::byte*>(data);
    try {
        const auto h = limarp::io::parse_npy_header(bytes, size, "fuzz.npy");
        if (h.data_offset > size) __builtin_trap();
        // parse_npy_header checks the data length for known descrs, so the allocation below is
        // bounded by the input size (or is empty for a shape with a zero extent).
        const auto t = limarp::io::parse_npy<double>(bytes, size, "fuzz.npy");
        volatile double s = 0;
        for (std::int64_t i = 0; i < t.size(); ++i) s = s + t[i];
    } catch (const limarp::FormatError&) {
    }
    return 0;
}
