#pragma once
/// \file npy.hpp
/// \brief NumPy `.npy` files: writing float32/int32/int64 arrays (format v1.0) and reading
/// '<f4', '<i4', '<i8' arrays (format v1.0, v2.0, v3.0) into a `Tensor<T>`.
///
/// Layout: magic "\x93NUMPY", major, minor, header length (u16 LE for v1, u32 LE for v2/v3), a
/// Python dict literal `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }` padded with
/// spaces and ended by '\n' so that the data starts at a multiple of 64 bytes, then the C-order data.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <type_traits>

#include "limarp/core/error.hpp"
#include "limarp/core/tensor.hpp"
#include "limarp/io/detail/posix_file.hpp"
#include "limarp/io/mmap_file.hpp"

namespace limarp::io {

/// The parsed header of a .npy file.
struct NpyHeader {
    std::string descr;           ///< dtype descriptor, e.g. "<f4"
    bool fortran_order = false;  ///< true for column-major data (not supported by the reader)
    Shape shape;                 ///< extents (empty for a 0-d array)
    std::size_t data_offset = 0; ///< byte offset of the data from the start of the file
};

/// \cond
namespace detail {

class NpyDictParser {
public:
    NpyDictParser(std::string_view s, const std::string& file) : s_(s), file_(file) {}

    NpyHeader parse() {
        NpyHeader h;
        bool have_descr = false, have_order = false, have_shape = false;
        ws();
        expect('{');
        for (;;) {
            ws();
            if (peek() == '}') {
                ++i_;
                break;
            }
            const std::string key = str();
            ws();
            expect(':');
            ws();
            if (key == "descr") {
                h.descr = str();
                have_descr = true;
            } else if (key == "fortran_order") {
                h.fortran_order = boolean();
                have_order = true;
            } else if (key == "shape") {
                h.shape = tuple();
                have_shape = true;
            } else {
                fail("unexpected key '" + key + "'");
            }
            ws();
            if (peek() == ',') {
                ++i_;
                continue;
            }
            ws();
            if (peek() != '}') fail("expected ',' or '}'");
        }
        if (!have_descr) fail("missing key 'descr'");
        if (!have_order) fail("missing key 'fortran_order'");
        if (!have_shape) fail("missing key 'shape'");
        return h;
    }

private:
    [[noreturn]] void fail(const std::string& what) const {
        throw FormatError(file_ + ": npy header: " + what + " at offset " + std::to_string(i_) +
                          " of the header dict");
    }
    char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
    void ws() {
        while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
    }
    void expect(char c) {
        if (peek() != c) fail(std::string("expected '") + c + "'");
        ++i_;
    }
    std::string str() {
        const char q = peek();
        if (q != '\'' && q != '"') fail("expected a quoted string");
        ++i_;
        const std::size_t b = i_;
        while (i_ < s_.size() && s_[i_] != q) ++i_;
        if (i_ >= s_.size()) fail("unterminated string");
        return std::string(s_.substr(b, i_++ - b));
    }
    bool boolean() {
        if (s_.substr(i_, 4) == "True") {
            i_ += 4;
            return true;
        }
        if (s_.substr(i_, 5) == "False") {
            i_ += 5;
            return false;
        }
        fail("expected True or False");
    }
    Shape tuple() {
        Shape r;
        expect('(');
        for (;;) {
            ws();
            if (peek() == ')') {
                ++i_;
                return r;
            }
            if (peek() < '0' || peek() > '9') fail("expected a non-negative integer in 'shape'");
            std::int64_t v = 0;
            while (peek() >= '0' && peek() <= '9') {
                if (__builtin_mul_overflow(v, std::int64_t{10}, &v) ||
                    __builtin_add_overflow(v, std::int64_t{peek() - '0'}, &v))
                    fail("shape extent overflows");
                ++i_;
            }
            if (peek() == 'L') ++i_;  // Python 2 long
            r.push_back(v);
            ws();
            if (peek() == ',') {
                ++i_;
                continue;
            }
            ws();
            if (peek() != ')') fail("expected ',' or ')' in 'shape'");
        }
    }

