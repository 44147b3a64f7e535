// Teacher top-K store: writer, validating reader and the dataset fingerprint (teacher_store.h).
#include "data/teacher_store.h"

#include <algorithm>     // std::min, std::clamp
#include <cmath>         // std::isnan
#include <filesystem>    // temporary file removal
#include <limits>        // attribute ranges
#include <string_view>   // names
#include <system_error>  // std::error_code
#include <vector>        // document tokens

#include "common/durable_file.h"  // publish_file
#include "common/error.h"         // fail, with_context
#include "common/hdf5_handles.h"  // handles, library lock
#include "data/dataset.h"         // the dataset a store belongs to

namespace cadtrain::data {
namespace {

namespace fs = std::filesystem;

constexpr const char* kIds = "/topk_ids";
constexpr const char* kLogprobs = "/topk_logprobs";
constexpr const char* kFormatVersionAttr = "format_version";
constexpr const char* kK = "k";
constexpr const char* kVocabSizeAttr = "vocab_size";
constexpr const char* kNTokens = "n_tokens";
constexpr const char* kNDocs = "n_docs";
constexpr const char* kFingerprint = "dataset_fingerprint";
constexpr const char* kTeacher = "teacher";

// Rows per HDF5 chunk: 4096 rows of K = 32 are 512 KiB per dataset, about one micro-batch.
constexpr uint64_t kChunkRows = 4096;

// FNV-1a over bytes.
struct Fnv {
  uint64_t h = 0xcbf29ce484222325ULL;
  void add(const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ULL;
  }
  template <typename T>
  void add(const T& value) {
    add(&value, sizeof(T));
  }
};

void write_u64_attribute(hid_t file, const char* name, uint64_t value) {
  const std::string what = fmt::format("cannot write attribute {}", name);
  auto space = h5::own<h5::Space>(H5Screate(H5S_SCALAR), what);
  auto attr = h5::own<h5::Attribute>(H5Acreate2(file, name, H5T_STD_U64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT),
                                     what);
  h5::check(H5Awrite(attr.get(), H5T_NATIVE_UINT64, &value), what);
}

void write_string_attribute(hid_t file, const char* name, const std::string& value) {
  const std::string what = fmt::format("cannot write attribute {}", name);
  auto type = h5::own<h5::Type>(H5Tcopy(H5T_C_S1), what);
  h5::check(H5Tset_size(type.get(), value.size() + 1), what);
  h5::check(H5Tset_cset(type.get(), H5T_CSET_UTF8), what);
  auto space = h5::own<h5::Space>(H5Screate(H5S_SCALAR), what);
  auto attr = h5::own<h5::Attribute>(H5Acreate2(file, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), what);
  h5::check(H5Awrite(attr.get(), type.get(), value.c_str()), what);
}

h5::Attribute open_attribute(hid_t file, const char* name, H5T_class_t cls) {
  if (h5::check(H5Aexists(file, name), fmt::format("cannot look up attribute {}", name)) == 0) {
    fail("missing attribute {}", name);
  }
  auto attr = h5::own<h5::Attribute>(H5Aopen(file, name, H5P_DEFAULT), fmt::format("cannot open attribute {}", name));
  auto type = h5::own<h5::Type>(H5Aget_type(attr.get()), fmt::format("attribute {}", name));
  if (H5Tget_class(type.get()) != cls) fail("attribute {} has the wrong type", name);
  return attr;
}

uint64_t read_u64_attribute(hid_t file, const char* name) {
  auto attr = open_attribute(file, name, H5T_INTEGER);
  uint64_t value = 0;
  h5::check(H5Aread(attr.get(), H5T_NATIVE_UINT64, &value), fmt::format("cannot read attribute {}", name));
  return value;
}

uint32_t read_u32_attribute(hid_t file, const char* name) {
  const uint64_t value = read_u64_attribute(file, name);
  if (value > std::numeric_limits<uint32_t>::max()) fail("attribute {} = {} is out of range", name, value);
  return static_cast<uint32_t>(value);
}

std::string read_string_attribute(hid_t file, const char* name) {
  auto attr = open_attribute(file, name, H5T_STRING);
  const std::string what = fmt::format("cannot read attribute {}", name);
  auto type = h5::own<h5::Type>(H5Aget_type(attr.get()), what);
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

// A chunked, extendible [rows, K] dataset with Fletcher-32 checksums.
h5::Dataset create_rows(hid_t file, const char* name, hid_t file_type, uint32_t k) {
  const hsize_t dims[2] = {0, k};
  const hsize_t max_dims[2] = {H5S_UNLIMITED, k};
  const hsize_t chunk[2] = {kChunkRows, k};
  auto space = h5::own<h5::Space>(H5Screate_simple(2, dims, max_dims), name);
  auto dcpl = h5::own<h5::Plist>(H5Pcreate(H5P_DATASET_CREATE), name);
  h5::check(H5Pset_chunk(dcpl.get(), 2, chunk), fmt::format("{}: cannot set chunk", name));
  h5::check(H5Pset_fletcher32(dcpl.get()), fmt::format("{}: cannot set Fletcher-32", name));
  return h5::own<h5::Dataset>(H5Dcreate2(file, name, file_type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
                              fmt::format("cannot create {}", name));
}

// Selects rows [begin, begin + n) of a [rows, K] file space and returns the matching memory space.
h5::Space select_rows(const h5::Space& file_space, uint64_t begin, uint64_t n, uint32_t k) {
  const hsize_t start[2] = {begin, 0};
  const hsize_t count[2] = {n, k};
  h5::check(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr),
            "cannot select rows");
  return h5::own<h5::Space>(H5Screate_simple(2, count, nullptr), "cannot create dataspace");
}

void append_rows(const h5::Dataset& ds, const char* name, hid_t mem_type, uint64_t offset, uint32_t k,
                 const void* data, uint64_t n) {
  const hsize_t new_dims[2] = {offset + n, k};
  h5::check(H5Dset_extent(ds.get(), new_dims), fmt::format("{}: cannot extend", name));
  auto file_space = h5::own<h5::Space>(H5Dget_space(ds.get()), name);
  auto mem_space = select_rows(file_space, offset, n, k);
  h5::check(H5Dwrite(ds.get(), mem_type, mem_space.get(), file_space.get(), H5P_DEFAULT, data),
            fmt::format("{}: cannot write rows [{}, {})", name, offset, offset + n));
}

h5::Dataset open_rows(hid_t file, const char* name, H5T_class_t cls, size_t size, const TeacherStoreInfo& info) {
  const std::string what = fmt::format("cannot open {}", name);
  if (h5::check(H5Lexists(file, name + 1, H5P_DEFAULT), what) == 0) fail("missing dataset {}", name);
  auto ds = h5::own<h5::Dataset>(H5Dopen2(file, name, H5P_DEFAULT), what);
  auto type = h5::own<h5::Type>(H5Dget_type(ds.get()), what);
  if (H5Tget_class(type.get()) != cls || H5Tget_size(type.get()) != size) {
    fail("{} has the wrong dtype (expected {})", name, cls == H5T_INTEGER ? "int32" : "float32");
  }
  auto space = h5::own<h5::Space>(H5Dget_space(ds.get()), what);
  hsize_t dims[2] = {0, 0};
  if (H5Sget_simple_extent_ndims(space.get()) != 2) fail("{} is not 2-D", name);
  h5::check(H5Sget_simple_extent_dims(space.get(), dims, nullptr), what);
  if (dims[0] != info.n_tokens || dims[1] != info.k) {
    fail("{} has shape [{}, {}], expected [n_tokens = {}, k = {}]", name, dims[0], dims[1], info.n_tokens, info.k);
  }
  return ds;
}

}  // namespace

uint64_t dataset_fingerprint(const Dataset& dataset) {
  Fnv f;
  f.add(dataset.num_docs());
  f.add(dataset.num_tokens());
  f.add(dataset.vocab_size());
  const auto offsets = dataset.doc_offsets();
  f.add(offsets.data(), offsets.size_bytes());
  const uint64_t n_docs = dataset.num_docs();
  const uint64_t sampled = std::min<uint64_t>(n_docs, 64);
  std::vector<uint32_t> tokens;
  for (uint64_t s = 0; s < sampled; ++s) {
    const uint64_t doc = s * n_docs / sampled;
    const uint64_t begin = offsets[doc];
    const uint64_t n = std::min<uint64_t>(offsets[doc + 1] - begin, 4096);
    tokens.resize(n);
    if (n > 0) dataset.read_tokens(begin, begin + n, tokens.data());
    f.add(tokens.data(), n * sizeof(uint32_t));
  }
  return f.h;
}

// ---- writer ----

struct TeacherStoreWriter::Impl {
  std::string path, tmp;
  TeacherStoreInfo info;
  h5::File file;
  h5::Dataset ids, logprobs;
  uint64_t written = 0;
  bool finished = false;

