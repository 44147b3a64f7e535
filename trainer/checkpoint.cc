// Checkpoints: HDF5 files written to "<name>.tmp", fsynced and renamed into place, then pruned; and
// validating loads (format in trainer/checkpoint.h).
#include "trainer/checkpoint.h"


#include <algorithm>     // std::sort, std::clamp
#include <charconv>      // std::from_chars: the step in a file name
#include <cstdint>       // steps, shapes
#include <filesystem>    // directories, rename, remove
#include <limits>        // overflow of element counts
#include <optional>      // a file name that is not a checkpoint's
#include <set>           // duplicate tensor names
#include <string>        // paths and messages
#include <string_view>   // file name parsing
#include <system_error>  // std::error_code messages
#include <utility>       // std::pair
#include <vector>        // tensor lists, shapes

#include "common/checksum.h"      // Crc64 over the metadata
#include "common/durable_file.h"  // publish_file, errno_text
#include "common/error.h"         // cadtrain::Error, fail(), with_context()
#include "common/hdf5_handles.h"  // handles, library lock, HDF5 error messages
#include "common/hdf5_storage.h"  // check_fully_written: no unwritten chunks read as fill values

namespace cadtrain::trainer {
namespace {

namespace fs = std::filesystem;
using Group = h5::Handle<H5Gclose>;

// 2 added run_id and metadata_crc64 (version 1 files are read without them); 3 stores /config
// as uint8 bytes instead of a variable-length string, whose data sits in HDF5's global heap
// without a checksum: a damaged heap entry there made HDF5 loop forever (found by fuzzing).
constexpr uint32_t kFormatVersion = 3;
constexpr uint32_t kOldestReadableVersion = 1;

constexpr const char* kParams = "params";
constexpr const char* kAdamM = "adam_m";
constexpr const char* kAdamV = "adam_v";
constexpr const char* kConfig = "config";
constexpr const char* kStep = "step";
constexpr const char* kFormatVersionAttr = "format_version";
constexpr const char* kDataEpoch = "data_epoch";
constexpr const char* kDataDocCursor = "data_doc_cursor";
constexpr const char* kDataBatchInWindow = "data_batch_in_window";
constexpr const char* kDataMicroBatches = "data_micro_batches";
constexpr const char* kRunId = "run_id";
constexpr const char* kMetadataCrc = "metadata_crc64";

// 4 Mi floats (16 MiB) per chunk: large enough for full-speed I/O, far under HDF5's 4 GiB limit,
// and each chunk carries its own Fletcher-32 checksum so that a flipped bit fails the load.
constexpr uint64_t kChunkElements = uint64_t{1} << 22;

constexpr std::string_view kPrefix = "step_";
constexpr std::string_view kSuffix = ".h5";
constexpr std::string_view kTempSuffix = ".h5.tmp";

// ---- names and shapes ----

std::string checkpoint_name(uint64_t step) { return fmt::format("step_{:08d}.h5", step); }

// The step of "step_<digits>.h5"; nothing for any other name (temporary files included).
std::optional<uint64_t> parse_step(std::string_view name) {
  if (!name.starts_with(kPrefix) || !name.ends_with(kSuffix)) return std::nullopt;
  const std::string_view digits =
      name.substr(kPrefix.size(), name.size() - kPrefix.size() - kSuffix.size());
  uint64_t step = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), step);
  if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size()) {
    return std::nullopt;
  }
  return step;
}

bool is_temp_file(std::string_view name) {
  return name.starts_with(kPrefix) && name.ends_with(kTempSuffix);
}

