// Tests of the MFU denominator: the per-machine sgemm calibration cache (best of all measurements,
// replaced on request, robust to an unreadable or unwritable cache), MFU never above 1, and the
// start-up load warning. No timing: measurements are given, not taken.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "common/error.h"
#include "trainer/machine_peak.h"

namespace cadtrain::trainer {
namespace {

namespace fs = std::filesystem;

class MachinePeakTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           fmt::format("cadtrain_peak_{}_{}", ::getpid(), ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string cache() const { return (dir_ / "sub" / "machine_peak.json").string(); }
  fs::path dir_;
};

TEST_F(MachinePeakTest, CalibrationIsTheBestMeasurementPerMachine) {
  PeakCalibration c = calibrate_peak(cache(), "cpu A | 2 threads", 100, false);
  EXPECT_EQ(c.gflops, 100);
  EXPECT_EQ(c.measurements, 1u);
  EXPECT_EQ(c.note, "");
  // A busy start-up measures less: the peak stays.
  c = calibrate_peak(cache(), "cpu A | 2 threads", 49.1, false);
  EXPECT_EQ(c.gflops, 100);
  EXPECT_EQ(c.measured_now, 49.1);
  EXPECT_EQ(c.measurements, 2u);
  c = calibrate_peak(cache(), "cpu A | 2 threads", 120, false);
  EXPECT_EQ(c.gflops, 120);
  EXPECT_EQ(c.measurements, 3u);
  // Another thread count is another calibration.
  c = calibrate_peak(cache(), "cpu A | 1 threads", 60, false);
  EXPECT_EQ(c.gflops, 60);
  EXPECT_EQ(c.measurements, 1u);
  // Re-measuring on request replaces the best.
  c = calibrate_peak(cache(), "cpu A | 2 threads", 90, true);
  EXPECT_EQ(c.gflops, 90);
  EXPECT_EQ(c.measurements, 1u);
  EXPECT_EQ(calibrate_peak(cache(), "cpu A | 2 threads", 80, false).gflops, 90);
  EXPECT_EQ(calibrate_peak(cache(), "cpu A | 1 threads", 50, false).gflops, 60);
}

TEST_F(MachinePeakTest, UnreadableCacheIsReplacedWithANote) {
  for (const std::string& text : {std::string("not json"), std::string("{\"machines\": {\"k\": {\"gflops\": -1, "
                                                                        "\"measurements\": 1}}}"),
                                  std::string("[1, 2]")}) {
    fs::create_directories(fs::path(cache()).parent_path());
    std::ofstream(cache()) << text;
    const PeakCalibration c = calibrate_peak(cache(), "k", 70, false);
    EXPECT_EQ(c.gflops, 70) << text;
    EXPECT_NE(c.note.find("unreadable"), std::string::npos) << c.note;
    EXPECT_NE(c.note.find(cache()), std::string::npos) << c.note;
    // ... and the rewritten cache is read back.
    const PeakCalibration again = calibrate_peak(cache(), "k", 10, false);
    EXPECT_EQ(again.gflops, 70);
    EXPECT_EQ(again.note, "");
  }
}

TEST_F(MachinePeakTest, UnwritableCacheIsANoteNotAnError) {
  std::ofstream(dir_ / "file") << "x";
  const PeakCalibration c = calibrate_peak((dir_ / "file" / "machine_peak.json").string(), "k", 42, false);
  EXPECT_EQ(c.gflops, 42);
  EXPECT_NE(c.note.find("not saved"), std::string::npos) << c.note;
}

TEST_F(MachinePeakTest, MfuNeverExceedsOne) {
  PeakCalibration peak;
  peak.gflops = 100;
  EXPECT_DOUBLE_EQ(mfu_against(50e9, &peak), 0.5);
  EXPECT_EQ(peak.gflops, 100);
  // A step faster than the calibration proves it low: the peak rises to it.
  EXPECT_DOUBLE_EQ(mfu_against(150e9, &peak), 1.0);
  EXPECT_EQ(peak.gflops, 150);
  EXPECT_DOUBLE_EQ(mfu_against(75e9, &peak), 0.5);
}

TEST_F(MachinePeakTest, CachePathFollowsTheEnvironment) {
  const char* saved = std::getenv("CADTRAIN_CACHE_DIR");
  const std::string restore = saved ? saved : "";
  ::setenv("CADTRAIN_CACHE_DIR", dir_.c_str(), 1);
  EXPECT_EQ(default_peak_cache_path(), (dir_ / "machine_peak.json").string());
  ::unsetenv("CADTRAIN_CACHE_DIR");
  EXPECT_NE(default_peak_cache_path().find("cadtrain/machine_peak.json"), std::string::npos);
  if (saved) ::setenv("CADTRAIN_CACHE_DIR", restore.c_str(), 1);
}

TEST_F(MachinePeakTest, LoadAverageAndWarning) {
  EXPECT_DOUBLE_EQ(parse_load_average("15.18 15.22 13.52 13/174 31659\n"), 15.18);
  EXPECT_DOUBLE_EQ(parse_load_average("0.00 0.01 0.05 1/80 7"), 0.0);
  EXPECT_THROW(parse_load_average(""), Error);
  EXPECT_THROW(parse_load_average("busy"), Error);

  EXPECT_EQ(load_warning(0.3, 2, 200, 205), "");
  EXPECT_EQ(load_warning(1.0, 2, 150, 205), "");  // at the thresholds: quiet enough
  const std::string loaded = load_warning(12.99, 2, 200, 205);
  EXPECT_NE(loaded.find("load average 12.99 on 2 logical CPUs"), std::string::npos) << loaded;
  const std::string slow = load_warning(0.1, 2, 49.1, 200);
  EXPECT_NE(slow.find("sgemm now 49.1 GFLOP/s, 25% of this machine's calibrated 200.0"), std::string::npos) << slow;
  EXPECT_NE(load_warning(3, 2, 49.1, 200).find("; sgemm now"), std::string::npos);
  EXPECT_EQ(load_warning(0.1, 2, 49.1, 0), "");  // no calibration to compare with
}

}  // namespace
}  // namespace cadtrain::trainer
