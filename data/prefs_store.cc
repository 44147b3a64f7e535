// Preference store: structure checks, writer and loading reader (prefs_store.h).
#include "data/prefs_store.h"

#include <algorithm>     // std::min, std::max
#include <cmath>         // std::isfinite, std::isnan
#include <filesystem>    // temporary file removal, existence checks
#include <limits>        // quiet NaN, attribute ranges
#include <system_error>  // std::error_code

#include "common/durable_file.h"  // publish_file
#include "common/error.h"         // fail, with_context
#include "common/hdf5_handles.h"  // handles, library lock
#include "common/hdf5_storage.h"  // check_fully_written

namespace cadtrain::data {
namespace {

namespace fs = std::filesystem;

constexpr const char* kTokensName = "/tokens";
constexpr const char* kSegmentOffsets = "/segment_offsets";
constexpr const char* kExampleSegments = "/example_segments";
constexpr const char* kSourceLine = "/source_line";
constexpr const char* kRefLogps = "/ref_logps";
constexpr const char* kSource = "source";
constexpr const char* kReference = "reference";
constexpr hsize_t kChunk = 1 << 16;

// Throws naming the first structural problem: offsets, spans, token ids, reference values.
void validate(const PrefsData& d) {
  const PrefsStoreInfo& info = d.info;
  if (info.vocab_size == 0) fail("vocab_size is 0");
  if (!h5::is_known_tokenizer(info.tokenizer)) fail("unknown tokenizer \"{}\"", info.tokenizer);
  const auto& so = d.segment_offsets;
  const auto& es = d.example_segments;
  if (so.empty() || so.front() != 0) fail("{} must start with 0", kSegmentOffsets);
  if (so.back() != d.tokens.size()) {
    fail("{} ends at {} but {} holds {} tokens", kSegmentOffsets, so.back(), kTokensName, d.tokens.size());
  }
  for (size_t s = 1; s < so.size(); ++s) {
    if (so[s] <= so[s - 1]) fail("{}: segment {} is empty or offsets decrease ({} then {})", kSegmentOffsets, s - 1,
                                so[s - 1], so[s]);
  }
  const uint64_t n_segments = so.size() - 1;
  if (es.empty() || es.front() != 0) fail("{} must start with 0", kExampleSegments);
  if (es.back() != n_segments) {
    fail("{} ends at segment {} but there are {} segments", kExampleSegments, es.back(), n_segments);
  }
  for (size_t e = 1; e < es.size(); ++e) {
    if (es[e] < es[e - 1] + 3) {
      fail("{}: example {} has {} segments (needs a prompt, a chosen and at least one rejected response)",
           kExampleSegments, e - 1, es[e] - std::min(es[e], es[e - 1]));
    }
  }
  if (d.source_line.size() != es.size() - 1) {
    fail("{} has {} entries for {} examples", kSourceLine, d.source_line.size(), es.size() - 1);
  }
  for (size_t i = 0; i < d.tokens.size(); ++i) {
    if (d.tokens[i] >= info.vocab_size) fail("{}[{}] = {} >= vocab_size {}", kTokensName, i, d.tokens[i], info.vocab_size);
  }
  if (!d.ref_logps.empty()) {
    if (d.ref_logps.size() != n_segments) {
      fail("{} has {} entries for {} segments", kRefLogps, d.ref_logps.size(), n_segments);
    }
    if (info.reference.empty()) fail("{} is present without the attribute {}", kRefLogps, kReference);
    for (size_t e = 0; e + 1 < es.size(); ++e) {
      for (uint64_t s = es[e] + 1; s < es[e + 1]; ++s) {
        const double v = d.ref_logps[s];
        if (!std::isfinite(v) || v > 0) {
          fail("{}: example {} (line {}) segment {} has reference log-probability {} (must be finite and <= 0)",
               kRefLogps, e, d.source_line[e], s - es[e], v);
        }
      }
    }
  }
}

void write_string_attribute(hid_t file, const char* name, const std::string& value) {
  const std::string what = fmt::format("cannot write attribute {}", name);
  auto type = h5::own<h5::Type>(H5Tcopy(H5T_C_S1), what);
  h5::check(H5Tset_size(type.get(), value.size() + 1), what);
  auto space = h5::own<h5::Space>(H5Screate(H5S_SCALAR), what);
  auto attr = h5::own<h5::Attribute>(H5Acreate2(file, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), what);
  h5::check(H5Awrite(attr.get(), type.get(), value.c_str()), what);
}

std::string read_string_attribute(hid_t file, const char* name) {
  const std::string what = fmt::format("cannot read attribute {}", name);
  if (h5::check(H5Aexists(file, name), what) == 0) fail("missing attribute {}", name);
  auto attr = h5::own<h5::Attribute>(H5Aopen(file, name, H5P_DEFAULT), what);
  auto type = h5::own<h5::Type>(H5Aget_type(attr.get()), what);
  if (H5Tget_class(type.get()) != H5T_STRING) fail("attribute {} is not a string", name);
  if (h5::check(H5Tis_variable_str(type.get()), what) > 0) fail("attribute {} is a variable-length string", name);
  std::string value(H5Tget_size(type.get()), '\0');
  h5::check(H5Aread(attr.get(), type.get(), value.data()), what);
  return value.substr(0, value.find('\0'));
}

uint32_t read_u32_attribute(hid_t file, const char* name) {
  const std::string what = fmt::format("cannot read attribute {}", name);
  if (h5::check(H5Aexists(file, name), what) == 0) fail("missing attribute {}", name);
  auto attr = h5::own<h5::Attribute>(H5Aopen(file, name, H5P_DEFAULT), what);
  auto type = h5::own<h5::Type>(H5Aget_type(attr.get()), what);
  if (H5Tget_class(type.get()) != H5T_INTEGER) fail("attribute {} is not an integer", name);
  uint64_t value = 0;
  h5::check(H5Aread(attr.get(), H5T_NATIVE_UINT64, &value), what);
  if (value > std::numeric_limits<uint32_t>::max()) fail("attribute {} = {} is out of range", name, value);
  return static_cast<uint32_t>(value);
}

template <typename T>
void write_column(hid_t file, const char* name, hid_t file_type, hid_t mem_type, const std::vector<T>& values) {
  const hsize_t n = values.size();
  auto space = h5::space_1d(n);
  auto dcpl = h5::own<h5::Plist>(H5Pcreate(H5P_DATASET_CREATE), name);
  const hsize_t chunk = std::max<hsize_t>(1, std::min(n, kChunk));
  h5::check(H5Pset_chunk(dcpl.get(), 1, &chunk), fmt::format("{}: cannot set chunk", name));
  h5::check(H5Pset_fletcher32(dcpl.get()), fmt::format("{}: cannot set Fletcher-32", name));
  auto ds = h5::own<h5::Dataset>(H5Dcreate2(file, name, file_type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
                                 fmt::format("cannot create {}", name));
  if (n > 0) {
    h5::check(H5Dwrite(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()),
              fmt::format("cannot write {}", name));
  }
  ds.close(fmt::format("cannot close {}", name));
}

// Reads a whole 1-D column after checking its class, element size and that it is really stored.
template <typename T>
std::vector<T> read_column(hid_t file, const char* name, H5T_class_t cls, hid_t mem_type, uint64_t file_bytes) {
  const std::string what = fmt::format("cannot open {}", name);
  if (h5::check(H5Lexists(file, name + 1, H5P_DEFAULT), what) == 0) fail("missing dataset {}", name);
  auto ds = h5::own<h5::Dataset>(H5Dopen2(file, name, H5P_DEFAULT), what);
  auto type = h5::own<h5::Type>(H5Dget_type(ds.get()), what);
  if (H5Tget_class(type.get()) != cls || H5Tget_size(type.get()) != sizeof(T)) {
    fail("{} has the wrong dtype (expected {}{})", name, cls == H5T_FLOAT ? "float" : "int", 8 * sizeof(T));
  }
  auto space = h5::own<h5::Space>(H5Dget_space(ds.get()), what);
  if (H5Sget_simple_extent_ndims(space.get()) != 1) fail("{} is not 1-D", name);
  hsize_t n = 0;
  h5::check(H5Sget_simple_extent_dims(space.get(), &n, nullptr), what);
  h5::check_fully_written(ds.get(), name, n, sizeof(T), file_bytes);
  std::vector<T> out(n);
  if (n > 0) {
    h5::check(H5Dread(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()),
              fmt::format("cannot read {}", name));
  }
  return out;
}

}  // namespace

void PrefsData::add_example(std::span<const uint32_t> prompt, std::span<const uint32_t> chosen,
                            const std::vector<std::vector<uint32_t>>& rejected, uint64_t line) {
  CADTRAIN_CHECK(!prompt.empty() && !chosen.empty() && !rejected.empty(), "incomplete preference example (line {})",
                 line);
  const auto add_segment = [&](std::span<const uint32_t> t) {
    CADTRAIN_CHECK(!t.empty(), "empty response (line {})", line);
    tokens.insert(tokens.end(), t.begin(), t.end());
    segment_offsets.push_back(tokens.size());
  };
  add_segment(prompt);
  add_segment(chosen);
  for (const auto& r : rejected) add_segment(r);
  example_segments.push_back(segment_offsets.size() - 1);
  source_line.push_back(line);
}

void write_prefs_store(const std::string& path, const PrefsData& d) {
  with_context(path, [&] {
    validate(d);
    const std::string tmp = path + ".tmp";
    {
      auto guard = h5::lock();
      auto fapl = h5::file_access_list();
      h5::check(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V110, H5F_LIBVER_V110), "cannot set format bounds");
      auto file = h5::own<h5::File>(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()),
                                    fmt::format("cannot create {}", tmp));
      try {
        const hid_t id = file.get();
        write_column(id, kTokensName, H5T_STD_U32LE, H5T_NATIVE_UINT32, d.tokens);
        write_column(id, kSegmentOffsets, H5T_STD_U64LE, H5T_NATIVE_UINT64, d.segment_offsets);
        write_column(id, kExampleSegments, H5T_STD_U64LE, H5T_NATIVE_UINT64, d.example_segments);
        write_column(id, kSourceLine, H5T_STD_U64LE, H5T_NATIVE_UINT64, d.source_line);
        if (!d.ref_logps.empty()) {
          write_column(id, kRefLogps, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, d.ref_logps);
          write_string_attribute(id, kReference, d.info.reference);
        }
        h5::write_u32_attribute(id, h5::kFormatVersion, kPrefsStoreFormatVersion);
        h5::write_u32_attribute(id, h5::kVocabSize, d.info.vocab_size);
        write_string_attribute(id, h5::kTokenizer, d.info.tokenizer);
        write_string_attribute(id, h5::kTokenizerModel, d.info.tokenizer_model);
        write_string_attribute(id, kSource, d.info.source);
        file.close(fmt::format("cannot close {}", tmp));
      } catch (...) {
        file.reset();
        std::error_code ec;
        fs::remove(tmp, ec);
        throw;
      }
    }
    publish_file(tmp, path);
  });
}

