// Tests for limarp/io/safetensors.hpp: writer/reader round trips, byte layout, sharded
// checkpoints and every hostile-file case.
#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "io_test_util.hpp"
#include "limarp/io/safetensors.hpp"

using namespace limarp;
using namespace limarp_io_test;
namespace fs = std::filesystem;

namespace {

/// A safetensors image from a header text (not padded) and `data_bytes` random data bytes.
std::vector<std::byte> make_image(const std::string& header, std::size_t data_bytes, std::uint64_t len_override = 0,
                                  bool use_override = false) {
    std::vector<std::byte> out;
    const std::uint64_t n = use_override ? len_override : header.size();
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::byte>((n >> (8 * i)) & 0xff));
    for (char c : header) out.push_back(static_cast<std::byte>(c));
    for (std::size_t i = 0; i < data_bytes; ++i) out.push_back(static_cast<std::byte>(i * 37 + 11));
    return out;
}

/// Requires parsing `img` to fail with FormatError whose message names the file and every part.
void hostile(const std::vector<std::byte>& img, std::vector<std::string> parts) {
    parts.push_back("hostile.safetensors");
    require_throw_with<FormatError>([&] { io::SafeTensorsFile::parse(img.data(), img.size(), "hostile.safetensors"); },
                                    parts);
}

void hostile(const std::string& header, std::size_t data_bytes, std::vector<std::string> parts) {
    hostile(make_image(header, data_bytes), std::move(parts));
}

std::vector<std::uint16_t> random_bf16(std::mt19937_64& rng, std::size_t n) {
    std::vector<std::uint16_t> v;
    for (float f : random_floats(rng, n)) v.push_back(f32_to_bf16(f));
    return v;
}

