#pragma once
/// \file safetensors.hpp
/// \brief Reading and writing Hugging Face safetensors files: one file (`SafeTensorsFile`), a model
/// folder with optional sharding (`SafeTensorsCheckpoint`) and an atomic writer (`SafeTensorsWriter`).
///
/// Format: 8 bytes little-endian u64 `N`, then `N` bytes of UTF-8 JSON
/// `{"__metadata__": {str: str}, "<name>": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...}`,
/// then the data region; offsets are relative to the start of the data region.
/// Every file is treated as hostile: all fields are validated before any tensor byte is exposed.

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "limarp/core/dtype.hpp"
#include "limarp/core/error.hpp"
#include "limarp/core/tensor.hpp"
#include "limarp/io/detail/json.hpp"
#include "limarp/io/detail/posix_file.hpp"
#include "limarp/io/mmap_file.hpp"

namespace limarp::io {

static_assert(std::endian::native == std::endian::little,
              "limarp's safetensors reader/writer assumes a little-endian host");

/// Largest JSON header accepted by the reader (the same limit as the reference Rust library).
inline constexpr std::uint64_t kSafeTensorsMaxHeader = 100'000'000;

/// One tensor of a safetensors file: name, element type, shape and a pointer to its bytes
/// (inside the file's mapping, or the caller's buffer for `SafeTensorsFile::parse`).
/// The pointer is valid while the `SafeTensorsFile` (or a copy of it) that produced it is alive.
struct TensorInfo {
    std::string name;                ///< tensor name as in the header
    DType dtype = DType::F32;        ///< element type
    Shape shape;                     ///< extents, outermost first (empty = scalar)
    const std::byte* data = nullptr; ///< first byte of the tensor's data (row-major, little-endian)
    std::size_t nbytes = 0;          ///< byte count == numel(shape) * dtype_size(dtype)
    std::string file;                ///< the file the tensor comes from (for error messages)

    /// Number of elements.
    std::int64_t numel() const { return limarp::numel(shape); }

    /// A typed, contiguous, read-only view of the tensor.
    /// \tparam T element type; `DTypeOf<T>::value` must equal `dtype`.
    /// \throws FormatError naming the tensor, the file, the found and expected dtype when they differ,
    ///         or when the data is not aligned for `T` (possible only in files not written by the
    ///         safetensors library or `SafeTensorsWriter`; read the raw bytes with memcpy instead).
    template <class T>
    TensorView<const T> view() const {
        using U = std::remove_cv_t<T>;
        constexpr DType want = DTypeOf<U>::value;
        if (dtype != want)
            throw FormatError(file + ": tensor '" + name + "' has dtype " + std::string(dtype_name(dtype)) +
                              ", expected " + std::string(dtype_name(want)));
        if (reinterpret_cast<std::uintptr_t>(data) % alignof(U) != 0)
            throw FormatError(file + ": tensor '" + name + "' data is not aligned to " +
                              std::to_string(alignof(U)) + " bytes");
        return TensorView<const T>(reinterpret_cast<const T*>(data), shape);
    }
};

/// \cond
namespace detail {

inline std::string st_where(const std::string& file, const std::string& tensor) {
    return file + ": tensor '" + tensor + "'";
}

/// Reads a non-negative JSON integer that fits in int64. Returns false otherwise.
inline bool json_to_nonneg_i64(const nlohmann::json& j, std::int64_t& out) {
    if (j.is_number_unsigned()) {
        const auto v = j.get<std::uint64_t>();
        if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) return false;
        out = static_cast<std::int64_t>(v);
        return true;
    }
    if (j.is_number_integer()) {
        const auto v = j.get<std::int64_t>();
        if (v < 0) return false;
        out = v;
        return true;
    }
    return false;
}

/// Safetensors writer order: dtype rank, larger (more aligned) first, as the reference library.
inline int st_dtype_rank(DType t) noexcept {
    switch (t) {
        case DType::I64: return 0;
        case DType::F64: return 1;
        case DType::F32: return 2;
        case DType::I32: return 3;
        case DType::BF16: return 4;
        case DType::F16: return 5;
        case DType::I16: return 6;
        case DType::I8: return 7;
        case DType::U8: return 8;
        case DType::Bool: return 9;
    }
    return 10;
}

/// A JSON string literal for `s` (quoted, escaped). \throws ArgumentError when `s` is not valid UTF-8.
inline std::string json_quote(const std::string& s, std::string_view what) {
    try {
        return nlohmann::json(s).dump();
    } catch (const nlohmann::json::exception&) {
        throw ArgumentError(std::string(what) + " is not valid UTF-8");
    }
}

}  // namespace detail
/// \endcond

