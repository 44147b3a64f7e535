// Tests of the HDF5 dataset reader and writer: round trips, and one real damaged file per kind of
// corruption, each expected to fail with a message naming the file and the fault.
#include <gtest/gtest.h>
#include <unistd.h>  // getpid: unique temp directories when test binaries run in parallel

#include <hdf5.h>  // HDF5 C API, to craft files the writer would refuse to produce

#include <algorithm>   // std::search
#include <cstdint>     // token ids
#include <cstring>     // std::memcpy
#include <filesystem>  // temp directories, truncation
#include <fstream>     // raw byte access to flip a byte
#include <iterator>    // std::istreambuf_iterator
#include <string>      // paths and messages
#include <thread>      // concurrent reads
#include <vector>      // documents

#include "common/error.h"  // cadtrain::Error
#include "data/dataset.h"  // the code under test

namespace cadtrain::data {
namespace {

namespace fs = std::filesystem;

constexpr uint32_t kVocab = 50257;

struct Doc {
  std::vector<uint32_t> tokens;
  float difficulty = 0.0f;
  std::vector<uint8_t> mask;
};

// Documents of assorted lengths, including empty ones, with contents derived from the position so
// that any misplaced read shows.
std::vector<Doc> sample_docs() {
  std::vector<Doc> docs;
  uint32_t next = 0;
  for (const size_t length : {5, 0, 17, 3, 0, 40, 1, 0}) {
    Doc doc;
    doc.difficulty = 0.25f * static_cast<float>(docs.size());
    for (size_t i = 0; i < length; ++i) {
      doc.tokens.push_back((next * 7919u) % kVocab);
      doc.mask.push_back(static_cast<uint8_t>(next % 3 == 0));
      ++next;
    }
    docs.push_back(std::move(doc));
  }
  return docs;
}

DatasetWriterOptions sample_options() {
  DatasetWriterOptions options;
  options.vocab_size = kVocab;
  options.with_difficulty = true;
  options.with_answer_mask = true;
  options.chunk_tokens = 8;  // several chunks even for a small file
  return options;
}

void write_docs(const std::string& path, const std::vector<Doc>& docs,
                const DatasetWriterOptions& options) {
  DatasetWriter writer(path, options);
  for (const Doc& doc : docs) {
    writer.add_document(
        doc.tokens, doc.difficulty,
        options.with_answer_mask ? std::span<const uint8_t>(doc.mask) : std::span<const uint8_t>());
  }
  writer.finish();
}

std::vector<uint32_t> concat_tokens(const std::vector<Doc>& docs) {
  std::vector<uint32_t> all;
  for (const Doc& doc : docs) all.insert(all.end(), doc.tokens.begin(), doc.tokens.end());
  return all;
}

// Passes when fn throws cadtrain::Error whose message contains every one of `parts`.
template <typename Fn>
::testing::AssertionResult throws_error(Fn&& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string message = e.what();
    for (const std::string& part : parts) {
      if (message.find(part) == std::string::npos) {
        return ::testing::AssertionFailure()
               << "message \"" << message << "\" lacks \"" << part << "\"";
      }
    }
    return ::testing::AssertionSuccess();
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw a non-cadtrain exception: " << e.what();
  }
  return ::testing::AssertionFailure() << "did not throw";
}

// Opens an existing file read-write so that a test can damage it through HDF5 itself (data
// written this way carries valid checksums, so the reader's own checks must catch it).
class RawFile {
 public:
  explicit RawFile(const std::string& path)
      : id_(H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT)) {
    EXPECT_GE(id_, 0) << "cannot open " << path;
  }
  RawFile(const RawFile&) = delete;
  RawFile& operator=(const RawFile&) = delete;
  ~RawFile() {
    if (id_ >= 0) H5Fclose(id_);
  }

  void remove(const char* name) { EXPECT_GE(H5Ldelete(id_, name, H5P_DEFAULT), 0) << name; }
  void remove_attribute(const char* name) { EXPECT_GE(H5Adelete(id_, name), 0) << name; }