bool same_bytes(const io::TensorInfo& t, const void* p, std::size_t n) {
    return t.nbytes == n && (n == 0 || std::memcmp(t.data, p, n) == 0);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(safetensors)

BOOST_AUTO_TEST_CASE(round_trip_mixed_dtypes) {
    auto rng = make_rng();
    TempDir tmp;
    const auto a = random_floats(rng, 3 * 5);
    const auto b = random_bf16(rng, 7);
    std::vector<std::int64_t> c(4);
    for (auto& x : c) x = static_cast<std::int64_t>(rng());
    const auto d = random_bytes(rng, 5);
    const auto e = random_floats(rng, 1);
    std::vector<std::int32_t> f(6);
    for (auto& x : f) x = static_cast<std::int32_t>(rng());

    io::SafeTensorsWriter w;
    w.add("layers.0.a", DType::F32, {3, 5}, a.data(), a.size() * 4);
    w.add("b", DType::BF16, {7}, b.data(), b.size() * 2);
    w.add("c", DType::I64, {2, 2}, c.data(), c.size() * 8);
    w.add("d", DType::U8, {5}, d.data(), d.size());
    w.add("empty", DType::F32, {0, 4}, nullptr, 0);
    w.add("scalar", DType::F32, {}, e.data(), 4);
    w.add("f", DType::I32, {3, 2}, f.data(), f.size() * 4);
    w.set_metadata("format", "pt");
    w.set_metadata("note", "quotes \" and unicode \xc3\xa9");
    BOOST_CHECK_EQUAL(w.size(), 7u);
    const fs::path p = tmp / "m.safetensors";
    w.write(p);
    BOOST_CHECK_EQUAL(fs::file_size(p), w.file_size());

    const auto file = io::SafeTensorsFile::open(p);
    BOOST_CHECK_EQUAL(file.size(), 7u);
    const std::vector<std::string> want{"b", "c", "d", "empty", "f", "layers.0.a", "scalar"};
    BOOST_CHECK(file.names() == want);
    BOOST_CHECK_EQUAL(file.metadata().at("format"), "pt");
    BOOST_CHECK_EQUAL(file.metadata().at("note"), "quotes \" and unicode \xc3\xa9");
    BOOST_CHECK_EQUAL(file.header_size() % 8, 0u);

    const auto& ta = file.get("layers.0.a");
    BOOST_CHECK(ta.dtype == DType::F32);
    BOOST_CHECK(ta.shape == (Shape{3, 5}));
    BOOST_CHECK(same_bytes(ta, a.data(), a.size() * 4));
    BOOST_CHECK_EQUAL(ta.file, p.string());
    const auto va = ta.view<float>();
    BOOST_CHECK(va.shape() == (Shape{3, 5}));
    BOOST_CHECK_EQUAL(va(2, 4), a[14]);
    BOOST_CHECK(same_bytes(file.get("b"), b.data(), b.size() * 2));
    BOOST_CHECK_EQUAL(file.get("b").view<bf16>()(3).bits, b[3]);
    BOOST_CHECK(same_bytes(file.get("c"), c.data(), c.size() * 8));
    BOOST_CHECK_EQUAL(file.get("c").view<std::int64_t>()(1, 1), c[3]);
    BOOST_CHECK(same_bytes(file.get("d"), d.data(), d.size()));
    BOOST_CHECK(same_bytes(file.get("f"), f.data(), f.size() * 4));
    BOOST_CHECK_EQUAL(file.get("empty").nbytes, 0u);
    BOOST_CHECK(file.get("empty").shape == (Shape{0, 4}));
    BOOST_CHECK(file.get("scalar").shape.empty());
    BOOST_CHECK_EQUAL(file.get("scalar").view<float>().size(), 1);
    BOOST_CHECK_EQUAL(*file.get("scalar").view<float>().data(), e[0]);

    // every tensor is aligned to its element size inside the mapping
    for (const auto& [name, t] : file.tensors())
        BOOST_CHECK_MESSAGE(reinterpret_cast<std::uintptr_t>(t.data) % dtype_size(t.dtype) == 0, name);

    // wrong dtype for view: message names tensor, file, found and expected
    require_throw_with<FormatError>([&] { (void)ta.view<double>(); },
                                    {"layers.0.a", p.string(), "F32", "F64"});
    require_throw_with<FormatError>([&] { (void)file.get("nope"); }, {"nope", p.string()});
    BOOST_CHECK(file.contains("b"));
    BOOST_CHECK(!file.contains("nope"));

    // in-memory image equals the written file
    const auto img = w.serialize();
    const auto disk = read_bytes(p);
    BOOST_CHECK(img == disk);

    // copies share the mapping and outlive the original
    io::SafeTensorsFile copy;
    {
        const auto f2 = io::SafeTensorsFile::open(p);
        copy = f2;
    }
    BOOST_CHECK(same_bytes(copy.get("layers.0.a"), a.data(), a.size() * 4));
}

BOOST_AUTO_TEST_CASE(header_layout_matches_reference_library) {
    // Reference order: larger dtypes first, then names; compact JSON; __metadata__ first; space padding.
    io::SafeTensorsWriter w;
    const std::uint16_t h[1] = {0x3f80};
    const float f[2] = {1.5f, -2.f};
    w.add("a", DType::BF16, {1}, h, 2);
    w.add("b", DType::F32, {2}, f, 8);
    w.set_metadata("format", "pt");
    const std::string want_json =
        "{\"__metadata__\":{\"format\":\"pt\"},"
        "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
        "\"a\":{\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[8,10]}}";
    std::string want = want_json + std::string((8 - want_json.size() % 8) % 8, ' ');
    BOOST_CHECK_EQUAL(w.header(), want);
    BOOST_CHECK_EQUAL(w.header().size() % 8, 0u);

    const auto img = w.serialize();
    BOOST_REQUIRE_EQUAL(img.size(), 8 + want.size() + 10);
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<std::uint8_t>(img[i]);
    BOOST_CHECK_EQUAL(n, want.size());
    BOOST_CHECK(std::memcmp(img.data() + 8 + want.size(), f, 8) == 0);
    BOOST_CHECK(std::memcmp(img.data() + 8 + want.size() + 8, h, 2) == 0);

    // no metadata: no __metadata__ key at all
    io::SafeTensorsWriter w2;
    w2.add("x", DType::I8, {1}, "\x05", 1);
    const std::string j2 = "{\"x\":{\"dtype\":\"I8\",\"shape\":[1],\"data_offsets\":[0,1]}}";
    BOOST_CHECK_EQUAL(w2.header(), j2 + std::string((8 - j2.size() % 8) % 8, ' '));
}

BOOST_AUTO_TEST_CASE(reads_unpadded_reference_example) {
    // The example image from the reference Rust library's documentation (header not padded).
    const std::string hdr = "{\"test\":{\"dtype\":\"I32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}";
    BOOST_REQUIRE_EQUAL(hdr.size(), 60u);
    std::vector<std::byte> img = make_image(hdr, 0);
    const std::int32_t vals[4] = {1, -2, 3, 0x7fffffff};
    const auto* vb = reinterpret_cast<const std::byte*>(vals);
    img.insert(img.end(), vb, vb + 16);
    const auto f = io::SafeTensorsFile::parse(img.data(), img.size(), "example");
    const auto& t = f.get("test");
    BOOST_CHECK(t.dtype == DType::I32);
    BOOST_CHECK(t.shape == (Shape{2, 2}));
    BOOST_CHECK(f.metadata().empty());
    std::int32_t got[4];
    std::memcpy(got, t.data, 16);
    BOOST_CHECK_EQUAL(got[3], 0x7fffffff);
    // A 60-byte header leaves the I32 data at offset 68: not aligned in a mapped file; view() refuses
    // rather than forming a misaligned pointer (when the buffer itself is 4-aligned).
    if (reinterpret_cast<std::uintptr_t>(t.data) % 4 != 0)
        require_throw_with<FormatError>([&] { (void)t.view<std::int32_t>(); }, {"test", "aligned"});
}

BOOST_AUTO_TEST_CASE(writer_views_and_borrowed) {
    auto rng = make_rng();
    TempDir tmp;
    Tensor<float> t({4, 3});
    const auto src = random_floats(rng, 12);
    std::copy(src.begin(), src.end(), t.data());
    // transposed (strided) view [3, 4]
    TensorView<const float> tv(t.data(), {3, 4}, {1, 3});
    std::vector<std::int64_t> big(5);
    for (auto& x : big) x = static_cast<std::int64_t>(rng());

    io::SafeTensorsWriter w;
    w.add("t", t);
    w.add("tv", tv);
    w.add("mut", t.view());
    w.add_borrowed("big", DType::I64, {5}, big.data(), big.size() * 8);
    const fs::path p = tmp / "v.safetensors";
    w.write(p);
    const auto f = io::SafeTensorsFile::open(p);
    BOOST_CHECK(same_bytes(f.get("t"), t.data(), 48));
    BOOST_CHECK(same_bytes(f.get("mut"), t.data(), 48));
    const auto v = f.get("tv").view<float>();
    BOOST_REQUIRE(v.shape() == (Shape{3, 4}));
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 4; ++j) BOOST_CHECK_EQUAL(v(i, j), t[j * 3 + i]);
    BOOST_CHECK(same_bytes(f.get("big"), big.data(), 40));
}

