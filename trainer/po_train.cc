// Preference optimization: micro-batch step, loop and reference preparation (po_train.h).
#include "trainer/po_train.h"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <csignal>
#include <cmath>
#include <optional>
#include <span>
#include <vector>

#include "common/clock.h"
#include "common/error.h"
#include "common/rng.h"
#include "configs/config.h"
#include "kernels/sgemm_peak.h"
#include "trainer/batch.h"
#include "trainer/machine_peak.h"
#include "trainer/optimizer.h"
#include "trainer/resume.h"
#include "trainer/run_lock.h"
#include "trainer/run_log.h"
#include "trainer/session.h"
#include "trainer/stop_signal.h"

namespace cadtrain::trainer {
namespace {

// Examples in a seeded order per epoch; the position is (epoch, cursor), kept in checkpoints as
// data_position.epoch / doc_cursor.
class ExampleStream {
 public:
  ExampleStream(uint64_t n, uint64_t seed) : n_(n), seed_(seed) { shuffle(); }
  uint64_t next() {
    if (cursor_ == n_) {
      ++epoch_;
      cursor_ = 0;
      shuffle();
    }
    return order_[cursor_++];
  }
  data::PackerPosition position() const {
    data::PackerPosition p;
    p.epoch = epoch_;
    p.doc_cursor = cursor_;
    return p;
  }
  void restore(const data::PackerPosition& p) {
    if (p.doc_cursor > n_) fail("checkpoint's preference cursor {} is beyond the store's {} examples", p.doc_cursor, n_);
    epoch_ = p.epoch;
    cursor_ = p.doc_cursor;
    shuffle();
  }