PrefsStore PrefsStore::open(const std::string& path) {
  PrefsStore store;
  store.path_ = path;
  with_context(path, [&] {
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) fail("no such preference store (make one with `cadtrain data prefs`)");
    const uint64_t file_bytes = fs::file_size(path, ec);
    auto guard = h5::lock();
    if (h5::check(H5Fis_hdf5(path.c_str()), "cannot read file") == 0) fail("not an HDF5 file");
    auto fapl = h5::file_access_list();
    auto file = h5::own<h5::File>(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()), "cannot open as HDF5");
    const hid_t id = file.get();
    const uint32_t version = read_u32_attribute(id, h5::kFormatVersion);
    if (version != kPrefsStoreFormatVersion) {
      fail("format_version {} is not supported (this build reads {})", version, kPrefsStoreFormatVersion);
    }
    PrefsData& d = store.data_;
    d.info.vocab_size = read_u32_attribute(id, h5::kVocabSize);
    d.info.tokenizer = read_string_attribute(id, h5::kTokenizer);
    d.info.tokenizer_model = read_string_attribute(id, h5::kTokenizerModel);
    d.info.source = read_string_attribute(id, kSource);
    d.tokens = read_column<uint32_t>(id, kTokensName, H5T_INTEGER, H5T_NATIVE_UINT32, file_bytes);
    d.segment_offsets = read_column<uint64_t>(id, kSegmentOffsets, H5T_INTEGER, H5T_NATIVE_UINT64, file_bytes);
    d.example_segments = read_column<uint64_t>(id, kExampleSegments, H5T_INTEGER, H5T_NATIVE_UINT64, file_bytes);
    d.source_line = read_column<uint64_t>(id, kSourceLine, H5T_INTEGER, H5T_NATIVE_UINT64, file_bytes);
    if (h5::check(H5Lexists(id, kRefLogps + 1, H5P_DEFAULT), "cannot look up /ref_logps") > 0) {
      d.ref_logps = read_column<double>(id, kRefLogps, H5T_FLOAT, H5T_NATIVE_DOUBLE, file_bytes);
      d.info.reference = read_string_attribute(id, kReference);
    }
    validate(d);
  });
  return store;
}

