// See qgemv_reference.hpp.
#include "qgemv_reference.hpp"

#include "limarp/backend/cpu/qgemm.hpp"

namespace limarp::test {

void cpu_qgemv_weight_only(float* y, const float* x, const QuantizedWeight<Int8Rowwise>& w, bool accumulate) {
    ops::qmatmul_wt(Cpu<>{}, y, x, w, 1, accumulate, QuantOptions::weight_only());
}

}  // namespace limarp::test
