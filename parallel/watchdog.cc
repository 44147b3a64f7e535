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
  std::string what(op);
  if (!reduce.empty()) what += fmt::format(" ({})", reduce);
  if (peer >= 0) what += fmt::format(" rank {}", peer);
  if (tag >= 0) what += fmt::format(" (tag {})", tag);
  return fmt::format("{} of {} on communicator \"{}\" ({} ranks)", what, buffer.describe(),
                     comm != nullptr ? *comm : std::string("?"), comm_size);
}

namespace {

std::string context_suffix(const OpContext& context) {
  const std::string c = context.describe();
  return c.empty() ? std::string(" (step and layer unknown)") : " (" + c + ")";
}

std::string ranks_list(const std::vector<std::pair<int, int>>& waiting_for, bool known) {
  if (!known) return "unknown (this backend does not report which peers arrived)";
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

struct sigaction g_previous_sigterm;  // the handler installed before ours (e.g. the trainer's)

extern "C" void on_sigterm(int sig) {
  const int slot = g_report_slot.load();
  if (slot >= 0) {
    // Blocked in communication: a graceful stop cannot finish the step, so report and exit.
    write_all(g_reports[slot]);
    _exit(128 + SIGTERM);
  }
  // Between operations: the handler installed before ours decides (the trainer finishes the step
  // and writes a checkpoint); without one, report and exit.
  if ((g_previous_sigterm.sa_flags & SA_SIGINFO) == 0 && g_previous_sigterm.sa_handler != SIG_DFL &&
      g_previous_sigterm.sa_handler != SIG_IGN) {
    g_previous_sigterm.sa_handler(sig);
    return;
  }
  write_all(g_idle_report);
  _exit(128 + SIGTERM);
}

}  // namespace

Watchdog::Watchdog(double timeout_s, RankIdentity identity) : timeout_s_(timeout_s), identity_(std::move(identity)) {
  CADTRAIN_CHECK(timeout_s > 0, "parallel.timeout_s must be > 0 (got {})", timeout_s);
}

std::string Watchdog::timeout_message(const OpDescription& op, double waited_s,
                                      const std::vector<std::pair<int, int>>& waiting_for, bool known_arrivals) const {
  return fmt::format("{}: {} did not complete within parallel.timeout_s = {:g} s (waited {:.1f} s){}; ranks that "
                     "did not arrive: {}",
                     identity_.describe(), op.describe(), timeout_s_, waited_s, context_suffix(op.context),
                     ranks_list(waiting_for, known_arrivals));
}

void Watchdog::publish_in_flight(const OpDescription& op, const std::vector<std::pair<int, int>>& waiting_for,
                                 bool known_arrivals) const {
  if (!g_report_installed.load()) return;
  const int slot = g_report_slot.load() == 0 ? 1 : 0;
  copy_report(g_reports[slot],
              fmt::format("{}: ended by SIGTERM (the launcher ends the job when a rank dies or aborts) while "
                          "waiting in {}{}; ranks that had not arrived: {}\n",
                          identity_.describe(), op.describe(), context_suffix(op.context), ranks_list(waiting_for, known_arrivals)));
  g_report_slot.store(slot);
}

void Watchdog::clear_in_flight() const {
  if (g_report_installed.load()) g_report_slot.store(-1);
}

void Watchdog::publish_timed_out(const std::string& message) const {
  if (!g_report_installed.load()) return;
  const int slot = g_report_slot.load() == 0 ? 1 : 0;
  copy_report(g_reports[slot], message + "\n");
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
  struct sigaction previous = {};
  if (sigaction(SIGTERM, &action, &previous) != 0) fail("{}: cannot install the SIGTERM handler", identity.describe());
  if (previous.sa_handler != on_sigterm) g_previous_sigterm = previous;
  g_report_installed.store(true);
}

}  // namespace cadtrain::parallel