  // Replaces dataset `name` by a contiguous one of `dims` holding `values`.
  template <typename T>
  void replace(const char* name, hid_t file_type, hid_t mem_type, const std::vector<T>& values,
               std::vector<hsize_t> dims = {}) {
    if (H5Lexists(id_, name, H5P_DEFAULT) > 0) remove(name);
    if (dims.empty()) dims = {values.size()};
    const hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
    const hid_t dset =
        H5Dcreate2(id_, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    EXPECT_GE(dset, 0) << name;
    if (!values.empty()) {
      EXPECT_GE(H5Dwrite(dset, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), 0);
    }
    H5Dclose(dset);
    H5Sclose(space);
  }

  // Overwrites element `index` of a 1-D dataset.
  template <typename T>
  void overwrite(const char* name, hid_t mem_type, hsize_t index, T value) {
    const hid_t dset = H5Dopen2(id_, name, H5P_DEFAULT);
    const hid_t file_space = H5Dget_space(dset);
    const hsize_t one = 1;
    H5Sselect_hyperslab(file_space, H5S_SELECT_SET, &index, nullptr, &one, nullptr);
    const hid_t mem_space = H5Screate_simple(1, &one, nullptr);
    EXPECT_GE(H5Dwrite(dset, mem_type, mem_space, file_space, H5P_DEFAULT, &value), 0) << name;
    H5Sclose(mem_space);
    H5Sclose(file_space);
    H5Dclose(dset);
  }

  template <typename T>
  void set_attribute(const char* name, hid_t file_type, hid_t mem_type, T value) {
    if (H5Aexists(id_, name) > 0) remove_attribute(name);
    const hid_t space = H5Screate(H5S_SCALAR);
    const hid_t attr = H5Acreate2(id_, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT);
    EXPECT_GE(H5Awrite(attr, mem_type, &value), 0) << name;
    H5Aclose(attr);
    H5Sclose(space);
  }

  // A variable-length string, as h5py writes a Python str.
  void set_vlen_string_attribute(const char* name, const std::string& value) {
    if (H5Aexists(id_, name) > 0) remove_attribute(name);
    const hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, H5T_VARIABLE);
    H5Tset_cset(type, H5T_CSET_UTF8);
    const hid_t space = H5Screate(H5S_SCALAR);
    const hid_t attr = H5Acreate2(id_, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    const char* text = value.c_str();
    EXPECT_GE(H5Awrite(attr, type, &text), 0) << name;
    H5Aclose(attr);
    H5Sclose(space);
    H5Tclose(type);
  }

  // A fixed-length string, as older tools and h5py's np.bytes_ write them.
  void set_fixed_string_attribute(const char* name, const std::string& value) {
    if (H5Aexists(id_, name) > 0) remove_attribute(name);
    const hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, value.size());
    H5Tset_strpad(type, H5T_STR_NULLPAD);
    const hid_t space = H5Screate(H5S_SCALAR);
    const hid_t attr = H5Acreate2(id_, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    EXPECT_GE(H5Awrite(attr, type, value.data()), 0) << name;
    H5Aclose(attr);
    H5Sclose(space);
    H5Tclose(type);
  }

 private:
  hid_t id_;
};

std::vector<char> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

class DatasetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path(::testing::TempDir()) /
           fmt::format("cadtrain_dataset_{}_{}", info->name(), getpid());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // A valid sample file, for tests that then damage it.
  std::string good_file(const std::string& name = "good.h5") const {
    const std::string file = path(name);
    write_docs(file, sample_docs(), sample_options());
    return file;
  }

  fs::path dir_;
};

