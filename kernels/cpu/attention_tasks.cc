// The CPU task attention (DESIGN section 3, contract in kernels/attention_tasks.h): fused,
// FlashAttention-2 style, on the register-blocked tile products of kernels/cpu/tile_gemm.h.
// Forward, per (task, kv head, query block): for each key block the causal mask does not fully
// exclude, K^T and V are packed once for the group's G q heads; per head, S = scale Q K^T (up to
// each row's causal edge), online softmax (running max m and sum l per row, O rescaled by
// e^(m_old - m_new)), O += P V straight into the output rows; finally O /= l, LSE = m + log l.
// Backward recomputes P = e^(S - LSE) tile by tile (backward_tile: dV += P^T dO, dP = dO V^T,
// dS = P (dP - D_i), dK += scale dS^T Q, dQ += scale dS K; D_i = rowsum(dO_i O_i)) in one of two
// orders, each writing only what its work item owns:
//   single pass, per (component of tasks sharing rows, kv head): query blocks outer, key blocks
//     inner, dQ in a tile, dK and dV straight into the component's rows (5 products per tile);
//   two passes, when one component would dominate: per (key group, kv head, key block) dK and dV,
//     then per (query group, kv head, query block) dQ (7 products per tile, finer work items).
// A "group" is a set of tasks whose key (pass 1) or query (pass 2) rows overlap, so tasks sharing
// rows sum into them without races. Work items are sorted by causal pairs, costliest first, and
// scheduled dynamically. Extra memory: D_i [rows, q_heads] plus per-thread tiles.
#include "kernels/attention_tasks.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "kernels/core_attention.h"
#include "kernels/local_attention_plan.h"
#include "kernels/cpu/cpu_math.h"
#include "kernels/cpu/cpu_util.h"
#include "kernels/cpu/tile_gemm.h"

namespace cadtrain::kernels {

namespace {

using cpu::fast_exp;
using cpu::scratch;

constexpr int64_t kKeyBlock = 256;  // key rows per tile

// Query rows per work item; the backward stacks the G q heads of a kv head, G * rows in all.
int64_t query_block(int64_t group) { return std::clamp<int64_t>(512 / group, 32, 256); }

// Threads of the parallel loops (tile_gemm keeps no per-call state beyond thread_local buffers).
int worker_threads() { return omp_get_max_threads(); }

// Task-local geometry: query row r (0-based in the task) sees key rows [0, visible(r));
// the arithmetic is the contract's (kernels/attention_task_math.h).
struct Geom {
  int64_t nq = 0, nk = 0, off = 0;  // off = q_pos0 - k_pos0
  bool causal = true;
  explicit Geom(const AttentionTask& t)
      : nq(t.q1 - t.q0), nk(t.k1 - t.k0), off(t.q_pos0 - t.k_pos0), causal(t.causal) {}
  int64_t visible(int64_t r) const { return task_math::visible_keys(r, off, nk, causal); }
  // First query row that sees key row j (nq when none).
  int64_t first_row(int64_t j) const { return task_math::first_row_seeing(j, off, nq, causal); }
  // Pairs of query rows [r0, r1) with all keys.
  int64_t pairs_rows(int64_t r0, int64_t r1) const { return task_math::pairs_of_rows(r0, r1, off, nk, causal); }
  // Pairs of key rows [j0, j1) with all query rows.
  int64_t pairs_keys(int64_t j0, int64_t j1) const { return task_math::pairs_of_keys(j0, j1, off, nq, causal); }
};

void check_dims(const AttentionDims& dims, const char* op) {
  CADTRAIN_CHECK(dims.q_heads > 0 && dims.kv_heads > 0 && dims.q_heads % dims.kv_heads == 0,
                 "{}: q_heads = {} must be a positive multiple of kv_heads = {}", op, dims.q_heads, dims.kv_heads);
  CADTRAIN_CHECK(dims.head_dim > 0, "{}: head_dim = {} must be > 0", op, dims.head_dim);
  CADTRAIN_CHECK(std::isfinite(dims.softmax_scale) && dims.softmax_scale > 0,
                 "{}: softmax_scale = {} must be finite and > 0", op, dims.softmax_scale);
  cpu::blas_dim(dims.q_heads * dims.head_dim, op, "q_heads * head_dim");
}

void check_tasks(std::span<const AttentionTask> tasks, const char* op) {
  for (size_t i = 0; i < tasks.size(); ++i) {
    const AttentionTask& t = tasks[i];
    CADTRAIN_CHECK(t.q0 >= 0 && t.q1 >= t.q0 && t.k0 >= 0 && t.k1 >= t.k0,
                   "{}: task {} has rows q [{}, {}) k [{}, {}): ranges must be non-negative and ordered", op, i,
                   t.q0, t.q1, t.k0, t.k1);
    cpu::blas_dim(t.k1 - t.k0, op, "task key rows");
  }
}

// Tasks grouped by overlapping row ranges (query or key rows, per `range`): the union of a group
// is the contiguous [lo, hi); tasks with an empty range are left out.
struct Group {
  int64_t lo = 0, hi = 0;
  std::vector<int32_t> tasks;
};

template <typename Range>
std::vector<Group> group_tasks(std::span<const AttentionTask> tasks, Range range) {
  std::vector<int32_t> order;
  for (size_t i = 0; i < tasks.size(); ++i) {
    const auto [a, b] = range(tasks[i]);
    if (b > a) order.push_back(static_cast<int32_t>(i));
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t x, int32_t y) { return range(tasks[x]).first < range(tasks[y]).first; });
  std::vector<Group> groups;
  for (int32_t i : order) {
    const auto [a, b] = range(tasks[i]);
    if (groups.empty() || a >= groups.back().hi) {
      groups.push_back({a, b, {i}});
    } else {
      groups.back().hi = std::max(groups.back().hi, b);
      groups.back().tasks.push_back(i);
    }
  }
  return groups;
}

struct Item {
  int64_t cost = 0;
  int32_t unit = 0;  // task (forward) or group (backward)
  int32_t kv_head = 0;
  int64_t r0 = 0, r1 = 0;  // rows of the block: task-local (forward) or absolute (backward)
};

void sort_by_cost(std::vector<Item>& items) {
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.cost > b.cost; });
}