template <typename T>
std::string shape_text(const std::vector<T>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

// prod(shape), after checking every dimension is >= 0 and the product fits.
uint64_t element_count(const std::string& what, const std::vector<int64_t>& shape) {
  uint64_t count = 1;
  for (const int64_t dim : shape) {
    if (dim < 0) fail("tensor {} has a negative dimension in shape {}", what, shape_text(shape));
    const auto d = static_cast<uint64_t>(dim);
    if (d != 0 && count > std::numeric_limits<uint64_t>::max() / 4 / d) {
      fail("tensor {} with shape {} is too large", what, shape_text(shape));
    }
    count *= d;
  }
  return count;
}

// Names become HDF5 link names, where "/" would silently create subgroups.
void validate_tensors(const char* group, const std::vector<TensorRef>& tensors) {
  std::set<std::string> seen;
  for (const TensorRef& tensor : tensors) {
    const std::string what = fmt::format("{}/{}", group, tensor.name);
    if (tensor.name.empty() || tensor.name == "." || tensor.name.find('/') != std::string::npos) {
      fail("tensor name \"{}\" in {} is empty or contains '/'", tensor.name, group);
    }
    if (!seen.insert(tensor.name).second) fail("tensor {} is listed twice", what);
    if (element_count(what, tensor.shape) > 0 && tensor.data == nullptr) {
      fail("tensor {} has no data buffer", what);
    }
  }
}

void validate_all(const CheckpointTensors& tensors) {
  validate_tensors(kParams, tensors.params);
  validate_tensors(kAdamM, tensors.adam_m);
  validate_tensors(kAdamV, tensors.adam_v);
}

// ---- writing ----

void write_u64_attribute(hid_t file, const char* name, const uint64_t* values, hsize_t n) {
  const std::string what = fmt::format("cannot write attribute {}", name);
  auto space = n == 1 ? h5::own<h5::Space>(H5Screate(H5S_SCALAR), what) : h5::space_1d(n);
  auto attr = h5::own<h5::Attribute>(
      H5Acreate2(file, name, H5T_STD_U64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT), what);
  h5::check(H5Awrite(attr.get(), H5T_NATIVE_UINT64, values), what);
}

// Variable-length UTF-8, which h5py reads back as str.
h5::Type string_type(const std::string& what) {
  auto type = h5::own<h5::Type>(H5Tcopy(H5T_C_S1), what);
  h5::check(H5Tset_size(type.get(), H5T_VARIABLE), what);
  h5::check(H5Tset_cset(type.get(), H5T_CSET_UTF8), what);
  return type;
}

void write_config_bytes(hid_t file, const std::string& text) {
  const std::string what = fmt::format("cannot write /{}", kConfig);
  const hsize_t n = text.size();
  auto space = h5::own<h5::Space>(H5Screate_simple(1, &n, nullptr), what);
  auto dataset = h5::own<h5::Dataset>(
      H5Dcreate2(file, kConfig, H5T_STD_U8LE, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), what);
  if (n > 0) h5::check(H5Dwrite(dataset.get(), H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, text.data()), what);
  dataset.close(what);
}

// The checksum of everything a resume takes from the file besides the tensors (which carry
// Fletcher-32 checksums per chunk): a flipped byte in the saved config or the data position
// must fail the load, not train at a wrong learning rate.
uint64_t metadata_checksum(uint64_t version, const TrainingState& state) {
  Crc64 crc;
  crc.update("cadtrain checkpoint metadata");
  for (const uint64_t v : {version, state.step, state.data_position.epoch, state.data_position.doc_cursor,
                           state.data_position.batch_in_window, state.data_position.micro_batches, state.run_id}) {
    crc.update_u64(v);
  }
  crc.update_u64(state.config_text.size());
  crc.update(state.config_text);
  return crc.value();
}

void write_state(hid_t file, const TrainingState& state) {
  const data::PackerPosition& pos = state.data_position;
  h5::write_u32_attribute(file, kFormatVersionAttr, kFormatVersion);
  write_u64_attribute(file, kStep, &state.step, 1);
  write_u64_attribute(file, kDataEpoch, &pos.epoch, 1);
  write_u64_attribute(file, kDataDocCursor, &pos.doc_cursor, 1);
  write_u64_attribute(file, kDataBatchInWindow, &pos.batch_in_window, 1);
  write_u64_attribute(file, kDataMicroBatches, &pos.micro_batches, 1);
  write_u64_attribute(file, kRunId, &state.run_id, 1);
  const uint64_t crc = metadata_checksum(kFormatVersion, state);
  write_u64_attribute(file, kMetadataCrc, &crc, 1);
  write_config_bytes(file, state.config_text);
}

std::vector<hsize_t> dims_of(const std::vector<int64_t>& shape) {
  return std::vector<hsize_t>(shape.begin(), shape.end());
}

// A shape of [] is a scalar, as numpy and h5py have it.
h5::Space tensor_space(const std::vector<hsize_t>& dims, const std::string& what) {
  if (dims.empty()) return h5::own<h5::Space>(H5Screate(H5S_SCALAR), what);
  const int rank = static_cast<int>(dims.size());
  return h5::own<h5::Space>(H5Screate_simple(rank, dims.data(), nullptr), what);
}

// Scalars and empty tensors cannot be chunked and hold nothing to checksum: they stay contiguous.
h5::Plist tensor_layout(const std::vector<hsize_t>& dims, uint64_t elements,
                        const std::string& what) {
  auto dcpl = h5::own<h5::Plist>(H5Pcreate(H5P_DATASET_CREATE), what);
  if (dims.empty() || elements == 0) return dcpl;
  std::vector<hsize_t> chunk(dims.size());
  uint64_t inner = 1;  // elements of one chunk below the dimension being sized
  for (size_t d = dims.size(); d-- > 0;) {
    chunk[d] = std::clamp<hsize_t>(kChunkElements / inner, 1, dims[d]);
    inner *= chunk[d];
  }
  h5::check(H5Pset_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data()), what);
  h5::check(H5Pset_fletcher32(dcpl.get()), what);
  return dcpl;
}

