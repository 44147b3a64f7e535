// Teacher top-K store for distillation (DESIGN sections 6 and 7): per token of a dataset, the
// teacher's K most likely next tokens and their log-probabilities normalized over the full
// vocabulary. Row t belongs to token t of the dataset's /tokens (the prediction made at t).
//
// Format (format_version 1):
//   /topk_ids       int32 [n_tokens, K]    chunked, Fletcher-32 checksummed
//   /topk_logprobs  float32 [n_tokens, K]  chunked, Fletcher-32 checksummed
//   attributes on /: format_version, k, vocab_size (the teacher's, uint32), n_tokens, n_docs,
//     dataset_fingerprint (uint64), teacher (string: the checkpoint it came from)
// The fingerprint ties a store to its dataset: a store opened against another dataset, another
// vocabulary or another K is refused naming both sides.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace cadtrain::data {

class Dataset;

inline constexpr uint32_t kTeacherStoreFormatVersion = 1;

// A hash of the dataset's shape, vocabulary, every document offset and the tokens of up to 64
// evenly spaced documents (their first 4096 tokens): cheap to compute at every training start,
// and different for any other dataset in practice (another seed or source changes the tokens).
uint64_t dataset_fingerprint(const Dataset& dataset);

struct TeacherStoreInfo {
  uint32_t k = 0;
  uint32_t vocab_size = 0;
  uint64_t n_tokens = 0;
  uint64_t n_docs = 0;
  uint64_t dataset_fingerprint = 0;
  std::string teacher;
};

// Streams rows into "<path>.tmp"; finish() checks that exactly n_tokens rows were written, then
// fsyncs and renames into place. Destroyed unfinished, it removes the temporary file.
class TeacherStoreWriter {
 public:
  TeacherStoreWriter(const std::string& path, const TeacherStoreInfo& info);
  ~TeacherStoreWriter();
  TeacherStoreWriter(const TeacherStoreWriter&) = delete;
  TeacherStoreWriter& operator=(const TeacherStoreWriter&) = delete;
  // Appends rows [rows_written, rows_written + n): ids[n, K] in [0, vocab_size), logprobs[n, K] <= 0.
  void append(const int32_t* ids, const float* logprobs, uint64_t n);
  uint64_t rows_written() const;
  void finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

class TeacherStore {
 public:
  // Validates the format (attributes, dtypes, shapes) and throws naming the file.
  static TeacherStore open(const std::string& path);
  TeacherStore(TeacherStore&&) noexcept;
  ~TeacherStore();

  const std::string& path() const;
  const TeacherStoreInfo& info() const;
  // Throws unless the store was prepared from `dataset`, for a model of `vocab_size` tokens, with
  // `k` ids per row (k = 0: any); the message names the store, the dataset and what differs.
  void check_matches(const Dataset& dataset, uint32_t vocab_size, uint32_t k) const;
  // Reads rows [begin, begin + n) into ids[n, K] and logprobs[n, K]; validates ids. Thread-safe.
  void read(uint64_t begin, uint64_t n, int32_t* ids, float* logprobs) const;

 private:
  struct Impl;
  explicit TeacherStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace cadtrain::data