// Backward work items: every group's absolute rows [lo, hi) cut into blocks of `block` rows, one
// item per (block, kv head), costed base_cost + the sum over the group's tasks of
// cost_of(task, block_lo, block_hi); most expensive first.
template <typename CostOf>
std::vector<Item> block_items(const std::vector<Group>& groups, int64_t block, int64_t kv_heads, int64_t base_cost,
                              CostOf cost_of) {
  std::vector<Item> items;
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    const Group& grp = groups[gi];
    for (int64_t a = grp.lo; a < grp.hi; a += block) {
      const int64_t b = std::min(grp.hi, a + block);
      int64_t cost = base_cost;
      for (const int32_t ti : grp.tasks) cost += cost_of(ti, a, b);
      for (int64_t g = 0; g < kv_heads; ++g) {
        items.push_back({cost, static_cast<int32_t>(gi), static_cast<int32_t>(g), a, b});
      }
    }
  }
  sort_by_cost(items);
  return items;
}

// Common strides and pointers.
struct Ctx {
  int64_t G = 1, D = 0, ldq = 0, ldk = 0, hq = 0;
  float scale = 0;
  explicit Ctx(const AttentionDims& d)
      : G(d.q_heads / d.kv_heads), D(d.head_dim), ldq(d.q_heads * d.head_dim), ldk(d.kv_heads * d.head_dim),
        hq(d.q_heads), scale(d.softmax_scale) {}
};

// dst[(h * n + i) * D + e] = src[(row0 + i) * ldq + (g * G + h) * D + e] for the group's G heads.
void pack_rows(float* dst, const float* src, const Ctx& c, int64_t g, int64_t row0, int64_t n) {
  for (int64_t h = 0; h < c.G; ++h) {
    for (int64_t i = 0; i < n; ++i) {
      std::memcpy(dst + (h * n + i) * c.D, src + (row0 + i) * c.ldq + (g * c.G + h) * c.D, sizeof(float) * c.D);
    }
  }
}

int bi(int64_t v) { return static_cast<int>(v); }  // a kv head index, for Item's int32 field

// Per-thread tiles, reused across calls.
thread_local std::vector<float> t_q, t_do, t_s, t_dp, t_acc, t_acc2, t_row;
thread_local std::vector<float> t_qpan, t_dopan, t_kt, t_vt, t_kpan, t_vpan;  // packed panels
thread_local std::vector<int64_t> t_lim;  // per-row causal limits

// For task-local query rows [r0, r0 + n) of `copies` stacked heads and keys [j0, j0 + kc):
// valid[h * n + i] = the keys row i sees; fill_end = the most any row of its tile_gemm row block
// sees, the end up to which its probabilities must be zero past valid (the products run that far
// for the whole block).
void visible_in_block(int64_t* valid, int64_t* fill_end, const Geom& geo, int64_t r0, int64_t n, int64_t copies,
                      int64_t j0, int64_t kc) {
  for (int64_t i = 0; i < n; ++i) valid[i] = std::clamp<int64_t>(geo.visible(r0 + i) - j0, 0, kc);
  for (int64_t h = 1; h < copies; ++h) std::copy(valid, valid + n, valid + h * n);
  const int64_t rows = copies * n;
  for (int64_t b = 0; b < rows; b += cpu::kTileRows) {
    const int64_t e = std::min(rows, b + cpu::kTileRows);
    const int64_t most = *std::max_element(valid + b, valid + e);
    std::fill(fill_end + b, fill_end + e, most);
  }
}

