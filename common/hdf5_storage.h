// Whether a dataset's elements are really stored in the file. HDF5 answers reads of chunks (or
// contiguous storage) that were never written with the fill value, so a 24 KB file can claim
// 2^40 tokens and read back as a trillion zeros; readers call this before reading or allocating
// anything sized by the dataset's shape. Call with the HDF5 lock held (common/hdf5_handles.h).
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <limits>
#include <string_view>
#include <vector>

#include "common/error.h"
#include "common/hdf5_handles.h"

namespace cadtrain::h5 {

// Throws naming `name` unless all `elements` (of element_bytes each) of `dataset` are backed by
// written storage that fits inside a file of file_bytes bytes.
inline void check_fully_written(hid_t dataset, std::string_view name, uint64_t elements, size_t element_bytes,
                                uint64_t file_bytes) {
  if (elements == 0) return;
  if (elements > std::numeric_limits<uint64_t>::max() / element_bytes) {
    fail("{} claims {} elements, more than any file can hold", name, elements);
  }
  const uint64_t bytes = elements * element_bytes;
  auto dcpl = own<Plist>(H5Dget_create_plist(dataset), name);
  const H5D_layout_t layout = H5Pget_layout(dcpl.get());
  if (layout == H5D_COMPACT) return;  // stored inside the object header, which was read already
  bool compressed = false;
  const int n_filters = check(H5Pget_nfilters(dcpl.get()), name);
  for (int i = 0; i < n_filters; ++i) {
    unsigned flags = 0;
    size_t n_values = 0;
    const H5Z_filter_t filter = H5Pget_filter2(dcpl.get(), static_cast<unsigned>(i), &flags, &n_values, nullptr,
                                               0, nullptr, nullptr);
    if (filter != H5Z_FILTER_FLETCHER32 && filter != H5Z_FILTER_SHUFFLE) compressed = true;
  }
  if (!compressed && bytes > file_bytes) {
    fail("{} claims {} elements ({} bytes) but the file holds only {} bytes", name, elements, bytes, file_bytes);
  }
  if (layout == H5D_CONTIGUOUS) {
    H5D_space_status_t status{};
    check(H5Dget_space_status(dataset, &status), name);
    if (status != H5D_SPACE_STATUS_ALLOCATED || H5Dget_storage_size(dataset) < bytes) {
      fail("{}: its {} elements were never written (the file stores no data for them)", name, elements);
    }
    return;
  }
  if (layout != H5D_CHUNKED) fail("{} has an unsupported storage layout (virtual or external)", name);
  auto space = own<Space>(H5Dget_space(dataset), name);
  const int rank = check(H5Sget_simple_extent_ndims(space.get()), name);
  std::vector<hsize_t> dims(static_cast<size_t>(rank)), chunk(static_cast<size_t>(rank));
  check(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr), name);
  if (H5Pget_chunk(dcpl.get(), rank, chunk.data()) != rank) fail("{}: cannot read its chunk shape", name);
  uint64_t expected = 1;
  for (size_t d = 0; d < dims.size(); ++d) {
    if (chunk[d] == 0) fail("{} has a chunk dimension of 0", name);
    const uint64_t along = (dims[d] + chunk[d] - 1) / chunk[d];
    if (along != 0 && expected > std::numeric_limits<uint64_t>::max() / along) {
      fail("{} claims more chunks than any file can hold", name);
    }
    expected *= along;
  }
  hsize_t written = 0;
  check(H5Dget_num_chunks(dataset, space.get(), &written), fmt::format("{}: cannot count its chunks", name));
  if (written < expected) {
    fail("{}: {} of its {} chunks were never written ({} elements claimed); HDF5 would read them as fill "
         "values",
         name, expected - written, expected, elements);
  }
}

}  // namespace cadtrain::h5