void write_tensor(hid_t group, const char* group_name, const TensorRef& tensor) {
  const std::string what = fmt::format("cannot write tensor {}/{}", group_name, tensor.name);
  const uint64_t elements = element_count(tensor.name, tensor.shape);
  const std::vector<hsize_t> dims = dims_of(tensor.shape);
  auto space = tensor_space(dims, what);
  auto dcpl = tensor_layout(dims, elements, what);
  auto dataset = h5::own<h5::Dataset>(H5Dcreate2(group, tensor.name.c_str(), H5T_IEEE_F32LE,
                                                 space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
                                      what);
  if (elements > 0) {
    // Same-representation conversion is a plain copy, so NaN payloads and denormals survive.
    h5::check(H5Dwrite(dataset.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, tensor.data),
              what);
  }
  dataset.close(what);  // flushes the chunk cache: a full disk shows up here
}

void write_group(hid_t file, const char* name, const std::vector<TensorRef>& tensors) {
  const std::string what = fmt::format("cannot create group {}", name);
  auto group = h5::own<Group>(H5Gcreate2(file, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), what);
  for (const TensorRef& tensor : tensors) write_tensor(group.get(), name, tensor);
  group.close(what);
}

void write_file(const std::string& path, const TrainingState& state,
                const CheckpointTensors& tensors) {
  auto guard = h5::lock();
  auto fapl = h5::file_access_list();
  // The 1.10 format checksums all metadata, so a damaged header is reported, not misread.
  h5::check(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V110, H5F_LIBVER_V110),
            "cannot set format version bounds");
  auto file = h5::own<h5::File>(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()),
                                fmt::format("cannot create {}", path));
  write_state(file.get(), state);
  write_group(file.get(), kParams, tensors.params);
  write_group(file.get(), kAdamM, tensors.adam_m);
  write_group(file.get(), kAdamV, tensors.adam_v);
  file.close(fmt::format("cannot close {}", path));
}

// The checkpoints in dir, newest step first.
std::vector<std::pair<uint64_t, fs::path>> list_checkpoints(const fs::path& dir) {
  std::vector<std::pair<uint64_t, fs::path>> found;
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (ec) {
    if (ec == std::errc::no_such_file_or_directory) return found;
    fail("cannot list {}: {}", dir.string(), ec.message());
  }
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    const auto step = parse_step(it->path().filename().string());
    std::error_code stat_ec;  // a file pruned by someone else meanwhile is simply not listed
    if (step && it->is_regular_file(stat_ec)) found.emplace_back(*step, it->path());
  }
  if (ec) fail("cannot list {}: {}", dir.string(), ec.message());
  std::sort(found.begin(), found.end(),
            [](const auto& a, const auto& b) { return a.first > b.first; });
  return found;
}