// One key block's step of the online softmax on `rows` rows of scores S [rows, kc], in place:
// P = e^(S - m_new) on each row's valid columns, 0 from there to fill_end; m, l updated; O rows
// (stride ldo) rescaled by e^(m_old - m_new) when they already hold earlier blocks (`rescale`).
// Forced inline: out of line, GCC 12's code for it ran twice as slow (measured on the 4K forward).
[[gnu::always_inline]] inline void online_softmax(float* S, float* O, int64_t ldo, int64_t D, float* m, float* l, const int64_t* valid,
                    const int64_t* fill_end, int64_t rows, int64_t kc, bool rescale) {
  for (int64_t i = 0; i < rows; ++i) {
    float* row = S + i * kc;
    const int64_t nv = valid[i];
    std::fill(row + nv, row + fill_end[i], 0.0f);
    if (nv == 0) continue;
    const float m_new = std::max(m[i], cpu::max_of(row, nv));
    const float sum = cpu::exp_in_place_sum<float>(row, nv, m_new);
    // A row sees keys from the first block on, so O is only rescaled after it.
    if (rescale && m[i] != m_new) {
      const float alpha = fast_exp(m[i] - m_new);
      float* orow = O + i * ldo;
#pragma omp simd
      for (int64_t e = 0; e < D; ++e) orow[e] *= alpha;
      l[i] *= alpha;
    }
    l[i] += sum;
    m[i] = m_new;
  }
}

// P = e^(S - lse) on each row's valid columns, 0 on the rest of [0, kc) (and on rows with no key).
void recompute_probs(float* S, const float* lse_p, const int64_t* valid, int64_t rows, int64_t kc) {
  for (int64_t p = 0; p < rows; ++p) {
    float* row = S + p * kc;
    const float l = lse_p[p];
    const int64_t nv = std::isinf(l) ? 0 : valid[p];
#pragma omp simd
    for (int64_t j = 0; j < nv; ++j) row[j] = fast_exp(row[j] - l);
    std::fill(row + nv, row + kc, 0.0f);
  }
}

// dS = P (dP - D_i) in place of P, on the valid columns (P and so dS are 0 past them; dP is not
// computed there).
void probs_to_dscores(float* S, const float* dP, const float* d_p, const int64_t* valid, int64_t rows, int64_t kc) {
  for (int64_t p = 0; p < rows; ++p) {
    float* row = S + p * kc;
    const float* dprow = dP + p * kc;
    const float di = d_p[p];
#pragma omp simd
    for (int64_t j = 0; j < valid[p]; ++j) row[j] *= dprow[j] - di;
  }
}

// dst[h * head_stride + i * row_stride + e] += src[(h * n + i) * D + e]: a tile of G stacked
// heads' rows (as the backward computes dQ) added into rows laid out otherwise.
void add_stacked_rows(float* dst, int64_t head_stride, int64_t row_stride, const float* src, int64_t G, int64_t n,
                      int64_t D) {
  for (int64_t h = 0; h < G; ++h) {
    for (int64_t i = 0; i < n; ++i) {
      float* d = dst + h * head_stride + i * row_stride;
      const float* s = src + (h * n + i) * D;
#pragma omp simd
      for (int64_t e = 0; e < D; ++e) d[e] += s[e];
    }
  }
}

// Per-thread state of the backward for one (query block, kv head): the group's G heads stacked,
// M = G * n rows. Packed once per query block, used against every key block.
struct QueryTile {
  int64_t n = 0, M = 0, r0 = 0;  // rows, stacked rows, first task-local row
  float* Q = nullptr;           // [M, D]
  float* dO = nullptr;          // [M, D]
  float* Qpan = nullptr;        // Q and dO in panels, head by head (G blocks of packed_size(D, n)):
  float* dOpan = nullptr;       // the B operands of dK and dV (when needed)
  float* lse = nullptr;         // [M]
  float* dsum = nullptr;        // [M]
};

// Per-thread state for one key block [j0, j0 + kc) of a task and kv head.
struct KeyTile {
  int64_t j0 = 0, kc = 0;
  float* Kt = nullptr;    // K^T panels: B of S = Q K^T
  float* Vt = nullptr;    // V^T panels: B of dP = dO V^T
  float* Kpan = nullptr;  // K panels: B of dQ += dS K (when needed)
};

// Packs the query block's rows (task-local [r0, r0 + n)) of kv head g; `panels` also for dK, dV.
QueryTile pack_query_tile(const float* q, const float* dout, const float* lse, const float* dsum, const Ctx& c,
                          const AttentionTask& task, int64_t g, int64_t r0, int64_t n, bool panels) {
  QueryTile t;
  t.n = n;
  t.M = c.G * n;
  t.r0 = r0;
  const int64_t D = c.D, row0 = task.q0 + r0;
  t.Q = scratch(t_q, t.M * D);
  t.dO = scratch(t_do, t.M * D);
  t.lse = scratch(t_row, 2 * t.M);
  t.dsum = t.lse + t.M;
  pack_rows(t.Q, q, c, g, row0, n);
  pack_rows(t.dO, dout, c, g, row0, n);
  for (int64_t h = 0; h < c.G; ++h) {
    for (int64_t i = 0; i < n; ++i) {
      t.lse[h * n + i] = lse[(row0 + i) * c.hq + g * c.G + h];
      t.dsum[h * n + i] = dsum[(row0 + i) * c.hq + g * c.G + h];
    }
  }
  if (panels) {
    t.Qpan = scratch(t_qpan, cpu::packed_size(D, t.M));
    t.dOpan = scratch(t_dopan, cpu::packed_size(D, t.M));
    const int64_t per_head = cpu::packed_size(D, n);
    for (int64_t h = 0; h < c.G; ++h) {
      cpu::pack_panels(t.Qpan + h * per_head, t.Q + h * n * D, D, n, D);
      cpu::pack_panels(t.dOpan + h * per_head, t.dO + h * n * D, D, n, D);
    }
  }
  return t;
}