/// One safetensors file, validated and indexed. Zero copy: each `TensorInfo::data` points into
/// the file's read-only mapping (`open`) or into the caller's buffer (`parse`). Copies share the
/// mapping, which is released when the last copy is destroyed.
///
/// Validation (every failure is a FormatError naming the file and the tensor/field): the header
/// length fits the file and the 100 MB limit; the header is a JSON object without duplicate keys;
/// `__metadata__` is a string->string object; each entry is an object with a known `dtype`
/// string, a `shape` of non-negative integers whose product (times the dtype size) does not
/// overflow, and `data_offsets` of two non-negative integers `[begin, end]`, begin <= end <= the
/// data region's size, `end - begin == numel(shape) * dtype_size`; tensors with bytes do not
/// overlap (zero-byte tensors may sit anywhere within the region). Gaps between tensors and
/// trailing bytes after the last one are accepted.
class SafeTensorsFile {
public:
    /// Tensors by name, sorted.
    using TensorMap = std::map<std::string, TensorInfo, std::less<>>;

    /// An empty file object (no tensors).
    SafeTensorsFile() = default;

    /// Maps and validates the file at `path`.
    /// \throws IoError when it cannot be read, FormatError when its contents are invalid.
    static SafeTensorsFile open(const std::filesystem::path& path) {
        auto file = std::make_shared<const MmapFile>(path);
        SafeTensorsFile f = parse(file->data(), file->size(), path.string());
        f.file_ = std::move(file);
        return f;
    }

