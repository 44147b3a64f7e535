// DatasetWriter: streams documents into "<path>.tmp" a chunk at a time, then writes offsets and
// attributes, fsyncs and renames into place (format in data/dataset.h).

#include <algorithm>     // std::clamp, std::max
#include <cmath>         // std::isfinite
#include <cstdint>       // fixed-width ids and offsets
#include <filesystem>    // rename, remove, parent directory
#include <string>        // paths and messages
#include <system_error>  // std::error_code messages
#include <vector>        // pending chunk, offsets, difficulty

#include "common/durable_file.h"  // publish_file
#include "common/error.h"       // cadtrain::Error, fail(), with_context()
#include "data/dataset.h"       // the public interface implemented here
#include "common/hdf5_handles.h"  // handles, library lock, HDF5 error messages

namespace cadtrain::data {
namespace {

namespace fs = std::filesystem;

// HDF5 limits a chunk to under 4 GiB; 1 GiB of tokens is far above any useful chunk size.
constexpr uint64_t kMaxChunkElements = uint64_t{1} << 28;
// Chunk length of the per-document columns (offsets, difficulty), which are written once.
constexpr uint64_t kPerDocChunk = uint64_t{1} << 20;

// A chunked, extendible 1-D column with the Fletcher-32 filter, so that a flipped byte in the
// data fails the read instead of returning a wrong token. No compression: reads stay cheap and
// token ids barely compress.
h5::Dataset create_column(hid_t file, const char* name, hid_t file_type, uint64_t chunk) {
  const hsize_t size = 0;
  const hsize_t max_size = H5S_UNLIMITED;
  const hsize_t chunk_size = chunk;
  auto space = h5::own<h5::Space>(H5Screate_simple(1, &size, &max_size), name);
  auto dcpl = h5::own<h5::Plist>(H5Pcreate(H5P_DATASET_CREATE), name);
  h5::check(H5Pset_chunk(dcpl.get(), 1, &chunk_size), fmt::format("{}: cannot set chunk", name));
  h5::check(H5Pset_fletcher32(dcpl.get()), fmt::format("{}: cannot set Fletcher-32", name));
  return h5::own<h5::Dataset>(
      H5Dcreate2(file, name, file_type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
      fmt::format("cannot create {}", name));
}

// Appends n elements at `offset` (the column's current length).
void append(const h5::Dataset& column, const char* name, hid_t mem_type, uint64_t offset,
            const void* data, uint64_t n) {
  if (n == 0) return;
  const hsize_t new_size = offset + n;
  h5::check(H5Dset_extent(column.get(), &new_size), fmt::format("{}: cannot extend", name));
  auto file_space = h5::own<h5::Space>(H5Dget_space(column.get()), name);
  h5::select_1d(file_space, offset, n);
  auto mem_space = h5::space_1d(n);
  h5::check(H5Dwrite(column.get(), mem_type, mem_space.get(), file_space.get(), H5P_DEFAULT, data),
            fmt::format("{}: cannot write [{}, {})", name, offset, offset + n));
}

void write_column(hid_t file, const char* name, hid_t file_type, hid_t mem_type, const void* data,
                  uint64_t n) {
  auto column = create_column(file, name, file_type, std::clamp<uint64_t>(n, 1, kPerDocChunk));
  append(column, name, mem_type, 0, data, n);
  column.close(fmt::format("cannot close {}", name));
}

// Fixed-length, not variable-length: a variable-length string lives in the global heap, which
// has no checksum, and HDF5 1.10 loops forever on some corrupt global heaps. A fixed-length string
// is stored in the checksummed object header. (h5py reads it back as bytes rather than str.)
void write_string_attribute(hid_t file, const char* name, const std::string& value) {
  const std::string what = fmt::format("cannot write attribute {}", name);
  auto type = h5::own<h5::Type>(H5Tcopy(H5T_C_S1), what);
  h5::check(H5Tset_size(type.get(), value.size() + 1), what);
  h5::check(H5Tset_strpad(type.get(), H5T_STR_NULLTERM), what);
  h5::check(H5Tset_cset(type.get(), H5T_CSET_UTF8), what);
  auto space = h5::own<h5::Space>(H5Screate(H5S_SCALAR), what);
  auto attr = h5::own<h5::Attribute>(
      H5Acreate2(file, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), what);
  h5::check(H5Awrite(attr.get(), type.get(), value.c_str()), what);
}

void validate_options(const DatasetWriterOptions& options) {
  if (options.vocab_size == 0) fail("vocab_size must be > 0");
  if (!h5::is_known_tokenizer(options.tokenizer)) {
    fail("tokenizer \"{}\" is not \"byte\" or \"sentencepiece\"", options.tokenizer);
  }
  if (options.chunk_tokens == 0) fail("chunk_tokens must be > 0");
}

}  // namespace

struct DatasetWriter::Impl {
  std::string path;
  std::string tmp_path;
  DatasetWriterOptions options;
  h5::File file;       // declared first so that it is closed after the columns
  h5::Dataset tokens;  // created at the first flush, when the chunk length is known
  h5::Dataset answer_mask;
  std::vector<uint32_t> pending_tokens;  // not yet in the file; less than a chunk after a flush
  std::vector<uint8_t> pending_mask;
  uint64_t written = 0;  // tokens already in the file
  std::vector<uint64_t> offsets{0};
  std::vector<float> difficulty;
  uint32_t max_token = 0;
  bool finished = false;
  bool failed = false;  // an I/O error left the file in an unknown state