TrainingState read_state_of(const std::string& path);

// Failing to delete an old file costs disk space, not correctness, and the new checkpoint is
// already safe: removal errors are ignored rather than reported as a failed save. Only this
// run's checkpoints count and are deleted; one whose run cannot be read is kept.
void prune(const fs::path& dir, uint32_t keep_last, const fs::path& just_written, uint64_t run_id) {
  size_t kept = 0;
  for (const auto& [step, path] : list_checkpoints(dir)) {
    if (path != just_written) {
      uint64_t owner = 0;
      try {
        owner = read_state_of(path.string()).run_id;
      } catch (const Error&) {
        continue;
      }
      if (run_id != 0 && owner != 0 && owner != run_id) continue;
    }
    if (++kept <= keep_last || path == just_written) continue;
    std::error_code ec;
    fs::remove(path, ec);
  }
  // Any temporary file left now was abandoned by a writer that died: ours is already renamed.
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec); !ec && it != fs::directory_iterator();
       it.increment(ec)) {
    std::error_code remove_ec;
    if (is_temp_file(it->path().filename().string())) fs::remove(it->path(), remove_ec);
  }
}

// ---- reading ----

h5::File open_file(const std::string& path) {
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (status.type() == fs::file_type::not_found) fail("no such file");
  if (ec) fail("cannot access: {}", ec.message());
  if (status.type() != fs::file_type::regular) fail("not a regular file");
  if (h5::check(H5Fis_hdf5(path.c_str()), "cannot read file") == 0) fail("not an HDF5 file");
  auto fapl = h5::file_access_list();
  return h5::own<h5::File>(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()),
                           "cannot open as HDF5");
}

// Reads an unsigned integer attribute of exactly n values.
void read_u64_attribute(hid_t file, const char* name, uint64_t* out, hssize_t n) {
  if (h5::check(H5Aexists(file, name), fmt::format("cannot look up attribute {}", name)) == 0) {
    fail("missing attribute {}", name);
  }
  auto attr = h5::own<h5::Attribute>(H5Aopen(file, name, H5P_DEFAULT),
                                     fmt::format("cannot open attribute {}", name));
  auto type = h5::own<h5::Type>(H5Aget_type(attr.get()), fmt::format("attribute {}", name));
  if (H5Tget_class(type.get()) != H5T_INTEGER) fail("attribute {} is not an integer", name);
  auto space = h5::own<h5::Space>(H5Aget_space(attr.get()), fmt::format("attribute {}", name));
  const hssize_t count = H5Sget_simple_extent_npoints(space.get());
  if (count != n) fail("attribute {} has {} values, expected {}", name, count, n);
  h5::check(H5Aread(attr.get(), H5T_NATIVE_UINT64, out),
            fmt::format("cannot read attribute {}", name));
}

uint64_t read_u64(hid_t file, const char* name) {
  uint64_t value = 0;
  read_u64_attribute(file, name, &value, 1);
  return value;
}

uint64_t file_size_of(hid_t object);

std::string read_config_bytes(hid_t file) {
  const std::string what = fmt::format("cannot read /{}", kConfig);
  if (h5::check(H5Lexists(file, kConfig, H5P_DEFAULT), what) == 0) fail("missing /{}", kConfig);
  auto dataset = h5::own<h5::Dataset>(H5Dopen2(file, kConfig, H5P_DEFAULT), what);
  auto type = h5::own<h5::Type>(H5Dget_type(dataset.get()), what);
  if (H5Tget_class(type.get()) != H5T_INTEGER || H5Tget_size(type.get()) != 1) fail("/{} is not uint8 bytes", kConfig);
  auto space = h5::own<h5::Space>(H5Dget_space(dataset.get()), what);
  if (h5::check(H5Sget_simple_extent_ndims(space.get()), what) != 1) fail("/{} is not 1-D", kConfig);
  hsize_t n = 0;
  h5::check(H5Sget_simple_extent_dims(space.get(), &n, nullptr), what);
  h5::check_fully_written(dataset.get(), "/config", n, 1, file_size_of(file));
  std::string text(n, '\0');
  if (n > 0) h5::check(H5Dread(dataset.get(), H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, text.data()), what);
  return text;
}