BOOST_AUTO_TEST_CASE(writer_rejects_bad_input) {
    io::SafeTensorsWriter w;
    const float x[4] = {1, 2, 3, 4};
    w.add("x", DType::F32, {4}, x, 16);
    require_throw_with<ArgumentError>([&] { w.add("x", DType::F32, {4}, x, 16); }, {"'x'", "twice"});
    require_throw_with<ShapeError>([&] { w.add("y", DType::F32, {4}, x, 12); }, {"'y'", "12", "16"});
    require_throw_with<ShapeError>([&] { w.add("z", DType::F32, {-1, 4}, x, 16); }, {"'z'", "negative"});
    require_throw_with<ShapeError>([&] { w.add("o", DType::F32, {1ll << 62, 1ll << 62}, x, 16); }, {"'o'", "overflows"});
    require_throw_with<ArgumentError>([&] { w.add("__metadata__", DType::F32, {4}, x, 16); }, {"reserved"});
    require_throw_with<ArgumentError>([&] { w.add("", DType::F32, {4}, x, 16); }, {"empty"});
    require_throw_with<ArgumentError>([&] { w.add("bad\xff", DType::F32, {4}, x, 16); }, {"UTF-8"});
    require_throw_with<ArgumentError>([&] { w.set_metadata("k", "bad\xff"); }, {"UTF-8"});
    BOOST_CHECK_EQUAL(w.size(), 1u);
    BOOST_CHECK(w.contains("x"));
    require_throw_with<IoError>([&] { w.write("/nonexistent-dir-limarp/x.safetensors"); }, {"nonexistent-dir-limarp"});
}

