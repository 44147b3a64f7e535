// Preference optimization through the model: finite-difference gradients of every PO objective,
// the hand-checkable identities against log-probabilities taken from the model's full logits
// (LN-DPO with delta = 0, LOGO with M = 1 and lambda = 0 = SimPO), position synthesis and the
// RoPE seam it goes through, and a short end-to-end run that learns a synthetic preference set.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/rng.h"
#include "configs/config.h"
#include "data/prefs_import.h"
#include "kernels/backend.h"
#include "kernels/core_attention.h"
#include "model_test_util.h"
#include "test_util.h"
#include "trainer/po_train.h"
#include "trainer/session.h"

using namespace cadtrain;
using namespace cadtrain::trainer;

namespace {

struct Models {
  std::unique_ptr<kernels::Backend> be = kernels::make_cpu_backend();
  std::unique_ptr<kernels::CoreAttention> attn = kernels::make_local_task_attention();
  std::unique_ptr<Model> policy, reference;
  explicit Models(const config::ModelConfig& cfg, int64_t max_tokens = 128) {
    policy = std::make_unique<Model>(cfg, max_tokens, *be, *attn);
    policy->init_weights(7);
    reference = std::make_unique<Model>(cfg, max_tokens, *be, *attn);
    reference->init_weights(8);
  }
};

// A store of random examples: prompts of 3-6 tokens, responses of 1-4, two rejected each.
data::PrefsStore random_store(const test::TempDir& dir, uint32_t vocab, int examples, uint64_t seed) {
  Rng rng(seed);
  data::PrefsData d;
  d.info.vocab_size = vocab;
  d.info.tokenizer = "byte";
  const auto draw = [&](int lo, int hi) {
    std::vector<uint32_t> t(static_cast<size_t>(lo + static_cast<int>(rng.below(static_cast<uint64_t>(hi - lo + 1)))));
    for (auto& x : t) x = static_cast<uint32_t>(rng.below(vocab));
    return t;
  };
  for (int e = 0; e < examples; ++e) {
    const auto prompt = draw(3, 6), chosen = draw(1, 4);
    d.add_example(prompt, chosen, {draw(1, 4), draw(1, 4)}, static_cast<uint64_t>(e + 1));
  }
  data::write_prefs_store(dir / "prefs.h5", d);
  return data::PrefsStore::open(dir / "prefs.h5");
}

std::vector<uint64_t> all_examples(const data::PrefsStore& s) {
  std::vector<uint64_t> v(s.num_examples());
  for (uint64_t i = 0; i < v.size(); ++i) v[i] = i;
  return v;
}

config::PreferenceConfig pref_config(config::PreferenceLoss loss, double beta, uint32_t m = 0) {
  config::PreferenceConfig p;
  p.set_loss(loss);
  p.set_beta(beta);
  p.set_rejected_per_example(m);
  return p;
}

// Central differences of the mean objective against the gradient the two-pass step accumulates,
// for the largest-gradient entries of every tensor plus random ones. fp32 forward: eps 1e-2,
// tolerance 2e-3 absolute + 5% relative (as the model's own gradient test).
void check_po_gradients(const config::PreferenceConfig& pc, bool with_reference, const PositionSynthesis& synth) {
  test::TempDir dir;
  const config::ModelConfig cfg = test::small_model_config(false, true);
  Models m(cfg);
  const data::PrefsStore store = random_store(dir, cfg.vocab_size(), 3, 5);
  const auto ids = all_examples(store);
  const PoObjective objective = po_objective_from(pc);
  Model* ref = with_reference ? m.reference.get() : nullptr;
  const auto batch = [&] { return make_po_micro_batch(store, ids, pc.rejected_per_example(), synth, 99); };
  const auto mean_loss = [&] {
    PoMicroBatch b = batch();
    const PoSums s = po_micro_batch_step(*m.policy, ref, b, objective, 0.0f, nullptr);
    return s.loss / s.examples;
  };
  ParameterSet& p = m.policy->params();
  m.be->zero(p.grads(), p.total());
  PoMicroBatch b = batch();
  po_micro_batch_step(*m.policy, ref, b, objective, 1.0f / static_cast<float>(ids.size()), nullptr);
  const std::vector<float> grad(p.grads(), p.grads() + p.total());
  double largest = 0;
  for (const float g : grad) largest = std::max(largest, static_cast<double>(std::fabs(g)));
  EXPECT_GT(largest, 1e-3) << "the objective must carry gradient for the check to mean anything";
  Rng rng(11);
  for (size_t t = 0; t < p.infos().size(); ++t) {
    const ParamInfo& info = p.info(t);
    std::vector<size_t> picks(info.numel);
    for (size_t i = 0; i < info.numel; ++i) picks[i] = i;
    const size_t top = std::min<size_t>(2, info.numel);
    std::partial_sort(picks.begin(), picks.begin() + static_cast<long>(top), picks.end(), [&](size_t a, size_t c) {
      return std::fabs(grad[info.offset + a]) > std::fabs(grad[info.offset + c]);
    });
    picks.resize(top);
    picks.push_back(rng.below(info.numel));
    for (const size_t i : picks) {
      float* w = p.param(t) + i;
      const float saved = *w;
      constexpr float eps = 1e-2f;
      *w = saved + eps;
      const double up = mean_loss();
      *w = saved - eps;
      const double down = mean_loss();
      *w = saved;
      const double fd = (up - down) / (2.0 * eps);
      EXPECT_NEAR(grad[info.offset + i], fd, 2e-3 + 0.05 * std::fabs(fd)) << info.name << "[" << i << "]";
    }
  }
}

TEST(PoGradients, LnDpoWithFrozenReference) {
  check_po_gradients(pref_config(config::LN_DPO, 2.0), true, {});
}
TEST(PoGradients, LnApoZero) { check_po_gradients(pref_config(config::LN_APO_ZERO, 2.0, 1), true, {}); }
TEST(PoGradients, LnDpoPlusApoZeroWithPositionSynthesis) {
  check_po_gradients(pref_config(config::LN_DPO_APO, 2.0), true, PositionSynthesis{4096, 3});
}
TEST(PoGradients, LogoTwoRejectedWithSftTerm) {
  config::PreferenceConfig pc = pref_config(config::LOGO, 1.0, 2);
  pc.set_gamma(0.5);
  check_po_gradients(pc, false, PositionSynthesis{1000, 2});
}

// log pi(y|x) from the model's full logits of the single sequence x ++ y: an independent path
// for the one-token shift and the response spans.
double logp_from_logits(Model& model, std::span<const uint32_t> x, std::span<const uint32_t> y) {
  data::MicroBatch mb;
  std::vector<uint32_t> s(x.begin(), x.end());
  s.insert(s.end(), y.begin(), y.end());
  for (size_t i = 0; i + 1 < s.size(); ++i) {
    mb.tokens.push_back(s[i]);
    mb.targets.push_back(s[i + 1]);
    mb.loss_mask.push_back(1.0f);
    mb.positions.push_back(static_cast<int32_t>(i));
  }
  mb.cu_seqlens = {0, static_cast<int32_t>(mb.tokens.size())};
  const auto v = static_cast<size_t>(model.dims().vocab);
  std::vector<float> logits(mb.tokens.size() * v);
  model.logits(batch_view(mb), logits.data());
  double logp = 0;
  for (size_t t = 0; t < y.size(); ++t) {
    const float* z = logits.data() + (x.size() - 1 + t) * v;
    double mx = z[0], sum = 0;
    for (size_t j = 0; j < v; ++j) mx = std::max(mx, static_cast<double>(z[j]));
    for (size_t j = 0; j < v; ++j) sum += std::exp(z[j] - mx);
    logp += z[y[t]] - mx - std::log(sum);
  }
  return logp;
}

double neg_log_sigmoid(double u) { return std::log1p(std::exp(-u)); }

TEST(PoIdentities, LnDpoDeltaZeroAndSimPoFromFullLogits) {
  test::TempDir dir;
  const config::ModelConfig cfg = test::small_model_config(true, false);
  Models m(cfg);
  const data::PrefsStore store = random_store(dir, cfg.vocab_size(), 4, 9);
  const auto ids = all_examples(store);
  double want_dpo = 0, want_simpo = 0, want_rc = 0, want_rr = 0;
  const double beta = 1.5, gamma = 0.7;
  for (const uint64_t e : ids) {
    const data::PrefsExample ex = store.example(e);
    const double w = logp_from_logits(*m.policy, ex.prompt, ex.chosen);
    const double l = logp_from_logits(*m.policy, ex.prompt, ex.rejected[0]);
    const double w_ref = logp_from_logits(*m.reference, ex.prompt, ex.chosen);
    const double l_ref = logp_from_logits(*m.reference, ex.prompt, ex.rejected[0]);
    const double nw = static_cast<double>(ex.chosen.size()), nl = static_cast<double>(ex.rejected[0].size());
    const double rw = (w - w_ref) / nw, rl = (l - l_ref) / nl;
    want_dpo += neg_log_sigmoid(beta * (rw - rl));
    want_rc += beta * rw;
    want_rr += beta * rl;
    want_simpo += neg_log_sigmoid(beta * w / nw - beta * l / nl - gamma);
  }
  PoMicroBatch b = make_po_micro_batch(store, ids, 1, {}, 0);
  const PoSums dpo = po_micro_batch_step(*m.policy, m.reference.get(), b, po_objective_from(pref_config(config::LN_DPO, beta, 1)), 0, nullptr);
  EXPECT_NEAR(dpo.loss, want_dpo, 1e-4 * ids.size());
  EXPECT_NEAR(dpo.reward_chosen, want_rc, 1e-4 * ids.size());
  EXPECT_NEAR(dpo.reward_rejected, want_rr, 1e-4 * ids.size());
  config::PreferenceConfig simpo = pref_config(config::LOGO, beta, 1);
  simpo.set_gamma(gamma);
  simpo.set_sft_weight(0);
  b = make_po_micro_batch(store, ids, 1, {}, 0);
  const PoSums logo = po_micro_batch_step(*m.policy, nullptr, b, po_objective_from(simpo), 0, nullptr);
  EXPECT_NEAR(logo.loss, want_simpo, 1e-4 * ids.size());
}

TEST(PositionSynthesis, ChunksAreContiguousIncreasingAndReachTheTarget) {
  const PositionSynthesis synth{65536, 4};
  int32_t highest = 0;
  for (uint64_t draw = 0; draw < 50; ++draw) {
    Rng rng(3, draw);
    const std::vector<int32_t> pos = synthesize_positions(8192, synth, rng);
    ASSERT_EQ(pos.size(), 8192u);
    EXPECT_EQ(pos[0], 0);
    int jumps = 0;
    for (size_t i = 1; i < pos.size(); ++i) {
      ASSERT_GT(pos[i], pos[i - 1]) << i;
      if (pos[i] != pos[i - 1] + 1) {
        ++jumps;
        EXPECT_EQ(i % 2048, 0u) << "a jump inside a chunk at row " << i;
      }
    }
    EXPECT_LE(jumps, 3);
    EXPECT_LT(pos.back(), 65536);
    highest = std::max(highest, pos.back());
    Rng again(3, draw);
    EXPECT_EQ(synthesize_positions(8192, synth, again), pos) << "deterministic from the seed";
  }
  EXPECT_GT(highest, 60000) << "an 8K example should train positions close to 64K";
  Rng rng(1);
  EXPECT_NE(test::error_of([&] { synthesize_positions(100, PositionSynthesis{64, 2}, rng); }).find("target_length 64"),
            std::string::npos);
}

TEST(PositionSynthesis, ResponsesOfAnExampleShareThePromptPositions) {
  test::TempDir dir;
  const data::PrefsStore store = random_store(dir, 37, 2, 4);
  const PoMicroBatch b = make_po_micro_batch(store, all_examples(store), 0, PositionSynthesis{5000, 3}, 17);
  const auto& mb = b.mb;
  const size_t prompt = store.example(0).prompt.size();
  for (size_t s = 1; s < 3; ++s) {  // example 0's rejected sequences against its chosen one
    const auto a = static_cast<size_t>(mb.cu_seqlens[0]), c = static_cast<size_t>(mb.cu_seqlens[s]);
    for (size_t i = 0; i + 1 < prompt; ++i) EXPECT_EQ(mb.positions[a + i], mb.positions[c + i]);
  }
  EXPECT_GT(*std::max_element(mb.positions.begin(), mb.positions.end()), 20) << "positions were spread";
}

// The model's RoPE follows the position tensor: shifting every position of a sequence leaves its
// logits unchanged (RoPE is relative), while a gap between chunks changes the rows after it and
// only those (causal masking follows rows).
TEST(PositionSynthesis, ModelRopeFollowsExplicitPositions) {
  const config::ModelConfig cfg = test::small_model_config(false, true);
  Models m(cfg);
  data::MicroBatch mb = test::make_batch({12}, cfg.vocab_size(), 21);
  const auto v = static_cast<size_t>(cfg.vocab_size());
  const auto run = [&](const std::vector<int32_t>& pos) {
    mb.positions = pos;
    std::vector<float> out(12 * v);
    m.policy->logits(batch_view(mb), out.data());
    return out;
  };
  std::vector<int32_t> plain(12), shifted(12), gap(12);
  for (int32_t i = 0; i < 12; ++i) {
    plain[static_cast<size_t>(i)] = i;
    shifted[static_cast<size_t>(i)] = i + 40000;
    gap[static_cast<size_t>(i)] = i < 6 ? i : i + 3000;
  }
  const auto a = run(plain), b = run(shifted), c = run(gap);
  double shift_diff = 0, before_gap = 0, after_gap = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    shift_diff = std::max(shift_diff, static_cast<double>(std::fabs(a[i] - b[i])));
    (i / v < 6 ? before_gap : after_gap) = std::max(i / v < 6 ? before_gap : after_gap,
                                                    static_cast<double>(std::fabs(a[i] - c[i])));
  }
  EXPECT_LT(shift_diff, 2e-4);
  EXPECT_LT(before_gap, 1e-6);
  EXPECT_GT(after_gap, 1e-2);
}