// Packs key rows [j0, j0 + kc) (task-local) of kv head g; `k_panels` also for dQ.
KeyTile pack_key_tile(const float* k, const float* v, const Ctx& c, const AttentionTask& task, int64_t g, int64_t j0,
                      int64_t kc, bool k_panels) {
  KeyTile t;
  t.j0 = j0;
  t.kc = kc;
  const int64_t D = c.D, off = (task.k0 + j0) * c.ldk + g * D;
  t.Kt = scratch(t_kt, cpu::packed_size(kKeyBlock, D));
  t.Vt = scratch(t_vt, cpu::packed_size(kKeyBlock, D));
  cpu::pack_transposed(t.Kt, k + off, c.ldk, kc, D);
  cpu::pack_transposed(t.Vt, v + off, c.ldk, kc, D);
  if (k_panels) {
    t.Kpan = scratch(t_kpan, cpu::packed_size(D, kKeyBlock));
    cpu::pack_panels(t.Kpan, k + off, c.ldk, kc, D);
  }
  return t;
}

// Where one (query tile, key tile) pair adds its gradients; a null pointer skips that product.
struct TileGrads {
  float* dK = nullptr;  // [kc, D] rows of the key block, row stride ld_kv
  float* dV = nullptr;
  int64_t ld_kv = 0;
  float* dQ = nullptr;  // [M, D], row stride D
};

// The FlashAttention-2 backward of one tile: S = scale Q K^T, P = e^(S - lse), dV += P^T dO,
// dP = dO V^T, dS = P (dP - D_i), dK += scale dS^T Q, dQ += scale dS K.
void backward_tile(const QueryTile& qt, const KeyTile& kt, const Geom& geo, const Ctx& c, const TileGrads& out) {
  const int64_t M = qt.M, n = qt.n, kc = kt.kc, D = c.D;
  float* S = scratch(t_s, M * kKeyBlock);
  float* dP = scratch(t_dp, M * kKeyBlock);
  int64_t* valid = scratch(t_lim, 2 * M + kc);
  int64_t* fill_end = valid + M;
  int64_t* first_row = fill_end + M;  // per key of the block: the first row of the block that sees it
  visible_in_block(valid, fill_end, geo, qt.r0, n, c.G, kt.j0, kc);
  for (int64_t j = 0; j < kc; ++j) first_row[j] = std::clamp<int64_t>(geo.first_row(kt.j0 + j) - qt.r0, 0, n);
  const int64_t per_head = cpu::packed_size(D, n);
  cpu::tile_gemm(S, kc, {qt.Q, D, 1}, kt.Kt, M, kc, D, c.scale, false, {valid, nullptr, nullptr});
  recompute_probs(S, qt.lse, valid, M, kc);
  // dV, dK: per head, P^T's row j (a key) only has terms from the rows that see it.
  if (out.dV) {
    for (int64_t h = 0; h < c.G; ++h) {
      cpu::tile_gemm(out.dV, out.ld_kv, {S + h * n * kc, 1, kc}, qt.dOpan + h * per_head, kc, D, n, 1.0f, true,
                     {nullptr, nullptr, first_row});
    }
  }
  cpu::tile_gemm(dP, kc, {qt.dO, D, 1}, kt.Vt, M, kc, D, 1.0f, false, {valid, nullptr, nullptr});
  probs_to_dscores(S, dP, qt.dsum, valid, M, kc);
  if (out.dK) {
    for (int64_t h = 0; h < c.G; ++h) {
      cpu::tile_gemm(out.dK, out.ld_kv, {S + h * n * kc, 1, kc}, qt.Qpan + h * per_head, kc, D, n, c.scale, true,
                     {nullptr, nullptr, first_row});
    }
  }
  if (out.dQ) cpu::tile_gemm(out.dQ, D, {S, kc, 1}, kt.Kpan, M, D, kc, c.scale, true, {nullptr, fill_end, nullptr});
}

// Connected components of tasks linked by shared query or key rows: one component owns its dQ
// rows and its dK, dV rows, so a single pass per (component, kv head) needs no synchronisation.
std::vector<std::vector<int32_t>> components(size_t n_tasks, const std::vector<Group>& qgroups,
                                             const std::vector<Group>& kgroups) {
  std::vector<int32_t> parent(n_tasks);
  for (size_t i = 0; i < n_tasks; ++i) parent[i] = static_cast<int32_t>(i);
  auto find = [&](int32_t x) {
    while (parent[x] != x) x = parent[x] = parent[parent[x]];
    return x;
  };
  for (const auto* groups : {&qgroups, &kgroups}) {
    for (const Group& grp : *groups) {
      for (int32_t t : grp.tasks) parent[find(t)] = find(grp.tasks[0]);
    }
  }
  std::vector<int32_t> root_index(n_tasks, -1);
  std::vector<std::vector<int32_t>> comps;
  for (const Group& grp : qgroups) {  // every task with query rows is in exactly one qgroup
    for (int32_t t : grp.tasks) {
      const int32_t r = find(t);
      if (root_index[r] < 0) {
        root_index[r] = static_cast<int32_t>(comps.size());
        comps.emplace_back();
      }
      comps[root_index[r]].push_back(t);
    }
  }
  return comps;
}

