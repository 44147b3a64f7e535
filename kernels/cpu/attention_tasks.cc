// The CPU task attention (DESIGN section 3, contract in kernels/attention_tasks.h): fused,
// FlashAttention-2 style. Forward: for each (task, kv head, query block) the query rows of the
// group's q heads are packed into one tile [G*rows, D] (G = q heads per kv head), and the kernel
// walks the key blocks the causal mask does not fully exclude with an online softmax (running max
// m and sum l per row, O accumulated in fp32, rescaled by e^(m_old - m_new)); LSE = m + log l.
// Backward recomputes P = e^(S - LSE) tile by tile in two passes, each owning what it writes:
//   pass 1, per (key group, kv head, key block): dV += P^T dO, dK += scale dS^T Q;
//   pass 2, per (query group, kv head, query block): dQ = scale sum dS K.
// (dS = P (dP - D), dP = dO V^T, D_i = rowsum(dO_i O_i).) A "group" is a set of tasks whose key
// (pass 1) or query (pass 2) rows overlap, so tasks sharing rows sum into them without races.
// Work items are sorted by their causal pairs, costliest first, and scheduled dynamically.
// sgemm on the tiles runs inside our parallel region, where the OpenMP build of OpenBLAS stays on
// the calling thread. Extra memory: D_i [rows, q_heads] plus per-thread tiles.
#include "kernels/attention_tasks.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "kernels/core_attention.h"
#include "kernels/cpu/cpu_math.h"
#include "kernels/cpu/cpu_util.h"

