// The plan of one CAD step (attention_servers/plan.proto) from a schedule: which rank sends which
// rows to which server, each server's buffers and fused task list, and the bytes on the wire.
#pragma once

#include <google/protobuf/arena.h>

#include "attention_servers/cost_model.h"
#include "attention_servers/plan.pb.h"
#include "attention_servers/scheduler.h"
#include "attention_servers/tasks.h"

namespace cadtrain::attention_servers {

// Server buffers: each server's query shards in (document, position) order; its KV buffer holds,
// per document (in document order), the prefix from the document's first position to the largest
// end of its tasks there, once (so tasks of one document share it).
AttentionPlan build_plan(const Schedule& schedule, const RowBytes& bytes, int64_t shard_tokens);
// The same plan built on `arena` (owned by the arena): a plan holds a message per dispatch, tens of
// thousands at 512 servers, and an arena makes creating and freeing them cheap.
AttentionPlan* build_plan(const Schedule& schedule, const RowBytes& bytes, int64_t shard_tokens,
                          google::protobuf::Arena* arena);
// The same plan written into *plan (cleared first).
void fill_plan(const Schedule& schedule, const RowBytes& bytes, int64_t shard_tokens, AttentionPlan* plan);

// Everything at once: form tasks, schedule them, build the plan.
AttentionPlan plan_step(const BatchLayout& layout, int64_t shard_tokens, const CostModel& cost,
                        const SchedulerOptions& options);

}  // namespace cadtrain::attention_servers
