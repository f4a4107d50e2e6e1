// Boost.Test main of test_cuda_model, header-only (no Boost library needed on the GPU machine).
#define BOOST_TEST_MODULE limarp_cuda_model
#include <boost/test/included/unit_test.hpp>
