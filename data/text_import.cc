// `cadtrain data build`: walks the inputs, picks (or trains) the tokenizer, and streams one file
// at a time through it into a DatasetWriter.
#include <algorithm>     // std::sort
#include <cstdint>       // uint64_t
#include <filesystem>    // directory walks, paths relative to the output
#include <fstream>       // std::ifstream (whole files, binary)
#include <memory>        // std::unique_ptr
#include <set>           // paths the import itself writes
#include <string>
#include <string_view>
#include <system_error>  // std::error_code
#include <vector>

#include <fmt/format.h>  // fmt::join

#include "common/error.h"  // cadtrain::fail, cadtrain::with_context
#include "data/dataset.h"  // DatasetWriter
#include "data/text_import.h"
#include "data/tokenizer.h"

namespace cadtrain::data {
namespace {

namespace fs = std::filesystem;

// Where a trained model goes: beside the output, named after it ("corpus.h5" -> "corpus.model").
std::string model_prefix(const std::string& output) {
  return fs::path(output).replace_extension().string();
}

// Files the import writes. A rerun with the output inside an input directory must not read back
// its own dataset or model as text.
std::set<fs::path> own_outputs(const TextImportOptions& options) {
  const std::string prefix = model_prefix(options.output);
  std::set<fs::path> paths;
  for (const std::string& path :
       {options.output, options.output + ".tmp", prefix + ".model", prefix + ".vocab"}) {
    paths.insert(fs::weakly_canonical(path));
  }
  return paths;
}

bool is_hidden(const fs::path& path) { return path.filename().string().starts_with('.'); }

// Regular files under dir, sorted by path so that the dataset does not depend on directory order.
std::vector<fs::path> list_directory(const fs::path& dir, const std::set<fs::path>& excluded) {
  std::vector<fs::path> files;
  for (auto it = fs::recursive_directory_iterator(dir); it != fs::recursive_directory_iterator();
       ++it) {
    if (is_hidden(it->path())) {
      it.disable_recursion_pending();
    } else if (it->is_regular_file() && !excluded.contains(fs::weakly_canonical(it->path()))) {
      files.push_back(it->path());
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::vector<fs::path> collect_inputs(const TextImportOptions& options) {
  if (options.inputs.empty()) fail("{}: no inputs given", options.output);
  const std::set<fs::path> excluded = own_outputs(options);
  std::vector<fs::path> files;
  for (const std::string& input : options.inputs) {
    if (!fs::exists(input)) fail("{}: no such file or directory", input);
    if (!fs::is_directory(input)) {
      if (!fs::is_regular_file(input)) fail("{}: not a regular file or directory (a FIFO or device?)", input);
      if (excluded.contains(fs::weakly_canonical(input))) {
        fail("{}: is an input and also a file this import writes (-o {}); choose another output", input,
             options.output);
      }
      files.emplace_back(input);
      continue;
    }
    const std::vector<fs::path> listed = list_directory(input, excluded);
    files.insert(files.end(), listed.begin(), listed.end());
  }
  if (files.empty()) {
    fail("{}: no input files found (hidden files are skipped)", fmt::join(options.inputs, ", "));
  }
  return files;
}

struct ChosenTokenizer {
  std::unique_ptr<Tokenizer> tokenizer;
  std::string model_path;  // empty for the byte tokenizer
};

void check_tokenizer_options(const TextImportOptions& options) {
  if (options.tokenizer == "byte") {
    if (!options.sentencepiece_model.empty()) {
      fail("{}: a SentencePiece model ({}) was given but the tokenizer is byte", options.output,
           options.sentencepiece_model);
    }
  } else if (options.tokenizer != "sentencepiece") {
    fail("{}: unknown tokenizer '{}' (expected byte or sentencepiece)", options.output,
         options.tokenizer);
  }
}

ChosenTokenizer choose_tokenizer(const TextImportOptions& options,
                                 const std::vector<fs::path>& files) {
  if (options.tokenizer == "byte") return {make_byte_tokenizer(), {}};
  std::string model = options.sentencepiece_model;
  if (model.empty()) {
    const std::vector<std::string> inputs(files.begin(), files.end());
    model = train_sentencepiece(inputs, model_prefix(options.output), options.sentencepiece);
  }
  return {load_sentencepiece(model), model};
}

std::string read_whole_file(const fs::path& path) {
  std::error_code error;
  const uintmax_t size = fs::file_size(path, error);
  if (error) fail("{}: cannot read: {}", path.string(), error.message());
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open for reading", path.string());
  std::string text(size, '\0');
  in.read(text.data(), static_cast<std::streamsize>(size));
  if (in.gcount() != static_cast<std::streamsize>(size)) fail("{}: read error", path.string());
  return text;
}

// Calls fn on each document of text: the whole text, or the pieces between separators.
template <typename Fn>
void for_each_document(std::string_view text, std::string_view separator, Fn&& fn) {
  if (separator.empty()) return fn(text);
  for (size_t begin = 0;;) {
    const size_t end = text.find(separator, begin);
    fn(text.substr(begin, end == std::string_view::npos ? end : end - begin));
    if (end == std::string_view::npos) return;
    begin = end + separator.size();
  }
}

// Returns the number of bytes read.
uint64_t import_file(const fs::path& path, const TextImportOptions& options,
                     const Tokenizer& tokenizer, DatasetWriter& writer) {
  const std::string text = read_whole_file(path);
  with_context(path.string(), [&] {
    for_each_document(text, options.separator, [&](std::string_view doc) {
      const std::vector<uint32_t> ids = tokenizer.encode(doc);
      if (!ids.empty() || !options.skip_empty) writer.add_document(ids);
    });
  });
  return text.size();
}

DatasetWriterOptions writer_options(const TextImportOptions& options,
                                    const ChosenTokenizer& chosen) {
  DatasetWriterOptions writer;
  writer.vocab_size = chosen.tokenizer->vocab_size();
  writer.tokenizer = chosen.tokenizer->name();
  if (!chosen.model_path.empty()) {
    const fs::path output_dir = fs::absolute(options.output).parent_path();
    writer.tokenizer_model = fs::relative(fs::absolute(chosen.model_path), output_dir).string();
  }
  return writer;
}

TextImportSummary build(const TextImportOptions& options) {
  check_tokenizer_options(options);
  const std::vector<fs::path> files = collect_inputs(options);
  fs::create_directories(fs::absolute(options.output).parent_path());
  const ChosenTokenizer chosen = choose_tokenizer(options, files);

  TextImportSummary summary;
  summary.n_files = files.size();
  summary.tokenizer_model = chosen.model_path;
  DatasetWriter writer(options.output, writer_options(options, chosen));
  for (const fs::path& file : files) {
    summary.n_bytes += import_file(file, options, *chosen.tokenizer, writer);
  }
  if (writer.num_docs() == 0) {
    fail("{}: no documents: every input document was empty ({} files read)", options.output,
         files.size());
  }
  writer.finish();
  summary.n_docs = writer.num_docs();
  summary.n_tokens = writer.num_tokens();
  return summary;
}

}  // namespace

TextImportSummary import_text(const TextImportOptions& options) {
  // std::filesystem reports a directory we may not list or an output directory we may not create
  // as filesystem_error: rethrow it as ours, naming the path.
  try {
    return build(options);
  } catch (const fs::filesystem_error& e) {
    fail("{}: {}", e.path1().string(), e.code().message());
  }
}

}  // namespace cadtrain::data