// Backward strategy. The single pass (FlashAttention-2 order: query blocks outer, key blocks inner,
// dQ in a tile, dK and dV straight into the owned rows) does 5 tile products instead of the two
// passes' 7, but its work items are whole (component, kv head) pairs: it is used when they are
// many and none is much bigger than a thread's share. CADTRAIN_ATTENTION_BWD=single or two_pass
// forces one (tests run both).
bool use_single_pass(std::span<const AttentionTask> tasks, const std::vector<Group>& qgroups,
                     const std::vector<Group>& kgroups, int64_t kv_heads) {
  if (const char* env = std::getenv("CADTRAIN_ATTENTION_BWD")) {
    if (std::strcmp(env, "single") == 0) return true;
    if (std::strcmp(env, "two_pass") == 0) return false;
  }
  int64_t total = 0, biggest = 0;
  for (const auto& comp : components(tasks.size(), qgroups, kgroups)) {
    int64_t cost = 0;
    for (int32_t t : comp) cost += static_cast<int64_t>(task_pairs(tasks[t]));
    total += cost;
    biggest = std::max(biggest, cost);
  }
  // An item is one component's cost (one kv head); with T threads and LPT scheduling the step
  // ends within (total / T + biggest): keep biggest within half a thread's share.
  const int64_t threads = worker_threads();
  return total > 0 && biggest * 2 * threads <= total * kv_heads;
}

void backward_single_pass(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                          const float* v, const float* lse, const float* dsum, std::span<const AttentionTask> tasks,
                          const std::vector<Group>& qgroups, const std::vector<Group>& kgroups, const Ctx& c) {
  const std::vector<std::vector<int32_t>> comps = components(tasks.size(), qgroups, kgroups);
  const int64_t D = c.D, bq = query_block(c.G), kv_heads = c.hq / c.G;
  std::vector<Item> items;
  for (size_t ci = 0; ci < comps.size(); ++ci) {
    int64_t cost = 1;
    for (int32_t t : comps[ci]) cost += static_cast<int64_t>(task_pairs(tasks[t]));
    for (int64_t g = 0; g < kv_heads; ++g) items.push_back({cost, static_cast<int32_t>(ci), bi(g), 0, 0});
  }
  sort_by_cost(items);
#pragma omp parallel for schedule(dynamic, 1) num_threads(worker_threads())
  for (size_t it = 0; it < items.size(); ++it) {
    const Item& item = items[it];
    const std::vector<int32_t>& comp = comps[item.unit];
    const int64_t g = item.kv_head;
    float* dQt = scratch(t_acc, c.G * bq * D);
    // dQ rows of the group's heads: zero, then every task adds its share.
    for (int32_t ti : comp) {
      for (int64_t r = tasks[ti].q0; r < tasks[ti].q1; ++r) std::fill_n(dq + r * c.ldq + g * c.G * D, c.G * D, 0.0f);
    }
    for (int32_t ti : comp) {
      const AttentionTask& task = tasks[ti];
      const Geom geo(task);
      for (int64_t r0 = 0; r0 < geo.nq; r0 += bq) {
        const int64_t n = std::min(bq, geo.nq - r0), row0 = task.q0 + r0;
        const int64_t key_end = geo.visible(r0 + n - 1);
        if (key_end == 0) continue;
        const QueryTile qt = pack_query_tile(q, dout, lse, dsum, c, task, g, r0, n, true);
        std::fill(dQt, dQt + qt.M * D, 0.0f);
        for (int64_t j0 = 0; j0 < key_end; j0 += kKeyBlock) {
          const KeyTile kt = pack_key_tile(k, v, c, task, g, j0, std::min(kKeyBlock, key_end - j0), true);
          // dK and dV straight into the owned rows
          const int64_t koff = (task.k0 + j0) * c.ldk + g * D;
          backward_tile(qt, kt, geo, c, {dk + koff, dv + koff, c.ldk, dQt});
        }
        add_stacked_rows(dq + row0 * c.ldq + g * c.G * D, D, c.ldq, dQt, c.G, n, D);
      }
    }
  }
}

}  // namespace