TEST_F(DatasetTest, RoundTrip) {
  const std::vector<Doc> docs = sample_docs();
  DatasetWriterOptions options = sample_options();
  options.tokenizer_model = "tok.model";
  const std::string file = path("rt.h5");
  {
    DatasetWriter writer(file, options);
    for (const Doc& doc : docs) writer.add_document(doc.tokens, doc.difficulty, doc.mask);
    EXPECT_EQ(writer.num_docs(), docs.size());
    EXPECT_EQ(writer.num_tokens(), concat_tokens(docs).size());
    writer.finish();
  }
  EXPECT_FALSE(fs::exists(file + ".tmp"));

  const Dataset ds = Dataset::open(file);
  const std::vector<uint32_t> all = concat_tokens(docs);
  EXPECT_EQ(ds.path(), file);
  EXPECT_EQ(ds.num_docs(), docs.size());
  EXPECT_EQ(ds.num_tokens(), all.size());
  EXPECT_EQ(ds.vocab_size(), kVocab);
  EXPECT_EQ(ds.format_version(), kDatasetFormatVersion);
  EXPECT_EQ(ds.tokenizer(), "byte");
  EXPECT_EQ(ds.tokenizer_model(), fs::absolute(dir_ / "tok.model").lexically_normal().string());
  ASSERT_TRUE(ds.has_answer_mask());
  ASSERT_EQ(ds.doc_offsets().size(), docs.size() + 1);
  ASSERT_EQ(ds.difficulty().size(), docs.size());
  for (size_t d = 0; d < docs.size(); ++d) {
    EXPECT_EQ(ds.doc_length(d), docs[d].tokens.size()) << d;
    EXPECT_EQ(ds.read_doc(d), docs[d].tokens) << d;
    EXPECT_EQ(ds.difficulty()[d], docs[d].difficulty) << d;
    std::vector<uint8_t> mask(docs[d].tokens.size());
    ds.read_answer_mask(ds.doc_offsets()[d], ds.doc_offsets()[d + 1], mask.data());
    EXPECT_EQ(mask, docs[d].mask) << d;
  }
  // Every range, so that reads start and end inside, at and across the 8-token chunk boundaries.
  for (uint64_t begin = 0; begin <= all.size(); ++begin) {
    for (uint64_t end = begin; end <= all.size(); ++end) {
      std::vector<uint32_t> got(end - begin);
      ds.read_tokens(begin, end, got.data());
      ASSERT_TRUE(std::equal(got.begin(), got.end(), all.begin() + static_cast<ptrdiff_t>(begin)))
          << "[" << begin << ", " << end << ")";
    }
  }
}

TEST_F(DatasetTest, WithoutOptionalColumns) {
  std::vector<Doc> docs = sample_docs();
  DatasetWriterOptions options;
  options.vocab_size = kVocab;
  options.tokenizer = "sentencepiece";
  const std::string file = path("plain.h5");
  write_docs(file, docs, options);  // default chunk_tokens: larger than the whole file
  const Dataset ds = Dataset::open(file);
  EXPECT_EQ(ds.tokenizer(), "sentencepiece");
  EXPECT_EQ(ds.tokenizer_model(), "");
  EXPECT_TRUE(ds.difficulty().empty());
  EXPECT_FALSE(ds.has_answer_mask());
  for (size_t d = 0; d < docs.size(); ++d) EXPECT_EQ(ds.read_doc(d), docs[d].tokens);
  uint8_t mask = 0;
  EXPECT_TRUE(throws_error([&] { ds.read_answer_mask(0, 1, &mask); }, {file, "no /answer_mask"}));
}

TEST_F(DatasetTest, EmptyDataset) {
  const std::string file = path("empty.h5");
  write_docs(file, {}, sample_options());
  const Dataset ds = Dataset::open(file);
  EXPECT_EQ(ds.num_docs(), 0u);
  EXPECT_EQ(ds.num_tokens(), 0u);
  EXPECT_EQ(ds.doc_offsets().size(), 1u);
  EXPECT_TRUE(ds.difficulty().empty());
  ds.read_tokens(0, 0, nullptr);
}

