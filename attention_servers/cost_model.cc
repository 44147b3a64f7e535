// Cost of a task: causal pairs, or pairs scaled by the measured kernel throughput at its size.
#include "attention_servers/cost_model.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "common/error.h"

namespace cadtrain::attention_servers {

CostModel::CostModel(std::vector<CalibrationPoint> table, const std::string& source) {
  if (table.empty()) return;
  std::set<int64_t> qs, ks;
  std::map<std::pair<int64_t, int64_t>, double> at;
  for (size_t i = 0; i < table.size(); ++i) {
    const CalibrationPoint& p = table[i];
    if (p.q <= 0 || p.k < p.q || !(p.pairs_per_s > 0) || !std::isfinite(p.pairs_per_s)) {
      fail("{}[{}]: q {} k {} pairs_per_s {}: need q > 0, k >= q and a positive finite rate", source, i, p.q, p.k,
           p.pairs_per_s);
    }
    if (!at.emplace(std::make_pair(p.q, p.k), p.pairs_per_s).second) {
      fail("{}[{}]: (q {}, k {}) is listed twice", source, i, p.q, p.k);
    }
    qs.insert(p.q);
    ks.insert(p.k);
  }
  qs_.assign(qs.begin(), qs.end());
  ks_.assign(ks.begin(), ks.end());
  rates_.assign(qs_.size() * ks_.size(), 0.0);
  for (size_t a = 0; a < qs_.size(); ++a) {
    for (size_t b = 0; b < ks_.size(); ++b) {
      if (ks_[b] < qs_[a]) continue;
      auto it = at.find({qs_[a], ks_[b]});
      if (it == at.end()) fail("{}: the grid lacks (q {}, k {}): give every q with every k >= q", source, qs_[a], ks_[b]);
      rates_[a * ks_.size() + b] = it->second;
      best_ = std::max(best_, it->second);
    }
  }
}

namespace {
// Index i and weight w so that x sits between grid[i] and grid[i+1] in log space (clamped).
std::pair<size_t, double> bracket(const std::vector<int64_t>& grid, double x) {
  if (grid.size() == 1 || x <= static_cast<double>(grid.front())) return {0, 0.0};
  if (x >= static_cast<double>(grid.back())) return {grid.size() - 2, 1.0};
  const size_t i = static_cast<size_t>(std::upper_bound(grid.begin(), grid.end(), static_cast<int64_t>(x)) -
                                       grid.begin()) - 1;
  const double lo = std::log(static_cast<double>(grid[i])), hi = std::log(static_cast<double>(grid[i + 1]));
  return {i, (std::log(x) - lo) / (hi - lo)};
}
}  // namespace

double CostModel::rate(int64_t q, int64_t k) const {
  CADTRAIN_CHECK(calibrated(), "CostModel::rate needs a calibration table");
  const auto [qi, qw] = bracket(qs_, static_cast<double>(q));
  const auto [ki, kw] = bracket(ks_, static_cast<double>(k));
  const size_t nk = ks_.size();
  // A corner with k < q has no measurement: use the measured neighbour on the same q row.
  auto at = [&](size_t a, size_t b) {
    b = std::min(b, nk - 1);
    while (rates_[a * nk + b] == 0 && b + 1 < nk) ++b;
    return rates_[a * nk + b];
  };
  const size_t qj = std::min(qi + 1, qs_.size() - 1), kj = std::min(ki + 1, nk - 1);
  const double lo = at(qi, ki) * (1 - kw) + at(qi, kj) * kw;
  const double hi = at(qj, ki) * (1 - kw) + at(qj, kj) * kw;
  return lo * (1 - qw) + hi * qw;
}

double CostModel::cost(const kernels::AttentionTask& task) const {
  const double pairs = static_cast<double>(kernels::task_pairs(task));
  if (!calibrated() || pairs == 0) return pairs;
  return pairs * best_ / rate(task.q1 - task.q0, task.k1 - task.k0);
}

RowBytes row_bytes(int64_t q_heads, int64_t kv_heads, int64_t head_dim, int64_t dtype_bytes) {
  RowBytes b;
  b.q = q_heads * head_dim * dtype_bytes;
  b.kv = 2 * kv_heads * head_dim * dtype_bytes;
  b.lse = q_heads * 4;
  return b;
}

}  // namespace cadtrain::attention_servers