  ~Impl() {
    if (finished) return;
    {
      auto guard = h5::lock();
      ids.reset();
      logprobs.reset();
      file.reset();
    }
    std::error_code ec;
    fs::remove(tmp, ec);
  }
};

TeacherStoreWriter::TeacherStoreWriter(const std::string& path, const TeacherStoreInfo& info)
    : impl_(std::make_unique<Impl>()) {
  impl_->path = path;
  impl_->tmp = path + ".tmp";
  impl_->info = info;
  with_context(path, [&] {
    if (info.k == 0 || info.k > info.vocab_size) fail("k = {} must be in [1, vocab_size = {}]", info.k, info.vocab_size);
    auto guard = h5::lock();
    auto fapl = h5::file_access_list();
    h5::check(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V110, H5F_LIBVER_V110), "cannot set format version bounds");
    impl_->file = h5::own<h5::File>(H5Fcreate(impl_->tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()),
                                    fmt::format("cannot create {}", impl_->tmp));
    impl_->ids = create_rows(impl_->file.get(), kIds, H5T_STD_I32LE, info.k);
    impl_->logprobs = create_rows(impl_->file.get(), kLogprobs, H5T_IEEE_F32LE, info.k);
  });
}

TeacherStoreWriter::~TeacherStoreWriter() = default;

uint64_t TeacherStoreWriter::rows_written() const { return impl_->written; }

void TeacherStoreWriter::append(const int32_t* ids, const float* logprobs, uint64_t n) {
  with_context(impl_->path, [&] {
    Impl& w = *impl_;
    if (w.finished) fail("already finished");
    if (w.written + n > w.info.n_tokens) {
      fail("{} rows would exceed the dataset's {} tokens", w.written + n, w.info.n_tokens);
    }
    const uint64_t k = w.info.k;
    for (uint64_t i = 0; i < n * k; ++i) {
      if (ids[i] < 0 || static_cast<uint32_t>(ids[i]) >= w.info.vocab_size) {
        fail("row {}: id {} outside the vocabulary of {}", w.written + i / k, ids[i], w.info.vocab_size);
      }
      if (std::isnan(logprobs[i]) || logprobs[i] > 1e-3f) {
        fail("row {}: log-probability {} is not <= 0", w.written + i / k, logprobs[i]);
      }
    }
    if (n == 0) return;
    auto guard = h5::lock();
    append_rows(w.ids, kIds, H5T_NATIVE_INT32, w.written, w.info.k, ids, n);
    append_rows(w.logprobs, kLogprobs, H5T_NATIVE_FLOAT, w.written, w.info.k, logprobs, n);
    w.written += n;
  });
}

void TeacherStoreWriter::finish() {
  with_context(impl_->path, [&] {
    Impl& w = *impl_;
    if (w.finished) fail("already finished");
    if (w.written != w.info.n_tokens) fail("{} rows written, the dataset has {} tokens", w.written, w.info.n_tokens);
    {
      auto guard = h5::lock();
      const hid_t id = w.file.get();
      h5::write_u32_attribute(id, kFormatVersionAttr, kTeacherStoreFormatVersion);
      h5::write_u32_attribute(id, kK, w.info.k);
      h5::write_u32_attribute(id, kVocabSizeAttr, w.info.vocab_size);
      write_u64_attribute(id, kNTokens, w.info.n_tokens);
      write_u64_attribute(id, kNDocs, w.info.n_docs);
      write_u64_attribute(id, kFingerprint, w.info.dataset_fingerprint);
      write_string_attribute(id, kTeacher, w.info.teacher);
      w.ids.close(fmt::format("cannot close {}", kIds));
      w.logprobs.close(fmt::format("cannot close {}", kLogprobs));
      w.file.close(fmt::format("cannot close {}", w.tmp));
    }
    publish_file(w.tmp, w.path);
    w.finished = true;
  });
}

// ---- reader ----

struct TeacherStore::Impl {
  std::string path;
  TeacherStoreInfo info;
  h5::File file;
  h5::Dataset ids, logprobs;
};

TeacherStore::TeacherStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TeacherStore::TeacherStore(TeacherStore&&) noexcept = default;
TeacherStore::~TeacherStore() = default;

TeacherStore TeacherStore::open(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  with_context(path, [&] {
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) fail("no such teacher store (make one with `cadtrain distill prepare`)");
    auto guard = h5::lock();
    if (h5::check(H5Fis_hdf5(path.c_str()), "cannot read file") == 0) fail("not an HDF5 file");
    auto fapl = h5::file_access_list();
    impl->file = h5::own<h5::File>(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()), "cannot open as HDF5");
    const hid_t id = impl->file.get();
    const uint32_t version = read_u32_attribute(id, kFormatVersionAttr);
    if (version != kTeacherStoreFormatVersion) {
      fail("format_version {} is not supported (this build reads {})", version, kTeacherStoreFormatVersion);
    }
    TeacherStoreInfo& info = impl->info;
    info.k = read_u32_attribute(id, kK);
    info.vocab_size = read_u32_attribute(id, kVocabSizeAttr);
    info.n_tokens = read_u64_attribute(id, kNTokens);
    info.n_docs = read_u64_attribute(id, kNDocs);
    info.dataset_fingerprint = read_u64_attribute(id, kFingerprint);
    info.teacher = read_string_attribute(id, kTeacher);
    if (info.k == 0 || info.k > info.vocab_size) fail("k = {} is not in [1, vocab_size = {}]", info.k, info.vocab_size);
    impl->ids = open_rows(id, kIds, H5T_INTEGER, sizeof(int32_t), info);
    impl->logprobs = open_rows(id, kLogprobs, H5T_FLOAT, sizeof(float), info);
  });
  return TeacherStore(std::move(impl));
}