    std::string_view s_;
    const std::string& file_;
    std::size_t i_ = 0;
};

inline std::size_t npy_descr_size(std::string_view d) {
    if (d == "<f4" || d == "<i4") return 4;
    if (d == "<i8") return 8;
    return 0;
}

/// Builds a v1.0 header (magic..'\n') for `descr` and `shape`, padded so the data is 64-byte aligned.
inline std::string npy_header_v1(std::string_view descr, const Shape& shape) {
    std::string dict = "{'descr': '" + std::string(descr) + "', 'fortran_order': False, 'shape': (";
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (i) dict += ", ";
        dict += std::to_string(shape[i]);
    }
    if (shape.size() == 1) dict += ',';
    dict += "), }";
    const std::size_t pre = 10;  // magic(6) + version(2) + u16 length
    std::size_t total = pre + dict.size() + 1;
    total = (total + 63) / 64 * 64;
    dict.append(total - pre - dict.size() - 1, ' ');
    dict += '\n';
    if (dict.size() > 0xffff) throw ShapeError("npy: header too long for format 1.0 (shape " + shape_str(shape) + ")");
    std::string out("\x93NUMPY\x01\x00", 8);
    out += static_cast<char>(dict.size() & 0xff);
    out += static_cast<char>((dict.size() >> 8) & 0xff);
    return out + dict;
}

inline void write_npy_raw(const std::filesystem::path& path, std::string_view descr, std::size_t elem,
                          const void* data, const Shape& shape) {
    std::uint64_t n = 1;
    for (const std::int64_t d : shape) {
        if (d < 0) throw ShapeError(path.string() + ": negative extent in shape " + shape_str(shape));
        if (__builtin_mul_overflow(n, static_cast<std::uint64_t>(d), &n))
            throw ShapeError(path.string() + ": shape " + shape_str(shape) + " overflows");
    }
    std::uint64_t bytes = 0;
    if (__builtin_mul_overflow(n, static_cast<std::uint64_t>(elem), &bytes))
        throw ShapeError(path.string() + ": shape " + shape_str(shape) + " overflows");
    const std::string h = npy_header_v1(descr, shape);
    AtomicFileWriter w(path);
    w.write(h.data(), h.size());
    if (bytes) w.write(data, static_cast<std::size_t>(bytes));
    w.commit();
}

}  // namespace detail
/// \endcond

/// Parses and validates the header of a .npy image; `name` is used in error messages.
/// Does not check the descr (see `parse_npy`) but does check that the data fits in `size`.
/// \pre `data` points to `size` readable bytes (nullptr allowed when `size` is 0).
/// \throws FormatError for a bad magic, an unknown version, a truncated or malformed header,
///         or data shorter than the shape requires for a known descr.
inline NpyHeader parse_npy_header(const std::byte* data, std::size_t size, const std::string& name) {
    if (size < 10 || std::memcmp(data, "\x93NUMPY", 6) != 0)
        throw FormatError(name + ": not a .npy file (missing the \\x93NUMPY magic)");
    const auto u8 = [&](std::size_t i) { return static_cast<std::size_t>(static_cast<std::uint8_t>(data[i])); };
    const std::size_t major = u8(6);
    std::size_t hlen = 0, pre = 0;
    if (major == 1) {
        hlen = u8(8) | u8(9) << 8;
        pre = 10;
    } else if (major == 2 || major == 3) {
        if (size < 12) throw FormatError(name + ": truncated npy header");
        hlen = u8(8) | u8(9) << 8 | u8(10) << 16 | u8(11) << 24;
        pre = 12;
    } else {
        throw FormatError(name + ": npy format version " + std::to_string(major) + "." + std::to_string(u8(7)) +
                          " (expected 1.0, 2.0 or 3.0)");
    }
    if (hlen > size - pre)
        throw FormatError(name + ": npy header length " + std::to_string(hlen) + " exceeds the file (" +
                          std::to_string(size) + " bytes): truncated file");
    NpyHeader h = detail::NpyDictParser(std::string_view(reinterpret_cast<const char*>(data + pre), hlen), name).parse();
    h.data_offset = pre + hlen;
    const std::size_t elem = detail::npy_descr_size(h.descr);
    if (elem) {
        std::uint64_t n = 1, bytes = 0;
        bool overflow = false;
        for (const std::int64_t d : h.shape) overflow |= __builtin_mul_overflow(n, static_cast<std::uint64_t>(d), &n);
        overflow |= __builtin_mul_overflow(n, static_cast<std::uint64_t>(elem), &bytes);
        if (overflow) throw FormatError(name + ": npy shape " + shape_str(h.shape) + " overflows");
        const std::size_t avail = size - h.data_offset;
        if (bytes > avail)
            throw FormatError(name + ": truncated npy data: shape " + shape_str(h.shape) + " of " + h.descr + " needs " +
                              std::to_string(bytes) + " bytes, the file has " + std::to_string(avail));
        if (bytes < avail)
            throw FormatError(name + ": npy file has " + std::to_string(avail - bytes) +
                              " trailing bytes after the data of shape " + shape_str(h.shape) + " " + h.descr);
    }
    return h;
}

