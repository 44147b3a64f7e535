// common/buffer_view.h: element types, sizes, slices and typed access.
#include <gtest/gtest.h>

#include <vector>

#include "common/buffer_view.h"

namespace cadtrain {
namespace {

TEST(BufferView, HostViewCarriesTypeCountAndDevice) {
  std::vector<float> f(7);
  const BufferView v = host_view(f);
  EXPECT_EQ(v.data, f.data());
  EXPECT_EQ(v.type, ElementType::F32);
  EXPECT_EQ(v.count, 7u);
  EXPECT_TRUE(v.device.is_host());
  EXPECT_EQ(v.bytes(), 28u);

  const std::vector<int64_t> c(3);
  const ConstBufferView cv = host_view(c);
  EXPECT_EQ(cv.type, ElementType::I64);
  EXPECT_EQ(cv.bytes(), 24u);

  std::span<uint32_t> s(reinterpret_cast<uint32_t*>(f.data()), 2);
  EXPECT_EQ(host_view(s).type, ElementType::U32);
  EXPECT_EQ(host_view(std::span<const double>()).type, ElementType::F64);
}

TEST(BufferView, SliceOffsetsByElementsAndChecksBounds) {
  std::vector<double> d(10);
  const BufferView v = host_view(d);
  const BufferView s = v.slice(3, 4);
  EXPECT_EQ(s.data, d.data() + 3);
  EXPECT_EQ(s.count, 4u);
  EXPECT_EQ(v.slice(10, 0).count, 0u);
  EXPECT_THROW(v.slice(7, 4), Error);
  EXPECT_THROW(v.slice(11, 0), Error);
  const ConstBufferView c = v;
  EXPECT_EQ(c.slice(9, 1).data, d.data() + 9);
}

TEST(BufferView, TypedAccessRejectsTheWrongType) {
  std::vector<int32_t> x{1, 2, 3};
  const BufferView v = host_view(x);
  EXPECT_EQ(v.as<int32_t>()[2], 3);
  try {
    (void)v.as<float>();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("buffer of int32 x 3 on host read as float32"), std::string::npos) << e.what();
  }
}

TEST(BufferView, ElementSizesAndNames) {
  EXPECT_EQ(element_size(ElementType::BF16), 2u);
  EXPECT_EQ(element_size(ElementType::U8), 1u);
  EXPECT_EQ(element_size(ElementType::U64), 8u);
  EXPECT_EQ(element_name(ElementType::BF16), "bfloat16");
  EXPECT_EQ(DeviceId::cuda(1).name(), "cuda:1");
  const BufferView g{nullptr, ElementType::BF16, 5, DeviceId::cuda(1)};
  EXPECT_EQ(g.describe(), "bfloat16 x 5 on cuda:1");
}

}  // namespace
}  // namespace cadtrain
