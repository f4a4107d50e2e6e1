// libFuzzer target for limarp::io::SafeTensorsFile::parse. Every input must either be rejected
// with FormatError or parse into tensors that lie inside the input; accepted inputs must survive
// a write/re-parse round trip unchanged. Anything else (another exception, ASan/UBSan report) is a bug.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "limarp/io/safetensors.hpp"

namespace {

void check(bool ok) {
    if (!ok) __builtin_trap();
}

// Try a typed view: either it works (dtype matches and the pointer is aligned) or FormatError.
template <class T>
void try_view(const limarp::io::TensorInfo& t, volatile std::uint64_t& sink) {
    try {
        const auto v = t.view<T>();
        check(v.size() == t.numel());
        if (v.size() > 0) {
            T first;
            std::memcpy(&first, v.data(), sizeof(T));
            sink = sink + static_cast<std::uint64_t>(sizeof(first));
        }
    } catch (const limarp::FormatError&) {
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto* bytes = reinterpret_cast<const std::byte*>(data);
    volatile std::uint64_t sink = 0;
    limarp::io::SafeTensorsFile f;
    try {
        f = limarp::io::SafeTensorsFile::parse(bytes, size, "fuzz.safetensors");
    } catch (const limarp::FormatError&) {
        return 0;
    }
    const auto names = f.names();
    check(names.size() == f.size());
    for (const auto& name : names) {
        check(f.contains(name));
        const auto& t = f.get(name);
        check(t.name == name);
        // the tensor lies inside the input; touch every byte
        check(t.nbytes == 0 || (t.data >= bytes && t.data + t.nbytes <= bytes + size));
        check(t.nbytes == static_cast<std::size_t>(t.numel()) * limarp::dtype_size(t.dtype));
        std::uint64_t s = 0;
        for (std::size_t i = 0; i < t.nbytes; ++i) s += static_cast<std::uint8_t>(t.data[i]);
        sink = sink + s;
        try_view<float>(t, sink);
        try_view<limarp::bf16>(t, sink);
        try_view<std::int64_t>(t, sink);
        try_view<std::uint8_t>(t, sink);
    }
    for (const auto& [k, v] : f.metadata()) sink = sink + k.size() + v.size();
    try {
        (void)f.get("\x01 surely absent");
        check(false);
    } catch (const limarp::FormatError&) {
    }

    // Round trip: re-serialize what was accepted and parse it again.
    limarp::io::SafeTensorsWriter w;
    try {
        for (const auto& [name, t] : f.tensors()) w.add_borrowed(name, t.dtype, t.shape, t.data, t.nbytes);
    } catch (const limarp::ArgumentError&) {
        return 0;  // names the writer refuses (the empty name) are valid in files
    }
    for (const auto& [k, v] : f.metadata()) w.set_metadata(k, v);
    const std::vector<std::byte> img = w.serialize();
    const auto g = limarp::io::SafeTensorsFile::parse(img.data(), img.size(), "roundtrip");
    check(g.names() == names);
    check(g.metadata() == f.metadata());
    check(g.header_size() % 8 == 0);
    for (const auto& name : names) {
        const auto& a = f.get(name);
        const auto& b = g.get(name);
        check(a.dtype == b.dtype && a.shape == b.shape && a.nbytes == b.nbytes);
        check(a.nbytes == 0 || std::memcmp(a.data, b.data, a.nbytes) == 0);
        check(static_cast<std::size_t>(b.data - img.data()) % limarp::dtype_size(b.dtype) == 0);  // aligned layout
    }
    return 0;
}