  Impl(const std::string& path_in, const DatasetWriterOptions& options_in)
      : path(path_in), tmp_path(path_in + ".tmp"), options(options_in) {}
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl() {
    if (!finished) abandon();
  }

  void create();
  void check_usable() const;
  void check_document(std::span<const uint32_t> doc, float doc_difficulty,
                      std::span<const uint8_t> mask) const;
  void add(std::span<const uint32_t> doc, float doc_difficulty, std::span<const uint8_t> mask);
  void create_token_columns(uint64_t chunk);
  void flush(bool everything);
  void write_metadata();
  void commit();
  void abandon() noexcept;
};

void DatasetWriter::Impl::create() {
  validate_options(options);
  auto guard = h5::lock();
  auto fapl = h5::file_access_list();
  // The 1.10 format checksums all metadata, so a corrupt header is reported, not misread.
  h5::check(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V110, H5F_LIBVER_V110),
            "cannot set format version bounds");
  file = h5::own<h5::File>(H5Fcreate(tmp_path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()),
                           fmt::format("cannot create {}", tmp_path));
}

void DatasetWriter::Impl::check_usable() const {
  if (finished) fail("writer is already finished");
  if (failed) fail("writer is unusable after an earlier write error");
}

void DatasetWriter::Impl::check_document(std::span<const uint32_t> doc, float doc_difficulty,
                                         std::span<const uint8_t> mask) const {
  const uint64_t index = offsets.size() - 1;
  for (size_t i = 0; i < doc.size(); ++i) {
    if (doc[i] >= options.vocab_size) {
      fail("document {}: token {} at position {} >= vocab_size {}", index, doc[i], i,
           options.vocab_size);
    }
  }
  if (!options.with_answer_mask && !mask.empty()) {
    fail("document {}: answer_mask given, but the writer has no answer_mask column", index);
  }
  if (options.with_answer_mask && mask.size() != doc.size()) {
    fail("document {}: answer_mask has {} entries, expected {} (one per token)", index, mask.size(),
         doc.size());
  }
  for (size_t i = 0; i < mask.size(); ++i) {
    if (mask[i] > 1) fail("document {}: answer_mask[{}] = {}, expected 0 or 1", index, i, mask[i]);
  }
  if (options.with_difficulty && !std::isfinite(doc_difficulty)) {
    fail("document {}: difficulty {} is not finite", index, doc_difficulty);
  }
}

void DatasetWriter::Impl::add(std::span<const uint32_t> doc, float doc_difficulty,
                              std::span<const uint8_t> mask) {
  pending_tokens.insert(pending_tokens.end(), doc.begin(), doc.end());
  pending_mask.insert(pending_mask.end(), mask.begin(), mask.end());
  for (const uint32_t token : doc) max_token = std::max(max_token, token);
  offsets.push_back(offsets.back() + doc.size());
  if (options.with_difficulty) difficulty.push_back(doc_difficulty);
  if (pending_tokens.size() >= options.chunk_tokens) flush(false);
}

void DatasetWriter::Impl::create_token_columns(uint64_t chunk) {
  tokens = create_column(file.get(), h5::kTokens, H5T_STD_U32LE, chunk);
  if (options.with_answer_mask) {
    answer_mask = create_column(file.get(), h5::kAnswerMask, H5T_STD_U8LE, chunk);
  }
}

// Writes the whole chunks pending, or everything when `everything` (at finish). Appending whole
// chunks means each chunk is checksummed and written once, never read back and rewritten.
void DatasetWriter::Impl::flush(bool everything) {
  auto guard = h5::lock();
  const uint64_t chunk = std::min(options.chunk_tokens, kMaxChunkElements);
  if (!tokens.valid()) {
    // A dataset smaller than one chunk gets a chunk of its own size (at least 1), not a mostly
    // empty chunk of the configured size.
    create_token_columns(everything ? std::clamp<uint64_t>(pending_tokens.size(), 1, chunk)
                                    : chunk);
  }
  const uint64_t n = everything ? pending_tokens.size() : pending_tokens.size() / chunk * chunk;
  append(tokens, h5::kTokens, H5T_NATIVE_UINT32, written, pending_tokens.data(), n);
  pending_tokens.erase(pending_tokens.begin(), pending_tokens.begin() + static_cast<ptrdiff_t>(n));
  if (answer_mask.valid()) {
    append(answer_mask, h5::kAnswerMask, H5T_NATIVE_UINT8, written, pending_mask.data(), n);
    pending_mask.erase(pending_mask.begin(), pending_mask.begin() + static_cast<ptrdiff_t>(n));
  }
  written += n;
}

void DatasetWriter::Impl::write_metadata() {
  auto guard = h5::lock();
  const hid_t id = file.get();
  write_column(id, h5::kDocOffsets, H5T_STD_U64LE, H5T_NATIVE_UINT64, offsets.data(),
               offsets.size());
  if (options.with_difficulty) {
    write_column(id, h5::kDifficulty, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, difficulty.data(),
                 difficulty.size());
  }
  h5::write_u32_attribute(id, h5::kFormatVersion, kDatasetFormatVersion);
  h5::write_u32_attribute(id, h5::kVocabSize, options.vocab_size);
  write_string_attribute(id, h5::kTokenizer, options.tokenizer);
  if (!options.tokenizer_model.empty()) {
    write_string_attribute(id, h5::kTokenizerModel, options.tokenizer_model);
  }
  // max_token is "the largest id present"; an empty dataset has none.
  if (written > 0) h5::write_u32_attribute(id, h5::kMaxToken, max_token);
}

void DatasetWriter::Impl::commit() {
  {
    auto guard = h5::lock();
    answer_mask.close(fmt::format("cannot close {}", h5::kAnswerMask));
    tokens.close(fmt::format("cannot close {}", h5::kTokens));
    file.close(fmt::format("cannot close {}", tmp_path));
  }
  publish_file(tmp_path, path);
}

void DatasetWriter::Impl::abandon() noexcept {
  answer_mask.reset();
  tokens.reset();
  file.reset();
  std::error_code ec;
  fs::remove(tmp_path, ec);  // nothing useful to do if this fails; the name says .tmp
}

DatasetWriter::DatasetWriter(const std::string& path, const DatasetWriterOptions& options)
    : impl_(std::make_unique<Impl>(path, options)) {
  // In the body, so that a failure destroys impl_ and with it the partly created .tmp file.
  with_context(path, [&] { impl_->create(); });
}

DatasetWriter::~DatasetWriter() = default;

void DatasetWriter::add_document(std::span<const uint32_t> tokens, float difficulty,
                                 std::span<const uint8_t> answer_mask) {
  with_context(impl_->path, [&] {
    impl_->check_usable();
    impl_->check_document(tokens, difficulty, answer_mask);
    try {
      impl_->add(tokens, difficulty, answer_mask);
    } catch (...) {
      impl_->failed = true;
      throw;
    }
  });
}

uint64_t DatasetWriter::num_docs() const { return impl_->offsets.size() - 1; }
uint64_t DatasetWriter::num_tokens() const { return impl_->offsets.back(); }

void DatasetWriter::finish() {
  with_context(impl_->path, [&] {
    impl_->check_usable();
    try {
      impl_->flush(true);
      impl_->write_metadata();
      impl_->commit();
      impl_->finished = true;
    } catch (...) {
      impl_->failed = true;
      throw;
    }
  });
}

void write_difficulty(const std::string& dataset_path, const std::string& out_path,
                      std::span<const float> difficulty) {
  const std::string tmp_path = out_path + ".tmp";
  const auto work = [&] {
    {
      const Dataset source = Dataset::open(dataset_path);
      if (difficulty.size() != source.num_docs()) {
        fail("{} difficulties for {} documents", difficulty.size(), source.num_docs());
      }
    }
    for (size_t d = 0; d < difficulty.size(); ++d) {
      if (!std::isfinite(difficulty[d])) fail("document {}: difficulty {} is not finite", d, difficulty[d]);
    }
    // The source is never opened for writing: a failure at any point leaves it (and out_path)
    // as they were, and only the .tmp copy, which is removed, saw the change.
    std::error_code ec;
    fs::copy_file(dataset_path, tmp_path, fs::copy_options::overwrite_existing, ec);
    if (ec) fail("cannot copy to {}: {}", tmp_path, ec.message());
    {
      auto guard = h5::lock();
      auto fapl = h5::file_access_list();
      auto file = h5::own<h5::File>(H5Fopen(tmp_path.c_str(), H5F_ACC_RDWR, fapl.get()),
                                    fmt::format("cannot open {} for writing", tmp_path));
      if (h5::check(H5Lexists(file.get(), h5::kDifficulty, H5P_DEFAULT), "cannot look up /difficulty") > 0) {
        h5::check(H5Ldelete(file.get(), h5::kDifficulty, H5P_DEFAULT), "cannot replace /difficulty");
      }
      write_column(file.get(), h5::kDifficulty, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, difficulty.data(),
                   difficulty.size());
      file.close(fmt::format("cannot close {}", tmp_path));
    }
    Dataset::open(tmp_path);  // the copy must read back as a valid dataset before it replaces anything
    publish_file(tmp_path, out_path);
  };
  try {
    with_context(fmt::format("{}: cannot write /difficulty to {}", dataset_path, out_path), work);
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp_path, ec);
    throw;
  }
}

}  // namespace cadtrain::data