const std::string& TeacherStore::path() const { return impl_->path; }
const TeacherStoreInfo& TeacherStore::info() const { return impl_->info; }

void TeacherStore::check_matches(const Dataset& dataset, uint32_t vocab_size, uint32_t k) const {
  const TeacherStoreInfo& info = impl_->info;
  const std::string& store = impl_->path;
  if (k != 0 && info.k != k) {
    fail("teacher store {} holds top-{} rows, the run asks for k = {}: prepare it again with --k {}", store, info.k, k,
         k);
  }
  if (info.vocab_size != vocab_size) {
    fail("teacher store {} comes from a teacher with vocab_size {}, the student has {}: teacher and student must "
         "share one vocabulary",
         store, info.vocab_size, vocab_size);
  }
  const uint64_t fingerprint = dataset_fingerprint(dataset);
  if (info.n_tokens != dataset.num_tokens() || info.n_docs != dataset.num_docs() ||
      info.dataset_fingerprint != fingerprint) {
    fail("teacher store {} was prepared from another dataset ({} documents, {} tokens, fingerprint {:016x}) than {} "
         "({} documents, {} tokens, fingerprint {:016x}): run `cadtrain distill prepare --data {}` again",
         store, info.n_docs, info.n_tokens, info.dataset_fingerprint, dataset.path(), dataset.num_docs(),
         dataset.num_tokens(), fingerprint, dataset.path());
  }
}

