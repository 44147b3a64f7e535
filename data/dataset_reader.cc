// Dataset: opens and validates an HDF5 dataset (format in data/dataset.h), keeps the document
// offsets and difficulties in memory and reads token ranges on demand.
#include <cmath>         // std::isfinite
#include <cstdint>       // fixed-width ids and offsets
#include <filesystem>    // existence check, tokenizer_model resolution
#include <limits>        // attribute range checks
#include <string>        // names and messages
#include <string_view>   // expected dtype names
#include <system_error>  // std::error_code for non-throwing filesystem calls
#include <utility>       // std::pair, std::move
#include <vector>        // offsets and difficulty kept in memory

#include "common/error.h"       // cadtrain::Error, fail(), with_context()
#include "data/dataset.h"       // the public interface implemented here
#include "common/hdf5_handles.h"  // handles, library lock, HDF5 error messages
#include "common/hdf5_storage.h"  // check_fully_written: unwritten chunks, sizes beyond the file

namespace cadtrain::data {
namespace {

namespace fs = std::filesystem;

// Chunk cache per open column. A Fletcher-32 chunk must be read and verified whole, so the cache
// should hold a few default-sized chunks (4 MiB of tokens) for neighbouring small reads to share
// them; it bounds the reader's memory independently of the file size.
constexpr size_t kChunkCacheBytes = 16u << 20;
constexpr size_t kChunkCacheSlots = 521;  // prime, as HDF5 recommends for its hash table

// Names an HDF5 type the way messages and the format description do: uint32, float32, string.
std::string dtype_name(hid_t type) {
  const size_t bits = 8 * H5Tget_size(type);
  switch (H5Tget_class(type)) {
    case H5T_INTEGER:
      return fmt::format("{}int{}", H5Tget_sign(type) == H5T_SGN_NONE ? "u" : "", bits);
    case H5T_FLOAT: return fmt::format("float{}", bits);
    case H5T_STRING: return "string";
    case H5T_COMPOUND: return "compound";
    case H5T_ENUM: return "enum";
    case H5T_ARRAY: return "array";
    case H5T_VLEN: return "vlen";
    case H5T_BITFIELD: return "bitfield";
    case H5T_OPAQUE: return "opaque";
    case H5T_REFERENCE: return "reference";
    default: return "unknown type";
  }
}

h5::File open_file(const std::string& path) {
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (status.type() == fs::file_type::not_found) fail("no such file");
  if (ec) fail("cannot access: {}", ec.message());
  if (status.type() == fs::file_type::directory) fail("is a directory, not an HDF5 file");
  if (status.type() != fs::file_type::regular) fail("not a regular file (a FIFO or device?)");
  if (h5::check(H5Fis_hdf5(path.c_str()), "cannot read file") == 0) {
    fail("not an HDF5 file (no HDF5 signature)");
  }
  auto fapl = h5::file_access_list();
  return h5::own<h5::File>(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()),
                           "cannot open as HDF5");
}

// ---- attributes ----

bool has_attribute(hid_t file, const char* name) {
  return h5::check(H5Aexists(file, name), fmt::format("cannot look up attribute {}", name)) > 0;
}

// Opens a single-valued attribute and returns it with its type, checking the type's class.
std::pair<h5::Attribute, h5::Type> open_attribute(hid_t file, const char* name, H5T_class_t cls,
                                                  std::string_view expected) {
  if (!has_attribute(file, name)) fail("missing attribute {}", name);
  auto attr = h5::own<h5::Attribute>(H5Aopen(file, name, H5P_DEFAULT),
                                     fmt::format("cannot open attribute {}", name));
  auto type = h5::own<h5::Type>(H5Aget_type(attr.get()), fmt::format("attribute {}", name));
  if (H5Tget_class(type.get()) != cls) {
    fail("attribute {} has type {}, expected {}", name, dtype_name(type.get()), expected);
  }
  auto space = h5::own<h5::Space>(H5Aget_space(attr.get()), fmt::format("attribute {}", name));
  const hssize_t count = H5Sget_simple_extent_npoints(space.get());
  if (count != 1) fail("attribute {} has {} values, expected 1", name, count);
  return {std::move(attr), std::move(type)};
}

// Integer attributes are accepted at any width and signedness (h5py writes int64 by default) and
// range-checked against uint32 instead.
uint32_t read_u32_attribute(hid_t file, const char* name) {
  auto [attr, type] = open_attribute(file, name, H5T_INTEGER, "an integer");
  int64_t value = 0;  // HDF5 clamps wider values into int64, which the range check then rejects
  h5::check(H5Aread(attr.get(), H5T_NATIVE_INT64, &value),
            fmt::format("cannot read attribute {}", name));
  if (value < 0 || value > std::numeric_limits<uint32_t>::max()) {
    fail("attribute {} = {} is out of range for uint32", name, value);
  }
  return static_cast<uint32_t>(value);
}

std::string read_string_attribute(hid_t file, const char* name) {
  auto [attr, type] = open_attribute(file, name, H5T_STRING, "string");
  const std::string what = fmt::format("cannot read attribute {}", name);
  if (h5::check(H5Tis_variable_str(type.get()), what) > 0) {
    char* text = nullptr;
    h5::check(H5Aread(attr.get(), type.get(), &text), what);
    std::string value = text != nullptr ? text : "";
    H5free_memory(text);
    return value;
  }
  std::string value(H5Tget_size(type.get()), '\0');
  h5::check(H5Aread(attr.get(), type.get(), value.data()), what);
  return value.substr(0, value.find('\0'));
}

// ---- columns ----

// Opens the 1-D dataset `name` and checks its dtype; returns an invalid handle when it is absent.
h5::Dataset open_column(hid_t file, const char* name, std::string_view dtype, hsize_t* length) {
  if (h5::check(H5Lexists(file, name, H5P_DEFAULT), fmt::format("cannot look up {}", name)) == 0) {
    return {};
  }
  auto dapl = h5::own<h5::Plist>(H5Pcreate(H5P_DATASET_ACCESS), "cannot create access list");
  // Preemption weight 0.75 (HDF5's default), not 1.0: in HDF5 1.10.8, 1.0 lets partly read chunks
  // pile up past the cache size, so memory grew with every chunk touched.
  h5::check(H5Pset_chunk_cache(dapl.get(), kChunkCacheSlots, kChunkCacheBytes, 0.75),
            "cannot set chunk cache");
  auto column =
      h5::own<h5::Dataset>(H5Dopen2(file, name, dapl.get()), fmt::format("cannot open {}", name));
  auto type = h5::own<h5::Type>(H5Dget_type(column.get()), fmt::format("{}: no type", name));
  const std::string actual = dtype_name(type.get());
  if (actual != dtype) fail("{} has dtype {}, expected {}", name, actual, dtype);
  auto space = h5::own<h5::Space>(H5Dget_space(column.get()), fmt::format("{}: no shape", name));
  const int rank = h5::check(H5Sget_simple_extent_ndims(space.get()), name);
  if (rank != 1) fail("{} has {} dimensions, expected 1", name, rank);
  h5::check(H5Sget_simple_extent_dims(space.get(), length, nullptr), name);
  return column;
}

h5::Dataset require_column(hid_t file, const char* name, std::string_view dtype, hsize_t* length) {
  auto column = open_column(file, name, dtype, length);
  if (!column.valid()) fail("missing dataset {}", name);
  return column;
}

// Reads elements [begin, end) of a 1-D column; the caller holds the lock and checked the range.
void read_slab(const h5::Dataset& column, const char* name, hid_t mem_type, uint64_t begin,
               uint64_t end, void* out) {
  if (begin == end) return;
  auto file_space = h5::own<h5::Space>(H5Dget_space(column.get()), name);
  h5::select_1d(file_space, begin, end - begin);
  auto mem_space = h5::space_1d(end - begin);
  h5::check(H5Dread(column.get(), mem_type, mem_space.get(), file_space.get(), H5P_DEFAULT, out),
            fmt::format("{}: cannot read [{}, {})", name, begin, end));
}

// Callers have checked the column against the file's storage, so `length` is backed by bytes on
// disk; a compressed column can still claim more than memory holds, which is named here.
template <typename T>
std::vector<T> read_column(const h5::Dataset& column, const char* name, hid_t mem_type,
                           hsize_t length) {
  std::vector<T> values;
  try {
    values.resize(length);
  } catch (const std::exception&) {  // std::bad_alloc or std::length_error
    fail("{} has {} entries, more than fit in memory", name, length);
  }
  read_slab(column, name, mem_type, 0, length, values.data());
  return values;
}

void validate_offsets(const std::vector<uint64_t>& offsets, uint64_t n_tokens) {
  const char* name = h5::kDocOffsets;
  if (offsets.empty()) fail("{} is empty, expected n_docs + 1 >= 1 entries", name);
  if (offsets[0] != 0) fail("{}: doc_offsets[0] = {}, expected 0", name, offsets[0]);
  for (size_t i = 1; i < offsets.size(); ++i) {
    if (offsets[i] < offsets[i - 1]) {
      fail("{}: not monotonic: doc_offsets[{}]={} < doc_offsets[{}]={}", name, i, offsets[i], i - 1,
           offsets[i - 1]);
    }
  }
  const size_t last = offsets.size() - 1;
  if (offsets[last] > n_tokens) {
    fail("{}: doc_offsets[{}] = {} is past the end of {} ({} tokens)", name, last, offsets[last],
         h5::kTokens, n_tokens);
  }
  if (offsets[last] < n_tokens) {
    fail("{}: doc_offsets[{}] = {} leaves tokens [{}, {}) of {} outside every document", name, last,
         offsets[last], offsets[last], n_tokens, h5::kTokens);
  }
}

void validate_difficulty(const std::vector<float>& difficulty, uint64_t n_docs) {
  if (difficulty.size() != n_docs) {
    fail("{} has {} entries, expected n_docs = {}", h5::kDifficulty, difficulty.size(), n_docs);
  }
  for (size_t i = 0; i < difficulty.size(); ++i) {
    if (!std::isfinite(difficulty[i])) {
      fail("{}[{}] = {} is not finite", h5::kDifficulty, i, difficulty[i]);
    }
  }
}

void check_range(uint64_t begin, uint64_t end, uint64_t size, const char* name) {
  if (begin > end) fail("{}: bad range [{}, {}): begin > end", name, begin, end);
  if (end > size) fail("{}: range [{}, {}) is past the end ({} entries)", name, begin, end, size);
}

}  // namespace

