// Tests for limarp/io/npy.hpp: round trips, the exact v1.0 header bytes, and rejected files.
#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "io_test_util.hpp"
#include "limarp/io/npy.hpp"

using namespace limarp;
using namespace limarp_io_test;

namespace {

/// A hand-made v1.0 .npy image with an arbitrary header dict and payload.
std::vector<std::byte> npy_image(const std::string& dict, const void* payload, std::size_t n) {
    std::string h = dict;
    while ((10 + h.size() + 1) % 64) h += ' ';
    h += '\n';
    std::string s("\x93NUMPY\x01\x00", 8);
    s += static_cast<char>(h.size() & 0xff);
    s += static_cast<char>(h.size() >> 8);
    s += h;
    std::vector<std::byte> out(s.size() + n);
    std::memcpy(out.data(), s.data(), s.size());
    if (n) std::memcpy(out.data() + s.size(), payload, n);
    return out;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(npy)

BOOST_AUTO_TEST_CASE(float_round_trip) {
    auto rng = make_rng();
    TempDir tmp;
    for (const Shape& shape : {Shape{2, 3, 4}, Shape{5}, Shape{}, Shape{0, 3}, Shape{1, 1, 1, 7}}) {
        const auto n = static_cast<std::size_t>(numel(shape));
        const auto v = random_floats(rng, n);
        const auto p = tmp / "a.npy";
        io::write_npy(p, v.data(), shape);
        const auto t = io::read_npy<float>(p);
        BOOST_CHECK(t.shape() == shape);
        for (std::size_t i = 0; i < n; ++i) BOOST_REQUIRE_EQUAL(t[static_cast<std::int64_t>(i)], v[i]);
        BOOST_CHECK_EQUAL(std::filesystem::file_size(p) % 64, (n * 4) % 64);
        const auto d = io::read_npy<double>(p);
        if (n) BOOST_CHECK_EQUAL(d[0], static_cast<double>(v[0]));
    }
}

BOOST_AUTO_TEST_CASE(int_round_trip_and_conversion) {
    auto rng = make_rng();
    TempDir tmp;
    std::vector<std::int32_t> a(12);
    for (auto& x : a) x = static_cast<std::int32_t>(rng() % 200001) - 100000;
    std::vector<std::int64_t> b(6);
    for (auto& x : b) x = static_cast<std::int64_t>(rng() % 32002);
    io::write_npy(tmp / "a.npy", a.data(), {3, 4});
    io::write_npy(tmp / "b.npy", b.data(), {6});
    const auto ta = io::read_npy<std::int32_t>(tmp / "a.npy");
    const auto tf = io::read_npy<float>(tmp / "a.npy");
    const auto tb = io::read_npy<std::int64_t>(tmp / "b.npy");
    const auto tbf = read_npy<float>(tmp / "b.npy");  // re-exported name
    BOOST_CHECK(ta.shape() == (Shape{3, 4}));
    BOOST_CHECK(tb.shape() == (Shape{6}));
    for (int i = 0; i < 12; ++i) {
        BOOST_CHECK_EQUAL(ta[i], a[static_cast<std::size_t>(i)]);
        BOOST_CHECK_EQUAL(tf[i], static_cast<float>(a[static_cast<std::size_t>(i)]));
    }
    for (int i = 0; i < 6; ++i) {
        BOOST_CHECK_EQUAL(tb[i], b[static_cast<std::size_t>(i)]);
        BOOST_CHECK_EQUAL(tbf[i], static_cast<float>(b[static_cast<std::size_t>(i)]));
    }
    // Tensor overload
    Tensor<float> t({2, 2}, 0.25f);
    io::write_npy(tmp / "t.npy", t);
    BOOST_CHECK_EQUAL(io::read_npy<float>(tmp / "t.npy")[3], 0.25f);
}

BOOST_AUTO_TEST_CASE(header_byte_layout) {
    TempDir tmp;
    const float v[6] = {0.f, 1.f, 2.f, 3.f, 4.f, 5.f};
    io::write_npy(tmp / "h.npy", v, {2, 3});
    const auto bytes = read_bytes(tmp / "h.npy");
    // magic, version 1.0, header length 118 (0x76) so the data starts at 128
    const unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0x76, 0};
    BOOST_REQUIRE_EQUAL(bytes.size(), 128u + 24u);
    BOOST_CHECK(std::memcmp(bytes.data(), pre, 10) == 0);
    const std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
    const std::string hdr(reinterpret_cast<const char*>(bytes.data()) + 10, 118);
    BOOST_CHECK_EQUAL(hdr, dict + std::string(118 - dict.size() - 1, ' ') + "\n");
    BOOST_CHECK(std::memcmp(bytes.data() + 128, v, 24) == 0);

    // 1-D shapes print as "(5,)", 0-d as "()"
    io::write_npy(tmp / "o.npy", v, {5});
    const auto b1 = read_bytes(tmp / "o.npy");
    BOOST_CHECK(std::string(reinterpret_cast<const char*>(b1.data()) + 10, 60).find("'shape': (5,), }") !=
                std::string::npos);
    io::write_npy(tmp / "s.npy", v, {});
    const auto b0 = read_bytes(tmp / "s.npy");
    BOOST_CHECK(std::string(reinterpret_cast<const char*>(b0.data()) + 10, 60).find("'shape': (), }") !=
                std::string::npos);
    BOOST_CHECK_EQUAL(b0.size(), 128u + 4u);  // 10 + 55-byte dict + newline > 64
}

BOOST_AUTO_TEST_CASE(reads_other_writers_headers) {
    // double quotes, different key order, v2.0 length field, Python 2 long suffix
    const std::int32_t v[3] = {7, -8, 9};
    auto img = npy_image("{\"shape\": (3L,), \"fortran_order\": False, \"descr\": \"<i4\"}", v, 12);
    auto t = io::parse_npy<std::int64_t>(img.data(), img.size(), "x.npy");
    BOOST_CHECK(t.shape() == (Shape{3}));
    BOOST_CHECK_EQUAL(t[1], -8);
    // v2.0: 4-byte length
    std::string h = "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }";
    while ((12 + h.size() + 1) % 64) h += ' ';
    h += '\n';
    std::string s("\x93NUMPY\x02\x00", 8);
    for (int i = 0; i < 4; ++i) s += static_cast<char>((h.size() >> (8 * i)) & 0xff);
    s += h;
    std::vector<std::byte> img2(s.size() + 12);
    std::memcpy(img2.data(), s.data(), s.size());
    std::memcpy(img2.data() + s.size(), v, 12);
    BOOST_CHECK_EQUAL(io::parse_npy<int>(img2.data(), img2.size(), "v2.npy")[2], 9);
}

BOOST_AUTO_TEST_CASE(rejects_unsupported_and_broken_files) {
    TempDir tmp;
    const float v[4] = {1, 2, 3, 4};
    auto bad = [&](const std::vector<std::byte>& img, std::vector<std::string> parts) {
        write_bytes(tmp / "bad.npy", img.data(), img.size());
        parts.push_back("bad.npy");
        require_throw_with<FormatError>([&] { (void)io::read_npy<float>(tmp / "bad.npy"); }, parts);
    };
    bad(npy_image("{'descr': '>f4', 'fortran_order': False, 'shape': (4,), }", v, 16), {"'>f4'", "not supported"});
    bad(npy_image("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", v, 16), {"'<f8'"});
    bad(npy_image("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", v, 16), {"Fortran"});
    bad(npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }", v, 16), {"truncated", "20", "16"});
    bad(npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", v, 16), {"trailing"});
    bad(npy_image("{'descr': '<f4', 'shape': (4,), }", v, 16), {"fortran_order"});
    bad(npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (-4,), }", v, 16), {"shape"});
    bad(npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", v, 16),
        {"overflows"});
    bad(npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", v, 16),
        {"overflows"});
    bad(npy_image("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (4,), }", v, 16), {"True or False"});
    bad(npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), 'x': 1}", v, 16), {"'x'"});
    bad(npy_image("{'descr': '<f4", v, 0), {"unterminated"});
    std::vector<std::byte> notnpy(20, std::byte{'x'});
    bad(notnpy, {"magic"});
    bad({}, {"magic"});
    auto img = npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", v, 16);
    img[6] = std::byte{9};
    bad(img, {"version 9"});
    img[6] = std::byte{1};
    img.resize(40);  // header cut short
    bad(img, {"truncated"});
    require_throw_with<IoError>([&] { (void)io::read_npy<float>(tmp / "none.npy"); }, {"none.npy"});
    require_throw_with<ShapeError>([&] { io::write_npy(tmp / "neg.npy", v, {-1}); }, {"negative"});
    require_throw_with<IoError>([&] { io::write_npy("/nonexistent-limarp-dir/a.npy", v, {4}); },
                                {"nonexistent-limarp-dir"});
}

BOOST_AUTO_TEST_SUITE_END()
