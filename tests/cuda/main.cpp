// Boost.Test main of test_cuda, header-only (no Boost library needed on the GPU machine).
#define BOOST_TEST_MODULE limarp_cuda
#include <boost/test/included/unit_test.hpp>