// End to end: the prompt states three key=value facts and asks for one key; the chosen answer is
// its value, the rejected one another fact's value. LOGO and LN-DPO training (a few seconds,
// tiny model) must raise the share of examples where the chosen answer is preferred.
class PoTrainTest : public ::testing::Test {
 protected:
  std::string write_prefs() {
    Rng rng(5);
    std::ofstream out(dir_ / "prefs.jsonl");
    for (int e = 0; e < 24; ++e) {
      char keys[3], vals[3];
      for (int i = 0; i < 3; ++i) {
        keys[i] = static_cast<char>('a' + 3 * i + static_cast<int>(rng.below(3)));
        vals[i] = static_cast<char>('0' + rng.below(10));
      }
      const int ask = static_cast<int>(rng.below(3));
      int other = static_cast<int>(rng.below(2));
      other += other >= ask ? 1 : 0;
      if (vals[other] == vals[ask]) vals[other] = static_cast<char>('0' + (vals[ask] - '0' + 1) % 10);
      std::string prompt;
      for (int i = 0; i < 3; ++i) {
        prompt.push_back(keys[i]);
        prompt.push_back('=');
        prompt.push_back(vals[i]);
        prompt.push_back(';');
      }
      prompt.push_back('?');
      prompt.push_back(keys[ask]);
      prompt.push_back('=');
      out << nlohmann::json{{"prompt", prompt}, {"chosen", std::string(1, vals[ask])},
                            {"rejected", std::string(1, vals[other])}}.dump()
          << "\n";
    }
    out.close();
    data::PrefsImportOptions o;
    o.input = dir_ / "prefs.jsonl";
    o.output = dir_ / "prefs.h5";
    data::import_prefs(o);
    return o.output;
  }
  config::RunConfig po_config(const std::string& name, const std::string& loss) {
    return config::parse_run_config(
        "", "test",
        {"name=" + name, "output_dir=" + dir_.path().string(), "model.d_model=32", "model.n_layers=2", "model.n_heads=2",
         "model.max_seq_len=64", "data.tokens_per_micro_batch=256", "schedule.total_steps=60",
         "schedule.warmup_steps=5", "schedule.eval_every=0", "optimizer.lr=3e-3", "optimizer.weight_decay=0",
         "checkpoint.every_steps=0", "parallel.threads=2", "loss.preference.prefs_path=" + prefs_,
         "loss.preference.loss=" + loss, "loss.preference.examples_per_step=8"});
  }
  double accuracy(const config::RunConfig& cfg, const std::string& checkpoint) {
    const data::PrefsStore store = data::PrefsStore::open(prefs_);
    ModelSession s = make_model_session(cfg, 256);
    if (checkpoint.empty()) {
      s.model->init_weights(cfg.seed());
    } else {
      load_checkpoint(checkpoint, checkpoint_tensors(*s.model, nullptr));
    }
    const PoSums sums = evaluate_preferences(*s.model, nullptr, store, pref_config(config::LOGO, 10), 256);
    return sums.correct / sums.pairs;
  }
  void SetUp() override { prefs_ = write_prefs(); }
  test::TempDir dir_;
  std::string prefs_;
};

