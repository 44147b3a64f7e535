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
#include "trainer/grad_sync.h"
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

namespace {

// Records every announced group with a copy of its gradients at announcement time.
struct RecordingSync final : GradientSync {
  ParameterSet* params = nullptr;
  std::vector<GradGroup> groups;
  std::vector<std::vector<float>> snapshots;
  void grads_ready(const GradGroup& g) override {
    groups.push_back(g);
    snapshots.emplace_back(params->grads() + g.offset, params->grads() + g.offset + g.count);
  }
  void finish_step() override {}
};

}  // namespace

// The data-parallel seam: every parameter announced once, in the documented order, and never
// written after its announcement (so an all-reduce started then sees the final gradient).
TEST(Model, GradientSyncAnnouncesFinalGradientsInOrder) {
  for (const bool tied : {true, false}) {
    for (const bool recompute : {false, true}) {
      auto cfg = test::small_model_config(true, tied);
      cfg.set_recompute_activations(recompute);
      Fixture f(cfg);
      ParameterSet& p = f.model->params();
      const auto a = test::make_batch({12, 4}, cfg.vocab_size(), 1);
      const auto b = test::make_batch({9, 7}, cfg.vocab_size(), 2);
      RecordingSync sync;
      sync.params = &p;
      f.model->forward_backward(batch_view(a), 0.5f);  // an earlier micro-batch: no announcements
      EXPECT_TRUE(sync.groups.empty());
      f.model->forward_backward(batch_view(b), 0.5f, &sync);
      const std::vector<float> final_grads = f.grads();
      const int n_layers = static_cast<int>(cfg.n_layers());
      ASSERT_EQ(sync.groups.size(), static_cast<size_t>(n_layers + 2));
      std::vector<int> seen(p.infos().size(), 0);
      for (size_t i = 0; i < sync.groups.size(); ++i) {
        const GradGroup& g = sync.groups[i];
        const int expected_layer = i == 0 ? GradGroup::kHead
                                   : i + 1 == sync.groups.size() ? GradGroup::kEmbedding
                                                                 : n_layers - static_cast<int>(i);
        EXPECT_EQ(g.layer, expected_layer) << "group " << i;
        if (i > 0) {
          EXPECT_LE(g.offset + g.count, sync.groups[i - 1].offset) << "group " << i;
        }
        for (size_t t = g.first_param; t < g.end_param; ++t) {
          ++seen[t];
          EXPECT_GE(p.info(t).offset, g.offset);
          EXPECT_LE(p.info(t).offset + p.info(t).numel, g.offset + g.count);
        }
        const std::vector<float> now(final_grads.begin() + static_cast<std::ptrdiff_t>(g.offset),
                                     final_grads.begin() + static_cast<std::ptrdiff_t>(g.offset + g.count));
        EXPECT_EQ(sync.snapshots[i], now) << "gradients of group " << i << " changed after it was announced";
      }
      for (size_t t = 0; t < seen.size(); ++t) EXPECT_EQ(seen[t], 1) << p.info(t).name;
      LocalGradientSync local(p.infos().size());
      f.model->forward_backward(batch_view(b), 0.5f, &local);
      EXPECT_NO_THROW(local.finish_step());
      EXPECT_EQ(local.last_step_groups(), static_cast<size_t>(n_layers + 2));
    }
  }
}

TEST(Model, LocalGradientSyncRejectsABrokenContract) {
  LocalGradientSync sync(3);
  sync.grads_ready(GradGroup{2, 3, 100, 10, GradGroup::kHead});
  EXPECT_THROW(sync.grads_ready(GradGroup{1, 2, 105, 10, 0}), Error);  // overlaps the previous group
  LocalGradientSync partial(3);
  partial.grads_ready(GradGroup{2, 3, 100, 10, GradGroup::kHead});
  EXPECT_THROW(partial.finish_step(), Error);  // parameters 0 and 1 never announced
}