PrefsExample PrefsStore::example(uint64_t e) const {
  CADTRAIN_CHECK(e < num_examples(), "example {} of {} in {}", e, num_examples(), path_);
  const PrefsData& d = data_;
  const auto segment = [&](uint64_t s) {
    return std::span<const uint32_t>(d.tokens).subspan(d.segment_offsets[s], d.segment_offsets[s + 1] - d.segment_offsets[s]);
  };
  const uint64_t first = d.example_segments[e], end = d.example_segments[e + 1];
  PrefsExample ex;
  ex.prompt = segment(first);
  ex.chosen = segment(first + 1);
  for (uint64_t s = first + 2; s < end; ++s) ex.rejected.push_back(segment(s));
  ex.source_line = d.source_line[e];
  if (!d.ref_logps.empty()) {
    ex.ref_chosen = d.ref_logps[first + 1];
    for (uint64_t s = first + 2; s < end; ++s) ex.ref_rejected.push_back(d.ref_logps[s]);
  }
  return ex;
}

uint64_t PrefsStore::longest_sequence() const {
  uint64_t longest = 0;
  for (uint64_t e = 0; e < num_examples(); ++e) {
    const PrefsExample ex = example(e);
    uint64_t response = ex.chosen.size();
    for (const auto& r : ex.rejected) response = std::max<uint64_t>(response, r.size());
    longest = std::max<uint64_t>(longest, ex.prompt.size() + response);
  }
  return longest;
}

}  // namespace cadtrain::data
