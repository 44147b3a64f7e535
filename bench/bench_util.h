// Small helpers shared by the benchmarks: wall-clock timing and a markdown result table.
#pragma once

#include <fmt/format.h>

#include <chrono>
#include <string>
#include <vector>

namespace cadtrain::bench {

// Seconds taken by fn(), best of `repeats` runs (the least disturbed by other load).
template <typename Fn>
double best_seconds(int repeats, Fn&& fn) {
  double best = 1e300;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = std::min(best, s);
  }
  return best;
}

// Rows of "ours vs the reference measured in the same run".
class Table {
 public:
  explicit Table(std::vector<std::string> header) : header_(std::move(header)) {}
  void add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  void print() const {
    print_row(header_);
    std::string rule = "|";
    for (size_t i = 0; i < header_.size(); ++i) rule += "---|";
    fmt::print("{}\n", rule);
    for (const auto& r : rows_) print_row(r);
  }

 private:
  static void print_row(const std::vector<std::string>& cells) {
    std::string line = "|";
    for (const auto& c : cells) line += " " + c + " |";
    fmt::print("{}\n", line);
  }
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
};

}  // namespace cadtrain::bench