TEST_F(PoTrainTest, LogoAndLnDpoRaiseChosenOverRejectedAccuracy) {
  for (const std::string loss : {"LOGO", "LN_DPO"}) {
    const config::RunConfig cfg = po_config("po_" + loss, loss);
    const double before = accuracy(cfg, "");
    const TrainResult r = train(cfg, "test", "");
    const double after = accuracy(cfg, r.checkpoint);
    EXPECT_EQ(r.steps, 60u);
    EXPECT_GE(after, 0.9) << loss << ": accuracy " << before << " -> " << after;
    EXPECT_GT(after, before + 0.2) << loss;
    // The step lines carry what preference users watch.
    std::ifstream in(dir_.path() / ("po_" + loss) / "metrics.jsonl");
    std::string line, last;
    while (std::getline(in, line)) last = line;
    const auto j = nlohmann::json::parse(last);
    for (const char* k : {"chosen", "rejected", "margin", "accuracy", "sft", "loss"}) EXPECT_TRUE(j.contains(k)) << k;
    EXPECT_NEAR(j["margin"].get<double>(), j["chosen"].get<double>() - j["rejected"].get<double>(), 1e-3);
  }
}

}  // namespace

namespace {

// `po prepare-ref` stores log pi_ref(y|x) as the full logits give it; with the policy equal to the
// reference, LN-DPO from the store is exactly log 2 with zero rewards.
TEST_F(PoTrainTest, PrepareRefStoresReferenceLogProbabilities) {
  config::RunConfig cfg = po_config("ref", "LOGO");
  cfg.mutable_schedule()->set_total_steps(2);
  cfg.mutable_schedule()->set_warmup_steps(1);
  const TrainResult r = train(cfg, "test", "");
  PrepareRefOptions o;
  o.reference = r.checkpoint;
  o.prefs = prefs_;
  o.out = dir_ / "prefs_ref.h5";
  const PrepareRefSummary s = prepare_reference(o);
  EXPECT_EQ(s.examples, 24u);
  EXPECT_EQ(s.responses, 48u);
  const data::PrefsStore store = data::PrefsStore::open(o.out);
  ASSERT_TRUE(store.has_reference());
  EXPECT_EQ(store.info().reference, r.checkpoint);
  ModelSession m = make_model_session(cfg, 256);
  load_checkpoint(r.checkpoint, checkpoint_tensors(*m.model, nullptr));
  for (uint64_t e = 0; e < 3; ++e) {
    const data::PrefsExample ex = store.example(e);
    EXPECT_NEAR(ex.ref_chosen, logp_from_logits(*m.model, ex.prompt, ex.chosen), 1e-4);
    EXPECT_NEAR(ex.ref_rejected[0], logp_from_logits(*m.model, ex.prompt, ex.rejected[0]), 1e-4);
  }
  const PoSums sums = evaluate_preferences(*m.model, nullptr, store, pref_config(config::LN_DPO, 0.1), 256);
  EXPECT_NEAR(sums.loss / sums.examples, std::log(2.0), 1e-6);
  EXPECT_NEAR(sums.reward_chosen, 0.0, 1e-6);
  // Position synthesis with precomputed references is refused (they were taken at other positions).
  cfg.mutable_loss()->mutable_preference()->set_prefs_path(o.out);
  cfg.mutable_loss()->mutable_preference()->set_loss(config::LN_DPO);
  cfg.mutable_loss()->mutable_preference()->set_synth_target_length(64);
  cfg.set_name("refused");
  EXPECT_NE(test::error_of([&] { train(cfg, "test", ""); }).find("natural positions"), std::string::npos);
}

}  // namespace

