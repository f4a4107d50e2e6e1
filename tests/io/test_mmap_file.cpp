// Tests for limarp/io/mmap_file.hpp.
#include <boost/test/unit_test.hpp>

#include <cstring>
#include <utility>

#include "io_test_util.hpp"
#include "limarp/io/mmap_file.hpp"

using namespace limarp;
using namespace limarp_io_test;

BOOST_AUTO_TEST_SUITE(mmap_file)

BOOST_AUTO_TEST_CASE(maps_file_contents) {
    auto rng = make_rng();
    TempDir tmp;
    for (std::size_t n : {1u, 7u, 4096u, 70001u}) {
        const auto bytes = random_bytes(rng, n);
        const auto p = tmp / (std::to_string(n) + ".bin");
        write_bytes(p, bytes.data(), n);
        const io::MmapFile f(p);
        BOOST_REQUIRE_EQUAL(f.size(), n);
        BOOST_CHECK(std::memcmp(f.data(), bytes.data(), n) == 0);
        BOOST_CHECK_EQUAL(f.path(), p);
        BOOST_CHECK_EQUAL(f.bytes().size(), n);
        f.advise_willneed();
    }
}

BOOST_AUTO_TEST_CASE(empty_file) {
    TempDir tmp;
    write_bytes(tmp / "empty", "", 0);
    const MmapFile f(tmp / "empty");  // re-exported name
    BOOST_CHECK_EQUAL(f.size(), 0u);
    BOOST_CHECK(f.data() == nullptr);
    BOOST_CHECK(f.bytes().empty());
}

BOOST_AUTO_TEST_CASE(move_keeps_mapping) {
    auto rng = make_rng();
    TempDir tmp;
    const auto bytes = random_bytes(rng, 1000);
    write_bytes(tmp / "a", bytes.data(), bytes.size());
    write_bytes(tmp / "b", bytes.data(), 10);
    io::MmapFile a(tmp / "a");
    const std::byte* p = a.data();
    io::MmapFile b(std::move(a));
    BOOST_CHECK(b.data() == p);
    BOOST_CHECK_EQUAL(b.size(), 1000u);
    BOOST_CHECK_EQUAL(a.size(), 0u);  // NOLINT(bugprone-use-after-move): moved-from is empty
    BOOST_CHECK(a.data() == nullptr);
    io::MmapFile c(tmp / "b");
    c = std::move(b);
    BOOST_CHECK(c.data() == p);
    BOOST_CHECK(std::memcmp(c.data(), bytes.data(), 1000) == 0);
    io::MmapFile d;
    BOOST_CHECK_EQUAL(d.size(), 0u);
}

BOOST_AUTO_TEST_CASE(errors_name_file_and_reason) {
    TempDir tmp;
    require_throw_with<IoError>([&] { io::MmapFile f(tmp / "missing.bin"); }, {"missing.bin", "No such file"});
    require_throw_with<IoError>([&] { io::MmapFile f(tmp.path()); }, {tmp.path().string(), "not a regular file"});
}

BOOST_AUTO_TEST_SUITE_END()