 private:
  void shuffle() {
    order_.resize(n_);
    for (uint64_t i = 0; i < n_; ++i) order_[i] = i;
    Rng rng(seed_, 0x5052454600000000ULL + epoch_);
    for (uint64_t i = n_; i > 1; --i) std::swap(order_[i - 1], order_[rng.below(i)]);
  }
  uint64_t n_, seed_, epoch_ = 0, cursor_ = 0;
  std::vector<uint64_t> order_;
};

// Groups examples into micro-batches of at most max_rows rows, in order.
std::vector<std::vector<uint64_t>> group_rows(const data::PrefsStore& store, std::span<const uint64_t> examples,
                                              uint32_t m, int64_t max_rows) {
  std::vector<std::vector<uint64_t>> groups;
  int64_t rows = 0;
  for (const uint64_t e : examples) {
    const int64_t r = po_example_rows(store.example(e), m);
    if (groups.empty() || rows + r > max_rows) {
      groups.emplace_back();
      rows = 0;
    }
    groups.back().push_back(e);
    rows += r;
  }
  return groups;
}

void check_store_fits(const data::PrefsStore& store, const config::RunConfig& cfg) {
  const auto& p = cfg.loss().preference();
  if (store.info().vocab_size > cfg.model().vocab_size()) {
    fail("{} was tokenized for vocab_size {} > model.vocab_size {}", store.path(), store.info().vocab_size,
         cfg.model().vocab_size());
  }
  const int64_t max_rows = static_cast<int64_t>(cfg.data().tokens_per_micro_batch());
  for (uint64_t e = 0; e < store.num_examples(); ++e) {
    const data::PrefsExample ex = store.example(e);
    if (p.rejected_per_example() > ex.rejected.size()) {
      fail("{}: example {} (line {}) has {} rejected responses, loss.preference.rejected_per_example is {}",
           store.path(), e, ex.source_line, ex.rejected.size(), p.rejected_per_example());
    }
    const int64_t rows = po_example_rows(ex, p.rejected_per_example());
    if (rows > max_rows) {
      fail("{}: example {} (line {}) takes {} rows (prompt + each response), more than "
           "data.tokens_per_micro_batch {}; raise it",
           store.path(), e, ex.source_line, rows, max_rows);
    }
  }
  const uint64_t longest = p.synth_target_length() > 0 ? p.synth_target_length() : store.longest_sequence();
  if (longest > cfg.model().max_seq_len()) {
    fail("{}: sequences reach position {} > model.max_seq_len {}; raise model.max_seq_len", store.path(), longest,
         cfg.model().max_seq_len());
  }
}

std::string loss_name(const config::PreferenceConfig& p) { return config::PreferenceLoss_Name(p.loss()); }

}  // namespace

PoObjective po_objective_from(const config::PreferenceConfig& p) {
  PoObjective o;
  o.logo = p.loss() == config::LOGO;
  const double beta = p.beta() > 0 ? p.beta() : (o.logo ? 10.0 : 0.1);
  o.ln.beta = beta;
  o.ln.margin = p.margin();
  o.ln.dpo_term = p.loss() != config::LN_APO_ZERO;
  o.ln.delta = p.loss() == config::LN_APO_ZERO ? 1.0 : p.loss() == config::LN_DPO_APO ? p.apo_weight() : 0.0;
  o.logo_options.beta = beta;
  o.logo_options.gamma = p.gamma();
  o.logo_options.lambda = p.sft_weight();
  return o;
}

PositionSynthesis position_synthesis_from(const config::PreferenceConfig& p) {
  return PositionSynthesis{p.synth_target_length(), p.synth_chunks()};
}

PoSums po_micro_batch_step(Model& policy, Model* reference, PoMicroBatch& batch, const PoObjective& objective,
                           float grad_scale, GradientSync* grad_sync) {
  const size_t n = batch.mb.tokens.size();
  std::vector<float> row_loss(n);
  std::vector<double> logp_c, ref_c;
  std::vector<std::vector<double>> logp_r, ref_r;
  policy.evaluate(batch_view(batch.mb), row_loss.data(), nullptr);
  response_logps(batch, row_loss, logp_c, logp_r);
  PoReference ref;
  if (!objective.logo) {
    if (reference != nullptr) {
      reference->evaluate(batch_view(batch.mb), row_loss.data(), nullptr);
      response_logps(batch, row_loss, ref_c, ref_r);
    } else {
      for (const PoExampleRows& ex : batch.examples) {
        if (ex.ref_rejected.size() != ex.rejected.size()) {
          fail("preference example {} (line {}) has no reference log-probabilities", ex.example, ex.source_line);
        }
        ref_c.push_back(ex.ref_chosen);
        ref_r.push_back(ex.ref_rejected);
      }
    }
    ref = PoReference{&ref_c, &ref_r};
  }
  PoSums sums;
  std::vector<float> weight;
  po_objective(batch, logp_c, logp_r, ref, objective, weight, sums);
  if (grad_scale != 0.0f || grad_sync != nullptr) {
    batch.mb.loss_mask = std::move(weight);
    policy.forward_backward(batch_view(batch.mb), grad_scale, grad_sync);
  }
  return sums;
}

PoSums evaluate_preferences(Model& policy, Model* reference, const data::PrefsStore& store,
                            const config::PreferenceConfig& cfg, int64_t max_rows) {
  const PoObjective objective = po_objective_from(cfg);
  std::vector<uint64_t> all(store.num_examples());
  for (uint64_t e = 0; e < all.size(); ++e) all[e] = e;
  PoSums total;
  for (const auto& group : group_rows(store, all, cfg.rejected_per_example(), max_rows)) {
    PoMicroBatch b = make_po_micro_batch(store, group, cfg.rejected_per_example(), PositionSynthesis{}, 0);
    total.add(po_micro_batch_step(policy, reference, b, objective, 0.0f, nullptr));
  }
  return total;
}

TrainResult train_preference(const config::RunConfig& cfg, const std::string& provenance,
                             const std::string& resume_from, TrainGroup& group) {
  check_supported(cfg, group.world_size());
  const config::PreferenceConfig& pc = cfg.loss().preference();
  if (!cfg.loss().distill().teacher_path().empty()) fail("loss.preference and loss.distill cannot be combined");
  const bool writer = group.is_writer();
  const std::string run_dir = config::run_dir(cfg);
  const std::string ckpt_dir = checkpoint_dir(cfg);
  std::optional<RunLock> run_lock;
  if (writer) {
    run_lock.emplace(run_dir, "run directory");
    ensure_directory(ckpt_dir, "checkpoint directory");
  }
  std::optional<ResumePoint> resumed;
  if (!resume_from.empty()) resumed = find_resume_point(resume_from, false);
  RunStart start;
  if (writer) start = plan_run_start(ckpt_dir, resumed ? resumed->path : "", resumed ? &resumed->state : nullptr);
  const StopSignals stop_signals;
  if (writer) config::write_effective_config(cfg, provenance, run_dir + "/config.pbtxt");

  const data::PrefsStore store = data::PrefsStore::open(pc.prefs_path());
  check_store_fits(store, cfg);
  const PoObjective objective = po_objective_from(pc);
  const PositionSynthesis synth = position_synthesis_from(pc);
  const auto max_rows = static_cast<int64_t>(cfg.data().tokens_per_micro_batch());
  ModelSession session = make_model_session(cfg, max_rows);
  Model& model = *session.model;
  AdamW optimizer(cfg.optimizer(), model.params(), *session.backend);
  const std::unique_ptr<GradientSync> grad_sync = group.make_gradient_sync(model.params(), *session.backend);
  ExampleStream stream(store.num_examples(), cfg.seed());

  uint64_t step = 0;
  if (resumed) {
    const TrainingState state = load_checkpoint(resumed->path, checkpoint_tensors(model, &optimizer));
    step = state.step;
    optimizer.set_steps_done(step);
    stream.restore(state.data_position);
  } else if (!pc.init_checkpoint().empty()) {
    load_checkpoint(resolve_checkpoint(pc.init_checkpoint()), checkpoint_tensors(model, nullptr));
  } else {
    model.init_weights(cfg.seed());
  }

  // The LN losses' reference: a checkpoint, the store's values, or the starting weights (frozen).
  std::optional<LoadedModel> ref_loaded;
  std::optional<ModelSession> ref_copy;
  Model* reference = nullptr;
  std::string ref_what = "none (LOGO is reference-free)";
  if (!objective.logo) {
    if (!pc.reference_checkpoint().empty()) {
      ref_loaded.emplace(load_model(pc.reference_checkpoint(), max_rows));
      reference = ref_loaded->session.model.get();
      if (reference->dims().vocab != model.dims().vocab) {
        fail("reference {} has vocab_size {}, the policy {}", ref_loaded->path, reference->dims().vocab,
             model.dims().vocab);
      }
      ref_what = "frozen copy of " + ref_loaded->path;
    } else if (store.has_reference() && synth.target_length == 0) {
      ref_what = "precomputed in the store (" + store.info().reference + ")";
    } else if (store.has_reference()) {
      fail("{} holds reference log-probabilities computed at natural positions, but position synthesis is on; set "
           "loss.preference.reference_checkpoint so the reference sees the same positions",
           store.path());
    } else {
      if (resumed) {
        fail("resuming LN preference training needs loss.preference.reference_checkpoint (or a store with "
             "/ref_logps): the starting weights are gone");
      }
      ref_copy.emplace(make_model_session(cfg, max_rows));
      session.backend->copy(ref_copy->model->params().params(), model.params().params(), model.params().total());
      reference = ref_copy->model.get();
      ref_what = "frozen copy of the starting weights";
    }
  }

  const double sgemm_now = kernels::measure_sgemm_gflops();
  PeakCalibration peak =
      calibrate_peak(default_peak_cache_path(), this_machine_key(omp_get_max_threads()), sgemm_now, false);
  const std::string metrics_path = run_dir + "/" + cfg.logging().metrics_file();
  std::optional<RunLog> log;
  if (writer) log.emplace(metrics_path, start.kind == StartKind::kContinue, cfg.logging().log_every());
  const ModelDims& dims = model.dims();
  if (log) {
    log->table({{"run directory", run_dir},
                {"model", fmt::format("{} layers, d_model {}, {} heads ({} kv), vocab {}", dims.n_layers, dims.c,
                                      dims.q_heads, dims.kv_heads, dims.vocab)},
                {"preference data", fmt::format("{} ({} examples)", store.path(), store.num_examples())},
                {"objective", loss_name(pc) + (objective.logo
                                                    ? fmt::format(" beta {} gamma {} sft_weight {}", objective.logo_options.beta,
                                                                  objective.logo_options.gamma, objective.logo_options.lambda)
                                                    : fmt::format(" beta {} margin {} apo_weight {}", objective.ln.beta,
                                                                  objective.ln.margin, objective.ln.delta))},
                {"rejected per example", pc.rejected_per_example() == 0 ? std::string("all")
                                                                        : std::to_string(pc.rejected_per_example())},
                {"reference", ref_what},
                {"position synthesis", synth.target_length == 0 ? std::string("off")
                                                                : fmt::format("target length {}, {} chunks",
                                                                              synth.target_length, synth.chunks)},
                {"examples per step", fmt::format("{} (micro-batches of up to {} rows)", pc.examples_per_step(), max_rows)},
                {"steps", fmt::format("{} -> {}", step, cfg.schedule().total_steps())}});
  }

  TrainResult result;
  uint64_t last_saved = step;
  const auto save = [&](uint64_t at) {
    last_saved = at;
    if (!writer) return;
    TrainingState state;
    state.step = at;
    state.data_position = stream.position();
    state.config_text = config::effective_config_text(cfg, provenance);
    state.run_id = start.run_id;
    result.checkpoint =
        save_checkpoint(ckpt_dir, state, checkpoint_tensors(model, &optimizer), cfg.checkpoint().keep_last());
  };
  const uint32_t rank = group.data_rank(), ranks = group.data_ranks();
  // Every rank needs an example per step: its last micro-batch's backward drives the gradient sync.
  if (pc.examples_per_step() < ranks) {
    fail("loss.preference.examples_per_step {} < {} data-parallel ranks", pc.examples_per_step(), ranks);
  }
  while (step < cfg.schedule().total_steps()) {
    // A first SIGINT/SIGTERM stops between steps with the finished steps checkpointed.
    if (const int signal = StopSignals::received(); signal != 0) {
      if (step > last_saved) save(step);
      fail("stopped by {} after step {} of {}; continue with: cadtrain train --resume {}",
           signal == SIGINT ? "SIGINT" : "SIGTERM", step, cfg.schedule().total_steps(), run_dir);
    }
    const double t0 = now_seconds();
    // The step's global examples; this rank takes every ranks-th.
    std::vector<uint64_t> mine;
    for (uint32_t i = 0; i < pc.examples_per_step(); ++i) {
      const uint64_t e = stream.next();
      if (i % ranks == rank) mine.push_back(e);
    }
    session.backend->zero(model.params().grads(), model.params().total());
    model.reset_times();
    const auto groups = group_rows(store, mine, pc.rejected_per_example(), max_rows);
    const float grad_scale = 1.0f / static_cast<float>(pc.examples_per_step());
    const uint64_t synth_seed = cfg.seed() * 0x9E3779B97F4A7C15ULL + step;
    PoSums sums;
    uint64_t tokens = 0, pairs = 0;
    for (size_t g = 0; g < groups.size(); ++g) {
      PoMicroBatch b = make_po_micro_batch(store, groups[g], pc.rejected_per_example(), synth, synth_seed);
      tokens += b.mb.tokens.size();
      pairs += causal_pairs(b.mb.cu_seqlens);
      sums.add(po_micro_batch_step(model, reference, b, objective, grad_scale,
                                   g + 1 == groups.size() ? grad_sync.get() : nullptr));
    }
    grad_sync->finish_step();
    double s[7] = {sums.examples, sums.pairs, sums.loss, sums.reward_chosen, sums.reward_rejected, sums.correct, sums.sft};
    group.sum_over_batch(std::span<double>(s, 7));
    StepMetrics m;
    m.loss = s[2] / s[0];
    const double rc = s[3] / s[0], rr = s[4] / s[0];
    m.extra = {{"chosen", rc}, {"rejected", rr}, {"margin", rc - rr}, {"accuracy", s[5] / s[1]}, {"sft", s[6] / s[0]}};
    m.forward = model.times().forward;
    m.backward = model.times().backward;
    m.core_attention = model.times().core_attention;
    m.loss_time = model.times().loss;
    const double t_opt = now_seconds();
    m.grad_norm = optimizer.grad_norm();
    m.lr = learning_rate(cfg.optimizer(), cfg.schedule(), step);
    if (!std::isfinite(m.loss) || !std::isfinite(m.grad_norm)) {
      if (cfg.optimizer().on_nonfinite() == config::FAIL) {
        fail("step {}: non-finite preference loss {} or gradient norm {} (first bad gradient: {})", step + 1, m.loss,
             m.grad_norm, optimizer.first_nonfinite_grad());
      }
      m.skipped = true;
    } else {
      optimizer.step(m.lr, m.grad_norm);
    }
    m.optimizer = now_seconds() - t_opt;
    ++step;
    m.step = step;
    m.total_steps = cfg.schedule().total_steps();
    m.seconds = now_seconds() - t0;
    m.tokens = tokens;
    m.capacity = groups.size() * static_cast<uint64_t>(max_rows);
    m.tokens_per_second = static_cast<double>(tokens) / m.seconds;
    // Model FLOPs: the policy's forward + backward and the reference's forward. The step's second
    // policy forward (the price of weighting the backward by dL/dlogp) is overhead, not counted.
    const double train_flops = training_flops(dims, tokens, pairs);
    const double flops = train_flops + (reference != nullptr ? train_flops / 3.0 : 0.0);
    m.mfu = mfu_against(flops / m.seconds, &peak);
    m.mfu_vs_sgemm_now = flops / m.seconds / (sgemm_now * 1e9);
    if (log) log->step(m);
    if (result.steps == 0 && step == (resumed ? resumed->state.step + 1 : 1)) result.first_loss = m.loss;
    result.last_loss = m.loss;
    const uint64_t every = cfg.checkpoint().every_steps();
    if (every > 0 && step % every == 0 && step != cfg.schedule().total_steps()) save(step);
  }
  save(step);
  if (log) log->note(fmt::format("checkpoint {}", result.checkpoint));
  result.steps = step;
  return result;
}

PrepareRefSummary prepare_reference(const PrepareRefOptions& o) {
  const double t0 = now_seconds();
  const data::PrefsStore store = data::PrefsStore::open(o.prefs);
  int64_t max_rows = 1;
  for (uint64_t e = 0; e < store.num_examples(); ++e) max_rows = std::max(max_rows, po_example_rows(store.example(e), 0));
  LoadedModel ref = load_model(o.reference, max_rows);
  Model& model = *ref.session.model;
  if (store.info().vocab_size > static_cast<uint32_t>(model.dims().vocab)) {
    fail("{} was tokenized for vocab_size {}, the reference {} has {}", o.prefs, store.info().vocab_size, ref.path,
         model.dims().vocab);
  }
  data::PrefsData out = store.data();
  out.ref_logps.assign(out.segment_offsets.size() - 1, std::nan(""));
  out.info.reference = ref.path;
  PrepareRefSummary s;
  double logp_sum = 0, tokens = 0;
  std::vector<uint64_t> all(store.num_examples());
  for (uint64_t e = 0; e < all.size(); ++e) all[e] = e;
  std::vector<float> row_loss;
  std::vector<double> c;
  std::vector<std::vector<double>> r;
  for (const auto& group : group_rows(store, all, 0, max_rows)) {
    const PoMicroBatch b = make_po_micro_batch(store, group, 0, PositionSynthesis{}, 0);
    row_loss.assign(b.mb.tokens.size(), 0.0f);
    model.evaluate(batch_view(b.mb), row_loss.data(), nullptr);
    response_logps(b, row_loss, c, r);
    for (size_t i = 0; i < b.examples.size(); ++i) {
      const PoExampleRows& ex = b.examples[i];
      const uint64_t first = out.example_segments[ex.example];
      out.ref_logps[first + 1] = c[i];
      logp_sum += c[i];
      tokens += static_cast<double>(ex.chosen.size());
      for (size_t j = 0; j < r[i].size(); ++j) {
        out.ref_logps[first + 2 + j] = r[i][j];
        logp_sum += r[i][j];
        tokens += static_cast<double>(ex.rejected[j].size());
      }
      s.responses += 1 + r[i].size();
    }
  }
  write_prefs_store(o.out.empty() ? o.prefs : o.out, out);
  s.examples = store.num_examples();
  s.mean_logp_per_token = tokens > 0 ? logp_sum / tokens : 0;
  s.seconds = now_seconds() - t0;
  return s;
}

}  // namespace cadtrain::trainer
