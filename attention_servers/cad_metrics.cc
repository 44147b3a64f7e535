// CAD step metrics (see cad_metrics.h).
#include "attention_servers/cad_metrics.h"

#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace cadtrain::attention_servers {
namespace {

double imbalance(const std::vector<double>& x) {
  if (x.empty()) return 1;
  double sum = 0, mx = 0;
  for (const double v : x) {
    sum += v;
    mx = std::max(mx, v);
  }
  return sum > 0 ? mx / (sum / static_cast<double>(x.size())) : 1;
}

std::string bytes_text(double b) {
  if (b >= 1e9) return fmt::format("{:.2f}GB", b / 1e9);
  if (b >= 1e6) return fmt::format("{:.2f}MB", b / 1e6);
  if (b >= 1e3) return fmt::format("{:.1f}kB", b / 1e3);
  return fmt::format("{:.0f}B", b);
}

}  // namespace

CadStepMetrics summarize_cad_stats(std::vector<CadStats> ranks, std::vector<int> servers) {
  CadStepMetrics m;
  m.ranks = std::move(ranks);
  m.servers = std::move(servers);
  std::vector<double> cost, busy;
  for (const int s : m.servers) {
    CADTRAIN_CHECK(s >= 0 && static_cast<size_t>(s) < m.ranks.size(), "CAD metrics: server rank {} of {} ranks", s,
                   m.ranks.size());
    const CadStats& st = m.ranks[static_cast<size_t>(s)];
    cost.push_back(st.task_cost);
    busy.push_back(st.busy_s);
    m.busy_max_s = std::max(m.busy_max_s, st.busy_s);
    m.busy_mean_s += st.busy_s / static_cast<double>(m.servers.size());
    m.idle_max_s = std::max(m.idle_max_s, st.exchange_s);
    m.kept_bytes_peak = std::max(m.kept_bytes_peak, st.kept_bytes_peak);
  }
  m.cost_imbalance = imbalance(cost);
  m.busy_imbalance = imbalance(busy);
  for (const CadStats& st : m.ranks) {
    m.bytes_sent += st.bytes_sent;
    m.descriptor_bytes += st.descriptor_bytes;
    m.scheduler_s = std::max(m.scheduler_s, st.scheduler_s);
  }
  return m;
}

std::string cad_step_line(const CadStepMetrics& m) {
  return fmt::format("cad imb {:.2f}/{:.2f} busy {:.1f}ms idle {:.1f}ms {} sched {:.1f}ms", m.cost_imbalance,
                     m.busy_imbalance, 1e3 * m.busy_max_s, 1e3 * m.idle_max_s,
                     bytes_text(static_cast<double>(m.bytes_sent)), 1e3 * m.scheduler_s);
}

nlohmann::json cad_step_json(const CadStepMetrics& m) {
  nlohmann::json per = nlohmann::json::array();
  for (const int s : m.servers) {
    const CadStats& st = m.ranks[static_cast<size_t>(s)];
    per.push_back({{"rank", s},
                   {"task_cost", st.task_cost},
                   {"tasks", st.tasks},
                   {"busy_s", st.busy_s},
                   {"idle_s", st.exchange_s},
                   {"bytes_sent", st.bytes_sent},
                   {"bytes_received", st.bytes_received},
                   {"kept_bytes_peak", st.kept_bytes_peak}});
  }
  nlohmann::json ranks = nlohmann::json::array();
  for (size_t r = 0; r < m.ranks.size(); ++r) {
    const CadStats& st = m.ranks[r];
    ranks.push_back({{"rank", r},
                     {"bytes_sent", st.bytes_sent},
                     {"bytes_received", st.bytes_received},
                     {"forward_bytes_sent", st.forward_bytes_sent},
                     {"backward_bytes_sent", st.backward_bytes_sent},
                     {"descriptor_bytes", st.descriptor_bytes},
                     {"scheduler_s", st.scheduler_s}});
  }
  return {{"cost_imbalance", m.cost_imbalance},
          {"busy_imbalance", m.busy_imbalance},
          {"busy_max_s", m.busy_max_s},
          {"busy_mean_s", m.busy_mean_s},
          {"idle_max_s", m.idle_max_s},
          {"bytes_sent", m.bytes_sent},
          {"descriptor_bytes", m.descriptor_bytes},
          {"scheduler_s", m.scheduler_s},
          {"kept_bytes_peak", m.kept_bytes_peak},
          {"servers", per},
          {"ranks", ranks}};
}

}  // namespace cadtrain::attention_servers