void merge_attention_partials(float* o_a, float* lse_a, const float* o_b, const float* lse_b, int64_t rows,
                              int64_t heads, int64_t head_dim) {
  const char* op = "merge_attention_partials";
  cpu::check_nonneg(rows, op, "rows");
  cpu::check_nonneg(heads, op, "heads");
  cpu::check_nonneg(head_dim, op, "head_dim");
  const int64_t n = rows * heads;
  if (n == 0) return;
  CADTRAIN_CHECK(o_a && lse_a && o_b && lse_b, "{}: o_a, lse_a, o_b and lse_b must all be non-null", op);
#pragma omp parallel for schedule(static) if (n * head_dim >= cpu::kParallelMin)
  for (int64_t p = 0; p < n; ++p) {
    const float la = lse_a[p], lb = lse_b[p];
    float* oa = o_a + p * head_dim;
    const float* ob = o_b + p * head_dim;
    if (lb == -INFINITY) continue;  // b saw no key
    if (la == -INFINITY) {
      std::memcpy(oa, ob, sizeof(float) * head_dim);
      lse_a[p] = lb;
      continue;
    }
    const task_math::MergeWeights w = task_math::merge_weights(la, lb);
    const float wa = w.wa, wb = w.wb;
#pragma omp simd
    for (int64_t e = 0; e < head_dim; ++e) oa[e] = wa * oa[e] + wb * ob[e];
    lse_a[p] = w.lse;
  }
}

void attention_forward_tasks(float* o, float* lse, const float* q, const float* k, const float* v,
                             std::span<const AttentionTask> tasks, const AttentionDims& dims) {
  const char* op = "attention_forward_tasks";
  check_tasks(tasks, op);
  bool any = false;
  for (const AttentionTask& t : tasks) any = any || t.q1 > t.q0;
  if (!any) return;
  check_dims(dims, op);
  CADTRAIN_CHECK(o && lse && q, "{}: o, lse and q must be non-null", op);
  // Tasks sharing query rows would race on O; they must be merged by the caller instead.
  for (const Group& grp : group_tasks(tasks, [](const AttentionTask& t) { return std::pair{t.q0, t.q1}; })) {
    CADTRAIN_CHECK(grp.tasks.size() == 1, "{}: tasks {} and {} share query rows (split keys into separate calls "
                   "and merge_attention_partials)", op, grp.tasks[0], grp.tasks[1]);
  }
  const Ctx c(dims);
  const int64_t bq = query_block(c.G);
  std::vector<Item> items;
  for (size_t ti = 0; ti < tasks.size(); ++ti) {
    const Geom geo(tasks[ti]);
    if (geo.nk > 0) CADTRAIN_CHECK(k && v, "{}: k and v must be non-null", op);
    for (int64_t r0 = 0; r0 < geo.nq; r0 += bq) {
      const int64_t r1 = std::min(geo.nq, r0 + bq);
      // A block with no pairs still writes O = 0, LSE = -inf: cost 1 keeps it in the list.
      const int64_t cost = geo.pairs_rows(r0, r1) + 1;
      for (int64_t g = 0; g < dims.kv_heads; ++g) items.push_back({cost, static_cast<int32_t>(ti), bi(g), r0, r1});
    }
  }
  sort_by_cost(items);
  const int64_t D = c.D;
#pragma omp parallel for schedule(dynamic, 1) num_threads(worker_threads())
  for (size_t it = 0; it < items.size(); ++it) {
    const Item& item = items[it];
    const AttentionTask& task = tasks[item.unit];
    const Geom geo(task);
    const int64_t n = item.r1 - item.r0, M = c.G * n, row0 = task.q0 + item.r0;
    float* S = scratch(t_s, n * kKeyBlock);
    float* Kp = scratch(t_kt, cpu::packed_size(kKeyBlock, D));
    float* Vp = scratch(t_vpan, cpu::packed_size(D, kKeyBlock));
    float* ml = scratch(t_row, 2 * M);       // running max m, then running sum l, per (head, row)
    int64_t* lim = scratch(t_lim, 2 * n);  // keys of the block each row sees, then the zero-fill end
    int64_t* valid = lim;
    int64_t* fill_end = lim + n;
    std::fill(ml, ml + M, -INFINITY);
    std::fill(ml + M, ml + 2 * M, 0.0f);
    const int64_t key_end = geo.visible(item.r1 - 1);  // the block's last row sees the most keys
    const float* Kg = k + task.k0 * c.ldk + item.kv_head * D;
    const float* Vg = v + task.k0 * c.ldk + item.kv_head * D;
    for (int64_t j0 = 0; j0 < key_end; j0 += kKeyBlock) {
      const int64_t kc = std::min(kKeyBlock, key_end - j0);
      visible_in_block(valid, fill_end, geo, item.r0, n, 1, j0, kc);
      cpu::pack_transposed(Kp, Kg + j0 * c.ldk, c.ldk, kc, D);  // both shared by the group's q heads
      cpu::pack_panels(Vp, Vg + j0 * c.ldk, c.ldk, kc, D);
      for (int64_t h = 0; h < c.G; ++h) {
        const int64_t head = item.kv_head * c.G + h;
        float* Oh = o + row0 * c.ldq + head * D;  // accumulates P V in place, normalised at the end
        float* m = ml + h * n;
        float* l = ml + M + h * n;
        // S[n, kc] = scale * Q K[j0:j0+kc]^T, up to each row's causal edge. (Running product,
        // softmax and P V strip by strip, so that S stays in L1, measured within 2%: not worth it.)
        cpu::tile_gemm(S, kc, {q + row0 * c.ldq + head * D, c.ldq, 1}, Kp, n, kc, D, c.scale, false,
                       {valid, nullptr, nullptr});
        online_softmax(S, Oh, c.ldq, D, m, l, valid, fill_end, n, kc, j0 > 0);
        // O (+)= P V[j0:j0+kc], each row block's terms up to its causal edge
        cpu::tile_gemm(Oh, c.ldq, {S, kc, 1}, Vp, n, D, kc, 1.0f, j0 > 0, {nullptr, fill_end, nullptr});
      }
    }
    for (int64_t h = 0; h < c.G; ++h) {
      const int64_t head = item.kv_head * c.G + h;
      float* Oh = o + row0 * c.ldq + head * D;
      const float* m = ml + h * n;
      const float* l = ml + M + h * n;
      // O /= l, LSE = m + log l; rows that saw no key: O = 0, LSE = -inf.
      for (int64_t i = 0; i < n; ++i) {
        float* orow = Oh + i * c.ldq;
        float* lrow = lse + (row0 + i) * c.hq + head;
        if (l[i] > 0) {
          const float inv = 1.0f / l[i];
#pragma omp simd
          for (int64_t e = 0; e < D; ++e) orow[e] *= inv;
          *lrow = m[i] + std::log(l[i]);
        } else {
          std::fill(orow, orow + D, 0.0f);
          *lrow = -INFINITY;
        }
      }
    }
  }
}

