// HDF5 datasets of packed variable-length documents: the format, a validating reader that reads
// token ranges on demand (never the whole file), and a streaming writer.
//
// Format (format_version 1):
//   /tokens       uint32 [n_tokens]     all documents concatenated; chunked, Fletcher-32 checksummed
//   /doc_offsets  uint64 [n_docs + 1]   document d is tokens[doc_offsets[d], doc_offsets[d+1])
//   /difficulty   float32 [n_docs]      optional; curriculum order (higher is harder)
//   /answer_mask  uint8 [n_tokens]      optional; 1 where a token answers a long-range query
//   attributes on /: vocab_size (uint32), tokenizer (string: "byte" or "sentencepiece"),
//     format_version (uint32), max_token (uint32, largest id present), tokenizer_model (string,
//     optional: file name of the tokenizer model, relative to the dataset's directory)
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace cadtrain::data {

inline constexpr uint32_t kDatasetFormatVersion = 1;

// Read-only access to a dataset. open() validates the structure (datasets present, dtypes,
// shapes, offsets monotonic and in range, format version, max_token < vocab_size) and throws
// cadtrain::Error naming the file and the problem; reads also validate every token they return,
// and a corrupt or truncated file raises an Error rather than crashing.
class Dataset {
 public:
  static Dataset open(const std::string& path);
  Dataset(Dataset&&) noexcept;
  Dataset& operator=(Dataset&&) noexcept;
  ~Dataset();

  const std::string& path() const;
  uint64_t num_docs() const;
  uint64_t num_tokens() const;
  uint32_t vocab_size() const;
  uint32_t format_version() const;
  const std::string& tokenizer() const;        // "byte" or "sentencepiece"
  const std::string& tokenizer_model() const;  // absolute path, empty when none

  std::span<const uint64_t> doc_offsets() const;  // n_docs + 1 entries, validated
  uint64_t doc_length(uint64_t doc) const;
  std::span<const float> difficulty() const;  // empty when the file has none
  bool has_answer_mask() const;

  // Reads tokens [begin, end) into out (end - begin entries). Throws if a token >= vocab_size.
  void read_tokens(uint64_t begin, uint64_t end, uint32_t* out) const;
  std::vector<uint32_t> read_doc(uint64_t doc) const;
  // Reads the answer mask for tokens [begin, end); requires has_answer_mask().
  void read_answer_mask(uint64_t begin, uint64_t end, uint8_t* out) const;

 private:
  struct Impl;
  explicit Dataset(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct DatasetWriterOptions {
  uint32_t vocab_size = 0;
  std::string tokenizer = "byte";
  std::string tokenizer_model;  // file name relative to the dataset's directory, or empty
  bool with_difficulty = false;
  bool with_answer_mask = false;
  // HDF5 chunk size of /tokens and /answer_mask: a read fetches and checksums whole chunks, so
  // this bounds the cost of reading one short document in shuffled order (256 KiB of tokens).
  uint64_t chunk_tokens = 1 << 16;
};

// Streams documents into a new dataset. Data goes to "<path>.tmp" and is renamed to path by
// finish(), so a crash never leaves a half-written file under the final name. Destroying an
// unfinished writer removes the temporary file.
class DatasetWriter {
 public:
  DatasetWriter(const std::string& path, const DatasetWriterOptions& options);
  DatasetWriter(const DatasetWriter&) = delete;
  DatasetWriter& operator=(const DatasetWriter&) = delete;
  ~DatasetWriter();

  // Appends one document. Tokens must be < vocab_size; answer_mask (when the writer has one) has
  // one entry per token; difficulty is stored when the writer has a difficulty column.
  void add_document(std::span<const uint32_t> tokens, float difficulty = 0.0f,
                    std::span<const uint8_t> answer_mask = {});
  uint64_t num_docs() const;
  uint64_t num_tokens() const;
  // Flushes, writes offsets and attributes, fsyncs and renames into place.
  void finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Writes difficulty (one finite value per document of dataset_path) as /difficulty of out_path,
// which is a copy of dataset_path or dataset_path itself. The new file is built beside out_path as
// "<out_path>.tmp" and renamed into place, so a failure never leaves a half-written dataset.
void write_difficulty(const std::string& dataset_path, const std::string& out_path,
                      std::span<const float> difficulty);

}  // namespace cadtrain::data
