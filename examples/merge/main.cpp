// limarp-merge: fold PEFT LoRA adapters into a model's weights and write a plain model folder.
//
//   limarp-merge --model DIR --adapter DIR[:SCALE]... --out DIR [--dtype bf16|int8|q8_0]
//
// bf16 output is a standard Hugging Face checkpoint (model.safetensors + config.json) that
// transformers loads with MistralForCausalLM.from_pretrained; int8/q8_0 output is the
// pre-quantized format of limarp-quantize. W' = W + Σ scale · B A is formed in f32, then stored
// in the output dtype; the program reports the largest weight change and storage error.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <regex>
#include <string>
#include <vector>

#include "common/model_dispatch.hpp"
#include "common/program.hpp"
#include "limarp/io/hf_config.hpp"
#include "limarp/io/peft_adapter.hpp"
#include "limarp/io/safetensors.hpp"
#include "limarp/layers/linear.hpp"
#include "limarp/layers/lora.hpp"
#include "limarp/layers/quantized_linear.hpp"

using namespace limarp;
namespace fs = std::filesystem;

int main(int argc, char** argv) {
    return programs::run_main("limarp-merge", [&] {
        CLI::App app{"limarp-merge: merge PEFT LoRA adapters into a Mistral model and write the result."};
        std::string model_dir, out_dir, dtype = "bf16";
        std::vector<std::string> adapters;
        bool force = false;
        app.add_option("--model", model_dir, "base model folder (config.json + *.safetensors, f32/bf16)")->required();
        app.add_option("--adapter", adapters, "PEFT adapter folder, optionally :SCALE (repeatable)")->required();
        app.add_option("--out", out_dir, "output folder (created)")->required();
        app.add_option("--dtype", dtype, "bf16 (Hugging Face checkpoint, default) | int8 | q8_0");
        app.add_flag("--force", force, "overwrite files in an existing output folder");
        try {
            app.parse(argc, argv);
        } catch (const CLI::ParseError& e) {
            return app.exit(e);
        }
        if (dtype != "bf16" && dtype != "int8" && dtype != "q8_0")
            throw ArgumentError("--dtype: \"" + dtype + "\" is not one of bf16, int8, q8_0");
        const MistralConfig cfg = io::read_mistral_config(model_dir);
        if (fs::exists(fs::path(out_dir) / "model.safetensors") && !force)
            throw ArgumentError(out_dir + "/model.safetensors exists (use --force to overwrite)");
        if (fs::exists(out_dir) && fs::equivalent(model_dir, out_dir)) throw ArgumentError("--out must differ from --model");
        auto ckpt = std::make_shared<io::SafeTensorsCheckpoint>(io::SafeTensorsCheckpoint::open(model_dir));
        if (detect_quant_scheme(*ckpt) != QuantScheme::None)
            throw ArgumentError(model_dir + " holds quantized weights; merge into the original f32/bf16 model");
        std::vector<std::pair<io::PeftAdapter, float>> ads;
        for (const auto& a : adapters) {
            const auto [dir, scale] = programs::parse_adapter_arg(a);
            ads.emplace_back(io::PeftAdapter::open(dir), scale);
        }
        // f32 copies of the base projections so that the merge is exact before storage rounding
        LoadContext ctx(
            [ckpt](const std::string& name, const Shape& s) {
                Weight w = LoadContext::from_checkpoint(ckpt, name, s);
                Tensor<float> f(w.shape);
                for (std::int64_t i = 0; i < f.size(); ++i) f[i] = w.at(i);
                return Weight::owned(std::move(f), name);
            },
            [ckpt](const std::string& name) { return ckpt->contains(name); });

        const std::regex proj(R"((model\.layers\.\d+\.(self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj)\.weight)");
        io::SafeTensorsWriter out;
        out.set_metadata("format", "pt");
        if (dtype != "bf16") out.set_metadata("limarp.quant", dtype);
        std::vector<std::shared_ptr<void>> keep;
        std::vector<std::size_t> used(ads.size(), 0);
        double max_change = 0, max_err = 0;
        const auto names = ckpt->names();
        const auto t0 = std::chrono::steady_clock::now();
        std::size_t done = 0;
        for (const auto& name : names) {
            std::smatch m;
            const auto& t = ckpt->get(name);
            if (!std::regex_match(name, m, proj)) {
                out.add_borrowed(name, t.dtype, t.shape, t.data, t.nbytes);
            } else {
                const std::string module = m[1];
                Lora<DenseLinear<Cpu<>>> l(DenseLinear<Cpu<>>::load(ctx, module, t.shape[1], t.shape[0]), module);
                for (std::size_t i = 0; i < ads.size(); ++i)
                    if (l.attach(ads[i].first, ads[i].second)) {
                        ++used[i];
                        const MergeReport r = l.merge(ads[i].first.name());
                        max_change = std::max(max_change, r.max_abs_change);
                    }
                const Weight& w = l.base().weight();  // f32, merged
                if (dtype == "bf16") {
                    auto bf = std::make_shared<Tensor<bf16>>(w.shape);
                    for (std::int64_t i = 0; i < w.size(); ++i) {
                        const float v = w.as<float>()[i];
                        (*bf)[i].bits = f32_to_bf16(v);
                        max_err = std::max<double>(max_err, std::fabs(bf16_to_f32((*bf)[i].bits) - v));
                    }
                    out.add_borrowed(name, DType::BF16, w.shape, bf->data(), static_cast<std::size_t>(w.size()) * 2);
                    keep.push_back(bf);
                } else {
                    auto store = [&]<class Scheme>() {
                        auto q = std::make_shared<QuantizedWeight<Scheme>>(QuantizedWeight<Scheme>::quantize(w));
                        const Tensor<float> back = q->dequantize();
                        for (std::int64_t i = 0; i < w.size(); ++i)
                            max_err = std::max<double>(max_err, std::fabs(back[i] - w.as<float>()[i]));
                        q->write_to(out, module);
                        keep.push_back(q);
                    };
                    if (dtype == "int8") store.template operator()<Int8Rowwise>();
                    else store.template operator()<Q8_0>();
                }
            }
            ++done;
            std::fprintf(stderr, "\rmerging: %zu/%zu tensors  %.1fs", done, names.size(),
                         std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        }
        std::fprintf(stderr, "\n");
        for (std::size_t i = 0; i < ads.size(); ++i) {
            if (used[i] == 0) throw FormatError(ads[i].first.dir().string() + ": the adapter targets no projection of this model");
            if (used[i] != ads[i].first.modules_in_file().size())
                throw FormatError(ads[i].first.dir().string() + ": the adapter holds factors for modules this model lacks");
        }
        fs::create_directories(out_dir);
        out.write(fs::path(out_dir) / "model.safetensors");
        io::write_hf_config(fs::path(out_dir) / "config.json", cfg);
        std::printf("{\"out\": \"%s\", \"dtype\": \"%s\", \"max_abs_change\": %.6g, \"max_abs_storage_error\": %.6g}\n",
                    out_dir.c_str(), dtype.c_str(), max_change, max_err);
        return 0;
    });
}