    /// Validates a safetensors image held in memory; `name` is used in error messages and
    /// `TensorInfo::file`. Takes no ownership: the returned tensors point into `data`.
    /// \pre `data` points to `size` readable bytes (may be nullptr when `size` is 0) that outlive the result.
    /// \throws FormatError when the image is invalid.
    static SafeTensorsFile parse(const std::byte* data, std::size_t size, std::string name) {
        SafeTensorsFile f;
        f.name_ = std::move(name);
        const std::string& file = f.name_;
        if (size < 8)
            throw FormatError(file + ": truncated: " + std::to_string(size) +
                              " bytes, a safetensors file has at least 8 (the header length)");
        std::uint64_t n = 0;
        for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<std::uint8_t>(data[i]);
        if (n > kSafeTensorsMaxHeader)
            throw FormatError(file + ": header length " + std::to_string(n) + " exceeds the limit of " +
                              std::to_string(kSafeTensorsMaxHeader) + " bytes");
        if (n > size - 8)
            throw FormatError(file + ": header length " + std::to_string(n) + " is larger than the " +
                              std::to_string(size - 8) + " bytes after the length field (truncated file?)");
        if (n == 0) throw FormatError(file + ": empty JSON header (header length 0)");
        const char* hbegin = reinterpret_cast<const char*>(data + 8);
        const nlohmann::json header = detail::parse_json_strict(hbegin, hbegin + n, file + ": header");
        if (!header.is_object())
            throw FormatError(file + ": header is a JSON " + detail::json_type(header) + ", expected an object");

        const std::byte* region = data + 8 + n;
        const std::uint64_t region_size = size - 8 - n;
        f.header_size_ = static_cast<std::size_t>(n);

        struct Span {
            std::uint64_t begin, end;
            const std::string* name;
        };
        std::vector<Span> spans;
        for (auto it = header.begin(); it != header.end(); ++it) {
            const std::string& key = it.key();
            const nlohmann::json& v = it.value();
            if (key == "__metadata__") {
                if (!v.is_object())
                    throw FormatError(file + ": __metadata__ is a JSON " + detail::json_type(v) +
                                      ", expected an object of strings");
                for (auto m = v.begin(); m != v.end(); ++m) {
                    if (!m.value().is_string())
                        throw FormatError(file + ": __metadata__ entry '" + m.key() + "' is a JSON " +
                                          detail::json_type(m.value()) + ", expected a string");
                    f.metadata_.emplace(m.key(), m.value().get<std::string>());
                }
                continue;
            }
            const std::string where = detail::st_where(file, key);
            if (!v.is_object())
                throw FormatError(where + ": entry is a JSON " + detail::json_type(v) +
                                  ", expected an object with dtype, shape and data_offsets");
            TensorInfo t;
            t.name = key;
            t.file = file;
            // dtype
            const auto d = v.find("dtype");
            if (d == v.end()) throw FormatError(where + ": missing field 'dtype'");
            if (!d->is_string())
                throw FormatError(where + ": field 'dtype' is a JSON " + detail::json_type(*d) + ", expected a string");
            t.dtype = parse_dtype(d->get_ref<const std::string&>(), where);
            // shape
            const auto s = v.find("shape");
            if (s == v.end()) throw FormatError(where + ": missing field 'shape'");
            if (!s->is_array())
                throw FormatError(where + ": field 'shape' is a JSON " + detail::json_type(*s) +
                                  ", expected an array of non-negative integers");
            std::uint64_t count = 1;
            bool overflow = false;
            for (const auto& e : *s) {
                std::int64_t ext = 0;
                if (!detail::json_to_nonneg_i64(e, ext))
                    throw FormatError(where + ": shape " + detail::json_excerpt(*s) +
                                      " has an entry that is not a non-negative 64-bit integer");
                t.shape.push_back(ext);
                std::uint64_t next = 0;
                if (__builtin_mul_overflow(count, static_cast<std::uint64_t>(ext), &next)) overflow = true;
                count = next;
            }
            std::uint64_t bytes = 0;
            if (overflow || count > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()) ||
                __builtin_mul_overflow(count, static_cast<std::uint64_t>(dtype_size(t.dtype)), &bytes))
                throw FormatError(where + ": shape " + detail::json_excerpt(*s) + " overflows (element or byte count)");
            // data_offsets
            const auto o = v.find("data_offsets");
            if (o == v.end()) throw FormatError(where + ": missing field 'data_offsets'");
            std::int64_t b = 0, e = 0;
            if (!o->is_array() || o->size() != 2 || !detail::json_to_nonneg_i64((*o)[0], b) ||
                !detail::json_to_nonneg_i64((*o)[1], e))
                throw FormatError(where + ": data_offsets " + detail::json_excerpt(*o) +
                                  ", expected [begin, end] with two non-negative integers");
            const auto ub = static_cast<std::uint64_t>(b), ue = static_cast<std::uint64_t>(e);
            if (ub > ue)
                throw FormatError(where + ": data_offsets [" + std::to_string(ub) + ", " + std::to_string(ue) +
                                  "] has begin > end");
            if (ue > region_size)
                throw FormatError(where + ": data_offsets [" + std::to_string(ub) + ", " + std::to_string(ue) +
                                  "] end beyond the data region of " + std::to_string(region_size) +
                                  " bytes (truncated file?)");
            if (ue - ub != bytes)
                throw FormatError(where + ": data_offsets [" + std::to_string(ub) + ", " + std::to_string(ue) + "] hold " +
                                  std::to_string(ue - ub) + " bytes, expected " + std::to_string(bytes) +
                                  " for shape " + shape_str(t.shape) + " of " + std::string(dtype_name(t.dtype)));
            t.data = region + ub;
            t.nbytes = static_cast<std::size_t>(bytes);
            auto [pos, inserted] = f.tensors_.emplace(key, std::move(t));
            if (!inserted) throw FormatError(where + ": duplicate tensor name");  // unreachable: JSON keys are unique
            if (ue > ub) spans.push_back({ub, ue, &pos->first});
        }
        std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
        for (std::size_t i = 1; i < spans.size(); ++i)
            if (spans[i].begin < spans[i - 1].end)
                throw FormatError(detail::st_where(file, *spans[i].name) + ": data_offsets [" +
                                  std::to_string(spans[i].begin) + ", " + std::to_string(spans[i].end) +
                                  "] overlap tensor '" + *spans[i - 1].name + "' [" +
                                  std::to_string(spans[i - 1].begin) + ", " + std::to_string(spans[i - 1].end) + "]");
        return f;
    }

    /// True when the file holds a tensor called `name`.
    bool contains(std::string_view name) const { return tensors_.find(name) != tensors_.end(); }

    /// The tensor called `name`. \throws FormatError naming the tensor and the file when absent.
    const TensorInfo& get(std::string_view name) const {
        const auto it = tensors_.find(name);
        if (it == tensors_.end())
            throw FormatError(name_ + ": no tensor named '" + std::string(name) + "' (the file has " +
                              std::to_string(tensors_.size()) + " tensors)");
        return it->second;
    }

    /// The tensor names, sorted.
    std::vector<std::string> names() const {
        std::vector<std::string> r;
        r.reserve(tensors_.size());
        for (const auto& [k, v] : tensors_) r.push_back(k);
        return r;
    }

    /// All tensors, by name (sorted).
    const TensorMap& tensors() const noexcept { return tensors_; }
    /// Number of tensors.
    std::size_t size() const noexcept { return tensors_.size(); }
    /// The `__metadata__` string map (empty when absent).
    const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
    /// The file name given to `open`/`parse`.
    const std::string& file() const noexcept { return name_; }
    /// Length in bytes of the JSON header (the `N` of the format).
    std::size_t header_size() const noexcept { return header_size_; }

