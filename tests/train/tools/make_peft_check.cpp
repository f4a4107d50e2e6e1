// Writes the two adapter folders that tests/train/tools/check_peft_load.py loads with Hugging
// Face PEFT (run on the GPU machine, where torch/transformers/PEFT are installed):
//
//   g++ -std=c++20 -O1 -I include tests/train/tools/make_peft_check.cpp -o /tmp/make_peft_check
//   /tmp/make_peft_check tests/golden/swa_long /tmp/peft_check
//   python3 tests/train/tools/check_peft_load.py tests/golden/swa_long /tmp/peft_check/rewritten_all7 /tmp/peft_check/checkpoint-1
//
// rewritten_all7: the all7 fixture adapter read with read_lora_parameters() and written back with
// write_peft_adapter(); checkpoint-1: a write_checkpoint() folder (rsLoRA, r 4, random factors,
// one AdamW step of state). Not built by CMake (tests/train/tools is not a test area).
#include "limarp/train/checkpoint.hpp"
#include <iostream>
using namespace limarp; using namespace limarp::train;
int main(int argc, char** argv) {
    if (argc != 3) {
        std::cerr << "usage: make_peft_check FIXTURE_DIR OUT_DIR\n";
        return 2;
    }
    const std::filesystem::path fix = argv[1], out = argv[2];
    AdapterInfo info;
    auto params = read_lora_parameters(fix / "adapters/all7", &info);
    info.base_model_name_or_path = "tests/golden/swa_long";
    write_peft_adapter(out / "rewritten_all7", params, info);
    // a resumable checkpoint with rsLoRA, r 4, random factors and an optimizer state
    std::mt19937_64 rng(9);
    std::vector<LoraParameters> ps;
    for (auto& p : params) {
        LoraParameters q(p.module, p.in_features(), p.out_features(), 4);
        q.init_peft(rng);
        for (std::int64_t i = 0; i < q.B.size(); ++i) q.B[i] = 0.05f * (2 * train::detail::uniform_float01(rng) - 1);
        ps.push_back(std::move(q));
    }
    AdapterInfo ri; ri.lora.r = 4; ri.lora.lora_alpha = 8; ri.lora.use_rslora = true; ri.lora.lora_dropout = 0.05;
    ri.lora.target_modules = {"q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"};
    ri.base_model_name_or_path = "tests/golden/swa_long";
    AdamW opt; auto slots = param_slots(ps); for (auto& p : ps) for (std::int64_t i=0;i<p.dA.size();++i) p.dA[i]=0.1f; opt.step(slots);
    TrainingState st; st.step = 1; st.rng_state = rng_state_string(rng);
    write_checkpoint(out / "checkpoint-1", ps, ri, opt, st);
    std::cout << "ok " << params.size() << " modules\n";
}