std::string read_config_string(hid_t file) {
  const std::string what = fmt::format("cannot read /{}", kConfig);
  if (h5::check(H5Lexists(file, kConfig, H5P_DEFAULT), what) == 0) fail("missing /{}", kConfig);
  auto dataset = h5::own<h5::Dataset>(H5Dopen2(file, kConfig, H5P_DEFAULT), what);
  auto stored = h5::own<h5::Type>(H5Dget_type(dataset.get()), what);
  if (H5Tget_class(stored.get()) != H5T_STRING ||
      h5::check(H5Tis_variable_str(stored.get()), what) == 0) {
    fail("/{} is not a variable-length string", kConfig);
  }
  auto space = h5::own<h5::Space>(H5Dget_space(dataset.get()), what);
  if (H5Sget_simple_extent_npoints(space.get()) != 1) fail("/{} is not a single string", kConfig);
  auto type = string_type(what);
  char* text = nullptr;
  h5::check(H5Dread(dataset.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, &text), what);
  std::string value = text != nullptr ? text : "";
  H5free_memory(text);
  return value;
}

TrainingState read_state(hid_t file) {
  uint64_t version = 0;
  read_u64_attribute(file, kFormatVersionAttr, &version, 1);
  if (version < kOldestReadableVersion || version > kFormatVersion) {
    fail("format_version {} is not supported (this build reads {} to {})", version, kOldestReadableVersion,
         kFormatVersion);
  }
  TrainingState state;
  state.step = read_u64(file, kStep);
  state.data_position.epoch = read_u64(file, kDataEpoch);
  state.data_position.doc_cursor = read_u64(file, kDataDocCursor);
  state.data_position.batch_in_window = read_u64(file, kDataBatchInWindow);
  state.data_position.micro_batches = read_u64(file, kDataMicroBatches);
  state.config_text = version >= 3 ? read_config_bytes(file) : read_config_string(file);
  if (version >= 2) {
    state.run_id = read_u64(file, kRunId);
    const uint64_t stored = read_u64(file, kMetadataCrc);
    const uint64_t computed = metadata_checksum(version, state);
    if (stored != computed) {
      fail("metadata checksum mismatch (stored {:016x}, computed {:016x}): the step, data position, run id or "
           "saved config was altered after writing",
           stored, computed);
    }
  }
  return state;
}

uint64_t file_size_of(hid_t object) {
  const hid_t file = H5Iget_file_id(object);
  hsize_t size = 0;
  const herr_t status = file >= 0 ? H5Fget_filesize(file, &size) : -1;
  if (file >= 0) H5Fclose(file);
  h5::check(status, "cannot get the file size");
  return size;
}

std::vector<hsize_t> stored_shape(hid_t dataset, const std::string& what) {
  auto space = h5::own<h5::Space>(H5Dget_space(dataset), what);
  const int rank = h5::check(H5Sget_simple_extent_ndims(space.get()), what);
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  h5::check(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr), what);
  return dims;
}

void read_tensor(hid_t group, const char* group_name, const TensorRef& tensor) {
  const std::string name = fmt::format("{}/{}", group_name, tensor.name);
  const std::string what = fmt::format("cannot read tensor {}", name);
  if (h5::check(H5Lexists(group, tensor.name.c_str(), H5P_DEFAULT), what) == 0) {
    fail("tensor {} is missing", name);
  }
  auto dataset = h5::own<h5::Dataset>(H5Dopen2(group, tensor.name.c_str(), H5P_DEFAULT), what);
  auto type = h5::own<h5::Type>(H5Dget_type(dataset.get()), what);
  if (H5Tget_class(type.get()) != H5T_FLOAT || H5Tget_size(type.get()) != sizeof(float)) {
    fail("tensor {} is not float32", name);
  }
  const std::vector<hsize_t> dims = stored_shape(dataset.get(), what);
  if (dims != dims_of(tensor.shape)) {
    fail("tensor {} has shape {}, the model expects {}", name, shape_text(dims),
         shape_text(tensor.shape));
  }
  const uint64_t elements = element_count(name, tensor.shape);
  if (elements == 0) return;
  h5::check_fully_written(dataset.get(), name, elements, sizeof(float), file_size_of(dataset.get()));
  h5::check(H5Dread(dataset.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, tensor.data),
            what);
}