private:
    std::shared_ptr<const MmapFile> file_;
    std::string name_;
    std::size_t header_size_ = 0;
    TensorMap tensors_;
    std::map<std::string, std::string> metadata_;
};

/// A model's weights in a folder: either one `model.safetensors`, or shards listed by
/// `model.safetensors.index.json` (`{"weight_map": {tensor name: shard file name}}`), or a single
/// `.safetensors` file / index `.json` file given directly. Tensors come from the file(s) zero copy.
/// For an index, exactly the tensors of `weight_map` are visible; each must exist in its shard.
class SafeTensorsCheckpoint {
public:
    /// Name of the single-file checkpoint in a folder.
    static constexpr const char* kSingleFile = "model.safetensors";
    /// Name of the shard index in a folder.
    static constexpr const char* kIndexFile = "model.safetensors.index.json";

    /// An empty checkpoint (no tensors).
    SafeTensorsCheckpoint() = default;

    /// Same as `open(path)`.
    explicit SafeTensorsCheckpoint(const std::filesystem::path& path) : SafeTensorsCheckpoint(open(path)) {}

    /// Opens a folder (index preferred over the single file), a `.json` index or a `.safetensors` file.
    /// \throws IoError when neither file exists or a file cannot be read; FormatError when the index
    ///         or a shard is invalid, a shard name escapes the folder, or a tensor of the index is
    ///         missing from its shard.
    static SafeTensorsCheckpoint open(const std::filesystem::path& path) {
        namespace fs = std::filesystem;
        SafeTensorsCheckpoint c;
        std::error_code ec;
        if (fs::is_directory(path, ec)) {
            c.dir_ = path;
            if (fs::exists(path / kIndexFile, ec)) {
                c.load_index(path / kIndexFile);
            } else if (fs::exists(path / kSingleFile, ec)) {
                c.load_single(path / kSingleFile);
            } else {
                throw IoError(path.string() + ": no " + kIndexFile + " or " + kSingleFile + " in this folder");
            }
            return c;
        }
        c.dir_ = path.parent_path();
        if (path.extension() == ".json")
            c.load_index(path);
        else
            c.load_single(path);
        return c;
    }

    /// True when the checkpoint has a tensor called `name`.
    bool contains(std::string_view name) const { return where_.find(name) != where_.end(); }

    /// The tensor called `name`. \throws FormatError naming the tensor and the checkpoint when absent.
    const TensorInfo& get(std::string_view name) const {
        const auto it = where_.find(name);
        if (it == where_.end())
            throw FormatError(source_ + ": no tensor named '" + std::string(name) + "' (the checkpoint has " +
                              std::to_string(where_.size()) + " tensors)");
        return shards_[it->second].get(name);
    }

    /// The tensor names, sorted.
    std::vector<std::string> names() const {
        std::vector<std::string> r;
        r.reserve(where_.size());
        for (const auto& [k, v] : where_) r.push_back(k);
        return r;
    }