namespace {

// The local task attention, counting the calls the model makes.
struct CountingAttention final : kernels::CoreAttention {
  std::unique_ptr<kernels::CoreAttention> inner = kernels::make_local_task_attention();
  int prepares = 0, forwards = 0, backwards = 0;
  std::unique_ptr<kernels::AttentionPlan> prepare(const kernels::AttentionShape& shape,
                                                  const kernels::SequenceLayout& layout,
                                                  std::span<const kernels::RowRange> parts) override {
    ++prepares;
    return inner->prepare(shape, layout, parts);
  }
  std::unique_ptr<kernels::AttentionHandle> forward(int layer, kernels::AttentionPlan& plan, size_t part,
                                                    const kernels::AttentionIO& io) override {
    ++forwards;
    return inner->forward(layer, plan, part, io);
  }
  std::unique_ptr<kernels::AttentionHandle> backward(int layer, kernels::AttentionPlan& plan, size_t part,
                                                     kernels::AttentionHandle& fwd, const kernels::AttentionIO& io,
                                                     const kernels::AttentionGrads& grads) override {
    ++backwards;
    return inner->backward(layer, plan, part, fwd, io, grads);
  }
};

}  // namespace

// Ping-pong is a loop in the model: the stages on two (or three) row ranges that cut documents
// give the loss and gradients of one range, up to float rounding of the weight-gradient sums
// (relative 1e-5, floor 1e-6), with and without recomputation; one range stays bit-identical.
TEST(Model, NanoBatchesGiveTheSameLossAndGradients) {
  for (const bool recompute : {false, true}) {
    auto cfg = test::small_model_config(true, false);
    cfg.set_recompute_activations(recompute);
    const auto batch = test::make_batch({20, 7, 3, 11}, cfg.vocab_size(), 5);
    Fixture one(cfg);
    const LossSum l1 = one.model->forward_backward(batch_view(batch), 0.1f);
    const std::vector<float> g1 = one.grads();
    for (const int parts : {1, 2, 3}) {
      Fixture f(cfg);
      f.model->set_nano_batches(parts);
      const LossSum l = f.model->forward_backward(batch_view(batch), 0.1f);
      const std::vector<float> g = f.grads();
      if (parts == 1) {
        EXPECT_EQ(l.loss_sum, l1.loss_sum);
        EXPECT_EQ(g, g1);
        continue;
      }
      EXPECT_NEAR(l.loss_sum, l1.loss_sum, 1e-5 * std::fabs(l1.loss_sum)) << parts << " parts";
      EXPECT_EQ(l.weight_sum, l1.weight_sum);
      for (size_t i = 0; i < g.size(); ++i) {
        ASSERT_NEAR(g[i], g1[i], 1e-5 * std::fabs(g1[i]) + 1e-6)
            << "gradient float " << i << ", " << parts << " parts" << (recompute ? ", recompute" : "");
      }
    }
  }
}

// Recomputation keeps core attention's O and LSE: one forward and one backward per attention
// layer and part, however the activations are kept, and one prepare per micro-batch.
TEST(Model, RecomputationNeverRepeatsCoreAttention) {
  for (const bool recompute : {false, true}) {
    auto cfg = test::small_model_config(false, true);
    cfg.set_recompute_activations(recompute);
    auto be = kernels::make_cpu_backend();
    CountingAttention attn;
    Model model(cfg, 64, *be, attn);
    model.init_weights(3);
    model.set_nano_batches(2);
    model.forward_backward(batch_view(test::make_batch({20, 9}, cfg.vocab_size(), 1)), 1.0f);
    const int attention_layers = 2;  // of small_model_config's three
    EXPECT_EQ(attn.prepares, 1);
    EXPECT_EQ(attn.forwards, attention_layers * 2) << (recompute ? "recompute" : "");
    EXPECT_EQ(attn.backwards, attention_layers * 2) << (recompute ? "recompute" : "");
  }
}