// Files written by other tools (h5py defaults): contiguous datasets, int64 attributes,
// variable-length and fixed-length strings.
TEST_F(DatasetTest, ReadsContiguousFileWithInt64Attributes) {
  const std::string file = path("foreign.h5");
  const hid_t id = H5Fcreate(file.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(id, 0);
  H5Fclose(id);
  {
    RawFile raw(file);
    raw.replace<uint32_t>("/tokens", H5T_STD_U32LE, H5T_NATIVE_UINT32, {1, 2, 3, 4});
    raw.replace<uint64_t>("/doc_offsets", H5T_STD_U64LE, H5T_NATIVE_UINT64, {0, 1, 4});
    raw.set_attribute<int64_t>("vocab_size", H5T_STD_I64LE, H5T_NATIVE_INT64, 5);
    raw.set_attribute<int64_t>("format_version", H5T_STD_I64LE, H5T_NATIVE_INT64, 1);
    raw.set_vlen_string_attribute("tokenizer", "byte");
    raw.set_fixed_string_attribute("tokenizer_model", "../models/tok.model");
  }
  const Dataset ds = Dataset::open(file);
  EXPECT_EQ(ds.tokenizer(), "byte");
  EXPECT_EQ(ds.tokenizer_model(),
            fs::absolute(dir_.parent_path() / "models" / "tok.model").lexically_normal().string());
  EXPECT_EQ(ds.vocab_size(), 5u);
  EXPECT_EQ(ds.read_doc(1), (std::vector<uint32_t>{2, 3, 4}));
}

TEST_F(DatasetTest, RangeErrorsNameTheFile) {
  const std::string file = good_file();
  const Dataset ds = Dataset::open(file);
  uint32_t token = 0;
  const uint64_t n = ds.num_tokens();
  EXPECT_TRUE(throws_error([&] { ds.read_tokens(3, 2, &token); }, {file, "begin > end"}));
  EXPECT_TRUE(throws_error([&] { ds.read_tokens(n, n + 1, &token); },
                           {file, fmt::format("is past the end ({} entries)", n)}));
  EXPECT_TRUE(throws_error([&] { ds.read_doc(ds.num_docs()); },
                           {file, fmt::format("document {} out of range", ds.num_docs())}));
  EXPECT_TRUE(throws_error([&] { ds.doc_length(1u << 30); }, {file, "out of range"}));
}

TEST_F(DatasetTest, MissingTokens) {
  const std::string file = good_file();
  RawFile(file).remove("/tokens");
  EXPECT_TRUE(throws_error([&] { Dataset::open(file); }, {file + ": missing dataset /tokens"}));
}

TEST_F(DatasetTest, MissingDocOffsets) {
  const std::string file = good_file();
  RawFile(file).remove("/doc_offsets");
  EXPECT_TRUE(
      throws_error([&] { Dataset::open(file); }, {file + ": missing dataset /doc_offsets"}));
}

TEST_F(DatasetTest, TokensWrongDtype) {
  const std::string file = good_file();
  const size_t n = concat_tokens(sample_docs()).size();
  RawFile(file).replace<int64_t>("/tokens", H5T_STD_I64LE, H5T_NATIVE_INT64,
                                 std::vector<int64_t>(n, 1));
  EXPECT_TRUE(throws_error([&] { Dataset::open(file); },
                           {file + ": /tokens has dtype int64, expected uint32"}));
  RawFile(file).replace<float>("/tokens", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT,
                               std::vector<float>(n, 1.0f));
  EXPECT_TRUE(throws_error([&] { Dataset::open(file); },
                           {file + ": /tokens has dtype float32, expected uint32"}));
}

TEST_F(DatasetTest, TokensNotOneDimensional) {
  const std::string file = good_file();
  RawFile(file).replace<uint32_t>("/tokens", H5T_STD_U32LE, H5T_NATIVE_UINT32,
                                  std::vector<uint32_t>(8, 1), {2, 4});
  EXPECT_TRUE(throws_error([&] { Dataset::open(file); },
                           {file + ": /tokens has 2 dimensions, expected 1"}));
}

TEST_F(DatasetTest, OffsetsWrongDtype) {
  const std::string file = good_file();
  RawFile(file).replace<int64_t>("/doc_offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, {0, 5, 10});
  EXPECT_TRUE(throws_error([&] { Dataset::open(file); },
                           {file + ": /doc_offsets has dtype int64, expected uint64"}));
  RawFile(file).replace<uint32_t>("/doc_offsets", H5T_STD_U32LE, H5T_NATIVE_UINT32, {0, 5, 10});
  EXPECT_TRUE(throws_error([&] { Dataset::open(file); },
                           {file + ": /doc_offsets has dtype uint32, expected uint64"}));
}

TEST_F(DatasetTest, OffsetsNotMonotonic) {
  const std::string file = good_file();
  // sample offsets: 0 5 5 22 25 25 65 66 66; make doc_offsets[3] smaller than doc_offsets[2].
  RawFile(file).overwrite<uint64_t>("/doc_offsets", H5T_NATIVE_UINT64, 3, 4);
  EXPECT_TRUE(
      throws_error([&] { Dataset::open(file); },
                   {file + ": /doc_offsets: not monotonic: doc_offsets[3]=4 < doc_offsets[2]=5"}));
}

TEST_F(DatasetTest, OffsetsNotStartingAtZero) {
  const std::string file = good_file();
  RawFile(file).overwrite<uint64_t>("/doc_offsets", H5T_NATIVE_UINT64, 0, 2);
  EXPECT_TRUE(throws_error([&] { Dataset::open(file); },
                           {file + ": /doc_offsets: doc_offsets[0] = 2, expected 0"}));
}

TEST_F(DatasetTest, LastOffsetPastEndOfTokens) {
  const std::string file = good_file();
  const std::vector<Doc> docs = sample_docs();
  const size_t n = concat_tokens(docs).size();
  RawFile(file).overwrite<uint64_t>("/doc_offsets", H5T_NATIVE_UINT64, docs.size(), n + 10);
  EXPECT_TRUE(
      throws_error([&] { Dataset::open(file); },
                   {file, fmt::format("doc_offsets[{}] = {} is past the end of /tokens ({} tokens)",
                                      docs.size(), n + 10, n)}));
}

TEST_F(DatasetTest, LastOffsetShortOfEndOfTokens) {
  const std::string file = good_file();
  const std::vector<Doc> docs = sample_docs();
  const size_t n = concat_tokens(docs).size();
  RawFile(file).replace<uint64_t>("/doc_offsets", H5T_STD_U64LE, H5T_NATIVE_UINT64, {0, 10, n - 1});
  EXPECT_TRUE(throws_error([&] { Dataset::open(file); }, {file, "outside every document"}));
}

TEST_F(DatasetTest, DifficultyAndMaskLengths) {
  const std::string file = good_file();
  RawFile(file).replace<float>("/difficulty", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {1.0f, 2.0f});
  EXPECT_TRUE(throws_error([&] { Dataset::open(file); },
                           {file + ": /difficulty has 2 entries, expected n_docs = 8"}));
  RawFile(file).remove("/difficulty");
  RawFile(file).replace<uint8_t>("/answer_mask", H5T_STD_U8LE, H5T_NATIVE_UINT8, {1, 0});
  EXPECT_TRUE(throws_error([&] { Dataset::open(file); },
                           {file + ": /answer_mask has 2 entries, expected n_tokens = 66"}));
}

TEST_F(DatasetTest, MaxTokenAttributeAtLeastVocabSize) {
  const std::string file = good_file();
  RawFile(file).set_attribute<uint32_t>("max_token", H5T_STD_U32LE, H5T_NATIVE_UINT32, 70000);
  EXPECT_TRUE(
      throws_error([&] { Dataset::open(file); }, {file + ": max_token 70000 >= vocab_size 50257"}));
}

// A token >= vocab_size that slipped past max_token (absent, or lying about the largest id) is
// caught by the read that returns it, with its absolute index.
TEST_F(DatasetTest, BadTokenCaughtOnRead) {
  for (const bool keep_max_token : {false, true}) {
    SCOPED_TRACE(keep_max_token ? "lying max_token" : "no max_token");
    const std::string file = good_file(keep_max_token ? "lying.h5" : "absent.h5");
    {
      RawFile raw(file);
      raw.overwrite<uint32_t>("/tokens", H5T_NATIVE_UINT32, 30, 70000);
      if (!keep_max_token) raw.remove_attribute("max_token");
    }
    const Dataset ds = Dataset::open(file);
    std::vector<uint32_t> out(ds.num_tokens());
    ds.read_tokens(0, 30, out.data());  // the tokens before are fine
    EXPECT_TRUE(throws_error([&] { ds.read_tokens(25, 35, out.data()); },
                             {file + ": /tokens[30] = 70000 >= vocab_size 50257"}));
    EXPECT_TRUE(throws_error([&] { ds.read_doc(5); }, {"/tokens[30] = 70000"}));
  }
}

TEST_F(DatasetTest, WrongFormatVersion) {
  const std::string file = good_file();
  RawFile(file).set_attribute<uint32_t>("format_version", H5T_STD_U32LE, H5T_NATIVE_UINT32, 7);
  EXPECT_TRUE(throws_error([&] { Dataset::open(file); },
                           {file + ": format_version 7 is not supported (this build reads 1)"}));
}

TEST_F(DatasetTest, MissingOrMistypedAttributes) {
  for (const char* name : {"vocab_size", "format_version", "tokenizer"}) {
    const std::string file = good_file(fmt::format("{}.h5", name));
    RawFile(file).remove_attribute(name);
    EXPECT_TRUE(throws_error([&] { Dataset::open(file); },
                             {fmt::format("{}: missing attribute {}", file, name)}));
  }
  const std::string file = good_file();
  RawFile(file).set_fixed_string_attribute("vocab_size", "50257");
  EXPECT_TRUE(throws_error([&] { Dataset::open(file); },
                           {file + ": attribute vocab_size has type string, expected an integer"}));
  RawFile(file).set_attribute<uint32_t>("vocab_size", H5T_STD_U32LE, H5T_NATIVE_UINT32, kVocab);
  RawFile(file).set_attribute<uint32_t>("tokenizer", H5T_STD_U32LE, H5T_NATIVE_UINT32, 1);
  EXPECT_TRUE(throws_error([&] { Dataset::open(file); },
                           {file + ": attribute tokenizer has type uint32, expected string"}));
  RawFile(file).set_fixed_string_attribute("tokenizer", "wordpiece");
  EXPECT_TRUE(throws_error([&] { Dataset::open(file); }, {file, "tokenizer = \"wordpiece\""}));
}

TEST_F(DatasetTest, NotAnHdf5File) {
  const std::string file = path("text.h5");
  std::ofstream(file) << "just some text, not HDF5\n";
  EXPECT_TRUE(throws_error([&] { Dataset::open(file); }, {file + ": not an HDF5 file"}));
}

TEST_F(DatasetTest, NonexistentFile) {
  const std::string file = path("missing.h5");
  EXPECT_TRUE(throws_error([&] { Dataset::open(file); }, {file + ": no such file"}));
}

// Opening or reading a truncated file must raise Error (HDF5 compares the stored end of file with
// the real size), never crash or return garbage.
TEST_F(DatasetTest, TruncatedFile) {
  std::vector<Doc> docs(4);
  for (size_t d = 0; d < docs.size(); ++d) {
    docs[d].tokens.assign(2000, static_cast<uint32_t>(d + 1));
    docs[d].mask.assign(2000, 1);
  }
  DatasetWriterOptions options = sample_options();
  options.chunk_tokens = 512;
  const std::string good = path("good.h5");
  write_docs(good, docs, options);
  const auto size = fs::file_size(good);
  for (const double fraction : {0.0, 0.01, 0.3, 0.6, 0.99}) {
    SCOPED_TRACE(fraction);
    const std::string file = path(fmt::format("cut{}.h5", fraction));
    fs::copy_file(good, file);
    fs::resize_file(file, static_cast<uintmax_t>(fraction * static_cast<double>(size)));
    EXPECT_TRUE(throws_error(
        [&] {
          const Dataset ds = Dataset::open(file);
          std::vector<uint32_t> all(ds.num_tokens());
          ds.read_tokens(0, all.size(), all.data());
        },
        {file}));
  }
}

// Fletcher-32 on the token chunks: a flipped bit in stored data fails the read of its chunk, and
// only that chunk.
TEST_F(DatasetTest, FlippedByteInTokenDataIsDetected) {
  constexpr uint32_t kBigVocab = 0xF0000000u;
  constexpr uint32_t kChunk = 1024;
  Doc doc;
  for (uint32_t i = 0; i < 4 * kChunk; ++i) doc.tokens.push_back(0xA5C30000u | i);
  DatasetWriterOptions options;
  options.vocab_size = kBigVocab;
  options.chunk_tokens = kChunk;
  const std::string file = path("flip.h5");
  write_docs(file, {doc}, options);

  // Find tokens[1500..1503] (in chunk 1) by their bytes; the tokens are stored little-endian.
  std::vector<char> bytes = read_bytes(file);
  std::vector<char> needle(4 * sizeof(uint32_t));
  std::memcpy(needle.data(), &doc.tokens[1500], needle.size());
  const auto at = std::search(bytes.begin(), bytes.end(), needle.begin(), needle.end());
  ASSERT_NE(at, bytes.end());
  *(at + 5) = static_cast<char>(*(at + 5) ^ 0x01);
  write_bytes(file, bytes);

  const Dataset ds = Dataset::open(file);
  std::vector<uint32_t> out(kChunk);
  EXPECT_TRUE(throws_error([&] { ds.read_tokens(kChunk, 2 * kChunk, out.data()); },
                           {file, "/tokens: cannot read [1024, 2048)", "Fletcher32"}));
  EXPECT_TRUE(throws_error([&] { ds.read_tokens(1501, 1502, out.data()); }, {"Fletcher32"}));
  ds.read_tokens(0, kChunk, out.data());
  EXPECT_EQ(out[7], doc.tokens[7]);
  ds.read_tokens(2 * kChunk, 3 * kChunk, out.data());
  EXPECT_EQ(out[7], doc.tokens[2 * kChunk + 7]);
}

TEST_F(DatasetTest, WriterStoresChecksummedChunks) {
  const std::string file = good_file();
  const hid_t id = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(id, 0);
  for (const char* name : {"/tokens", "/answer_mask", "/doc_offsets", "/difficulty"}) {
    const hid_t dset = H5Dopen2(id, name, H5P_DEFAULT);
    const hid_t dcpl = H5Dget_create_plist(dset);
    EXPECT_EQ(H5Pget_layout(dcpl), H5D_CHUNKED) << name;
    EXPECT_GT(H5Pget_nfilters(dcpl), 0) << name;
    unsigned flags = 0;
    EXPECT_GE(H5Pget_filter_by_id2(dcpl, H5Z_FILTER_FLETCHER32, &flags, nullptr, nullptr, 0,
                                   nullptr, nullptr),
              0)
        << name;
    H5Pclose(dcpl);
    H5Dclose(dset);
  }
  H5Fclose(id);
}

TEST_F(DatasetTest, TinyFileGetsSmallChunk) {
  const std::string file = path("tiny.h5");
  DatasetWriterOptions options;
  options.vocab_size = kVocab;  // default chunk_tokens is 1M
  write_docs(file, {Doc{{1, 2, 3}, 0.0f, {}}}, options);
  const hid_t id = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  const hid_t dset = H5Dopen2(id, "/tokens", H5P_DEFAULT);
  const hid_t dcpl = H5Dget_create_plist(dset);
  hsize_t chunk = 0;
  EXPECT_EQ(H5Pget_chunk(dcpl, 1, &chunk), 1);
  EXPECT_EQ(chunk, 3u);
  H5Pclose(dcpl);
  H5Dclose(dset);
  H5Fclose(id);
}

TEST_F(DatasetTest, WriterRejectsBadDocuments) {
  const std::string file = path("w.h5");
  DatasetWriter writer(file, sample_options());
  const std::vector<uint32_t> good = {1, 2, 3};
  const std::vector<uint8_t> mask = {0, 1, 0};
  writer.add_document(good, 0.5f, mask);
  const std::vector<uint32_t> bad = {1, 2, kVocab};
  EXPECT_TRUE(throws_error([&] { writer.add_document(bad, 0.5f, mask); },
                           {file + ": document 1: token 50257 at position 2 >= vocab_size 50257"}));
  const std::vector<uint8_t> short_mask = {0, 1};
  EXPECT_TRUE(throws_error([&] { writer.add_document(good, 0.5f, short_mask); },
                           {file + ": document 1: answer_mask has 2 entries, expected 3"}));
  // A rejected document leaves the writer as it was.
  EXPECT_EQ(writer.num_docs(), 1u);
  writer.add_document(good, 0.5f, mask);
  writer.finish();
  EXPECT_TRUE(throws_error([&] { writer.add_document(good, 0.5f, mask); }, {"already finished"}));
  const Dataset ds = Dataset::open(file);
  EXPECT_EQ(ds.num_docs(), 2u);
  EXPECT_EQ(ds.read_doc(1), good);
}

TEST_F(DatasetTest, WriterRejectsBadOptions) {
  DatasetWriterOptions options;
  EXPECT_TRUE(throws_error([&] { DatasetWriter w(path("a.h5"), options); },
                           {path("a.h5"), "vocab_size must be > 0"}));
  options.vocab_size = 10;
  options.tokenizer = "bpe";
  EXPECT_TRUE(throws_error([&] { DatasetWriter w(path("a.h5"), options); }, {"tokenizer \"bpe\""}));
  options.tokenizer = "byte";
  EXPECT_TRUE(throws_error([&] { DatasetWriter w(path("no/such/dir/a.h5"), options); },
                           {"cannot create", "no/such/dir/a.h5.tmp"}));
  EXPECT_TRUE(fs::is_empty(dir_));
}

TEST_F(DatasetTest, UnfinishedWriterLeavesNoFile) {
  const std::string file = path("unfinished.h5");
  {
    DatasetWriter writer(file, sample_options());
    for (const Doc& doc : sample_docs()) writer.add_document(doc.tokens, doc.difficulty, doc.mask);
    EXPECT_TRUE(fs::exists(file + ".tmp"));  // chunks were already flushed into it
  }
  EXPECT_FALSE(fs::exists(file));
  EXPECT_FALSE(fs::exists(file + ".tmp"));
}

TEST_F(DatasetTest, FinishReplacesExistingFile) {
  const std::string file = good_file("same.h5");
  DatasetWriterOptions options;
  options.vocab_size = 10;
  write_docs(file, {Doc{{9}, 0.0f, {}}}, options);
  const Dataset ds = Dataset::open(file);
  EXPECT_EQ(ds.vocab_size(), 10u);
  EXPECT_EQ(ds.read_doc(0), std::vector<uint32_t>{9});
}

// HDF5 serial is not thread-safe; the reader's lock must make concurrent reads safe and correct.
TEST_F(DatasetTest, ConcurrentReads) {
  const std::string file = good_file();
  const std::vector<uint32_t> all = concat_tokens(sample_docs());
  const Dataset ds = Dataset::open(file);
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (size_t t = 0; t < mismatches.size(); ++t) {
    threads.emplace_back([&, t] {
      for (uint64_t begin = t; begin < all.size(); begin += 3) {
        const uint64_t end = std::min<uint64_t>(all.size(), begin + 11);
        std::vector<uint32_t> got(end - begin);
        ds.read_tokens(begin, end, got.data());
        if (!std::equal(got.begin(), got.end(), all.begin() + static_cast<ptrdiff_t>(begin))) {
          ++mismatches[t];
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
}

}  // namespace
}  // namespace cadtrain::data
