// The model against references: finite-difference gradients of the whole model, recomputation
// and accumulation consistency, KV-cache generation against the full forward, overfitting.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/error.h"
#include "kernels/backend.h"
#include "kernels/core_attention.h"
#include "model_test_util.h"
#include "trainer/generator.h"
#include "trainer/optimizer.h"

using namespace cadtrain;
using namespace cadtrain::trainer;

namespace {

struct Fixture {
  std::unique_ptr<kernels::Backend> be = kernels::make_cpu_backend();
  std::unique_ptr<kernels::CoreAttention> attn = kernels::make_local_task_attention();
  std::unique_ptr<Model> model;
  explicit Fixture(const config::ModelConfig& cfg, int64_t max_tokens = 64) {
    model = std::make_unique<Model>(cfg, max_tokens, *be, *attn);
    model->init_weights(7);
  }
  std::vector<float> grads() {
    auto& p = model->params();
    return std::vector<float>(p.grads(), p.grads() + p.total());
  }
  void zero_grads() { be->zero(model->params().grads(), model->params().total()); }
};

double mean_loss(Model& model, const trainer::Batch& b) {
  const LossSum l = model.evaluate(b, nullptr, nullptr);
  return l.loss_sum / l.weight_sum;
}

// Central differences of the mean loss against the analytic gradient, for the entries of each
// tensor with the largest gradients plus a few random ones. The forward runs in fp32, so the
// difference quotient carries ~1e-5 / (2 eps) of rounding noise: eps = 1e-2 with a tolerance of
// 2e-3 absolute + 5% relative.
void check_gradients(const config::ModelConfig& cfg) {
  Fixture f(cfg);
  const auto batch = test::make_batch({9, 1, 14, 5}, cfg.vocab_size(), 3);
  const auto view = batch_view(batch);
  double weight = 0;
  for (const float m : batch.loss_mask) weight += m;
  f.zero_grads();
  f.model->forward_backward(view, static_cast<float>(1.0 / weight));
  const std::vector<float> grad = f.grads();
  ParameterSet& p = f.model->params();
  Rng rng(11);
  for (size_t t = 0; t < p.infos().size(); ++t) {
    const ParamInfo& info = p.info(t);
    std::vector<size_t> picks(info.numel);
    for (size_t i = 0; i < info.numel; ++i) picks[i] = i;
    std::partial_sort(picks.begin(), picks.begin() + std::min<size_t>(3, info.numel), picks.end(), [&](size_t a, size_t b) {
      return std::fabs(grad[info.offset + a]) > std::fabs(grad[info.offset + b]);
    });
    picks.resize(std::min<size_t>(3, info.numel));
    for (int r = 0; r < 2; ++r) picks.push_back(rng.below(info.numel));
    for (const size_t i : picks) {
      float* w = p.param(t) + i;
      const float saved = *w;
      constexpr float eps = 1e-2f;
      *w = saved + eps;
      const double up = mean_loss(*f.model, view);
      *w = saved - eps;
      const double down = mean_loss(*f.model, view);
      *w = saved;
      const double fd = (up - down) / (2.0 * eps);
      const double an = grad[info.offset + i];
      EXPECT_NEAR(an, fd, 2e-3 + 0.05 * std::fabs(fd)) << info.name << "[" << i << "]";
    }
  }
}

}  // namespace

TEST(Model, FiniteDifferenceGradients) { check_gradients(test::small_model_config(false, true)); }
TEST(Model, FiniteDifferenceGradientsQkNormUntied) { check_gradients(test::small_model_config(true, false)); }

TEST(Model, RecomputationGivesIdenticalGradients) {
  auto cfg = test::small_model_config(true, true);
  const auto batch = test::make_batch({20, 7, 3}, cfg.vocab_size(), 5);
  Fixture keep(cfg);
  keep.model->forward_backward(batch_view(batch), 0.1f);
  cfg.set_recompute_activations(true);
  Fixture recompute(cfg);
  recompute.model->forward_backward(batch_view(batch), 0.1f);
  EXPECT_EQ(keep.grads(), recompute.grads());  // same operations on the same inputs: bit for bit
}

TEST(Model, GradientsAccumulateOverMicroBatches) {
  const auto cfg = test::small_model_config(false, true);
  const auto a = test::make_batch({12, 4}, cfg.vocab_size(), 1);
  const auto b = test::make_batch({16}, cfg.vocab_size(), 2);
  Fixture f(cfg);
  f.model->forward_backward(batch_view(a), 0.5f);
  const auto ga = f.grads();
  f.zero_grads();
  f.model->forward_backward(batch_view(b), 0.5f);
  const auto gb = f.grads();
  f.zero_grads();
  f.model->forward_backward(batch_view(a), 0.5f);
  f.model->forward_backward(batch_view(b), 0.5f);
  const auto gab = f.grads();
  for (size_t i = 0; i < gab.size(); ++i) ASSERT_NEAR(gab[i], ga[i] + gb[i], 1e-5 * (1 + std::fabs(gab[i]))) << i;
}