void attention_backward_tasks(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                              const float* v, const float* o, const float* lse, std::span<const AttentionTask> tasks,
                              const AttentionDims& dims) {
  const char* op = "attention_backward_tasks";
  check_tasks(tasks, op);
  bool any = false;
  for (const AttentionTask& t : tasks) any = any || t.q1 > t.q0;
  if (!any) return;
  check_dims(dims, op);
  CADTRAIN_CHECK(dq && dout && q && o && lse, "{}: dq, dout, q, o and lse must be non-null", op);
  for (const AttentionTask& t : tasks) {
    if (t.k1 > t.k0 && t.q1 > t.q0) {
      CADTRAIN_CHECK(dk && dv && k && v, "{}: dk, dv, k and v must be non-null", op);
    }
  }
  const Ctx c(dims);
  const int64_t D = c.D, bq = query_block(c.G);
  const std::vector<Group> qgroups =
      group_tasks(tasks, [](const AttentionTask& t) { return std::pair{t.q0, t.q1}; });
  const std::vector<Group> kgroups = group_tasks(tasks, [](const AttentionTask& t) {
    return t.q1 > t.q0 ? std::pair{t.k0, t.k1} : std::pair<int64_t, int64_t>{0, 0};
  });

  // D_i = rowsum(dO_i O_i) for every row and head of every query group: [rows, q_heads].
  int64_t rows_end = 0;
  for (const Group& grp : qgroups) rows_end = std::max(rows_end, grp.hi);
  std::vector<float> dsum(static_cast<size_t>(rows_end * c.hq));
  std::vector<int64_t> dsum_rows;
  for (const Group& grp : qgroups) {
    for (int64_t r = grp.lo; r < grp.hi; ++r) dsum_rows.push_back(r);
  }
#pragma omp parallel for schedule(static) if (static_cast<int64_t>(dsum_rows.size()) * c.ldq >= cpu::kParallelMin)
  for (size_t ri = 0; ri < dsum_rows.size(); ++ri) {
    const int64_t r = dsum_rows[ri];
    for (int64_t h = 0; h < c.hq; ++h) {
      const float* a = dout + r * c.ldq + h * D;
      const float* b = o + r * c.ldq + h * D;
      double s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t e = 0; e < D; ++e) s += static_cast<double>(a[e]) * b[e];
      dsum[r * c.hq + h] = static_cast<float>(s);
    }
  }

  if (use_single_pass(tasks, qgroups, kgroups, dims.kv_heads)) {
    backward_single_pass(dq, dk, dv, dout, q, k, v, lse, dsum.data(), tasks, qgroups, kgroups, c);
    return;
  }

  // Pass 1: dK, dV per (key group, kv head, key block of kKeyBlock absolute rows).
  std::vector<Item> items = block_items(kgroups, kKeyBlock, dims.kv_heads, 0, [&](int32_t ti, int64_t a, int64_t b) {
    const AttentionTask& t = tasks[ti];
    const int64_t lo = std::max(a, t.k0), hi = std::min(b, t.k1);
    return hi > lo ? Geom(t).pairs_keys(lo - t.k0, hi - t.k0) : int64_t{0};
  });
