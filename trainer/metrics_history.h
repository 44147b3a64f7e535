// Keeping metrics.jsonl a history of one run: when a run continues from a checkpoint of step s,
// the lines it logged after step s (before it was killed) describe steps that are about to be
// run again, so they are dropped rather than repeated.
#pragma once

#include <cstdint>
#include <string>

namespace cadtrain::trainer {

// Rewrites path (atomically) keeping only the JSON lines whose "step" is <= step; a torn or
// unparsable line (a kill mid-write) is dropped too. Returns how many lines were dropped. A
// missing file is left missing.
uint64_t keep_metrics_up_to(const std::string& path, uint64_t step);

}  // namespace cadtrain::trainer
