// Watchdog messages and the SIGTERM report (parallel/watchdog.h).
#include "parallel/watchdog.h"

#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>

namespace cadtrain::parallel {

std::string OpContext::describe() const {
  std::string out;
  const auto add = [&](const std::string& part) { out += (out.empty() ? "" : ", ") + part; };
  if (step >= 0) add(fmt::format("step {}", step));
  if (layer >= 0) add(fmt::format("layer {}", layer));
  if (!phase.empty()) add(phase);
  return out;
}

std::string RankIdentity::describe() const {
  return fmt::format("rank {}/{} (host {}, pid {})", world_rank, world_size, host, pid);
}

RankIdentity RankIdentity::of_this_process(int world_rank, int world_size) {
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) std::strcpy(host, "?");
  return {world_rank, world_size, host, static_cast<int>(getpid())};
}

std::string OpDescription::describe() const {
  return fmt::format("{} of {} on communicator \"{}\" ({} ranks)", op, buffer.describe(), comm, comm_size);
}

namespace {

std::string context_suffix(const OpContext& context) {
  const std::string c = context.describe();
  return c.empty() ? std::string(" (step and layer unknown)") : " (" + c + ")";
}

std::string ranks_list(const std::vector<std::pair<int, int>>& waiting_for) {
  if (waiting_for.empty()) return "none (every peer's data arrived; the local side did not finish)";
  std::string out;
  for (const auto& [comm_rank, world_rank] : waiting_for) {
    out += fmt::format("{}{} (world rank {})", out.empty() ? "" : ", ", comm_rank, world_rank);
  }
  return out;
}

// The report the SIGTERM handler writes: two buffers so that a report can be rewritten while the
// handler might be reading the other one.
constexpr size_t kReportBytes = 4096;
char g_reports[2][kReportBytes];
std::atomic<int> g_report_slot{-1};   // -1: nothing in flight
char g_idle_report[kReportBytes];     // what to write when nothing is in flight
std::atomic<bool> g_report_installed{false};

void copy_report(char* dst, const std::string& text) {
  const size_t n = std::min(text.size(), kReportBytes - 1);
  std::memcpy(dst, text.data(), n);
  dst[n] = '\0';
}

void write_all(const char* text) {
  size_t left = std::strlen(text);
  while (left > 0) {
    const ssize_t n = write(STDERR_FILENO, text, left);
    if (n <= 0) return;
    text += n;
    left -= static_cast<size_t>(n);
  }
}

extern "C" void on_sigterm(int) {
  const int slot = g_report_slot.load();
  write_all(slot >= 0 ? g_reports[slot] : g_idle_report);
  _exit(128 + SIGTERM);
}

}  // namespace

Watchdog::Watchdog(double timeout_s, RankIdentity identity) : timeout_s_(timeout_s), identity_(std::move(identity)) {
  CADTRAIN_CHECK(timeout_s > 0, "parallel.timeout_s must be > 0 (got {})", timeout_s);
}

std::string Watchdog::timeout_message(const OpDescription& op, double waited_s,
                                      const std::vector<std::pair<int, int>>& waiting_for) const {
  return fmt::format("{}: {} did not complete within parallel.timeout_s = {:g} s (waited {:.1f} s){}; ranks that "
                     "did not arrive: {}",
                     identity_.describe(), op.describe(), timeout_s_, waited_s, context_suffix(op.context),
                     ranks_list(waiting_for));
}

void Watchdog::publish_in_flight(const OpDescription& op, const std::vector<std::pair<int, int>>& waiting_for) const {
  if (!g_report_installed.load()) return;
  const int slot = g_report_slot.load() == 0 ? 1 : 0;
  copy_report(g_reports[slot],
              fmt::format("{}: ended by SIGTERM (the launcher ends the job when a rank dies or aborts) while "
                          "waiting in {}{}; ranks that had not arrived: {}\n",
                          identity_.describe(), op.describe(), context_suffix(op.context), ranks_list(waiting_for)));
  g_report_slot.store(slot);
}

void Watchdog::clear_in_flight() const {
  if (g_report_installed.load()) g_report_slot.store(-1);
}

void Watchdog::publish_timed_out() const {
  if (!g_report_installed.load()) return;
  const int slot = g_report_slot.load() == 0 ? 1 : 0;
  copy_report(g_reports[slot], fmt::format("{}: ended by SIGTERM after reporting the communication timeout above\n",
                                           identity_.describe()));
  g_report_slot.store(slot);
}

void install_termination_report(const RankIdentity& identity) {
  copy_report(g_idle_report,
              fmt::format("{}: ended by SIGTERM (the launcher ends the job when a rank dies or aborts); no "
                          "communication was in flight\n",
                          identity.describe()));
  struct sigaction action = {};
  action.sa_handler = on_sigterm;
  sigemptyset(&action.sa_mask);
  if (sigaction(SIGTERM, &action, nullptr) != 0) fail("{}: cannot install the SIGTERM handler", identity.describe());
  g_report_installed.store(true);
}

}  // namespace cadtrain::parallel
