// Datasets whose shapes claim more than the file stores: HDF5 reads unwritten chunks as fill
// values, so such a file used to pass verification (a million zeros scored) or run for hours
// (2^40 tokens), and a huge /doc_offsets ended in std::bad_alloc. Each must be a named Error
// from Dataset::open, before anything sized by the claim is read or allocated.
#include <gtest/gtest.h>

#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/error.h"
#include "data/dataset.h"
#include "test_util.h"

namespace {

using cadtrain::data::Dataset;
using cadtrain::test::error_of;

// Writes a dataset file by hand: /tokens of n_tokens claimed, of which only `written` are
// written (chunked by `chunk`, or contiguous when chunk is 0), and /doc_offsets of n_offsets
// claimed with `offsets` written at its start.
void write_claiming(const std::string& path, hsize_t n_tokens, hsize_t written, hsize_t chunk, hsize_t n_offsets,
                    const std::vector<uint64_t>& offsets, hsize_t filler_bytes = 0) {
  const hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(file, 0);
  const auto attribute = [&](const char* name, uint32_t value) {
    const hid_t space = H5Screate(H5S_SCALAR);
    const hid_t attr = H5Acreate2(file, name, H5T_STD_U32LE, space, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(attr, H5T_NATIVE_UINT32, &value);
    H5Aclose(attr);
    H5Sclose(space);
  };
  attribute("format_version", 1);
  attribute("vocab_size", 256);
  {
    const hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, 4);
    const hid_t space = H5Screate(H5S_SCALAR);
    const hid_t attr = H5Acreate2(file, "tokenizer", type, space, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(attr, type, "byte");
    H5Aclose(attr);
    H5Sclose(space);
    H5Tclose(type);
  }
  const auto column = [&](const char* name, hid_t file_type, hid_t mem_type, hsize_t claimed, hsize_t chunk_len,
                          const void* data, hsize_t n_data) {
    const hid_t space = H5Screate_simple(1, &claimed, nullptr);
    const hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (chunk_len > 0) H5Pset_chunk(dcpl, 1, &chunk_len);
    const hid_t dset = H5Dcreate2(file, name, file_type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    ASSERT_GE(dset, 0) << name;
    if (n_data > 0) {
      const hsize_t start = 0;
      H5Sselect_hyperslab(space, H5S_SELECT_SET, &start, nullptr, &n_data, nullptr);
      const hid_t mem = H5Screate_simple(1, &n_data, nullptr);
      EXPECT_GE(H5Dwrite(dset, mem_type, mem, space, H5P_DEFAULT, data), 0) << name;
      H5Sclose(mem);
    }
    H5Dclose(dset);
    H5Pclose(dcpl);
    H5Sclose(space);
  };
  const std::vector<uint32_t> tokens(written, 65);
  column("/tokens", H5T_STD_U32LE, H5T_NATIVE_UINT32, n_tokens, chunk, tokens.data(), written);
  column("/doc_offsets", H5T_STD_U64LE, H5T_NATIVE_UINT64, n_offsets,
         n_offsets > 1000 ? 1024 : 0, offsets.data(), offsets.size());
  // Unrelated written data, so that the file is larger than the claimed columns.
  const std::vector<uint8_t> filler(filler_bytes, 7);
  if (filler_bytes > 0) column("/filler", H5T_STD_U8LE, H5T_NATIVE_UINT8, filler_bytes, 0, filler.data(), filler_bytes);
  H5Fclose(file);
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

TEST(DatasetStorageTest, UnwrittenTokenChunksAreAnError) {
  // 2^20 tokens claimed, 500 written: the earlier build scored a million fill tokens.
  cadtrain::test::TempDir dir;
  const std::string path = dir / "sparse.h5";
  write_claiming(path, hsize_t{1} << 20, 500, 4096, 2, {0, uint64_t{1} << 20});
  std::string message = error_of([&] { Dataset::open(path); });
  EXPECT_TRUE(contains(message, path + ": /tokens claims 1048576 elements (4194304 bytes) but the file holds only"))
      << message;
  // The same in a file padded past the claimed size: the chunk count gives it away.
  write_claiming(path, 20000, 500, 1024, 2, {0, 20000}, 200000);
  message = error_of([&] { Dataset::open(path); });
  EXPECT_TRUE(contains(message, path + ": /tokens: 19 of its 20 chunks were never written")) << message;
}

TEST(DatasetStorageTest, TwoToTheFortyTokensIsAnErrorNotAHang) {
  cadtrain::test::TempDir dir;
  const std::string path = dir / "huge.h5";
  write_claiming(path, hsize_t{1} << 40, 500, hsize_t{1} << 16, 2, {0, uint64_t{1} << 40});
  const std::string message = error_of([&] { Dataset::open(path); });
  EXPECT_TRUE(contains(message, path + ": /tokens claims 1099511627776 elements (4398046511104 bytes) but the file "
                                       "holds only"))
      << message;
}

TEST(DatasetStorageTest, ContiguousTokensNeverWrittenAreAnError) {
  cadtrain::test::TempDir dir;
  const std::string path = dir / "contiguous.h5";
  write_claiming(path, 1000, 0, 0, 2, {0, 1000}, 100000);
  const std::string message = error_of([&] { Dataset::open(path); });
  EXPECT_TRUE(contains(message, path + ": /tokens: its 1000 elements were never written")) << message;
}

TEST(DatasetStorageTest, HugeDocOffsetsAreAnErrorNotBadAlloc) {
  // 2^33 offsets (64 GiB) claimed by a small file: the earlier build died in std::bad_alloc.
  cadtrain::test::TempDir dir;
  const std::string path = dir / "offsets.h5";
  write_claiming(path, 500, 500, 500, hsize_t{1} << 33, {0, 500});
  const std::string message = error_of([&] { Dataset::open(path); });
  EXPECT_TRUE(contains(message, path + ": /doc_offsets claims 8589934592 elements")) << message;
}

TEST(DatasetStorageTest, FullyWrittenHandMadeFileStillOpens) {
  cadtrain::test::TempDir dir;
  const std::string path = dir / "ok.h5";
  write_claiming(path, 5000, 5000, 4096, 3, {0, 2000, 5000});
  const Dataset ds = Dataset::open(path);
  EXPECT_EQ(ds.num_tokens(), 5000u);
  EXPECT_EQ(ds.num_docs(), 2u);
}

}  // namespace