namespace cadtrain::kernels {

namespace {

using cpu::fast_exp;
using cpu::scratch;

constexpr int64_t kKeyBlock = 256;  // key rows per tile

// Query rows per tile: the packed tile has G * rows rows; aim for 64-128 of them.
int64_t query_block(int64_t group) { return std::clamp<int64_t>(256 / group, 32, 128); }

// See attention_reference.cc: OpenBLAS has a fixed table of per-call buffers.
int blas_caller_threads() { return std::min(omp_get_max_threads(), 64); }

// sum over x in [x0, x1) of clamp(c + x, 0, cap), in closed form.
int64_t sum_clamped(int64_t x0, int64_t x1, int64_t c, int64_t cap) {
  if (x1 <= x0 || cap <= 0) return 0;
  const int64_t z = std::clamp<int64_t>(1 - c, x0, x1);    // x < z: c + x <= 0
  const int64_t f = std::clamp<int64_t>(cap - c, z, x1);   // x >= f: c + x >= cap
  const int64_t n = f - z;
  return n * c + (z + f - 1) * n / 2 + (x1 - f) * cap;
}

// Task-local geometry: query row r (0-based in the task) sees key rows [0, visible(r)).
struct Geom {
  int64_t nq = 0, nk = 0, off = 0;  // off = q_pos0 - k_pos0
  bool causal = true;
  explicit Geom(const AttentionTask& t)
      : nq(t.q1 - t.q0), nk(t.k1 - t.k0), off(t.q_pos0 - t.k_pos0), causal(t.causal) {}
  int64_t visible(int64_t r) const { return causal ? std::clamp<int64_t>(off + r + 1, 0, nk) : nk; }
  // First query row that sees key row j (nq when none).
  int64_t first_row(int64_t j) const { return causal ? std::clamp<int64_t>(j - off, 0, nq) : 0; }
  // Pairs of query rows [r0, r1) with all keys.
  int64_t pairs_rows(int64_t r0, int64_t r1) const {
    return causal ? sum_clamped(r0, r1, off + 1, nk) : (r1 - r0) * nk;
  }
  // Pairs of key rows [j0, j1) with all query rows: key j is seen by clamp(nq + off - j, 0, nq).
  int64_t pairs_keys(int64_t j0, int64_t j1) const {
    return causal ? sum_clamped(1 - j1, 1 - j0, nq + off, nq) : (j1 - j0) * nq;
  }
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

int bi(int64_t v) { return static_cast<int>(v); }  // tile dimensions, all checked to fit

thread_local std::vector<float> t_q, t_do, t_s, t_dp, t_acc, t_acc2, t_row;

// P = e^(S - lse) on the valid columns of each packed row, 0 elsewhere (and on rows with no
// key). S [G*n, kc]; row (h, i) is task-local query row r_first + i; keys are local [j0, j0+kc).
void recompute_probs(float* S, const float* lse_p, const Geom& geo, int64_t G, int64_t n, int64_t r_first,
                     int64_t j0, int64_t kc) {
  for (int64_t h = 0; h < G; ++h) {
    for (int64_t i = 0; i < n; ++i) {
      float* row = S + (h * n + i) * kc;
      const float l = lse_p[h * n + i];
      const int64_t valid = std::isinf(l) ? 0 : std::clamp<int64_t>(geo.visible(r_first + i) - j0, 0, kc);
#pragma omp simd
      for (int64_t j = 0; j < valid; ++j) row[j] = fast_exp(row[j] - l);
      std::fill(row + valid, row + kc, 0.0f);
    }
  }
}

// dS = P (dP - D_i) in place of P.
void probs_to_dscores(float* S, const float* dP, const float* d_p, int64_t rows, int64_t kc) {
  for (int64_t p = 0; p < rows; ++p) {
    float* row = S + p * kc;
    const float* dprow = dP + p * kc;
    const float di = d_p[p];
#pragma omp simd
    for (int64_t j = 0; j < kc; ++j) row[j] *= dprow[j] - di;
  }
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
  const int64_t threads = blas_caller_threads();
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
#pragma omp parallel for schedule(dynamic, 1) num_threads(blas_caller_threads())
  for (size_t it = 0; it < items.size(); ++it) {
    const Item& item = items[it];
    const std::vector<int32_t>& comp = comps[item.unit];
    const int64_t g = item.kv_head, Mmax = c.G * bq;
    float* Qp = scratch(t_q, Mmax * D);
    float* dOp = scratch(t_do, Mmax * D);
    float* S = scratch(t_s, Mmax * kKeyBlock);
    float* dP = scratch(t_dp, Mmax * kKeyBlock);
    float* dQt = scratch(t_acc, Mmax * D);
    float* rowv = scratch(t_row, 2 * Mmax);
    // dQ rows of the group's heads: zero, then every task adds its share.
    for (int32_t ti : comp) {
      for (int64_t r = tasks[ti].q0; r < tasks[ti].q1; ++r) std::fill_n(dq + r * c.ldq + g * c.G * D, c.G * D, 0.0f);
    }
    for (int32_t ti : comp) {
      const AttentionTask& task = tasks[ti];
      const Geom geo(task);
      for (int64_t r0 = 0; r0 < geo.nq; r0 += bq) {
        const int64_t n = std::min(bq, geo.nq - r0), M = c.G * n, row0 = task.q0 + r0;
        const int64_t key_end = geo.visible(r0 + n - 1);
        if (key_end == 0) continue;
        pack_rows(Qp, q, c, g, row0, n);
        pack_rows(dOp, dout, c, g, row0, n);
        for (int64_t h = 0; h < c.G; ++h) {
          for (int64_t i = 0; i < n; ++i) {
            rowv[h * n + i] = lse[(row0 + i) * c.hq + g * c.G + h];
            rowv[M + h * n + i] = dsum[(row0 + i) * c.hq + g * c.G + h];
          }
        }
        std::fill(dQt, dQt + M * D, 0.0f);
        for (int64_t j0 = 0; j0 < key_end; j0 += kKeyBlock) {
          const int64_t kc = std::min(kKeyBlock, key_end - j0);
          const int64_t koff = (task.k0 + j0) * c.ldk + g * D;
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bi(M), bi(kc), bi(D), c.scale, Qp, bi(D), k + koff,
                      bi(c.ldk), 0.0f, S, bi(kc));
          recompute_probs(S, rowv, geo, c.G, n, r0, j0, kc);
          // dV[keys] += P^T dOp, straight into the owned rows
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, bi(kc), bi(D), bi(M), 1.0f, S, bi(kc), dOp, bi(D),
                      1.0f, dv + koff, bi(c.ldk));
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bi(M), bi(kc), bi(D), 1.0f, dOp, bi(D), v + koff,
                      bi(c.ldk), 0.0f, dP, bi(kc));
          probs_to_dscores(S, dP, rowv + M, M, kc);
          // dK[keys] += scale dS^T Qp; dQt += scale dS K[keys]
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, bi(kc), bi(D), bi(M), c.scale, S, bi(kc), Qp, bi(D),
                      1.0f, dk + koff, bi(c.ldk));
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bi(M), bi(D), bi(kc), c.scale, S, bi(kc), k + koff,
                      bi(c.ldk), 1.0f, dQt, bi(D));
        }
        for (int64_t h = 0; h < c.G; ++h) {
          for (int64_t i = 0; i < n; ++i) {
            float* dst = dq + (row0 + i) * c.ldq + (g * c.G + h) * D;
            const float* src = dQt + (h * n + i) * D;
#pragma omp simd
            for (int64_t e = 0; e < D; ++e) dst[e] += src[e];
          }
        }
      }
    }
  }
}

}  // namespace