    /// Number of tensors.
    std::size_t size() const noexcept { return where_.size(); }
    /// The folder holding the checkpoint's files.
    const std::filesystem::path& dir() const noexcept { return dir_; }
    /// The opened files (one, or one per distinct shard, in shard-name order).
    const std::vector<SafeTensorsFile>& shards() const noexcept { return shards_; }
    /// Metadata: the file's `__metadata__` for one file; for an index, its "metadata" object
    /// (non-string values such as total_size are rendered as JSON text).
    const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }

private:
    void load_single(const std::filesystem::path& file) {
        source_ = file.string();
        shards_.push_back(SafeTensorsFile::open(file));
        metadata_ = shards_.back().metadata();
        for (const auto& [k, v] : shards_.back().tensors()) where_.emplace(k, 0);
    }

    void load_index(const std::filesystem::path& index) {
        source_ = index.string();
        const MmapFile text(index);
        const char* b = reinterpret_cast<const char*>(text.data());
        const nlohmann::json j = detail::parse_json_strict(b, b + text.size(), source_);
        if (!j.is_object())
            throw FormatError(source_ + ": index is a JSON " + detail::json_type(j) + ", expected an object");
        if (const auto m = j.find("metadata"); m != j.end() && m->is_object())
            for (auto e = m->begin(); e != m->end(); ++e)
                metadata_.emplace(e.key(), e->is_string() ? e->get<std::string>() : detail::json_excerpt(*e));
        const auto wm = j.find("weight_map");
        if (wm == j.end()) throw FormatError(source_ + ": missing field 'weight_map'");
        if (!wm->is_object())
            throw FormatError(source_ + ": field 'weight_map' is a JSON " + detail::json_type(*wm) +
                              ", expected an object of tensor name -> shard file");
        std::map<std::string, std::size_t> shard_ix;  // shard file name -> index in shards_
        for (auto e = wm->begin(); e != wm->end(); ++e) {
            if (!e->is_string())
                throw FormatError(source_ + ": weight_map entry '" + e.key() + "' is a JSON " +
                                  detail::json_type(*e) + ", expected a shard file name");
            shard_ix.emplace(e->get<std::string>(), 0);
        }
        std::size_t i = 0;
        for (auto& [shard, ix] : shard_ix) {
            const std::filesystem::path rel(shard);
            bool bad = shard.empty() || rel.is_absolute() || rel.has_root_path();
            for (const auto& part : rel)
                if (part == "..") bad = true;
            if (bad)
                throw FormatError(source_ + ": weight_map shard file '" + shard +
                                  "' must be a relative path inside the checkpoint folder");
            shards_.push_back(SafeTensorsFile::open(dir_ / rel));
            ix = i++;
        }
        for (auto e = wm->begin(); e != wm->end(); ++e) {
            const std::size_t ix = shard_ix.at(e->get<std::string>());
            if (!shards_[ix].contains(e.key()))
                throw FormatError(source_ + ": tensor '" + e.key() + "' is listed in weight_map for shard '" +
                                  e->get<std::string>() + "' but that file does not contain it");
            where_.emplace(e.key(), ix);
        }
    }

    std::filesystem::path dir_;
    std::string source_;
    std::vector<SafeTensorsFile> shards_;
    std::map<std::string, std::size_t, std::less<>> where_;  // tensor -> index in shards_
    std::map<std::string, std::string> metadata_;
};

/// Builds a safetensors file in memory and writes it atomically, byte-compatible with the
/// reference (Python/Rust) safetensors library: the JSON header is compact, `__metadata__`
/// first (keys sorted), padded with spaces to a multiple of 8 bytes; tensors are laid out
/// contiguously in the reference library's order — by dtype size, largest first (I64, F64, F32,
/// I32, BF16, F16, I16, I8, U8, BOOL), then by name — so every tensor is aligned to its element
/// size when the file is mapped. When all tensors share one dtype this is plain name order.
class SafeTensorsWriter {
public:
    /// Adds a tensor, copying its `nbytes` bytes (the caller's buffer may be freed right after).
    /// \pre `data` points to `nbytes` bytes in row-major order, little-endian elements.
    /// \throws ArgumentError for an empty, `__metadata__`, non-UTF-8 or already added name;
    ///         ShapeError when a shape extent is negative or `nbytes != numel(shape) * dtype_size(dtype)`.
    void add(std::string name, DType dtype, Shape shape, const void* data, std::size_t nbytes) {
        Entry& e = insert(std::move(name), dtype, std::move(shape), nbytes);
        e.owned.resize(nbytes);
        if (nbytes) std::memcpy(e.owned.data(), data, nbytes);
        e.ptr = e.owned.data();
    }

