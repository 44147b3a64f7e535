// The NCCL communicator under mpirun, one GPU per rank: each operation on crafted inputs, checked
// exactly on the host. Skips (saying why) without a GPU per rank; compiled and linked everywhere
// CUDA is.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <vector>

#include "parallel/nccl/nccl_communicator.h"
#include "tests/mpi/mpi_test_main.h"

namespace cadtrain::parallel {
namespace {

// Device memory holding a copy of host values; copied back by host().
template <typename T>
class DeviceVector {
 public:
  DeviceVector(const std::vector<T>& values, int device) : n_(values.size()), device_(device) {
    EXPECT_EQ(cudaMalloc(&p_, sizeof(T) * std::max<size_t>(n_, 1)), cudaSuccess);
    if (n_ > 0) {
      EXPECT_EQ(cudaMemcpy(p_, values.data(), sizeof(T) * n_, cudaMemcpyHostToDevice), cudaSuccess);
    }
  }
  DeviceVector(const DeviceVector&) = delete;
  DeviceVector& operator=(const DeviceVector&) = delete;
  ~DeviceVector() { cudaFree(p_); }
  BufferView view() { return {p_, element_type_of<T>(), n_, DeviceId::cuda(device_)}; }
  std::vector<T> host() const {
    cudaDeviceSynchronize();
    std::vector<T> out(n_);
    if (n_ > 0) {
      EXPECT_EQ(cudaMemcpy(out.data(), p_, sizeof(T) * n_, cudaMemcpyDeviceToHost), cudaSuccess);
    }
    return out;
  }

 private:
  T* p_ = nullptr;
  size_t n_;
  int device_;
};

class NcclTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    const int devices = cuda_device_count(&why);
    // Every rank must decide alike, or the others would wait in the bootstrap.
    std::vector<int32_t> enough{devices >= test::world().size() ? 1 : 0};
    test::world().all_reduce(host_view(enough), ReduceOp::MIN);
    if (enough[0] == 0) {
      GTEST_SKIP() << "needs one CUDA device per rank (" << test::world().size() << "); this rank sees " << devices
                   << (why.empty() ? "" : " (" + why + ")");
    }
    device_ = test::world().rank();
    comm_ = make_nccl_communicator(test::world(), device_, "nccl world");
  }
  int device_ = 0;
  std::unique_ptr<Communicator> comm_;
};

std::vector<float> values(int r, size_t n) {
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = static_cast<float>((i * 7 + static_cast<size_t>(r) * 13) % 29) - 9.0f;
  return x;
}

TEST_F(NcclTest, AllReduceReduceScatterAllGatherBroadcast) {
  const int p = comm_->size(), me = comm_->rank();
  for (size_t n : {size_t{0}, size_t{1}, size_t{1000}}) {
    std::vector<float> sum(n * static_cast<size_t>(p), 0.0f);
    for (int r = 0; r < p; ++r) {
      const auto x = values(r, n * static_cast<size_t>(p));
      for (size_t i = 0; i < sum.size(); ++i) sum[i] += x[i];  // small integers: exact in any order
    }
    DeviceVector<float> a(values(me, n * static_cast<size_t>(p)), device_);
    comm_->all_reduce(a.view(), ReduceOp::SUM);
    EXPECT_EQ(a.host(), sum) << "all_reduce n " << n;

    DeviceVector<float> in(values(me, n * static_cast<size_t>(p)), device_), block(std::vector<float>(n), device_);
    comm_->reduce_scatter(in.view(), block.view(), ReduceOp::SUM);
    EXPECT_EQ(block.host(), std::vector<float>(sum.begin() + static_cast<ptrdiff_t>(n) * me,
                                               sum.begin() + static_cast<ptrdiff_t>(n) * (me + 1)));

    DeviceVector<float> mine(values(me, n), device_), all(std::vector<float>(n * static_cast<size_t>(p)), device_);
    comm_->all_gather(mine.view(), all.view());
    std::vector<float> expect;
    for (int r = 0; r < p; ++r) {
      const auto x = values(r, n);
      expect.insert(expect.end(), x.begin(), x.end());
    }
    EXPECT_EQ(all.host(), expect);

    DeviceVector<float> b(me == 0 ? values(0, n) : std::vector<float>(n, 5.0f), device_);
    comm_->broadcast(b.view(), 0);
    EXPECT_EQ(b.host(), values(0, n));
  }
  comm_->barrier();
}

TEST_F(NcclTest, AllToAllVUnevenWithZeroCounts) {
  const int p = comm_->size(), me = comm_->rank();
  const auto count = [](int s, int d) { return static_cast<size_t>((s * 5 + d * 3) % 4 == 0 ? 0 : (s * 7 + d * 11) % 9 + 1); };
  std::vector<size_t> sc(static_cast<size_t>(p)), rc(static_cast<size_t>(p));
  std::vector<float> send, expect;
  for (int d = 0; d < p; ++d) {
    sc[static_cast<size_t>(d)] = count(me, d);
    for (size_t i = 0; i < count(me, d); ++i) send.push_back(static_cast<float>(me * 1000 + d * 100) + static_cast<float>(i));
  }
  for (int s = 0; s < p; ++s) {
    rc[static_cast<size_t>(s)] = count(s, me);
    for (size_t i = 0; i < count(s, me); ++i) expect.push_back(static_cast<float>(s * 1000 + me * 100) + static_cast<float>(i));
  }
  DeviceVector<float> ds(send, device_), dr(std::vector<float>(expect.size(), -1.0f), device_);
  comm_->all_to_all_v(ds.view(), sc, dr.view(), rc);
  EXPECT_EQ(dr.host(), expect);
}

TEST_F(NcclTest, SendRecvRingAndHostBuffersRejected) {
  const int p = comm_->size(), me = comm_->rank();
  DeviceVector<float> out(values(me, 64), device_), in(std::vector<float>(64), device_);
  Request r = comm_->irecv(in.view(), (me + p - 1) % p, 0);
  Request s = comm_->isend(out.view(), (me + 1) % p, 0);
  r.wait();
  s.wait();
  EXPECT_EQ(in.host(), values((me + p - 1) % p, 64));
  std::vector<float> host(4);
  EXPECT_THROW(comm_->all_reduce(host_view(host), ReduceOp::SUM), Error);
  comm_->barrier();
}

}  // namespace
}  // namespace cadtrain::parallel