/// Reads a .npy image held in memory into a `Tensor<T>` of the file's shape, converting each
/// element with `static_cast<T>`. Supported descr: '<f4', '<i4', '<i8', C order only.
/// \pre `data` points to `size` readable bytes (nullptr allowed when `size` is 0).
/// \throws FormatError naming `name`: other descr (big-endian, f8, ...), fortran_order True,
///         malformed header, truncated data.
template <class T>
    requires std::is_arithmetic_v<T>
Tensor<T> parse_npy(const std::byte* data, std::size_t size, const std::string& name) {
    const NpyHeader h = parse_npy_header(data, size, name);
    if (detail::npy_descr_size(h.descr) == 0)
        throw FormatError(name + ": npy descr '" + h.descr + "' is not supported (expected '<f4', '<i4' or '<i8')");
    if (h.fortran_order)
        throw FormatError(name + ": npy array is in Fortran order (fortran_order True); expected C order");
    Tensor<T> t(h.shape);
    const std::byte* p = data + h.data_offset;
    const std::int64_t n = t.size();
    auto convert = [&](auto tag) {
        using S = decltype(tag);
        for (std::int64_t i = 0; i < n; ++i) {
            S v;
            std::memcpy(&v, p + static_cast<std::size_t>(i) * sizeof(S), sizeof(S));
            t[i] = static_cast<T>(v);
        }
    };
    if (h.descr == "<f4")
        convert(float{});
    else if (h.descr == "<i4")
        convert(std::int32_t{});
    else
        convert(std::int64_t{});
    return t;
}

/// Reads the .npy file at `path` into a `Tensor<T>` (see `parse_npy`).
/// \throws IoError when the file cannot be read; FormatError as `parse_npy`.
template <class T>
    requires std::is_arithmetic_v<T>
Tensor<T> read_npy(const std::filesystem::path& path) {
    const MmapFile f(path);
    return parse_npy<T>(f.data(), f.size(), path.string());
}

/// Writes a float32 ('<f4') array of `shape` in C order as NPY v1.0, header padded to 64 bytes,
/// atomically (temporary file + fsync + rename).
/// \pre `data` points to numel(shape) floats. \throws ShapeError for a negative extent, IoError.
inline void write_npy(const std::filesystem::path& path, const float* data, const Shape& shape) {
    detail::write_npy_raw(path, "<f4", 4, data, shape);
}

/// Writes an int32 ('<i4') array; otherwise as the float overload.
inline void write_npy(const std::filesystem::path& path, const std::int32_t* data, const Shape& shape) {
    detail::write_npy_raw(path, "<i4", 4, data, shape);
}

/// Writes an int64 ('<i8') array; otherwise as the float overload.
inline void write_npy(const std::filesystem::path& path, const std::int64_t* data, const Shape& shape) {
    detail::write_npy_raw(path, "<i8", 8, data, shape);
}

/// Writes an owning tensor of float, int32 or int64 elements.
template <class T>
void write_npy(const std::filesystem::path& path, const Tensor<T>& t) {
    write_npy(path, t.data(), t.shape());
}

}  // namespace limarp::io

namespace limarp {
using io::parse_npy;  ///< re-export of io::parse_npy
using io::read_npy;   ///< re-export of io::read_npy
using io::write_npy;  ///< re-export of io::write_npy
}  // namespace limarp