BOOST_AUTO_TEST_CASE(write_is_atomic_replacement) {
    auto rng = make_rng();
    TempDir tmp;
    const fs::path p = tmp / "model.safetensors";
    write_text(p, "old contents");
    const auto a = random_floats(rng, 8);
    io::SafeTensorsWriter w;
    w.add("a", DType::F32, {8}, a.data(), 32);
    w.write(p);
    w.write(p);  // twice: replaces again
    std::size_t files = 0;
    for (const auto& e : fs::directory_iterator(tmp.path())) {
        ++files;
        BOOST_CHECK_EQUAL(e.path().filename(), "model.safetensors");
    }
    BOOST_CHECK_EQUAL(files, 1u);
    BOOST_CHECK(same_bytes(io::SafeTensorsFile::open(p).get("a"), a.data(), 32));
}

BOOST_AUTO_TEST_CASE(checkpoint_single_and_sharded) {
    auto rng = make_rng();
    TempDir tmp;
    const auto a = random_floats(rng, 6), b = random_floats(rng, 4), c = random_floats(rng, 10);

    // single file folder
    {
        const fs::path dir = tmp / "single";
        fs::create_directory(dir);
        io::SafeTensorsWriter w;
        w.add("a", DType::F32, {2, 3}, a.data(), 24);
        w.add("b", DType::F32, {4}, b.data(), 16);
        w.set_metadata("format", "pt");
        w.write(dir / "model.safetensors");
        const auto ck = io::SafeTensorsCheckpoint::open(dir);
        BOOST_CHECK_EQUAL(ck.dir(), dir);
        BOOST_CHECK(ck.names() == (std::vector<std::string>{"a", "b"}));
        BOOST_CHECK(same_bytes(ck.get("a"), a.data(), 24));
        BOOST_CHECK_EQUAL(ck.metadata().at("format"), "pt");
        BOOST_CHECK_EQUAL(ck.shards().size(), 1u);
        // the file given directly
        const io::SafeTensorsCheckpoint ck2(dir / "model.safetensors");
        BOOST_CHECK_EQUAL(ck2.dir(), dir);
        BOOST_CHECK(same_bytes(ck2.get("b"), b.data(), 16));
        require_throw_with<FormatError>([&] { (void)ck.get("zz"); }, {"zz", "model.safetensors"});
    }

    // sharded folder with an index (and a stray model.safetensors that must be ignored)
    const fs::path dir = tmp / "sharded";
    fs::create_directory(dir);
    {
        io::SafeTensorsWriter w1, w2;
        w1.add("model.a", DType::F32, {2, 3}, a.data(), 24);
        w1.add("model.b", DType::F32, {4}, b.data(), 16);
        w2.add("model.c", DType::F32, {10}, c.data(), 40);
        w2.add("unlisted", DType::F32, {4}, b.data(), 16);
        w1.write(dir / "model-00001-of-00002.safetensors");
        w2.write(dir / "model-00002-of-00002.safetensors");
        write_text(dir / "model.safetensors.index.json", R"({
  "metadata": {"total_size": 80},
  "weight_map": {
    "model.c": "model-00002-of-00002.safetensors",
    "model.a": "model-00001-of-00002.safetensors",
    "model.b": "model-00001-of-00002.safetensors"
  }
})");
        write_text(dir / "model.safetensors", "garbage");
    }
    const auto ck = io::SafeTensorsCheckpoint::open(dir);
    BOOST_CHECK_EQUAL(ck.dir(), dir);
    BOOST_CHECK(ck.names() == (std::vector<std::string>{"model.a", "model.b", "model.c"}));
    BOOST_CHECK_EQUAL(ck.size(), 3u);
    BOOST_CHECK_EQUAL(ck.shards().size(), 2u);
    BOOST_CHECK(same_bytes(ck.get("model.a"), a.data(), 24));
    BOOST_CHECK(same_bytes(ck.get("model.b"), b.data(), 16));
    BOOST_CHECK(same_bytes(ck.get("model.c"), c.data(), 40));
    BOOST_CHECK(ck.get("model.c").file.find("model-00002-of-00002.safetensors") != std::string::npos);
    BOOST_CHECK(!ck.contains("unlisted"));
    BOOST_CHECK_EQUAL(ck.metadata().at("total_size"), "80");
    // the index given directly
    const auto ck2 = io::SafeTensorsCheckpoint::open(dir / "model.safetensors.index.json");
    BOOST_CHECK(same_bytes(ck2.get("model.c"), c.data(), 40));
    // copies stay valid
    io::SafeTensorsCheckpoint copy = ck;
    BOOST_CHECK(same_bytes(copy.get("model.b"), b.data(), 16));

    // index naming a tensor its shard lacks
    write_text(dir / "model.safetensors.index.json",
               R"({"weight_map": {"model.a": "model-00002-of-00002.safetensors"}})");
    require_throw_with<FormatError>([&] { io::SafeTensorsCheckpoint::open(dir); },
                                    {"model.a", "model-00002-of-00002.safetensors", "index.json"});
    // shard escaping the folder
    write_text(dir / "model.safetensors.index.json", R"({"weight_map": {"model.a": "../x.safetensors"}})");
    require_throw_with<FormatError>([&] { io::SafeTensorsCheckpoint::open(dir); }, {"../x.safetensors"});
    write_text(dir / "model.safetensors.index.json", R"({"weight_map": {"model.a": "/etc/passwd"}})");
    require_throw_with<FormatError>([&] { io::SafeTensorsCheckpoint::open(dir); }, {"/etc/passwd"});
    // missing shard file
    write_text(dir / "model.safetensors.index.json", R"({"weight_map": {"model.a": "missing.safetensors"}})");
    require_throw_with<IoError>([&] { io::SafeTensorsCheckpoint::open(dir); }, {"missing.safetensors"});
    // malformed indexes
    write_text(dir / "model.safetensors.index.json", R"({"metadata": {}})");
    require_throw_with<FormatError>([&] { io::SafeTensorsCheckpoint::open(dir); }, {"weight_map", "index.json"});
    write_text(dir / "model.safetensors.index.json", R"({"weight_map": {"model.a": 3}})");
    require_throw_with<FormatError>([&] { io::SafeTensorsCheckpoint::open(dir); }, {"model.a"});
    write_text(dir / "model.safetensors.index.json",
               R"({"weight_map": {"model.a": "model-00001-of-00002.safetensors", "model.a": "model-00001-of-00002.safetensors"}})");
    require_throw_with<FormatError>([&] { io::SafeTensorsCheckpoint::open(dir); }, {"duplicate", "model.a"});
    write_text(dir / "model.safetensors.index.json", "{not json");
    require_throw_with<FormatError>([&] { io::SafeTensorsCheckpoint::open(dir); }, {"index.json", "JSON"});

    // empty folder
    const fs::path empty = tmp / "empty";
    fs::create_directory(empty);
    require_throw_with<IoError>([&] { io::SafeTensorsCheckpoint::open(empty); },
                                {"empty", "model.safetensors"});
    require_throw_with<IoError>([&] { io::SafeTensorsCheckpoint::open(tmp / "nope.safetensors"); },
                                {"nope.safetensors"});
}