struct Dataset::Impl {
  std::string path;
  uint64_t file_bytes = 0;
  h5::File file;  // declared first so that it is closed after the columns
  h5::Dataset tokens;
  h5::Dataset answer_mask;  // invalid when the file has none
  uint64_t num_tokens = 0;
  uint32_t vocab_size = 0;
  uint32_t format_version = 0;
  std::string tokenizer;
  std::string tokenizer_model;
  std::vector<uint64_t> offsets;
  std::vector<float> difficulty;

  void load_attributes();
  void load_columns();
  uint64_t num_docs() const { return offsets.size() - 1; }
};

void Dataset::Impl::load_attributes() {
  const hid_t id = file.get();
  // The version comes first: a file from a newer format should fail on that, not on a symptom.
  format_version = read_u32_attribute(id, h5::kFormatVersion);
  if (format_version != kDatasetFormatVersion) {
    fail("format_version {} is not supported (this build reads {})", format_version,
         kDatasetFormatVersion);
  }
  vocab_size = read_u32_attribute(id, h5::kVocabSize);
  if (vocab_size == 0) fail("attribute vocab_size is 0");
  tokenizer = read_string_attribute(id, h5::kTokenizer);
  if (!h5::is_known_tokenizer(tokenizer)) {
    fail("attribute tokenizer = \"{}\", expected \"byte\" or \"sentencepiece\"", tokenizer);
  }
  if (has_attribute(id, h5::kTokenizerModel)) {
    const fs::path model =
        fs::path(path).parent_path() / read_string_attribute(id, h5::kTokenizerModel);
    std::error_code ec;
    const fs::path absolute = fs::absolute(model, ec);
    tokenizer_model = (ec ? model : absolute).lexically_normal().string();
  }
  if (has_attribute(id, h5::kMaxToken)) {
    const uint32_t max_token = read_u32_attribute(id, h5::kMaxToken);
    if (max_token >= vocab_size) fail("max_token {} >= vocab_size {}", max_token, vocab_size);
  }
}