uint64_t task_pairs(const AttentionTask& task) {
  if (task.q1 <= task.q0 || task.k1 <= task.k0) return 0;
  const Geom geo(task);
  return static_cast<uint64_t>(geo.pairs_rows(0, geo.nq));
}

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
    // lse = max + log1p(e^(min - max)); weights e^(l - lse) <= 1.
    const double mx = std::max(la, lb), mn = std::min(la, lb);
    const double lse = mx + std::log1p(std::exp(mn - mx));
    const auto wa = static_cast<float>(std::exp(la - lse)), wb = static_cast<float>(std::exp(lb - lse));
#pragma omp simd
    for (int64_t e = 0; e < head_dim; ++e) oa[e] = wa * oa[e] + wb * ob[e];
    lse_a[p] = static_cast<float>(lse);
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
#pragma omp parallel for schedule(dynamic, 1) num_threads(blas_caller_threads())
  for (size_t it = 0; it < items.size(); ++it) {
    const Item& item = items[it];
    const AttentionTask& task = tasks[item.unit];
    const Geom geo(task);
    const int64_t n = item.r1 - item.r0, M = c.G * n, g = item.kv_head;
    float* Qp = scratch(t_q, M * D);
    float* S = scratch(t_s, M * kKeyBlock);
    float* acc = scratch(t_acc, M * D);
    float* ml = scratch(t_row, 2 * M);  // running max m, then running sum l
    float* m = ml;
    float* l = ml + M;
    pack_rows(Qp, q, c, g, task.q0 + item.r0, n);
    std::fill(acc, acc + M * D, 0.0f);
    std::fill(m, m + M, -INFINITY);
    std::fill(l, l + M, 0.0f);
    const int64_t key_end = geo.visible(item.r1 - 1);  // the block's last row sees the most keys
    for (int64_t j0 = 0; j0 < key_end; j0 += kKeyBlock) {
      const int64_t kc = std::min(kKeyBlock, key_end - j0);
      const float* Kg = k + task.k0 * c.ldk + g * D;
      const float* Vg = v + task.k0 * c.ldk + g * D;
      // S[M, kc] = scale * Qp K[j0:j0+kc]^T
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bi(M), bi(kc), bi(D), c.scale, Qp, bi(D),
                  Kg + j0 * c.ldk, bi(c.ldk), 0.0f, S, bi(kc));
      for (int64_t h = 0; h < c.G; ++h) {
        for (int64_t i = 0; i < n; ++i) {
          const int64_t p = h * n + i;
          float* row = S + p * kc;
          const int64_t valid = std::clamp<int64_t>(geo.visible(item.r0 + i) - j0, 0, kc);
          if (valid == 0) {
            std::fill(row, row + kc, 0.0f);
            continue;
          }
          float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
          for (int64_t j = 0; j < valid; ++j) mx = std::max(mx, row[j]);
          const float m_new = std::max(m[p], mx);
          float sum = 0;
#pragma omp simd reduction(+ : sum)
          for (int64_t j = 0; j < valid; ++j) {
            const float e = fast_exp(row[j] - m_new);
            row[j] = e;
            sum += e;
          }
          std::fill(row + valid, row + kc, 0.0f);
          // Rescale what was accumulated under the old max (e^-inf = 0 on the first block).
          const float alpha = fast_exp(m[p] - m_new);
          if (alpha != 1.0f) {
            float* arow = acc + p * D;
#pragma omp simd
            for (int64_t e = 0; e < D; ++e) arow[e] *= alpha;
          }
          l[p] = l[p] * alpha + sum;
          m[p] = m_new;
        }
      }
      // acc[M, D] += P V[j0:j0+kc]
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bi(M), bi(D), bi(kc), 1.0f, S, bi(kc),
                  Vg + j0 * c.ldk, bi(c.ldk), 1.0f, acc, bi(D));
    }
    // O = acc / l, LSE = m + log l; rows that saw no key: O = 0, LSE = -inf.
    for (int64_t h = 0; h < c.G; ++h) {
      const int64_t head = g * c.G + h;
      for (int64_t i = 0; i < n; ++i) {
        const int64_t p = h * n + i, row = task.q0 + item.r0 + i;
        float* orow = o + row * c.ldq + head * D;
        const float* arow = acc + p * D;
        if (l[p] > 0) {
          const float inv = 1.0f / l[p];
#pragma omp simd
          for (int64_t e = 0; e < D; ++e) orow[e] = arow[e] * inv;
          lse[row * c.hq + head] = m[p] + std::log(l[p]);
        } else {
          std::fill(orow, orow + D, 0.0f);
          lse[row * c.hq + head] = -INFINITY;
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
#pragma omp parallel for schedule(dynamic, 1) num_threads(blas_caller_threads())
  for (size_t it = 0; it < items.size(); ++it) {
    const Item& item = items[it];
    const Group& grp = kgroups[item.unit];
    const int64_t g = item.kv_head, kb = item.r1 - item.r0;
    const int64_t Mmax = c.G * bq;
    float* Qp = scratch(t_q, Mmax * D);
    float* dOp = scratch(t_do, Mmax * D);
    float* S = scratch(t_s, Mmax * kKeyBlock);
    float* dP = scratch(t_dp, Mmax * kKeyBlock);
    float* dKa = scratch(t_acc, 2 * kb * D);  // dK then dV of the block's key rows
    float* dVa = dKa + kb * D;
    float* rowv = scratch(t_row, 2 * Mmax);  // packed LSE, then D_i
    std::fill(dKa, dKa + 2 * kb * D, 0.0f);
    for (int32_t ti : grp.tasks) {
      const AttentionTask& task = tasks[ti];
      const Geom geo(task);
      const int64_t a = std::max(item.r0, task.k0), b = std::min(item.r1, task.k1);
      if (b <= a) continue;
      const int64_t j0 = a - task.k0, kc = b - a;  // task-local keys [j0, j0+kc)
      const float* Kt = k + a * c.ldk + g * D;
      const float* Vt = v + a * c.ldk + g * D;
      float* dKt = dKa + (a - item.r0) * D;
      float* dVt = dVa + (a - item.r0) * D;
      for (int64_t r0 = geo.first_row(j0); r0 < geo.nq; r0 += bq) {
        const int64_t n = std::min(bq, geo.nq - r0), M = c.G * n, row0 = task.q0 + r0;
        pack_rows(Qp, q, c, g, row0, n);
        pack_rows(dOp, dout, c, g, row0, n);
        for (int64_t h = 0; h < c.G; ++h) {
          for (int64_t i = 0; i < n; ++i) {
            rowv[h * n + i] = lse[(row0 + i) * c.hq + g * c.G + h];
            rowv[M + h * n + i] = dsum[(row0 + i) * c.hq + g * c.G + h];
          }
        }
        // S = scale Qp K^T; P = e^(S - lse), masked
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bi(M), bi(kc), bi(D), c.scale, Qp, bi(D), Kt,
                    bi(c.ldk), 0.0f, S, bi(kc));
        recompute_probs(S, rowv, geo, c.G, n, r0, j0, kc);
        // dV[kc, D] += P^T dOp (summing the group's heads)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, bi(kc), bi(D), bi(M), 1.0f, S, bi(kc), dOp, bi(D), 1.0f,
                    dVt, bi(D));
        // dP = dOp V^T; dS = P (dP - D_i)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bi(M), bi(kc), bi(D), 1.0f, dOp, bi(D), Vt, bi(c.ldk),
                    0.0f, dP, bi(kc));
        probs_to_dscores(S, dP, rowv + M, M, kc);
        // dK[kc, D] += scale dS^T Qp
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, bi(kc), bi(D), bi(M), c.scale, S, bi(kc), Qp, bi(D),
                    1.0f, dKt, bi(D));
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
#pragma omp parallel for schedule(dynamic, 1) num_threads(blas_caller_threads())
  for (size_t it = 0; it < items.size(); ++it) {
    const Item& item = items[it];
    const Group& grp = qgroups[item.unit];
    const int64_t g = item.kv_head, nb = item.r1 - item.r0;
    const int64_t Mmax = c.G * bq;
    float* Qp = scratch(t_q, Mmax * D);
    float* dOp = scratch(t_do, Mmax * D);
    float* S = scratch(t_s, Mmax * kKeyBlock);
    float* dP = scratch(t_dp, Mmax * kKeyBlock);
    float* dQa = scratch(t_acc, c.G * nb * D);  // the block's dQ, [G, nb, D]
    float* dQt = scratch(t_acc2, Mmax * D);     // one task's share, [G, n, D]
    float* rowv = scratch(t_row, 2 * Mmax);
    std::fill(dQa, dQa + c.G * nb * D, 0.0f);
    for (int32_t ti : grp.tasks) {
      const AttentionTask& task = tasks[ti];
      const Geom geo(task);
      const int64_t a = std::max(item.r0, task.q0), b = std::min(item.r1, task.q1);
      if (b <= a) continue;
      const int64_t r0 = a - task.q0, n = b - a, M = c.G * n;
      const int64_t key_end = geo.visible(r0 + n - 1);
      if (key_end == 0) continue;
      pack_rows(Qp, q, c, g, a, n);
      pack_rows(dOp, dout, c, g, a, n);
      for (int64_t h = 0; h < c.G; ++h) {
        for (int64_t i = 0; i < n; ++i) {
          rowv[h * n + i] = lse[(a + i) * c.hq + g * c.G + h];
          rowv[M + h * n + i] = dsum[(a + i) * c.hq + g * c.G + h];
        }
      }
      std::fill(dQt, dQt + M * D, 0.0f);
      const float* Kg = k + task.k0 * c.ldk + g * D;
      const float* Vg = v + task.k0 * c.ldk + g * D;
      for (int64_t j0 = 0; j0 < key_end; j0 += kKeyBlock) {
        const int64_t kc = std::min(kKeyBlock, key_end - j0);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bi(M), bi(kc), bi(D), c.scale, Qp, bi(D),
                    Kg + j0 * c.ldk, bi(c.ldk), 0.0f, S, bi(kc));
        recompute_probs(S, rowv, geo, c.G, n, r0, j0, kc);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bi(M), bi(kc), bi(D), 1.0f, dOp, bi(D),
                    Vg + j0 * c.ldk, bi(c.ldk), 0.0f, dP, bi(kc));
        probs_to_dscores(S, dP, rowv + M, M, kc);
        // dQt[M, D] += scale dS K[j0:j0+kc]
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bi(M), bi(D), bi(kc), c.scale, S, bi(kc),
                    Kg + j0 * c.ldk, bi(c.ldk), 1.0f, dQt, bi(D));
      }
      for (int64_t h = 0; h < c.G; ++h) {
        for (int64_t i = 0; i < n; ++i) {
          float* dst = dQa + (h * nb + (a - item.r0) + i) * D;
          const float* src = dQt + (h * n + i) * D;
#pragma omp simd
          for (int64_t e = 0; e < D; ++e) dst[e] += src[e];
        }
      }
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

// CoreAttention on the task kernels: one causal task per non-empty sequence, positions 0..T-1.
class TaskAttention final : public CoreAttention {
 public:
  void forward(float* o, float* lse, const float* q, const float* k, const float* v, const AttentionShape& shape,
               const SequenceLayout& layout) override {
    const std::vector<AttentionTask> tasks = plan(shape, layout, "task attention forward");
    attention_forward_tasks(o, lse, q, k, v, tasks, dims_of(shape));
  }

  void backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k, const float* v,
                const float* o, const float* lse, const AttentionShape& shape,
                const SequenceLayout& layout) override {
    const std::vector<AttentionTask> tasks = plan(shape, layout, "task attention backward");
    if (tasks.empty()) return;
    CADTRAIN_CHECK(dk && dv, "task attention backward: dk and dv must be non-null");
    // dK and dV are accumulated by the task kernel: zero them first (every row is a task row).
    const size_t kv_elems = static_cast<size_t>(shape.n * shape.kv_heads * shape.head_dim);
    cpu::parallel_blocks(kv_elems, [&](size_t b, size_t e) {
      std::fill(dk + b, dk + e, 0.0f);
      std::fill(dv + b, dv + e, 0.0f);
    });
    attention_backward_tasks(dq, dk, dv, dout, q, k, v, o, lse, tasks, dims_of(shape));
  }

 private:
  static AttentionDims dims_of(const AttentionShape& s) { return {s.q_heads, s.kv_heads, s.head_dim, s.softmax_scale}; }

  static std::vector<AttentionTask> plan(const AttentionShape& shape, const SequenceLayout& layout, const char* op) {
    CADTRAIN_CHECK(shape.n >= 0, "{}: n = {} is negative", op, shape.n);
    const int64_t tokens = cpu::check_cu_seqlens(layout.cu_seqlens, layout.n_seqs, op);
    CADTRAIN_CHECK(tokens == shape.n, "{}: the sequences cover {} tokens but n = {}", op, tokens, shape.n);
    std::vector<AttentionTask> tasks;
    for (int64_t s = 0; s < layout.n_seqs; ++s) {
      const int64_t t0 = layout.cu_seqlens[s], t1 = layout.cu_seqlens[s + 1];
      if (t1 > t0) tasks.push_back({t0, t1, t0, t1, 0, 0, true});
    }
    return tasks;
  }
};

}  // namespace

std::unique_ptr<CoreAttention> make_local_task_attention() { return std::make_unique<TaskAttention>(); }

}  // namespace cadtrain::kernels