BOOST_AUTO_TEST_CASE(hostile_framing) {
    const std::vector<std::byte> tiny(5, std::byte{0});
    hostile(tiny, {"truncated"});
    hostile(std::vector<std::byte>{}, {"truncated"});
    hostile(make_image("{}", 0, 1000, true), {"header length 1000", "larger"});
    hostile(make_image("{}", 0, ~std::uint64_t{0}, true), {"header length", "limit"});
    hostile(make_image("{}", 0, 0, true), {"header length 0"});
    hostile(make_image("{\"a\":", 0), {"invalid JSON"});
    hostile(make_image("\xff\xfe", 0), {"invalid JSON"});
    hostile(make_image("{\"a\xff\":1}", 0), {"invalid JSON"});
    hostile("[1,2]", 0, {"array", "expected an object"});
    hostile("\"str\"", 0, {"string", "expected an object"});
    std::string deep(200, '[');
    hostile("{\"a\":" + deep + std::string(200, ']') + "}", 0, {"nested"});
}

BOOST_AUTO_TEST_CASE(hostile_metadata_and_entries) {
    hostile(R"({"__metadata__":[1]})", 0, {"__metadata__", "array"});
    hostile(R"({"__metadata__":{"k":1}})", 0, {"__metadata__", "'k'", "expected a string"});
    hostile(R"({"t":5})", 0, {"'t'", "expected an object"});
    hostile(R"({"t":{"shape":[1],"data_offsets":[0,4]}})", 4, {"'t'", "dtype"});
    hostile(R"({"t":{"dtype":"F32","data_offsets":[0,4]}})", 4, {"'t'", "shape"});
    hostile(R"({"t":{"dtype":"F32","shape":[1]}})", 4, {"'t'", "data_offsets"});
    hostile(R"({"t":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}})", 4, {"'t'", "unknown dtype", "F8_E4M3"});
    hostile(R"({"t":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}})", 4, {"'t'", "unknown dtype"});
    hostile(R"({"t":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})", 4, {"'t'", "dtype", "expected a string"});
    hostile(R"({"t":{"dtype":"F32","shape":3,"data_offsets":[0,4]}})", 4, {"'t'", "shape"});
}

