#pragma once
/// \file protobuf_reader.hpp
/// \brief A minimal reader of the protobuf wire format (enough for SentencePiece's ModelProto).

#include <bit>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "limarp/core/error.hpp"

namespace limarp::text::detail {

/// Protobuf wire types.
enum class WireType : std::uint8_t {
    Varint = 0,           ///< int32, int64, uint32, bool, enum
    Fixed64 = 1,          ///< fixed64, double
    LengthDelimited = 2,  ///< string, bytes, embedded messages, packed fields
    Fixed32 = 5,          ///< fixed32, float
};

/// One field read from a message: its number, wire type and payload.
struct WireField {
    std::uint32_t number = 0;          ///< field number
    WireType type = WireType::Varint;  ///< wire type
    std::uint64_t varint = 0;          ///< payload of Varint, Fixed32 and Fixed64 fields
    std::string_view bytes;            ///< payload of LengthDelimited fields (a view into the input)

    /// The Fixed32 payload as a float.
    float as_float() const noexcept { return std::bit_cast<float>(static_cast<std::uint32_t>(varint)); }
};

/// Reads the fields of one protobuf message in order. Groups (wire types 3, 4) are rejected.
/// Errors throw limarp::FormatError naming `where` (the file and the message path).
class WireReader {
public:
    /// Reads `data`; `where` names the file and message for error messages.
    WireReader(std::string_view data, std::string where) : data_(data), where_(std::move(where)) {}

    /// Reads the next field into `f`; returns false at the end of the message.
    bool next(WireField& f) {
        if (pos_ >= data_.size()) return false;
        const std::uint64_t key = read_varint();
        f.number = static_cast<std::uint32_t>(key >> 3);
        if (f.number == 0) fail("field number 0");
        const auto wt = static_cast<std::uint8_t>(key & 7);
        switch (wt) {
            case 0:
                f.type = WireType::Varint;
                f.varint = read_varint();
                break;
            case 1:
                f.type = WireType::Fixed64;
                f.varint = read_fixed(8);
                break;
            case 2: {
                f.type = WireType::LengthDelimited;
                const std::uint64_t len = read_varint();
                if (len > data_.size() - pos_)
                    fail("length-delimited field " + std::to_string(f.number) + " runs past the end");
                f.bytes = data_.substr(pos_, static_cast<std::size_t>(len));
                pos_ += static_cast<std::size_t>(len);
                break;
            }
            case 5:
                f.type = WireType::Fixed32;
                f.varint = read_fixed(4);
                break;
            default: fail("unsupported wire type " + std::to_string(wt) + " for field " + std::to_string(f.number));
        }
        return true;
    }

    /// Throws FormatError unless `f` has wire type `t` (`name` is the field's name in messages).
    void expect(const WireField& f, WireType t, std::string_view name) const {
        if (f.type != t)
            fail("field " + std::string(name) + " (" + std::to_string(f.number) + ") has wire type " +
                 std::to_string(static_cast<int>(f.type)) + ", expected " + std::to_string(static_cast<int>(t)));
    }

    /// Throws FormatError with `what` and the reader's location.
    [[noreturn]] void fail(const std::string& what) const {
        throw FormatError(where_ + ": malformed protobuf at byte " + std::to_string(pos_) + ": " + what);
    }

    /// The location string given at construction.
    const std::string& where() const noexcept { return where_; }

private:
    std::uint64_t read_varint() {
        std::uint64_t v = 0;
        for (int shift = 0; shift < 64; shift += 7) {
            if (pos_ >= data_.size()) fail("truncated varint");
            const auto b = static_cast<unsigned char>(data_[pos_++]);
            v |= static_cast<std::uint64_t>(b & 0x7F) << shift;
            if (b < 0x80) return v;
        }
        fail("varint longer than 10 bytes");
    }
    std::uint64_t read_fixed(std::size_t n) {
        if (data_.size() - pos_ < n) fail("truncated fixed-size field");
        std::uint64_t v = 0;
        for (std::size_t i = 0; i < n; ++i)
            v |= static_cast<std::uint64_t>(static_cast<unsigned char>(data_[pos_ + i])) << (8 * i);
        pos_ += n;
        return v;
    }

    std::string_view data_;
    std::size_t pos_ = 0;
    std::string where_;
};

}  // namespace limarp::text::detail
