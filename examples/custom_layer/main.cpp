// limarp-custom-layer: how to extend limarp with your own layer, without touching the library.
//
// `Ia3Scaled<Base>` is an IA3-style wrapper (Liu et al. 2022): it multiplies the output of any
// `Linear` by a learned per-channel vector l. It lives here, outside include/limarp/, and is
// composed into the stock `MistralBlock` and `MistralModel` purely through template arguments:
//
//     using Proj  = Ia3Scaled<DenseLinear<Cpu<>>>;
//     using Block = MistralBlock<Cpu<>, Proj>;          // attention + SwiGLU MLP built from Proj
//     using Model = MistralModel<Cpu<>, Block>;
//
// The program scores a sequence with the wrapped model and with the plain one and prints one JSON
// line like limarp-score. The IA3 vectors are read from a safetensors file with tensors named
// "<module>.ia3_l" (--ia3 FILE), or made up as 1 + a*cos(i) (--amplitude a; 0 gives the identity,
// so the two losses must agree, which the program checks).
#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/program.hpp"
#include "limarp/backend/cpu/loss.hpp"
#include "limarp/io/safetensors.hpp"
#include "limarp/layers/concepts.hpp"
#include "limarp/layers/linear.hpp"
#include "limarp/model/mistral_model.hpp"

using namespace limarp;

/// y = l ⊙ base(x): an IA3 scaling of any Linear's output channels.
template <Linear Base>
class Ia3Scaled {
public:
    using backend_type = typename Base::backend_type;  // required by the Linear concept

    Ia3Scaled() = default;
    Ia3Scaled(Base base, std::vector<float> l) : base_(std::move(base)), l_(std::move(l)) {}

    // Required by the Linear concept: build from the module `name`. Options come from ctx.extra.
    static Ia3Scaled load(const LoadContext& ctx, const std::string& name, std::int64_t n_in, std::int64_t n_out) {
        Base base = Base::load(ctx, name, n_in, n_out);
        std::vector<float> l(static_cast<std::size_t>(n_out), 1.0f);
        if (const std::string file = ctx.option("ia3"); !file.empty()) {
            const auto st = io::SafeTensorsFile::open(file);
            if (st.contains(name + ".ia3_l")) {
                const auto& t = st.get(name + ".ia3_l");
                if (t.shape != Shape{n_out})
                    throw ShapeError(file + ": " + name + ".ia3_l has shape " + shape_str(t.shape) + ", expected [" +
                                     std::to_string(n_out) + "]");
                const auto v = t.view<float>();
                for (std::int64_t i = 0; i < n_out; ++i) l[static_cast<std::size_t>(i)] = v(i);
            }
        } else {
            const double a = std::stod(ctx.option("amplitude", "0"));
            for (std::int64_t i = 0; i < n_out; ++i) l[static_cast<std::size_t>(i)] = static_cast<float>(1.0 + a * std::cos(double(i)));
        }
        return Ia3Scaled(std::move(base), std::move(l));
    }
    std::int64_t in_features() const { return base_.in_features(); }
    std::int64_t out_features() const { return base_.out_features(); }

    void forward(float* y /*[T, n_out]*/, const float* x /*[T, n_in]*/, std::int64_t T) {
        base_.forward(y, x, T);
        const std::int64_t n = out_features();
        for (std::int64_t t = 0; t < T; ++t)
            for (std::int64_t j = 0; j < n; ++j) y[t * n + j] *= l_[static_cast<std::size_t>(j)];
    }

private:
    Base base_;
    std::vector<float> l_;
};

static_assert(Linear<Ia3Scaled<DenseLinear<Cpu<>>>>, "the wrapper satisfies the library's Linear concept");

using Ia3Model = MistralModel<Cpu<>, MistralBlock<Cpu<>, Ia3Scaled<DenseLinear<Cpu<>>>>>;
using PlainModel = MistralModel<Cpu<>>;

template <class Model>
double mean_loss(Model& m, const std::vector<std::int32_t>& ids) {
    const Tensor<float> logits = m.logits(ids);
    const auto T = static_cast<std::int64_t>(ids.size());
    return ops::cross_entropy_rows(Cpu<>{}, logits.data(), ids.data() + 1, T - 1, m.config().vocab) / double(T - 1);
}

int main(int argc, char** argv) {
    return programs::run_main("limarp-custom-layer", [&] {
        CLI::App app{"limarp-custom-layer: score a sequence with an IA3-wrapped Mistral model (a layer type defined "
                     "outside the library) and with the plain model; prints one JSON line."};
        std::string model_dir, ids_str, ia3;
        double amplitude = 0;
        app.add_option("--model", model_dir, "model folder (config.json + *.safetensors)")->required();
        app.add_option("--ids", ids_str, "token ids, e.g. \"1,2,3\" (at least 2)")->required();
        app.add_option("--ia3", ia3, "safetensors file with <module>.ia3_l vectors [out]");
        app.add_option("--amplitude", amplitude, "without --ia3: l_i = 1 + amplitude*cos(i) (0 = identity)");
        try {
            app.parse(argc, argv);
        } catch (const CLI::ParseError& e) {
            return app.exit(e);
        }
        const auto ids = programs::parse_ids(ids_str);
        if (ids.size() < 2) throw ArgumentError("--ids: need at least 2 tokens to compute a loss");
        auto plain = PlainModel::from_dir(model_dir);
        auto wrapped = Ia3Model::from_dir(model_dir, [&](MistralConfig&, LoadContext& ctx) {
            ctx.extra = {{"ia3", ia3}, {"amplitude", std::to_string(amplitude)}};
        });
        const double lp = mean_loss(plain, ids), lw = mean_loss(wrapped, ids);
        nlohmann::json out{{"tokens", ids.size()}, {"loss", lw}, {"ppl", std::exp(lw)}, {"plain_loss", lp}};
        std::printf("%s\n", out.dump().c_str());
        if (ia3.empty() && amplitude == 0 && std::fabs(lp - lw) > 1e-6 * std::fabs(lp)) {
            std::fprintf(stderr, "limarp-custom-layer: identity IA3 changed the loss (%g vs %g)\n", lw, lp);
            return 1;
        }
        return 0;
    });
}