void Dataset::Impl::load_columns() {
  const hid_t id = file.get();
  hsize_t n_tokens = 0;
  hsize_t n_offsets = 0;
  tokens = require_column(id, h5::kTokens, "uint32", &n_tokens);
  num_tokens = n_tokens;
  h5::check_fully_written(tokens.get(), h5::kTokens, num_tokens, sizeof(uint32_t), file_bytes);
  auto offsets_column = require_column(id, h5::kDocOffsets, "uint64", &n_offsets);
  h5::check_fully_written(offsets_column.get(), h5::kDocOffsets, n_offsets, sizeof(uint64_t), file_bytes);
  offsets = read_column<uint64_t>(offsets_column, h5::kDocOffsets, H5T_NATIVE_UINT64, n_offsets);
  validate_offsets(offsets, num_tokens);

  hsize_t n_difficulty = 0;
  auto difficulty_column = open_column(id, h5::kDifficulty, "float32", &n_difficulty);
  if (difficulty_column.valid()) {
    h5::check_fully_written(difficulty_column.get(), h5::kDifficulty, n_difficulty, sizeof(float), file_bytes);
    difficulty =
        read_column<float>(difficulty_column, h5::kDifficulty, H5T_NATIVE_FLOAT, n_difficulty);
    validate_difficulty(difficulty, num_docs());
  }
  hsize_t n_mask = 0;
  answer_mask = open_column(id, h5::kAnswerMask, "uint8", &n_mask);
  if (answer_mask.valid() && n_mask != num_tokens) {
    fail("{} has {} entries, expected n_tokens = {}", h5::kAnswerMask, n_mask, num_tokens);
  }
  if (answer_mask.valid()) {
    h5::check_fully_written(answer_mask.get(), h5::kAnswerMask, n_mask, sizeof(uint8_t), file_bytes);
  }
}

