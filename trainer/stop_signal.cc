// Stop requests from SIGINT/SIGTERM (see stop_signal.h).
#include "trainer/stop_signal.h"

#include <signal.h>

#include <atomic>

namespace cadtrain::trainer {
namespace {

std::atomic<int> g_received{0};
int g_depth = 0;  // live StopSignals instances (constructed on the main thread only)
struct sigaction g_previous_int {};
struct sigaction g_previous_term {};

extern "C" void on_stop_signal(int signal) {
  if (g_received.exchange(signal) != 0) {
    // Asked twice: stop now, as the user would expect from a second Ctrl-C.
    ::signal(signal, SIG_DFL);
    ::raise(signal);
  }
}

}  // namespace

StopSignals::StopSignals() {
  if (g_depth++ > 0) return;
  g_received = 0;
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, &g_previous_int);
  sigaction(SIGTERM, &action, &g_previous_term);
}

StopSignals::~StopSignals() {
  if (--g_depth > 0) return;
  sigaction(SIGINT, &g_previous_int, nullptr);
  sigaction(SIGTERM, &g_previous_term, nullptr);
}

int StopSignals::received() { return g_received.load(); }

}  // namespace cadtrain::trainer