    /// Adds a tensor without copying: only the pointer is kept and read by `write`/`serialize`.
    /// Use it for large tensors (a merged 7B model) to avoid doubling memory.
    /// \pre `data` points to `nbytes` bytes that stay valid and unchanged until the last
    ///      `write`/`serialize` call. \throws as `add`.
    void add_borrowed(std::string name, DType dtype, Shape shape, const void* data, std::size_t nbytes) {
        Entry& e = insert(std::move(name), dtype, std::move(shape), nbytes);
        e.ptr = static_cast<const std::byte*>(data);
    }

    /// Adds a copy of a typed view (any strides; elements are gathered in row-major order).
    /// \throws as `add`.
    template <class T>
    void add(std::string name, TensorView<const T> v) {
        using U = std::remove_cv_t<T>;
        const std::int64_t n = v.size();
        if (n < 0) throw ShapeError("safetensors writer: tensor '" + name + "': negative extent in " + shape_str(v.shape()));
        const std::size_t nbytes = static_cast<std::size_t>(n) * sizeof(U);
        Entry& e = insert(std::move(name), DTypeOf<U>::value, v.shape(), nbytes);
        e.owned.resize(nbytes);
        e.ptr = e.owned.data();
        if (n == 0) return;
        if (v.is_contiguous()) {
            std::memcpy(e.owned.data(), v.data(), nbytes);
            return;
        }
        const Shape& sh = v.shape();
        const Shape& st = v.strides();
        std::vector<std::int64_t> idx(sh.size(), 0);
        for (std::int64_t k = 0; k < n; ++k) {
            std::int64_t off = 0;
            for (std::size_t d = 0; d < sh.size(); ++d) off += idx[d] * st[d];
            std::memcpy(e.owned.data() + static_cast<std::size_t>(k) * sizeof(U), v.data() + off, sizeof(U));
            for (std::size_t d = sh.size(); d-- > 0;) {
                if (++idx[d] < sh[d]) break;
                idx[d] = 0;
            }
        }
    }

    /// Adds a copy of a mutable typed view. \throws as `add`.
    template <class T>
        requires(!std::is_const_v<T>)
    void add(std::string name, TensorView<T> v) {
        add(std::move(name), static_cast<TensorView<const T>>(v));
    }

    /// Adds a copy of an owning tensor. \throws as `add`.
    template <class T>
    void add(std::string name, const Tensor<T>& t) {
        add(std::move(name), t.view());
    }

    /// Sets (or replaces) a `__metadata__` entry, e.g. `set_metadata("format", "pt")`.
    /// \throws ArgumentError when key or value is not valid UTF-8.
    void set_metadata(std::string key, std::string value) {
        detail::json_quote(key, "safetensors writer: metadata key");
        detail::json_quote(value, "safetensors writer: metadata value for '" + key + "'");
        metadata_[std::move(key)] = std::move(value);
    }

    /// True when a tensor called `name` was added.
    bool contains(std::string_view name) const { return entries_.find(name) != entries_.end(); }
    /// Number of tensors added.
    std::size_t size() const noexcept { return entries_.size(); }

