// limarp-quantize: write a model whose seven projections per layer are stored pre-quantized
// (int8 rowwise or GGUF-layout q8_0), loadable directly by the other programs (--quant auto).
//
// Output folder: model.safetensors (projections in the scheme's tensors, see
// include/limarp/quant/int8_rowwise.hpp and q8_0.hpp; embeddings, norms and lm_head copied
// unchanged; metadata "limarp.quant" = scheme) and config.json (copied from the input).
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <regex>
#include <string>
#include <vector>

#include "common/program.hpp"
#include "limarp/io/hf_config.hpp"
#include "limarp/io/safetensors.hpp"
#include "limarp/layers/quantized_linear.hpp"
#include "limarp/layers/weight.hpp"

using namespace limarp;
namespace fs = std::filesystem;

namespace {
void progress(std::size_t done, std::size_t total, double secs) {
    const int width = 30;
    const int fill = total ? static_cast<int>(width * done / total) : width;
    std::fprintf(stderr, "\r[%.*s%*s] %zu/%zu tensors  %.1fs", fill, "##############################", width - fill, "",
                 done, total, secs);
    if (done == total) std::fprintf(stderr, "\n");
    std::fflush(stderr);
}

template <class Scheme>
void quantize_into(io::SafeTensorsWriter& out, std::vector<std::shared_ptr<void>>& keep, const LoadContext& ctx,
                   const std::string& module, std::int64_t n_out, std::int64_t n_in) {
    auto layer = std::make_shared<QuantizedLinear<Scheme, Cpu<>>>(QuantizedLinear<Scheme, Cpu<>>::load(ctx, module, n_in, n_out));
    layer->weight().write_to(out, module);
    keep.push_back(layer);
}
}  // namespace

int main(int argc, char** argv) {
    return programs::run_main("limarp-quantize", [&] {
        CLI::App app{"limarp-quantize: store a Hugging Face Mistral model's projections pre-quantized (int8 or q8_0).\n"
                     "The output folder loads directly in limarp-score/-generate/-chat (--quant auto)."};
        std::string model_dir, out_dir, quant;
        bool force = false;
        app.add_option("--model", model_dir, "input model folder (config.json + *.safetensors)")->required();
        app.add_option("--quant", quant, "int8 | q8_0")->required();
        app.add_option("--out", out_dir, "output folder (created)")->required();
        app.add_flag("--force", force, "overwrite files in an existing output folder");
        try {
            app.parse(argc, argv);
        } catch (const CLI::ParseError& e) {
            return app.exit(e);
        }
        const QuantScheme scheme = parse_quant_scheme(quant);
        if (scheme == QuantScheme::None) throw ArgumentError("--quant: choose int8 or q8_0 (none would copy the model)");
        const MistralConfig cfg = io::read_mistral_config(model_dir);
        if (fs::exists(fs::path(out_dir) / "model.safetensors") && !force)
            throw ArgumentError(out_dir + "/model.safetensors exists (use --force to overwrite)");
        if (fs::exists(out_dir) && fs::equivalent(model_dir, out_dir))
            throw ArgumentError("--out must differ from --model");
        auto ckpt = std::make_shared<io::SafeTensorsCheckpoint>(io::SafeTensorsCheckpoint::open(model_dir));
        const LoadContext ctx(ckpt);
        if (detect_quant_scheme(*ckpt) != QuantScheme::None) throw ArgumentError(model_dir + " is already quantized");

        const std::regex proj(R"((model\.layers\.\d+\.(self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj)\.weight)");
        io::SafeTensorsWriter out;
        out.set_metadata("format", "pt");
        out.set_metadata("limarp.quant", std::string(quant_scheme_name(scheme)));
        std::vector<std::shared_ptr<void>> keep;
        const auto names = ckpt->names();
        const auto t0 = std::chrono::steady_clock::now();
        std::size_t done = 0, n_q = 0;
        for (const auto& name : names) {
            std::smatch m;
            const auto& t = ckpt->get(name);
            if (std::regex_match(name, m, proj)) {
                if (t.shape.size() != 2) throw ShapeError(t.file + ": " + name + " is not 2-D");
                if (scheme == QuantScheme::Int8) quantize_into<Int8Rowwise>(out, keep, ctx, m[1], t.shape[0], t.shape[1]);
                else quantize_into<Q8_0>(out, keep, ctx, m[1], t.shape[0], t.shape[1]);
                ++n_q;
            } else {
                out.add_borrowed(name, t.dtype, t.shape, t.data, t.nbytes);  // embeddings, norms, lm_head
            }
            progress(++done, names.size(), std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        }
        if (n_q != static_cast<std::size_t>(7 * cfg.n_layers))
            throw FormatError(model_dir + ": found " + std::to_string(n_q) + " projection weights, expected 7 x " +
                              std::to_string(cfg.n_layers));
        fs::create_directories(out_dir);
        out.write(fs::path(out_dir) / "model.safetensors");
        io::write_hf_config(fs::path(out_dir) / "config.json", cfg);
        std::fprintf(stderr, "wrote %s (%s, %zu projections quantized)\n", out_dir.c_str(), quant.c_str(), n_q);
        return 0;
    });
}
