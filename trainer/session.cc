// Building a runnable model from a config (see session.h).
#include "trainer/session.h"

#include <omp.h>

#include <filesystem>

#include "common/error.h"
#include "configs/config.h"
#include "trainer/optimizer.h"

namespace cadtrain::trainer {

namespace {

void check_device(const config::RunConfig& cfg) {
  if (cfg.device() != config::CPU) fail("device CUDA: the CUDA training backend is not built yet; use device: CPU");
}

}  // namespace

void check_supported(const config::RunConfig& cfg, uint32_t world_size) {
  check_device(cfg);
  const config::AttentionStrategy strategy = cfg.attention().strategy();
  if (strategy != config::LOCAL && strategy != config::RING && strategy != config::TOKENRING) {
    fail("attention.strategy {}: `train` runs LOCAL, RING and TOKENRING attention so far",
         config::AttentionStrategy_Name(strategy));
  }
  config::check_world_size(cfg, world_size);
  const uint32_t cp = cfg.parallel().context_parallel();
  if (cp > 1) {
    // What context parallelism cannot run: it splits documents across ranks and only core
    // attention (the strategy) exchanges rows between them.
    for (int i = 0; i < cfg.model().layer_kinds_size(); ++i) {
      if (cfg.model().layer_kinds(i) == config::SHORT_CONV) {
        fail("model.layer_kinds[{}] is SHORT_CONV, which parallel.context_parallel = {} cannot run: a short "
             "convolution reads the rows just before each row, which attention.strategy {} may place on another "
             "rank; use ATTENTION layers only, or parallel.context_parallel: 1",
             i, cp, config::AttentionStrategy_Name(strategy));
      }
    }
    if (!cfg.loss().distill().teacher_path().empty()) {
      fail("loss.distill.teacher_path is set, but distillation does not run under parallel.context_parallel = {} yet "
           "(the teacher's top-K rows are not sharded); use parallel.context_parallel: 1",
           cp);
    }
  }
}

ModelSession make_model_session(const config::RunConfig& cfg, int64_t max_tokens,
                                std::unique_ptr<kernels::CoreAttention> attention) {
  check_device(cfg);
  if (cfg.parallel().threads() > 0) omp_set_num_threads(static_cast<int>(cfg.parallel().threads()));
  ModelSession s;
  s.backend = kernels::make_cpu_backend();
  s.attention = attention ? std::move(attention) : kernels::make_local_task_attention();
  s.model = std::make_unique<Model>(cfg.model(), max_tokens, *s.backend, *s.attention);
  return s;
}

CheckpointTensors checkpoint_tensors(Model& model, AdamW* optimizer) {
  CheckpointTensors t;
  ParameterSet& p = model.params();
  for (size_t i = 0; i < p.infos().size(); ++i) {
    const ParamInfo& info = p.info(i);
    t.params.push_back({info.name, info.shape, p.param(i)});
    if (optimizer != nullptr) {
      t.adam_m.push_back({info.name, info.shape, optimizer->m() + info.offset});
      t.adam_v.push_back({info.name, info.shape, optimizer->v() + info.offset});
    }
  }
  return t;
}

LoadedModel load_model(const std::string& checkpoint_or_dir, int64_t max_tokens,
                       const std::vector<std::string>& overrides) {
  LoadedModel m;
  m.path = resolve_checkpoint(checkpoint_or_dir);
  const TrainingState state = read_checkpoint_state(m.path);
  m.cfg = config::parse_run_config(state.config_text, m.path + " (config)", overrides);
  m.step = state.step;
  m.session = make_model_session(
      m.cfg, max_tokens > 0 ? max_tokens : static_cast<int64_t>(m.cfg.data().tokens_per_micro_batch()));
  load_checkpoint(m.path, checkpoint_tensors(*m.session.model, nullptr));
  return m;
}

std::string resolve_checkpoint(const std::string& path) {
  namespace fs = std::filesystem;
  if (fs::is_regular_file(path)) return path;
  for (const fs::path& dir : {fs::path(path) / "checkpoints", fs::path(path)}) {
    if (!fs::is_directory(dir)) continue;
    if (std::string latest = latest_checkpoint(dir.string()); !latest.empty()) return latest;
  }
  fail("{}: no checkpoint there (expected a step_*.h5 file, a run directory or its checkpoints/)", path);
}

}  // namespace cadtrain::trainer