BOOST_AUTO_TEST_CASE(hostile_shapes) {
    hostile(R"({"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4, {"'t'", "shape", "non-negative"});
    hostile(R"({"t":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}})", 4, {"'t'", "shape"});
    hostile(R"({"t":{"dtype":"F32","shape":["1"],"data_offsets":[0,4]}})", 4, {"'t'", "shape"});
    hostile(R"({"t":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,4]}})", 4, {"'t'", "shape"});
    hostile(R"({"t":{"dtype":"F32","shape":[4611686018427387904,4611686018427387904],"data_offsets":[0,0]}})", 4,
            {"'t'", "overflows"});
    hostile(R"({"t":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}})", 4, {"'t'", "overflows"});
    // overflow hidden by a later zero extent is still rejected
    hostile(R"({"t":{"dtype":"F32","shape":[4611686018427387904,8,0],"data_offsets":[0,0]}})", 4, {"'t'", "overflows"});
}

BOOST_AUTO_TEST_CASE(hostile_offsets) {
    hostile(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", 8, {"'t'", "data_offsets"});
    hostile(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", 8, {"'t'", "data_offsets"});
    hostile(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":{"a":1}}})", 8, {"'t'", "data_offsets"});
    hostile(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":["0","4"]}})", 8, {"'t'", "data_offsets"});
    hostile(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", 8, {"'t'", "data_offsets"});
    hostile(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", 8, {"'t'", "begin > end"});
    hostile(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})", 8, {"'t'", "beyond the data region of 8"});
    hostile(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[18446744073709551612,18446744073709551615]}})", 8,
            {"'t'", "data_offsets"});
    hostile(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", 8, {"'t'", "4 bytes", "expected 8"});
    hostile(R"({"t":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,8]}})", 16, {"'t'", "expected 12", "BF16"});
    // overlap
    hostile(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
            16, {"overlap", "'a'", "'b'"});
    hostile(R"({"a":{"dtype":"U8","shape":[16],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
            16, {"overlap"});
    hostile(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})",
            16, {"overlap"});
    // duplicates: tensor names, and keys inside an entry
    hostile(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})",
            8, {"duplicate", "\"a\""});
    hostile(R"({"a":{"dtype":"U8","dtype":"F32","shape":[4],"data_offsets":[0,4]}})", 8, {"duplicate", "dtype"});
    hostile(R"({"__metadata__":{"k":"v","k":"w"}})", 0, {"duplicate", "\"k\""});
}

