// The training loop (see train_loop.h).
#include "trainer/train_loop.h"

#include <fmt/format.h>
#include <omp.h>

#include <csignal>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <span>
#include <vector>

#include "common/clock.h"
#include "common/error.h"
#include "configs/config.h"
#include "data/curriculum.h"
#include "data/dataset.h"
#include "data/default_corpus.h"
#include "data/packing.h"
#include "kernels/sgemm_peak.h"
#include "trainer/batch.h"
#include "trainer/distill_teacher.h"
#include "trainer/metrics_history.h"
#include "trainer/optimizer.h"
#include "trainer/po_train.h"
#include "trainer/machine_peak.h"
#include "trainer/resume.h"
#include "trainer/run_lock.h"
#include "trainer/run_log.h"
#include "trainer/session.h"
#include "trainer/stop_signal.h"

namespace cadtrain::trainer {
namespace {

namespace fs = std::filesystem;

void check_dataset_fits(const data::Dataset& ds, const config::RunConfig& cfg) {
  if (ds.vocab_size() > cfg.model().vocab_size()) {
    fail("{} has vocab_size {} > model.vocab_size {}", ds.path(), ds.vocab_size(), cfg.model().vocab_size());
  }
  uint64_t longest = 0;
  for (uint64_t d = 0; d < ds.num_docs(); ++d) longest = std::max(longest, ds.doc_length(d));
  if (longest > cfg.model().max_seq_len()) {
    fail("{} holds a document of {} tokens > model.max_seq_len {}; raise model.max_seq_len", ds.path(), longest,
         cfg.model().max_seq_len());
  }
}

std::string human(double x) {
  if (x >= 1e9) return fmt::format("{:.2f} G", x / 1e9);
  if (x >= 1e6) return fmt::format("{:.2f} M", x / 1e6);
  if (x >= 1e3) return fmt::format("{:.1f} K", x / 1e3);
  return fmt::format("{:.0f}", x);
}

// One optimizer step's micro-batches, fetched up front so the loss normaliser (the step's total
// target count) is known before any gradient is computed. The counts are the global batch's
// (summed over the group); micro holds this rank's share.
struct StepBatches {
  std::vector<data::MicroBatch> micro;
  double weight = 0;
  double pairs = 0;
  double tokens = 0;      // micro-batches are packed whole documents, up to tokens_mb each
  double cut_tokens = 0;
  bool stop = false;      // some rank was asked to stop (SIGINT/SIGTERM): every rank stops here
};

StepBatches next_step_batches(data::Packer& packer, uint32_t count, TrainGroup& group, bool stop_requested) {
  StepBatches s;
  double sums[5] = {0, 0, 0, 0, stop_requested ? 1.0 : 0.0};  // weight, pairs, tokens, cut, stop
  // The ranks of a context-parallel group share each micro-batch: each counts 1/P of its pairs
  // and cut tokens, and the targets and tokens of its own rows.
  const double share = 1.0 / group.context_ranks();
  for (uint32_t i = 0; i < count; ++i) {
    data::MicroBatch global = packer.next();
    sums[1] += share * static_cast<double>(causal_pairs(global.cu_seqlens));
    sums[3] += share * static_cast<double>(global.cut_tokens);
    s.micro.push_back(group.context_share(std::move(global)));
    for (const float w : s.micro.back().loss_mask) sums[0] += w;
    sums[2] += static_cast<double>(s.micro.back().tokens.size());
  }
  // One collective per step for all of them: the stop request rides with the normaliser, so the
  // ranks agree on the step to stop at.
  group.sum_over_batch(std::span<double>(sums, 5));
  s.weight = sums[0];
  s.pairs = sums[1];
  s.tokens = sums[2];
  s.cut_tokens = sums[3];
  s.stop = sums[4] > 0;
  return s;
}

}  // namespace

TrainResult train(const config::RunConfig& cfg, const std::string& provenance, const std::string& resume_from) {
  const std::unique_ptr<TrainGroup> group = make_single_process_group();
  return train(cfg, provenance, resume_from, *group);
}

TrainResult train(const config::RunConfig& cfg, const std::string& provenance, const std::string& resume_from,
                  TrainGroup& group) {
  if (!cfg.loss().preference().prefs_path().empty()) return train_preference(cfg, provenance, resume_from, group);
  check_supported(cfg, group.world_size());
  const bool writer = group.is_writer();
  const bool many = group.world_size() > 1;
  const std::string run_dir = config::run_dir(cfg);
  const std::string ckpt_dir = checkpoint_dir(cfg);
  // One writer per run directory (and per checkpoint.dir elsewhere), held until train returns.
  std::optional<RunLock> run_lock, ckpt_lock;
  if (writer) {
    run_lock.emplace(run_dir, "run directory");
    if (fs::absolute(ckpt_dir).lexically_normal() != fs::absolute(run_dir + "/checkpoints").lexically_normal()) {
      ckpt_lock.emplace(ckpt_dir, "checkpoint directory");
    }
    ensure_directory(ckpt_dir, "checkpoint directory");
  }
  std::optional<ResumePoint> resumed;
  if (!resume_from.empty()) {
    resumed = find_resume_point(resume_from, false);
    if (resumed->state.step >= cfg.schedule().total_steps()) {
      fail("{} is at step {} and schedule.total_steps is {}: nothing left to train (raise schedule.total_steps "
           "to continue)",
           resumed->path, resumed->state.step, cfg.schedule().total_steps());
    }
  }
  RunStart start;  // the writer's decision; other ranks only read the checkpoint
  if (writer) start = plan_run_start(ckpt_dir, resumed ? resumed->path : "", resumed ? &resumed->state : nullptr);
  const StopSignals stop_signals;
  if (writer) config::write_effective_config(cfg, provenance, run_dir + "/config.pbtxt");

  if (writer && cfg.data().generate_if_missing()) {
    for (const auto& g : data::ensure_synthetic_datasets(cfg.data(), false)) {
      fmt::print("generated {}: {} documents, {} tokens in {:.2f} s\n", g.path, g.summary.n_docs, g.summary.n_tokens,
                 g.seconds);
    }
  }
  if (many) {
    // The other ranks open the data once the writer has generated it (the sum is a barrier).
    double ready = 1;
    group.sum_over_batch(std::span<double>(&ready, 1));
  }
  const data::Dataset train_ds = data::Dataset::open(cfg.data().train_path());
  check_dataset_fits(train_ds, cfg);
  std::unique_ptr<data::Dataset> eval_ds;  // the writer's only: it alone evaluates
  if (writer && !cfg.data().eval_path().empty()) {
    eval_ds = std::make_unique<data::Dataset>(data::Dataset::open(cfg.data().eval_path()));
    check_dataset_fits(*eval_ds, cfg);
  }

  std::unique_ptr<DistillTeacher> teacher;
  if (!cfg.loss().distill().teacher_path().empty()) {
    teacher = std::make_unique<DistillTeacher>(cfg.loss().distill(), train_ds, cfg.model().vocab_size());
  }

  const uint64_t tokens_mb = cfg.data().tokens_per_micro_batch();
  const uint32_t cp = group.context_ranks();
  // A rank's share of a context-parallel micro-batch can exceed tokens_mb (chunks round per
  // document), so the model takes the whole shared micro-batch.
  std::unique_ptr<kernels::CoreAttention> shared_attention = group.make_core_attention();
  const bool attention_is_local = shared_attention == nullptr;
  ModelSession session = make_model_session(cfg, static_cast<int64_t>(tokens_mb * cp), std::move(shared_attention));
  Model& model = *session.model;
  // The writer evaluates alone, on batches of the shared micro-batch's size (as one process with
  // P times the tokens would): with a distributed attention, on a LOCAL copy of the model (the
  // weights are copied in before each evaluation).
  const uint64_t eval_tokens = tokens_mb * cp;
  std::optional<ModelSession> eval_session;
  if (eval_ds && !attention_is_local) eval_session.emplace(make_model_session(cfg, static_cast<int64_t>(eval_tokens)));
  AdamW optimizer(cfg.optimizer(), model.params(), *session.backend);
  const std::unique_ptr<GradientSync> grad_sync = group.make_gradient_sync(model.params(), *session.backend);
  data::PackerOptions popt;
  popt.tokens_per_micro_batch = tokens_mb * cp;
  popt.shuffle = cfg.data().shuffle();
  popt.seed = cfg.seed();
  popt.rank = group.data_rank();
  popt.world = group.data_ranks();
  // Only LOCAL attention needs a document longer than a micro-batch cut (see data/packing.h).
  popt.cut_long_documents = cfg.attention().strategy() == config::LOCAL;
  // Steps count global micro-batches: every rank derives the same eligible pool from the same counter.
  popt.curriculum = data::make_curriculum(cfg.data().curriculum(), train_ds, cfg.schedule().total_steps(),
                                          uint64_t{group.data_ranks()} * cfg.data().grad_accumulation());
  data::Packer packer(train_ds, popt);

  uint64_t step = 0;
  for (const std::string& note : start.notes) fmt::print("{}\n", note);
  if (resumed) {
    const std::string& path = resumed->path;
    // Every rank reads the same file: the weights and moments are replicated, and the data
    // position counts micro-batches of the one global stream, so any layout resumes it.
    const TrainingState state = load_checkpoint(path, checkpoint_tensors(model, &optimizer));
    step = state.step;
    optimizer.set_steps_done(step);
    packer.restore(state.data_position);
    if (writer) fmt::print("resumed from {} at step {}\n", path, step);
  } else {
    model.init_weights(cfg.seed());
  }
  // Where the stream stood after the last finished step: what a checkpoint records (the packer
  // itself may be a step ahead when a stop request arrives with the next step's batches).
  data::PackerPosition finished_position = packer.position();

  const ModelDims& dims = model.dims();
  // MFU's denominator: the machine's calibrated sgemm peak, not this start-up's measurement alone.
  // Only the writer reports it (and writes the calibration cache).
  const double sgemm_now = writer ? kernels::measure_sgemm_gflops() : 0.0;
  PeakCalibration peak;
  if (writer) {
    peak = calibrate_peak(default_peak_cache_path(), this_machine_key(omp_get_max_threads()), sgemm_now, false);
  }
  // Ranks that compute the global batch together (MFU is per rank: global FLOPs over all of them).
  const uint32_t compute_ranks = group.data_ranks() * cp;
  const std::string metrics_path = run_dir + "/" + cfg.logging().metrics_file();
  const bool continuing = start.kind == StartKind::kContinue;
  if (writer && continuing) {
    if (const uint64_t dropped = keep_metrics_up_to(metrics_path, step); dropped > 0) {
      fmt::print("dropped {} lines of {} logged after step {} (those steps run again)\n", dropped, metrics_path, step);
    }
  }
  std::optional<RunLog> log;  // the writer's only
  if (writer) log.emplace(metrics_path, continuing, cfg.logging().log_every());
  // The global batch: every data-parallel rank packs grad_accumulation micro-batches.
  const uint64_t tokens_step = tokens_mb * cp * cfg.data().grad_accumulation() * group.data_ranks();
  if (log) log->table({{"run directory", run_dir},
             {"model", fmt::format("{} layers, d_model {}, {} heads ({} kv), head_dim {}, ffn {}, vocab {}{}",
                                   dims.n_layers, dims.c, dims.q_heads, dims.kv_heads, dims.head_dim, dims.ffn,
                                   dims.vocab, dims.tied ? ", tied head" : "")},
             {"parameters", fmt::format("{} ({})", dims.param_count(), human(static_cast<double>(dims.param_count())))},
             {"tokens per step", fmt::format("up to {} ({} x {} micro-batches x {} data-parallel ranks)", tokens_step,
                                             tokens_mb * cp, cfg.data().grad_accumulation(), group.data_ranks())},
             {"ranks", fmt::format("{} (data-parallel {} x context-parallel {}, attention {}); this one writes logs "
                                   "and checkpoints",
                                   group.world_size(), group.data_ranks(), cp,
                                   attention_is_local ? std::string("LOCAL")
                                                      : config::AttentionStrategy_Name(cfg.attention().strategy()))},
             {"packing", fmt::format("whole documents, best fit, not padded (fill = tokens / {}); longer documents "
                                     "{}", tokens_step, popt.cut_long_documents ? "cut (counted as cut tokens)"
                                                                                : "rejected")},
             {"dense FLOPs per token", human(6.0 * static_cast<double>(dims.matmul_params()))},
             {"train data", fmt::format("{} ({} docs, {} tokens)", train_ds.path(), train_ds.num_docs(),
                                        train_ds.num_tokens())},
             {"threads", fmt::format("{} (OMP_WAIT_POLICY {})", omp_get_max_threads(),
                                     std::getenv("OMP_WAIT_POLICY") ? std::getenv("OMP_WAIT_POLICY") : "unset: spinning")},
             {"MFU denominator", fmt::format("{:.1f} GFLOP/s: best sgemm of {} start-up measurements on this machine "
                                             "at {} threads (`cadtrain calibrate` re-measures)",
                                             peak.gflops, peak.measurements, omp_get_max_threads())},
             {"sgemm now (measured)", fmt::format("{:.1f} GFLOP/s (metrics.jsonl: mfu_vs_sgemm_now)", sgemm_now)},
             {"steps", fmt::format("{} -> {}", step, cfg.schedule().total_steps())},
             {"distillation", teacher ? distill_summary(cfg.loss().distill(), *teacher) : std::string("off")}});
  if (log && popt.curriculum) log->note(data::curriculum_summary(cfg.data().curriculum(), *popt.curriculum));
  if (log && !peak.note.empty()) log->note("note: " + peak.note);
  if (const std::string w = startup_load_warning(sgemm_now, peak.gflops); log && !w.empty()) log->note("warning: " + w);

  TrainResult result;
  const auto evaluate_now = [&](uint64_t at) {
    if (!eval_ds) return;  // also every rank but the writer
    // The final evaluation scores the whole file (the figure `cadtrain eval` reports); the periodic
    // ones, eval_batches micro-batches.
    const bool last = at == cfg.schedule().total_steps();
    Model* scored = &model;
    if (eval_session) {
      scored = eval_session->model.get();
      session.backend->copy(scored->params().params(), model.params().params(), model.params().total());
    }
    result.eval = evaluate(*scored, *eval_ds, eval_tokens, last ? kWholeDataset : cfg.schedule().eval_batches());
    result.evaluated = true;
    if (log) log->eval(at, "eval", result.eval);
  };
  uint64_t last_saved = step;
  const auto save = [&](uint64_t at) {
    if (!writer) return;
    TrainingState state;
    state.step = at;
    state.data_position = finished_position;
    state.config_text = config::effective_config_text(cfg, provenance);
    state.run_id = start.run_id;
    result.checkpoint = save_checkpoint(ckpt_dir, state, checkpoint_tensors(model, &optimizer), cfg.checkpoint().keep_last());
    last_saved = at;
  };
  // A first SIGINT/SIGTERM stops between steps: the finished steps are checkpointed, nothing is
  // left half-written, and the exit status says the run did not finish.
  const auto stop_now = [&] {
    const int signal = StopSignals::received();
    if (step > last_saved) save(step);
    const std::string latest = !result.checkpoint.empty() ? result.checkpoint : resumed ? resumed->path : "";
    fail("stopped by {} after step {} of {}; {}",
         signal == SIGINT ? "SIGINT" : signal == SIGTERM ? "SIGTERM" : "a stop request on another rank", step,
         cfg.schedule().total_steps(),
         latest.empty() ? std::string("no checkpoint was written")
                        : fmt::format("checkpoint {}; continue with: cadtrain train --resume {}", latest, run_dir));
  };

  bool first = true;
  while (step < cfg.schedule().total_steps()) {
    StepMetrics m;
    const double t0 = now_seconds();
    const StepBatches batches =
        next_step_batches(packer, cfg.data().grad_accumulation(), group, StopSignals::received() != 0);
    if (batches.stop) stop_now();
    m.data = now_seconds() - t0;
    session.backend->zero(model.params().grads(), model.params().total());
    model.reset_times();
    double loss_sum = 0, kd_sum = 0;
    const float grad_scale = batches.weight > 0 ? static_cast<float>(1.0 / batches.weight) : 0.0f;
    for (size_t i = 0; i < batches.micro.size(); ++i) {
      GradientSync* sync = i + 1 == batches.micro.size() ? grad_sync.get() : nullptr;
      const LossSum r = forward_backward_micro_batch(model, teacher.get(), batches.micro[i], grad_scale, sync);
      loss_sum += r.loss_sum;
      kd_sum += r.kd_sum;
    }
    grad_sync->finish_step();
    double sums[2] = {loss_sum, kd_sum};
    group.sum_over_batch(std::span<double>(sums, 2));
    loss_sum = sums[0];
    kd_sum = sums[1];
    m.loss = batches.weight > 0 ? loss_sum / batches.weight : 0;
    if (teacher) add_distill_metrics(cfg.loss().distill(), *teacher, kd_sum, batches.weight, m);
    if (popt.curriculum) m.extra.emplace_back("admitted", packer.admitted_fraction());
    m.forward = model.times().forward;
    m.backward = model.times().backward;
    m.core_attention = model.times().core_attention;
    m.loss_time = model.times().loss;

    const double t_opt = now_seconds();
    m.grad_norm = optimizer.grad_norm();
    m.lr = learning_rate(cfg.optimizer(), cfg.schedule(), step);
    if (!std::isfinite(m.loss) || !std::isfinite(m.grad_norm)) {
      // Name the culprit: a weight that is already not finite, else the first bad gradient.
      std::string bad = optimizer.first_nonfinite_param();
      bad = !bad.empty() ? fmt::format("the weights of {}", bad)
            : std::isfinite(m.loss) ? fmt::format("the gradient of {}", optimizer.first_nonfinite_grad())
                                    : std::string("the loss");
      if (cfg.optimizer().on_nonfinite() == config::FAIL) {
        fail("step {}: non-finite value in {} (loss {}, grad norm {}); weights left at step {} "
             "(optimizer.on_nonfinite: SKIP_STEP drops such steps instead)",
             step + 1, bad, m.loss, m.grad_norm, step);
      }
      m.skipped = true;
      if (log) log->note(fmt::format("step {}: non-finite value in {}: step skipped", step + 1, bad));
    } else {
      optimizer.step(m.lr, m.grad_norm);
    }
    m.optimizer = now_seconds() - t_opt;
    ++step;
    finished_position = packer.position();
    m.step = step;
    m.total_steps = cfg.schedule().total_steps();
    m.seconds = now_seconds() - t0;
    m.tokens = static_cast<uint64_t>(batches.tokens);  // the global batch's
    m.capacity = tokens_step;
    m.cut_tokens = static_cast<uint64_t>(batches.cut_tokens);
    m.tokens_per_second = batches.tokens / m.seconds;
    const double flops_per_second = training_flops(dims, static_cast<uint64_t>(batches.tokens),
                                                   static_cast<uint64_t>(batches.pairs)) /
                                    m.seconds / compute_ranks;
    const double peak_before = peak.gflops;
    if (writer) {
      m.mfu = mfu_against(flops_per_second, &peak);
      m.mfu_vs_sgemm_now = flops_per_second / (sgemm_now * 1e9);
    }
    if (log && peak.gflops > peak_before) {
      log->note(fmt::format("step {} ran at {:.1f} GFLOP/s, above the calibrated peak: MFU denominator raised to it",
                            step, peak.gflops));
    }
    if (log) log->step(m);
    if (first) result.first_loss = m.loss;
    first = false;
    result.last_loss = m.loss;

    const uint64_t every_eval = cfg.schedule().eval_every();
    if (every_eval > 0 && step % every_eval == 0 && step != cfg.schedule().total_steps()) evaluate_now(step);
    const uint64_t every_ckpt = cfg.checkpoint().every_steps();
    if (every_ckpt > 0 && step % every_ckpt == 0 && step != cfg.schedule().total_steps()) save(step);
  }
  save(step);
  if (log) log->note(fmt::format("checkpoint {}", result.checkpoint));
  evaluate_now(step);
  result.steps = step;
  return result;
}

}  // namespace cadtrain::trainer