Dataset Dataset::open(const std::string& path) {
  return with_context(path, [&] {
    auto guard = h5::lock();
    auto impl = std::make_unique<Impl>();
    impl->path = path;
    impl->file = open_file(path);
    std::error_code ec;
    impl->file_bytes = fs::file_size(path, ec);
    if (ec) fail("cannot get the file size: {}", ec.message());
    impl->load_attributes();
    impl->load_columns();
    return Dataset(std::move(impl));
  });
}

Dataset::Dataset(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Dataset::Dataset(Dataset&&) noexcept = default;
Dataset& Dataset::operator=(Dataset&&) noexcept = default;
Dataset::~Dataset() = default;

const std::string& Dataset::path() const { return impl_->path; }
uint64_t Dataset::num_docs() const { return impl_->num_docs(); }
uint64_t Dataset::num_tokens() const { return impl_->num_tokens; }
uint32_t Dataset::vocab_size() const { return impl_->vocab_size; }
uint32_t Dataset::format_version() const { return impl_->format_version; }
const std::string& Dataset::tokenizer() const { return impl_->tokenizer; }
const std::string& Dataset::tokenizer_model() const { return impl_->tokenizer_model; }
std::span<const uint64_t> Dataset::doc_offsets() const { return impl_->offsets; }
std::span<const float> Dataset::difficulty() const { return impl_->difficulty; }
bool Dataset::has_answer_mask() const { return impl_->answer_mask.valid(); }

uint64_t Dataset::doc_length(uint64_t doc) const {
  if (doc >= num_docs()) {
    fail("{}: document {} out of range ({} documents)", impl_->path, doc, num_docs());
  }
  return impl_->offsets[doc + 1] - impl_->offsets[doc];
}

void Dataset::read_tokens(uint64_t begin, uint64_t end, uint32_t* out) const {
  with_context(impl_->path, [&] {
    check_range(begin, end, impl_->num_tokens, h5::kTokens);
    {
      auto guard = h5::lock();
      read_slab(impl_->tokens, h5::kTokens, H5T_NATIVE_UINT32, begin, end, out);
    }
    const uint32_t vocab = impl_->vocab_size;
    for (uint64_t i = 0; i < end - begin; ++i) {
      if (out[i] >= vocab)
        fail("{}[{}] = {} >= vocab_size {}", h5::kTokens, begin + i, out[i], vocab);
    }
  });
}

std::vector<uint32_t> Dataset::read_doc(uint64_t doc) const {
  std::vector<uint32_t> tokens(doc_length(doc));
  read_tokens(impl_->offsets[doc], impl_->offsets[doc + 1], tokens.data());
  return tokens;
}

void Dataset::read_answer_mask(uint64_t begin, uint64_t end, uint8_t* out) const {
  with_context(impl_->path, [&] {
    if (!has_answer_mask()) fail("no {} in this dataset", h5::kAnswerMask);
    check_range(begin, end, impl_->num_tokens, h5::kAnswerMask);
    {
      auto guard = h5::lock();
      read_slab(impl_->answer_mask, h5::kAnswerMask, H5T_NATIVE_UINT8, begin, end, out);
    }
    for (uint64_t i = 0; i < end - begin; ++i) {
      if (out[i] > 1) fail("{}[{}] = {}, expected 0 or 1", h5::kAnswerMask, begin + i, out[i]);
    }
  });
}

}  // namespace cadtrain::data