BOOST_AUTO_TEST_CASE(zero_size_tensors_and_gaps_are_accepted) {
    // zero-byte tensors may share offsets with each other and sit inside another tensor's range or at the end
    const std::string hdr =
        R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
        R"("z1":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},)"
        R"("z2":{"dtype":"BF16","shape":[0,3],"data_offsets":[4,4]},)"
        R"("z3":{"dtype":"I64","shape":[5,0],"data_offsets":[16,16]},)"
        R"("b":{"dtype":"U8","shape":[4],"data_offsets":[12,16]}})";
    const auto img = make_image(hdr, 16);
    const auto f = io::SafeTensorsFile::parse(img.data(), img.size(), "z.safetensors");
    BOOST_CHECK_EQUAL(f.size(), 5u);
    BOOST_CHECK_EQUAL(f.get("z3").nbytes, 0u);
    BOOST_CHECK(f.get("z2").shape == (Shape{0, 3}));
    BOOST_CHECK_EQUAL(f.get("b").nbytes, 4u);
    // an empty header object is a valid (empty) file
    const auto e = make_image("{}", 0);
    BOOST_CHECK_EQUAL(io::SafeTensorsFile::parse(e.data(), e.size(), "e").size(), 0u);
}

BOOST_AUTO_TEST_CASE(every_truncation_is_rejected) {
    auto rng = make_rng();
    const auto a = random_floats(rng, 5);
    io::SafeTensorsWriter w;
    w.add("a", DType::F32, {5}, a.data(), 20);
    w.add("b", DType::I8, {3}, "abc", 3);
    const auto img = w.serialize();
    for (std::size_t n = 0; n < img.size(); ++n) {
        std::vector<std::byte> cut(img.begin(), img.begin() + static_cast<std::ptrdiff_t>(n));
        BOOST_CHECK_THROW(io::SafeTensorsFile::parse(cut.data(), cut.size(), "cut"), FormatError);
    }
    BOOST_CHECK_NO_THROW(io::SafeTensorsFile::parse(img.data(), img.size(), "full"));
    // the last cut names the tensor whose data is missing
    std::vector<std::byte> cut(img.begin(), img.end() - 1);
    hostile(cut, {"'b'", "truncated"});
    // and a truncated file on disk fails the same way through open()
    TempDir tmp;
    write_bytes(tmp / "t.safetensors", cut.data(), cut.size());
    require_throw_with<FormatError>([&] { io::SafeTensorsFile::open(tmp / "t.safetensors"); },
                                    {"t.safetensors", "'b'"});
}

BOOST_AUTO_TEST_CASE(random_mutations_never_crash) {
    // A small in-test fuzz: flip bytes of a valid image; parsing either succeeds (and every
    // tensor lies inside the buffer) or throws FormatError. The libFuzzer target goes further.
    auto rng = make_rng();
    io::SafeTensorsWriter w;
    const auto a = random_floats(rng, 6);
    w.add("weight", DType::F32, {2, 3}, a.data(), 24);
    w.add("bias", DType::BF16, {3}, "\x01\x02\x03\x04\x05\x06", 6);
    w.set_metadata("format", "pt");
    const auto img = w.serialize();
    for (int iter = 0; iter < 3000; ++iter) {
        auto m = img;
        const int flips = 1 + static_cast<int>(rng() % 4);
        for (int k = 0; k < flips; ++k) {
            const std::size_t pos = rng() % m.size();
            m[pos] = static_cast<std::byte>(rng() & 0xff);
        }
        if (rng() % 8 == 0) m.resize(rng() % m.size());
        try {
            const auto f = io::SafeTensorsFile::parse(m.data(), m.size(), "mut");
            for (const auto& [name, t] : f.tensors()) {
                BOOST_REQUIRE(t.data >= m.data());
                BOOST_REQUIRE(t.data + t.nbytes <= m.data() + m.size());
            }
        } catch (const FormatError&) {
        }
    }
}

BOOST_AUTO_TEST_SUITE_END()
