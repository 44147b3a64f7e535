// `data build` (import_text): directory walks, one document per file or per separator, empty
// documents, byte and SentencePiece datasets read back exactly, and errors that name the file.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "common/error.h"  // cadtrain::Error
#include "data/dataset.h"
#include "data/text_import.h"
#include "data/tokenizer.h"
#include "text_test_util.h"

namespace cadtrain::data {
namespace {

namespace fs = std::filesystem;
using test::TempDir;
using test::write_file;

// Every document of the dataset, decoded with the tokenizer it names.
std::vector<std::string> decoded_docs(const std::string& path) {
  const Dataset dataset = Dataset::open(path);
  const auto tokenizer = tokenizer_for(dataset);
  std::vector<std::string> docs;
  for (uint64_t d = 0; d < dataset.num_docs(); ++d) {
    docs.push_back(tokenizer->decode(dataset.read_doc(d)));
  }
  return docs;
}

TextImportOptions byte_import(const std::vector<std::string>& inputs, const std::string& output) {
  TextImportOptions options;
  options.inputs = inputs;
  options.output = output;
  return options;
}

TEST(TextImport, DirectoryGivesOneDocumentPerFileInPathOrder) {
  TempDir dir;
  const std::string binary("\0\x01\xff\xfe not UTF-8 \xc3\x28", 16);
  write_file(dir / "in/b.txt", "second file\n");
  write_file(dir / "in/a.txt", "first file, with a newline\nin the middle\n");
  write_file(dir / "in/sub/c.bin", binary);
  write_file(dir / "in/.hidden", "hidden files are skipped");
  write_file(dir / "in/.git/config", "and so are hidden directories");
  const TextImportSummary summary = import_text(byte_import({dir / "in"}, dir / "out.h5"));

  EXPECT_EQ(summary.n_files, 3u);
  EXPECT_EQ(summary.n_docs, 3u);
  EXPECT_EQ(summary.n_bytes, 12u + 41u + binary.size());
  EXPECT_EQ(summary.n_tokens, summary.n_bytes);
  EXPECT_EQ(summary.tokenizer_model, "");
  const Dataset dataset = Dataset::open(dir / "out.h5");
  EXPECT_EQ(dataset.vocab_size(), 256u);
  EXPECT_EQ(dataset.tokenizer(), "byte");
  EXPECT_EQ(dataset.tokenizer_model(), "");
  const std::vector<std::string> expected = {
      "first file, with a newline\nin the middle\n", "second file\n", binary};
  EXPECT_EQ(decoded_docs(dir / "out.h5"), expected);
}

TEST(TextImport, FilesAndDirectoriesMixKeepTheGivenOrder) {
  TempDir dir;
  write_file(dir / "z.txt", "named first");
  write_file(dir / "d/y.txt", "y");
  write_file(dir / "d/x.txt", "x");
  import_text(byte_import({dir / "z.txt", dir / "d"}, dir / "out.h5"));
  const std::vector<std::string> expected = {"named first", "x", "y"};
  EXPECT_EQ(decoded_docs(dir / "out.h5"), expected);
}

TEST(TextImport, SplitsOnTheExactSeparator) {
  TempDir dir;
  write_file(dir / "a.txt", "one\n<|end|>\ntwo<|end|><|end|>three <|end|");
  write_file(dir / "b.txt", "<|end|>four");
  TextImportOptions options = byte_import({dir / "a.txt", dir / "b.txt"}, dir / "out.h5");
  options.separator = "<|end|>";
  const TextImportSummary summary = import_text(options);
  const std::vector<std::string> expected = {"one\n", "\ntwo", "three <|end|", "four"};
  EXPECT_EQ(decoded_docs(dir / "out.h5"), expected);
  EXPECT_EQ(summary.n_docs, 4u);
}

TEST(TextImport, EmptyDocumentsAreSkippedUnlessAsked) {
  TempDir dir;
  write_file(dir / "in/a.txt", "x||y||");
  write_file(dir / "in/b.txt", "");
  TextImportOptions options = byte_import({dir / "in"}, dir / "skip.h5");
  options.separator = "||";
  import_text(options);
  EXPECT_EQ(decoded_docs(options.output), (std::vector<std::string>{"x", "y"}));

  options.skip_empty = false;
  options.output = dir / "keep.h5";
  import_text(options);
  EXPECT_EQ(decoded_docs(options.output), (std::vector<std::string>{"x", "y", "", ""}));
}

TEST(TextImport, OnlyEmptyDocumentsIsAnErrorAndLeavesNoFile) {
  TempDir dir;
  write_file(dir / "in/empty.txt", "");
  const std::string output = dir / "out.h5";
  const std::string message = test::error_of([&] { import_text(byte_import({dir / "in"}, output)); });
  EXPECT_NE(message.find(output), std::string::npos) << message;
  EXPECT_FALSE(fs::exists(output));
  EXPECT_FALSE(fs::exists(output + ".tmp"));
}

TEST(TextImport, RerunDoesNotReadItsOwnOutput) {
  TempDir dir;
  write_file(dir / "a.txt", "only document");
  for (int run = 0; run < 2; ++run) {
    EXPECT_EQ(import_text(byte_import({dir.path().string()}, dir / "out.h5")).n_docs, 1u);
  }
}

TEST(TextImport, SentencePieceTrainsAModelBesideTheOutputAndRoundTrips) {
  TempDir dir;
  std::vector<std::string> texts;
  for (int i = 0; i < 3; ++i) {
    texts.push_back(test::english_text(10 + i, 150));
    write_file(dir / ("corpus/part" + std::to_string(i) + ".txt"), texts.back());
  }
  TextImportOptions options = byte_import({dir / "corpus"}, dir / "out/corpus.h5");
  options.tokenizer = "sentencepiece";
  options.sentencepiece.vocab_size = 400;
  const TextImportSummary summary = import_text(options);

  EXPECT_EQ(summary.tokenizer_model, dir / "out/corpus.model");
  EXPECT_TRUE(fs::exists(dir / "out/corpus.vocab"));
  const Dataset dataset = Dataset::open(dir / "out/corpus.h5");
  EXPECT_EQ(dataset.tokenizer(), "sentencepiece");
  EXPECT_EQ(fs::path(dataset.tokenizer_model()), fs::path(dir / "out/corpus.model"));
  EXPECT_EQ(dataset.vocab_size(), load_sentencepiece(summary.tokenizer_model)->vocab_size());
  EXPECT_LT(summary.n_tokens * 2, summary.n_bytes) << "SentencePiece should beat 2 bytes/token";
  EXPECT_EQ(decoded_docs(dir / "out/corpus.h5"), texts);

  // A given model is used as is, and the dataset finds it from another directory.
  options.sentencepiece_model = summary.tokenizer_model;
  options.output = dir / "elsewhere/again.h5";
  EXPECT_EQ(import_text(options).tokenizer_model, summary.tokenizer_model);
  EXPECT_FALSE(fs::exists(dir / "elsewhere/again.model"));
  EXPECT_EQ(decoded_docs(dir / "elsewhere/again.h5"), texts);
}

TEST(TextImport, MissingInputIsNamed) {
  TempDir dir;
  write_file(dir / "real.txt", "text");
  const std::string missing = dir / "no_such_dir";
  const std::string message = test::error_of(
      [&] { import_text(byte_import({dir / "real.txt", missing}, dir / "out.h5")); });
  EXPECT_NE(message.find(missing), std::string::npos) << message;
}

TEST(TextImport, DirectoryWithoutVisibleFilesIsNamed) {
  TempDir dir;
  write_file(dir / "in/.only_hidden", "text");
  const std::string message =
      test::error_of([&] { import_text(byte_import({dir / "in"}, dir / "out.h5")); });
  EXPECT_NE(message.find(dir / "in"), std::string::npos) << message;
}

TEST(TextImport, UnknownTokenizerIsNamed) {
  TempDir dir;
  write_file(dir / "a.txt", "text");
  TextImportOptions options = byte_import({dir / "a.txt"}, dir / "out.h5");
  options.tokenizer = "wordpiece";
  const std::string message = test::error_of([&] { import_text(options); });
  EXPECT_NE(message.find("wordpiece"), std::string::npos) << message;
  EXPECT_NE(message.find(options.output), std::string::npos) << message;
}

TEST(TokenizerFor, MissingModelNamesTheDataset) {
  TempDir dir;
  const std::string path = dir / "data.h5";
  DatasetWriterOptions options;
  options.vocab_size = 300;
  options.tokenizer = "sentencepiece";
  options.tokenizer_model = "gone.model";
  DatasetWriter writer(path, options);
  writer.add_document(std::vector<uint32_t>{1, 2, 3});
  writer.finish();
  const Dataset dataset = Dataset::open(path);
  const std::string message = test::error_of([&] { tokenizer_for(dataset); });
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("gone.model"), std::string::npos) << message;
}

TEST(TokenizerFor, SentencePieceWithoutModelNamesTheDataset) {
  TempDir dir;
  const std::string path = dir / "data.h5";
  DatasetWriterOptions options;
  options.vocab_size = 300;
  options.tokenizer = "sentencepiece";
  DatasetWriter writer(path, options);
  writer.add_document(std::vector<uint32_t>{1, 2, 3});
  writer.finish();
  const std::string message = test::error_of([&] { tokenizer_for(Dataset::open(path)); });
  EXPECT_NE(message.find(path), std::string::npos) << message;
}

}  // namespace
}  // namespace cadtrain::data