namespace {

// A resumed preference run (LOGO with position synthesis: the example order, the position maps
// and the optimizer all continue) repeats the straight run's steps bit for bit.
TEST_F(PoTrainTest, ResumeIsBitExact) {
  const auto cfg_of = [&](const std::string& name) {
    config::RunConfig cfg = po_config(name, "LOGO");
    cfg.mutable_schedule()->set_total_steps(8);
    cfg.mutable_schedule()->set_warmup_steps(2);
    cfg.mutable_checkpoint()->set_every_steps(4);
    cfg.mutable_loss()->mutable_preference()->set_synth_target_length(64);
    cfg.mutable_loss()->mutable_preference()->set_examples_per_step(5);  // epochs end inside steps
    return cfg;
  };
  train(cfg_of("straight"), "test", "");
  train(cfg_of("resumed"), "test", (dir_.path() / "straight" / "checkpoints" / "step_00000004.h5").string());
  const auto lines = [&](const std::string& name) {
    std::vector<nlohmann::json> out;
    std::ifstream in(dir_.path() / name / "metrics.jsonl");
    for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
    return out;
  };
  const auto a = lines("straight"), b = lines("resumed");
  ASSERT_EQ(a.size(), 8u);
  ASSERT_EQ(b.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(b[i]["step"], a[4 + i]["step"]);
    for (const char* k : {"loss", "grad_norm", "accuracy", "chosen", "rejected"}) {
      EXPECT_EQ(b[i][k].get<double>(), a[4 + i][k].get<double>()) << k << " at step " << a[4 + i]["step"];
    }
  }
}

}  // namespace