TEST(Model, LossMatchesLogits) {
  const auto cfg = test::small_model_config(false, false);
  const auto batch = test::make_batch({10, 6}, cfg.vocab_size(), 4);
  Fixture f(cfg);
  std::vector<float> logits(batch.tokens.size() * cfg.vocab_size());
  f.model->logits(batch_view(batch), logits.data());
  double loss = 0, weight = 0;
  for (size_t i = 0; i < batch.tokens.size(); ++i) {
    const float* row = logits.data() + i * cfg.vocab_size();
    double mx = -INFINITY, sum = 0;
    for (uint32_t v = 0; v < cfg.vocab_size(); ++v) mx = std::max(mx, static_cast<double>(row[v]));
    for (uint32_t v = 0; v < cfg.vocab_size(); ++v) sum += std::exp(row[v] - mx);
    loss += batch.loss_mask[i] * (mx + std::log(sum) - row[batch.targets[i]]);
    weight += batch.loss_mask[i];
  }
  const LossSum l = f.model->evaluate(batch_view(batch), nullptr, nullptr);
  EXPECT_NEAR(l.loss_sum, loss, 1e-4 * loss);
  EXPECT_EQ(l.weight_sum, weight);
}

TEST(Model, KvCacheGenerationMatchesFullForward) {
  for (const bool qk_norm : {false, true}) {
    const auto cfg = test::small_model_config(qk_norm, qk_norm);
    Fixture f(cfg);
    const std::vector<uint32_t> prompt = {3, 14, 15, 9, 26};
    const auto out = generate(*f.model, prompt, 12, SamplingOptions{});
    std::vector<uint32_t> seq = prompt;
    seq.insert(seq.end(), out.begin(), out.end());
    data::MicroBatch b = test::make_batch({static_cast<int32_t>(seq.size())}, cfg.vocab_size(), 1);
    b.tokens = seq;
    std::vector<float> logits(seq.size() * cfg.vocab_size());
    f.model->logits(batch_view(b), logits.data());
    for (size_t i = prompt.size() - 1; i + 1 < seq.size(); ++i) {
      const float* row = logits.data() + i * cfg.vocab_size();
      const auto argmax = static_cast<uint32_t>(std::max_element(row, row + cfg.vocab_size()) - row);
      EXPECT_EQ(argmax, seq[i + 1]) << "position " << i << (qk_norm ? " (qk_norm)" : "");
    }
  }
}

TEST(Model, OverfitsOneBatch) {
  config::ModelConfig cfg = test::small_model_config(false, true);
  cfg.set_d_model(32);
  cfg.set_ffn_hidden(64);
  cfg.set_init_std(0.02);
  Fixture f(cfg);
  const auto batch = test::make_batch({24, 24}, cfg.vocab_size(), 9);
  config::OptimizerConfig opt;
  opt.set_lr(1e-2);
  opt.set_weight_decay(0);
  AdamW adam(opt, f.model->params(), *f.be);
  double weight = 0;
  for (const float m : batch.loss_mask) weight += m;
  double first = 0, last = 0;
  for (int step = 0; step < 300; ++step) {
    f.zero_grads();
    const LossSum l = f.model->forward_backward(batch_view(batch), static_cast<float>(1.0 / weight));
    (step == 0 ? first : last) = l.loss_sum / weight;
    adam.step(opt.lr(), adam.grad_norm());
  }
  EXPECT_GT(first, 3.0);
  EXPECT_LT(last, 0.05) << "loss went from " << first << " to " << last;
}

TEST(Model, NonFiniteGradientIsNamed) {
  const auto cfg = test::small_model_config(false, true);
  Fixture f(cfg);
  ParameterSet& p = f.model->params();
  p.param(p.index_of("layers.1.conv.w_out"))[3] = std::numeric_limits<float>::quiet_NaN();
  const auto batch = test::make_batch({8}, cfg.vocab_size(), 2);
  const LossSum l = f.model->forward_backward(batch_view(batch), 1.0f);
  EXPECT_TRUE(std::isnan(l.loss_sum));
  AdamW adam(config::OptimizerConfig{}, p, *f.be);
  EXPECT_FALSE(adam.first_nonfinite_grad().empty());
}

TEST(Model, OutOfRangeTokenIsRejected) {
  const auto cfg = test::small_model_config(false, true);
  Fixture f(cfg);
  auto batch = test::make_batch({8}, cfg.vocab_size(), 2);
  batch.tokens[5] = cfg.vocab_size();
  try {
    f.model->evaluate(batch_view(batch), nullptr, nullptr);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token 37 at position 5"), std::string::npos) << e.what();
  }
}