#pragma omp parallel for schedule(dynamic, 1) num_threads(worker_threads())
  for (size_t it = 0; it < items.size(); ++it) {
    const Item& item = items[it];
    const Group& grp = kgroups[item.unit];
    const int64_t g = item.kv_head, kb = item.r1 - item.r0;
    float* dKa = scratch(t_acc, 2 * kb * D);  // dK then dV of the block's key rows
    float* dVa = dKa + kb * D;
    std::fill(dKa, dKa + 2 * kb * D, 0.0f);
    for (int32_t ti : grp.tasks) {
      const AttentionTask& task = tasks[ti];
      const Geom geo(task);
      const int64_t a = std::max(item.r0, task.k0), b = std::min(item.r1, task.k1);
      if (b <= a) continue;
      const KeyTile kt = pack_key_tile(k, v, c, task, g, a - task.k0, b - a, false);
      const TileGrads grads{dKa + (a - item.r0) * D, dVa + (a - item.r0) * D, D, nullptr};
      for (int64_t r0 = geo.first_row(kt.j0); r0 < geo.nq; r0 += bq) {
        const QueryTile qt = pack_query_tile(q, dout, lse, dsum.data(), c, task, g, r0, std::min(bq, geo.nq - r0), true);
        backward_tile(qt, kt, geo, c, grads);
      }
    }
    // The block's rows belong to this item alone: accumulate into the caller's dK, dV.
    for (int64_t j = 0; j < kb; ++j) {
      float* dkr = dk + (item.r0 + j) * c.ldk + g * D;
      float* dvr = dv + (item.r0 + j) * c.ldk + g * D;
      const float* ak = dKa + j * D;
      const float* av = dVa + j * D;
#pragma omp simd
      for (int64_t e = 0; e < D; ++e) {
        dkr[e] += ak[e];
        dvr[e] += av[e];
      }
    }
  }

  // Pass 2: dQ per (query group, kv head, query block of bq absolute rows), summed over the tasks
  // of the group (split-key tasks of the same rows add up), then written over dq.
  items = block_items(qgroups, bq, dims.kv_heads, 1, [&](int32_t ti, int64_t a, int64_t b) {
    const AttentionTask& t = tasks[ti];
    const int64_t lo = std::max(a, t.q0), hi = std::min(b, t.q1);
    return hi > lo ? Geom(t).pairs_rows(lo - t.q0, hi - t.q0) : int64_t{0};
  });
#pragma omp parallel for schedule(dynamic, 1) num_threads(worker_threads())
  for (size_t it = 0; it < items.size(); ++it) {
    const Item& item = items[it];
    const Group& grp = qgroups[item.unit];
    const int64_t g = item.kv_head, nb = item.r1 - item.r0;
    float* dQa = scratch(t_acc, c.G * nb * D);  // the block's dQ, [G, nb, D]
    float* dQt = scratch(t_acc2, c.G * bq * D);  // one task's share, [G, n, D]
    std::fill(dQa, dQa + c.G * nb * D, 0.0f);
    for (int32_t ti : grp.tasks) {
      const AttentionTask& task = tasks[ti];
      const Geom geo(task);
      const int64_t a = std::max(item.r0, task.q0), b = std::min(item.r1, task.q1);
      if (b <= a) continue;
      const int64_t r0 = a - task.q0, n = b - a;
      const int64_t key_end = geo.visible(r0 + n - 1);
      if (key_end == 0) continue;
      const QueryTile qt = pack_query_tile(q, dout, lse, dsum.data(), c, task, g, r0, n, false);
      std::fill(dQt, dQt + qt.M * D, 0.0f);
      for (int64_t j0 = 0; j0 < key_end; j0 += kKeyBlock) {
        const KeyTile kt = pack_key_tile(k, v, c, task, g, j0, std::min(kKeyBlock, key_end - j0), true);
        backward_tile(qt, kt, geo, c, {nullptr, nullptr, 0, dQt});
      }
      add_stacked_rows(dQa + (a - item.r0) * D, nb * D, D, dQt, c.G, n, D);
    }
    for (int64_t h = 0; h < c.G; ++h) {
      for (int64_t i = 0; i < nb; ++i) {
        std::memcpy(dq + (item.r0 + i) * c.ldq + (g * c.G + h) * D, dQa + (h * nb + i) * D, sizeof(float) * D);
      }
    }
  }
}

}  // namespace cadtrain::kernels

namespace cadtrain::kernels {

namespace {

// CoreAttention on the task kernels: each part's tasks come from the plan (sequence_tasks);
// runs at once.
class TaskAttention final : public CoreAttention {
 public:
  std::unique_ptr<AttentionPlan> prepare(const AttentionShape& shape, const SequenceLayout& layout,
                                         std::span<const RowRange> parts) override {
    return make_local_plan(shape, layout, parts, "task attention prepare");
  }

  std::unique_ptr<AttentionHandle> forward(int /*layer*/, AttentionPlan& plan, size_t part,
                                           const AttentionIO& io) override {
    const LocalAttentionPlan& p = local_plan(plan, part, "task attention forward");
    attention_forward_tasks(io.o, io.lse, io.q, io.k, io.v, p.tasks[part], dims_of(p.shape));
    return completed_attention();
  }

  std::unique_ptr<AttentionHandle> backward(int /*layer*/, AttentionPlan& plan, size_t part,
                                            AttentionHandle& /*forward*/, const AttentionIO& io,
                                            const AttentionGrads& grads) override {
    const LocalAttentionPlan& p = local_plan(plan, part, "task attention backward");
    attention_backward_tasks(grads.dq, grads.dk, grads.dv, grads.dout, io.q, io.k, io.v, io.o, io.lse, p.tasks[part],
                             dims_of(p.shape));
    return completed_attention();
  }
};

}  // namespace

std::unique_ptr<CoreAttention> make_local_task_attention() { return std::make_unique<TaskAttention>(); }

}  // namespace cadtrain::kernels