    /// The padded JSON header (without the 8-byte length) that `write` would produce.
    std::string header() const {
        std::string h = "{";
        bool first = true;
        if (!metadata_.empty()) {
            h += "\"__metadata__\":{";
            for (const auto& [k, v] : metadata_) {
                if (!first) h += ',';
                first = false;
                h += detail::json_quote(k, "metadata key") + ":" + detail::json_quote(v, "metadata value");
            }
            h += '}';
            first = false;
        }
        std::uint64_t offset = 0;
        for (const auto* e : ordered()) {
            if (!first) h += ',';
            first = false;
            h += e->quoted_name + ":{\"dtype\":\"" + std::string(dtype_name(e->dtype)) + "\",\"shape\":[";
            for (std::size_t i = 0; i < e->shape.size(); ++i) {
                if (i) h += ',';
                h += std::to_string(e->shape[i]);
            }
            h += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + e->nbytes) + "]}";
            offset += e->nbytes;
        }
        h += '}';
        h.append((8 - h.size() % 8) % 8, ' ');
        return h;
    }

    /// Size in bytes of the file `write` would produce.
    std::size_t file_size() const {
        std::size_t n = 8 + header().size();
        for (const auto& [k, e] : entries_) n += e.nbytes;
        return n;
    }

    /// The whole file image in memory (for tests and small files).
    std::vector<std::byte> serialize() const {
        const std::string h = header();
        std::vector<std::byte> out;
        out.reserve(file_size());
        const std::uint64_t n = h.size();
        for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::byte>((n >> (8 * i)) & 0xff));
        const auto* hb = reinterpret_cast<const std::byte*>(h.data());
        out.insert(out.end(), hb, hb + h.size());
        for (const auto* e : ordered()) out.insert(out.end(), e->ptr, e->ptr + e->nbytes);
        return out;
    }

    /// Writes the file atomically: a temporary file in the same folder, fsync, then rename over `path`.
    /// \throws IoError naming the file when it cannot be written (the old file, if any, is left intact).
    void write(const std::filesystem::path& path) const {
        const std::string h = header();
        detail::AtomicFileWriter w(path);
        unsigned char len[8];
        const std::uint64_t n = h.size();
        for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>((n >> (8 * i)) & 0xff);
        w.write(len, 8);
        w.write(h.data(), h.size());
        for (const auto* e : ordered()) w.write(e->ptr, e->nbytes);
        w.commit();
    }

private:
    struct Entry {
        DType dtype;
        Shape shape;
        std::size_t nbytes;
        std::string quoted_name;
        const std::byte* ptr = nullptr;
        std::vector<std::byte> owned;
    };

    Entry& insert(std::string name, DType dtype, Shape shape, std::size_t nbytes) {
        const std::string where = "safetensors writer: tensor '" + name + "'";
        if (name.empty()) throw ArgumentError("safetensors writer: empty tensor name");
        if (name == "__metadata__") throw ArgumentError(where + ": the name is reserved for metadata");
        if (entries_.find(name) != entries_.end()) throw ArgumentError(where + ": added twice");
        std::uint64_t count = 1;
        for (const std::int64_t d : shape) {
            if (d < 0) throw ShapeError(where + ": negative extent in shape " + shape_str(shape));
            if (__builtin_mul_overflow(count, static_cast<std::uint64_t>(d), &count))
                throw ShapeError(where + ": shape " + shape_str(shape) + " overflows");
        }
        std::uint64_t bytes = 0;
        if (__builtin_mul_overflow(count, static_cast<std::uint64_t>(dtype_size(dtype)), &bytes) || bytes != nbytes)
            throw ShapeError(where + ": " + std::to_string(nbytes) + " bytes given, expected " +
                             std::to_string(bytes) + " for shape " + shape_str(shape) + " of " +
                             std::string(dtype_name(dtype)));
        Entry e{dtype, std::move(shape), nbytes, detail::json_quote(name, where + ": name"), nullptr, {}};
        return entries_.emplace(std::move(name), std::move(e)).first->second;
    }

    std::vector<const Entry*> ordered() const {
        std::vector<std::pair<const std::string*, const Entry*>> v;
        v.reserve(entries_.size());
        for (const auto& [k, e] : entries_) v.emplace_back(&k, &e);
        std::stable_sort(v.begin(), v.end(), [](const auto& a, const auto& b) {
            return detail::st_dtype_rank(a.second->dtype) < detail::st_dtype_rank(b.second->dtype);
        });  // entries_ is name-sorted, so ties stay in name order
        std::vector<const Entry*> r;
        r.reserve(v.size());
        for (const auto& p : v) r.push_back(p.second);
        return r;
    }

    std::map<std::string, Entry, std::less<>> entries_;
    std::map<std::string, std::string> metadata_;
};

}  // namespace limarp::io

namespace limarp {
using io::SafeTensorsCheckpoint;  ///< re-export of io::SafeTensorsCheckpoint
using io::SafeTensorsFile;        ///< re-export of io::SafeTensorsFile
using io::SafeTensorsWriter;      ///< re-export of io::SafeTensorsWriter
using io::TensorInfo;             ///< re-export of io::TensorInfo
}  // namespace limarp