// Reads every float32 tensor of group `name` (absent: nothing) into a scratch buffer, so that
// each chunk's checksum is verified.
void verify_group(hid_t file, const char* name) {
  if (h5::check(H5Lexists(file, name, H5P_DEFAULT), fmt::format("cannot look up group {}", name)) == 0) return;
  auto group = h5::own<Group>(H5Gopen2(file, name, H5P_DEFAULT), fmt::format("cannot open group {}", name));
  H5G_info_t info{};
  h5::check(H5Gget_info(group.get(), &info), fmt::format("cannot list group {}", name));
  const uint64_t file_bytes = file_size_of(file);
  std::vector<float> scratch;
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    const std::string what = fmt::format("cannot list group {}", name);
    const ssize_t length = h5::check(static_cast<int>(H5Lget_name_by_idx(group.get(), ".", H5_INDEX_NAME,
                                                                           H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT)),
                                     what);
    std::string link(static_cast<size_t>(length), '\0');
    h5::check(static_cast<int>(H5Lget_name_by_idx(group.get(), ".", H5_INDEX_NAME, H5_ITER_INC, i, link.data(),
                                                  link.size() + 1, H5P_DEFAULT)),
              what);
    const std::string tensor = fmt::format("{}/{}", name, link);
    const std::string read_what = fmt::format("cannot read tensor {}", tensor);
    auto dataset = h5::own<h5::Dataset>(H5Dopen2(group.get(), link.c_str(), H5P_DEFAULT), read_what);
    auto type = h5::own<h5::Type>(H5Dget_type(dataset.get()), read_what);
    if (H5Tget_class(type.get()) != H5T_FLOAT || H5Tget_size(type.get()) != sizeof(float)) {
      fail("tensor {} is not float32", tensor);
    }
    uint64_t elements = 1;
    for (const hsize_t d : stored_shape(dataset.get(), read_what)) {
      if (d != 0 && elements > std::numeric_limits<uint64_t>::max() / d) fail("tensor {} is too large", tensor);
      elements *= d;
    }
    if (elements == 0) continue;
    h5::check_fully_written(dataset.get(), tensor, elements, sizeof(float), file_bytes);
    scratch.resize(elements);
    h5::check(H5Dread(dataset.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, scratch.data()), read_what);
  }
}

void read_group(hid_t file, const char* name, const std::vector<TensorRef>& tensors) {
  if (tensors.empty()) return;
  const std::string what = fmt::format("cannot open group {}", name);
  if (h5::check(H5Lexists(file, name, H5P_DEFAULT), what) == 0) {
    fail("tensor {}/{} is missing (the file has no group {})", name, tensors.front().name, name);
  }
  auto group = h5::own<Group>(H5Gopen2(file, name, H5P_DEFAULT), what);
  for (const TensorRef& tensor : tensors) read_tensor(group.get(), name, tensor);
}

TrainingState read_state_of(const std::string& path) {
  auto guard = h5::lock();
  auto file = open_file(path);
  return read_state(file.get());
}

}  // namespace