void TeacherStore::read(uint64_t begin, uint64_t n, int32_t* ids, float* logprobs) const {
  with_context(impl_->path, [&] {
    const TeacherStoreInfo& info = impl_->info;
    if (begin > info.n_tokens || n > info.n_tokens - begin) {
      fail("rows [{}, {}) are outside the store's {} rows", begin, begin + n, info.n_tokens);
    }
    if (n == 0) return;
    {
      auto guard = h5::lock();
      auto ids_space = h5::own<h5::Space>(H5Dget_space(impl_->ids.get()), kIds);
      auto mem = select_rows(ids_space, begin, n, info.k);
      h5::check(H5Dread(impl_->ids.get(), H5T_NATIVE_INT32, mem.get(), ids_space.get(), H5P_DEFAULT, ids),
                fmt::format("cannot read {} rows [{}, {})", kIds, begin, begin + n));
      auto lp_space = h5::own<h5::Space>(H5Dget_space(impl_->logprobs.get()), kLogprobs);
      auto mem2 = select_rows(lp_space, begin, n, info.k);
      h5::check(H5Dread(impl_->logprobs.get(), H5T_NATIVE_FLOAT, mem2.get(), lp_space.get(), H5P_DEFAULT, logprobs),
                fmt::format("cannot read {} rows [{}, {})", kLogprobs, begin, begin + n));
    }
    for (uint64_t i = 0; i < n * info.k; ++i) {
      if (ids[i] < 0 || static_cast<uint32_t>(ids[i]) >= info.vocab_size) {
        fail("{} row {}: id {} outside the vocabulary of {}", kIds, begin + i / info.k, ids[i], info.vocab_size);
      }
    }
  });
}

}  // namespace cadtrain::data
