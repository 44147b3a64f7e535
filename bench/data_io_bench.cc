// Data pipeline throughput: synthetic corpus generation, text import (data build) and dataset
// reads, each beside the raw file-system rate for the same bytes measured in the same run.
// Files are hot in the page cache: this measures our code, not the disk.
//
//   build/bench/data_io_bench [--docs N] [--mean TOKENS]
#include <fcntl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <vector>

#include "bench/bench_util.h"
#include "common/error.h"
#include "common/rng.h"
#include "data/dataset.h"
#include "data/synth_corpus.h"
#include "data/text_import.h"

namespace fs = std::filesystem;
using namespace cadtrain;

namespace {

constexpr double kMiB = 1 << 20;

// Reads a whole file with read(2) into a reusable buffer: the reference read rate.
void raw_read(const std::string& path, std::vector<char>& buffer) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  CADTRAIN_CHECK(fd >= 0, "cannot open {}", path);
  while (::read(fd, buffer.data(), buffer.size()) > 0) {
  }
  ::close(fd);
}

// Writes `bytes` bytes with write(2) and fsync: the reference write rate.
void raw_write(const std::string& path, const std::vector<char>& buffer, uint64_t bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  CADTRAIN_CHECK(fd >= 0, "cannot create {}", path);
  for (uint64_t done = 0; done < bytes;) {
    const auto n = std::min<uint64_t>(buffer.size(), bytes - done);
    CADTRAIN_CHECK(::write(fd, buffer.data(), n) == static_cast<ssize_t>(n), "short write to {}", path);
    done += n;
  }
  ::fsync(fd);
  ::close(fd);
}

std::string fmt_rate(double mib, double secs) { return fmt::format("{:.0f}", mib / secs); }

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"data pipeline throughput"};
  uint64_t docs = 10000, mean = 1024;
  app.add_option("--docs", docs, "synthetic documents");
  app.add_option("--mean", mean, "mean document length (tokens)");
  CLI11_PARSE(app, argc, argv);

  const fs::path dir = fs::temp_directory_path() / fmt::format("cadtrain_data_io_bench_{}", ::getpid());
  fs::create_directories(dir);
  std::vector<char> buffer(8 << 20, 'x');
  bench::Table table({"operation", "MiB", "ours MiB/s", "reference", "reference MiB/s", "ours / reference"});

  // Synthetic generation: token + mask bytes written, against write(2)+fsync of as many bytes.
  config::SynthConfig synth;
  synth.set_n_docs(docs);
  synth.set_mean_doc_tokens(mean);
  synth.set_max_doc_tokens(mean * 16);
  const std::string synth_path = (dir / "synth.h5").string();
  data::SynthSummary summary;
  const double t_synth = bench::best_seconds(1, [&] { summary = data::write_synthetic_corpus(synth, synth_path); });
  const double synth_mib = static_cast<double>(summary.n_tokens) * 5 / kMiB;
  const double t_write = bench::best_seconds(2, [&] {
    raw_write((dir / "raw.bin").string(), buffer, fs::file_size(synth_path));
  });
  const double file_mib = static_cast<double>(fs::file_size(synth_path)) / kMiB;
  table.add({"data synth (generate + write)", fmt::format("{:.0f}", synth_mib), fmt_rate(synth_mib, t_synth),
             "write(2) + fsync", fmt_rate(file_mib, t_write), fmt::format("{:.2f}", (synth_mib / t_synth) / (file_mib / t_write))});

  // Reads: whole dataset in 1M-token chunks, and random whole documents.
  const auto ds = data::Dataset::open(synth_path);
  std::vector<uint32_t> tokens(1 << 20);
  const double t_seq = bench::best_seconds(3, [&] {
    for (uint64_t b = 0; b < ds.num_tokens(); b += tokens.size()) {
      ds.read_tokens(b, std::min<uint64_t>(ds.num_tokens(), b + tokens.size()), tokens.data());
    }
  });
  const double t_raw_read = bench::best_seconds(3, [&] { raw_read(synth_path, buffer); });
  const double token_mib = static_cast<double>(ds.num_tokens()) * 4 / kMiB;
  table.add({"dataset read, 1M-token chunks", fmt::format("{:.0f}", token_mib), fmt_rate(token_mib, t_seq),
             "read(2) of the file", fmt_rate(file_mib, t_raw_read),
             fmt::format("{:.2f}", (token_mib / t_seq) / (file_mib / t_raw_read))});
  Rng rng(7);
  uint64_t random_tokens = 0;
  const double t_docs = bench::best_seconds(1, [&] {
    for (int i = 0; i < 2000; ++i) random_tokens += ds.read_doc(rng.below(ds.num_docs())).size();
  });
  const double doc_mib = static_cast<double>(random_tokens) * 4 / kMiB;
  table.add({"dataset read, 2000 random documents", fmt::format("{:.0f}", doc_mib), fmt_rate(doc_mib, t_docs),
             "read(2) of the file", fmt_rate(file_mib, t_raw_read),
             fmt::format("{:.2f}", (doc_mib / t_docs) / (file_mib / t_raw_read))});

  // Text import: the corpus decoded to one text file per 100 documents, byte tokenizer.
  const fs::path text_dir = dir / "text";
  fs::create_directories(text_dir);
  for (uint64_t d = 0; d < ds.num_docs(); ++d) {
    std::ofstream out(text_dir / fmt::format("part{:05}.txt", d / 100), std::ios::app | std::ios::binary);
    const auto doc = ds.read_doc(d);
    std::string text(doc.begin(), doc.end());
    out << text << "\n\n<|doc|>\n\n";
  }
  data::TextImportOptions import;
  import.inputs = {text_dir.string()};
  import.output = (dir / "built.h5").string();
  import.separator = "\n\n<|doc|>\n\n";
  data::TextImportSummary built;
  const double t_build = bench::best_seconds(1, [&] { built = data::import_text(import); });
  const double t_text_read = bench::best_seconds(3, [&] {
    for (const auto& f : fs::directory_iterator(text_dir)) raw_read(f.path().string(), buffer);
  });
  const double text_mib = static_cast<double>(built.n_bytes) / kMiB;
  table.add({"data build, byte tokenizer", fmt::format("{:.0f}", text_mib), fmt_rate(text_mib, t_build),
             "read(2) of the text", fmt_rate(text_mib, t_text_read),
             fmt::format("{:.2f}", (text_mib / t_build) / (text_mib / t_text_read))});

  fmt::print("data_io_bench: {} documents, {} tokens, mean {} tokens/document; page-cache hot\n\n",
             ds.num_docs(), ds.num_tokens(), mean);
  table.print();
  fs::remove_all(dir);
  return 0;
}