std::string save_checkpoint(const std::string& dir, const TrainingState& state,
                            const CheckpointTensors& tensors, uint32_t keep_last) {
  return with_context(fmt::format("{}: cannot save checkpoint of step {}", dir, state.step), [&] {
    if (keep_last == 0) fail("keep_last must be >= 1");
    validate_all(tensors);
    const fs::path directory = dir.empty() ? fs::path(".") : fs::path(dir);
    std::error_code ec;
    fs::create_directories(directory, ec);
    if (ec) fail("cannot create the directory: {}", ec.message());
    const fs::path final_path = directory / checkpoint_name(state.step);
    const std::string tmp = final_path.string() + ".tmp";
    try {
      write_file(tmp, state, tensors);
      publish_file(tmp, final_path.string());
    } catch (...) {
      std::error_code remove_ec;
      fs::remove(tmp, remove_ec);
      throw;
    }
    prune(directory, keep_last, final_path, state.run_id);
    return final_path.string();
  });
}

std::string latest_checkpoint(const std::string& dir) {
  const auto checkpoints = list_checkpoints(dir.empty() ? fs::path(".") : fs::path(dir));
  return checkpoints.empty() ? std::string() : checkpoints.front().second.string();
}

TrainingState load_checkpoint(const std::string& path, const CheckpointTensors& tensors) {
  return with_context(path, [&] {
    validate_all(tensors);
    auto guard = h5::lock();
    auto file = open_file(path);
    TrainingState state = read_state(file.get());
    read_group(file.get(), kParams, tensors.params);
    read_group(file.get(), kAdamM, tensors.adam_m);
    read_group(file.get(), kAdamV, tensors.adam_v);
    return state;
  });
}

TrainingState read_checkpoint_state(const std::string& path) {
  return with_context(path, [&] { return read_state_of(path); });
}

TrainingState verify_checkpoint(const std::string& path) {
  return with_context(path, [&] {
    auto guard = h5::lock();
    auto file = open_file(path);
    TrainingState state = read_state(file.get());
    if (h5::check(H5Lexists(file.get(), kParams, H5P_DEFAULT), "cannot look up group params") == 0) {
      fail("missing group {}", kParams);
    }
    for (const char* group : {kParams, kAdamM, kAdamV}) verify_group(file.get(), group);
    return state;
  });
}

// ---- streaming access (merge and other tools) ----

struct CheckpointReader::Impl {
  std::string path;
  h5::File file;
  TrainingState state;

  // The group, or an invalid handle when the file has none of that name.
  Group open_group(const char* group) const {
    const std::string what = fmt::format("cannot open group {}", group);
    if (h5::check(H5Lexists(file.get(), group, H5P_DEFAULT), what) == 0) return Group();
    return h5::own<Group>(H5Gopen2(file.get(), group, H5P_DEFAULT), what);
  }
};

CheckpointReader::CheckpointReader(const std::string& path) : impl_(std::make_unique<Impl>()) {
  impl_->path = path;
  with_context(path, [&] {
    auto guard = h5::lock();
    impl_->file = open_file(path);
    impl_->state = read_state(impl_->file.get());
  });
}

CheckpointReader::~CheckpointReader() = default;
CheckpointReader::CheckpointReader(CheckpointReader&&) noexcept = default;

const std::string& CheckpointReader::path() const { return impl_->path; }
const TrainingState& CheckpointReader::state() const { return impl_->state; }

std::vector<std::string> CheckpointReader::tensor_names(const char* group) const {
  return with_context(impl_->path, [&] {
    auto guard = h5::lock();
    std::vector<std::string> names;
    const Group g = impl_->open_group(group);
    if (!g.valid()) return names;
    const std::string what = fmt::format("cannot list group {}", group);
    H5G_info_t info;
    h5::check(H5Gget_info(g.get(), &info), what);
    for (hsize_t i = 0; i < info.nlinks; ++i) {
      const ssize_t size = H5Lget_name_by_idx(g.get(), ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
      h5::check(static_cast<int>(size < 0 ? -1 : 0), what);
      std::string name(static_cast<size_t>(size), '\0');
      h5::check(static_cast<int>(H5Lget_name_by_idx(g.get(), ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(),
                                                    name.size() + 1, H5P_DEFAULT) < 0 ? -1 : 0),
                what);
      names.push_back(std::move(name));
    }
    return names;
  });
}

std::vector<int64_t> CheckpointReader::shape(const char* group, const std::string& name) const {
  return with_context(impl_->path, [&] {
    auto guard = h5::lock();
    const std::string full = fmt::format("{}/{}", group, name);
    const Group g = impl_->open_group(group);
    const std::string what = fmt::format("cannot read tensor {}", full);
    if (!g.valid() || h5::check(H5Lexists(g.get(), name.c_str(), H5P_DEFAULT), what) == 0) {
      fail("tensor {} is missing", full);
    }
    auto dataset = h5::own<h5::Dataset>(H5Dopen2(g.get(), name.c_str(), H5P_DEFAULT), what);
    const std::vector<hsize_t> dims = stored_shape(dataset.get(), what);
    return std::vector<int64_t>(dims.begin(), dims.end());
  });
}

void CheckpointReader::read(const char* group, const TensorRef& tensor) const {
  with_context(impl_->path, [&] {
    auto guard = h5::lock();
    const Group g = impl_->open_group(group);
    if (!g.valid()) fail("tensor {}/{} is missing (the file has no group {})", group, tensor.name, group);
    read_tensor(g.get(), group, tensor);
  });
}

struct CheckpointWriter::Impl {
  std::string path;
  std::string tmp;
  h5::File file;
  std::vector<std::pair<std::string, Group>> groups;
  std::set<std::string> written;  // "group/name"
  bool committed = false;

  hid_t group(const char* name) {
    for (const auto& [n, g] : groups) {
      if (n == name) return g.get();
    }
    const std::string what = fmt::format("{}: cannot create group {}", tmp, name);
    groups.emplace_back(name, h5::own<Group>(H5Gcreate2(file.get(), name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), what));
    return groups.back().second.get();
  }
};

CheckpointWriter::CheckpointWriter(const std::string& path, const TrainingState& state)
    : impl_(std::make_unique<Impl>()) {
  impl_->path = path;
  impl_->tmp = path + ".tmp";
  with_context(fmt::format("cannot write checkpoint {}", path), [&] {
    const fs::path parent = fs::path(path).parent_path();
    std::error_code ec;
    if (!parent.empty()) fs::create_directories(parent, ec);
    if (ec) fail("cannot create the directory: {}", ec.message());
    auto guard = h5::lock();
    auto fapl = h5::file_access_list();
    h5::check(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V110, H5F_LIBVER_V110),
              "cannot set format version bounds");
    impl_->file = h5::own<h5::File>(H5Fcreate(impl_->tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()),
                                    fmt::format("cannot create {}", impl_->tmp));
    write_state(impl_->file.get(), state);
  });
}

CheckpointWriter::~CheckpointWriter() {
  if (impl_ == nullptr || impl_->committed) return;
  {
    auto guard = h5::lock();
    impl_->groups.clear();
    impl_->file.reset();
  }
  std::error_code ec;
  fs::remove(impl_->tmp, ec);
}

void CheckpointWriter::write(const char* group, const TensorRef& tensor) {
  with_context(fmt::format("cannot write checkpoint {}", impl_->path), [&] {
    if (impl_->committed) fail("already committed");
    validate_tensors(group, {tensor});
    if (!impl_->written.insert(fmt::format("{}/{}", group, tensor.name)).second) {
      fail("tensor {}/{} is written twice", group, tensor.name);
    }
    auto guard = h5::lock();
    write_tensor(impl_->group(group), group, tensor);
  });
}

void CheckpointWriter::commit() {
  with_context(fmt::format("cannot write checkpoint {}", impl_->path), [&] {
    if (impl_->committed) fail("already committed");
    {
      auto guard = h5::lock();
      for (auto& [name, g] : impl_->groups) g.close(fmt::format("cannot close group {}", name));
      impl_->groups.clear();
      impl_->file.close(fmt::format("cannot close {}", impl_->tmp));
    }
    publish_file(impl_->tmp, impl_->path);
    impl_->committed = true;
  });
}

std::vector<std::string> list_checkpoint_files(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& [step, path] : list_checkpoints(dir.empty() ? fs::path(".") : fs::path(dir))) {
    out.push_back(path.string());
  }
  return out;
}

}  // namespace cadtrain::trainer
