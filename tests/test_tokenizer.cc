// Tokenizers: the byte tokenizer's exact round trip and id checks; SentencePiece training on a
// small corpus, round trips, determinism, quiet training, and load errors that name the file.
#include <gtest/gtest.h>

#include <algorithm>  // std::count
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "common/error.h"  // cadtrain::Error
#include "common/rng.h"
#include "data/tokenizer.h"
#include "text_test_util.h"

namespace cadtrain::data {
namespace {

using test::TempDir;

TEST(ByteTokenizer, RoundTripsEveryByteValue) {
  const auto tokenizer = make_byte_tokenizer();
  EXPECT_EQ(tokenizer->vocab_size(), 256u);
  EXPECT_EQ(tokenizer->name(), "byte");
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  const std::vector<uint32_t> ids = tokenizer->encode(all);
  ASSERT_EQ(ids.size(), 256u);
  for (uint32_t b = 0; b < 256; ++b) EXPECT_EQ(ids[b], b);
  EXPECT_EQ(tokenizer->decode(ids), all);
}

TEST(ByteTokenizer, RoundTripsRandomBytes) {
  const auto tokenizer = make_byte_tokenizer();
  Rng rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    std::string bytes(rng.below(300), '\0');
    for (char& c : bytes) c = static_cast<char>(rng.below(256));
    const std::vector<uint32_t> ids = tokenizer->encode(bytes);
    EXPECT_EQ(ids.size(), bytes.size());
    EXPECT_EQ(tokenizer->decode(ids), bytes) << "trial " << trial;
  }
}

TEST(ByteTokenizer, DecodeRejectsOutOfRangeIdNamingItsPosition) {
  const auto tokenizer = make_byte_tokenizer();
  const std::vector<uint32_t> ids = {72, 105, 256, 33};
  const std::string message = test::error_of([&] { tokenizer->decode(ids); });
  EXPECT_NE(message.find("256"), std::string::npos) << message;
  EXPECT_NE(message.find("position 2"), std::string::npos) << message;
}

// Sentences outside the training text too: unseen words, digits, runs of spaces, tabs, newlines,
// leading and trailing space, and non-ASCII characters that only byte fallback can spell.
const std::vector<std::string>& round_trip_texts() {
  static const std::vector<std::string> texts = {
      "The river was long, and the garden had a stone in the morning.",
      "Zebras quickly vexed 42 jumping wizards!",
      "  two leading spaces,   three inside, and a trailing one ",
      "tab\tseparated\tcolumns\nand\r\nline endings\n\n",
      "Caf\xc3\xa9 na\xc3\xafve \xe2\x80\x94 \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x99\x82",
      "for (int i = 0; i < n; ++i) {\n    sum += x[i];\n}\n",
      "",
  };
  return texts;
}

// One model for the whole suite: training is the slow part.
class SentencePieceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    const std::string corpus = *dir_ / "corpus.txt";
    test::write_file(corpus, test::english_text(1, 400));
    SentencePieceTrainOptions options;
    options.vocab_size = 400;
    model_path_ = train_sentencepiece({corpus}, *dir_ / "sp", options);
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }

  static TempDir* dir_;
  static std::string model_path_;
};

TempDir* SentencePieceTest::dir_ = nullptr;
std::string SentencePieceTest::model_path_;

TEST_F(SentencePieceTest, TrainingWritesModelAndVocabAndReportsTheVocabSize) {
  EXPECT_EQ(model_path_, *dir_ / "sp.model");
  ASSERT_TRUE(std::filesystem::exists(*dir_ / "sp.vocab"));
  const std::string vocab = test::read_file(*dir_ / "sp.vocab");
  const auto vocab_lines = static_cast<uint32_t>(std::count(vocab.begin(), vocab.end(), '\n'));
  const auto tokenizer = load_sentencepiece(model_path_);
  EXPECT_EQ(tokenizer->name(), "sentencepiece");
  EXPECT_EQ(tokenizer->vocab_size(), vocab_lines);
  // 3 control pieces + 256 byte pieces + what the corpus supports, up to the requested 400.
  EXPECT_GT(tokenizer->vocab_size(), 259u + 20u);
  EXPECT_LE(tokenizer->vocab_size(), 400u);
}

TEST_F(SentencePieceTest, RoundTripsTextExactly) {
  const auto tokenizer = load_sentencepiece(model_path_);
  for (const std::string& text : round_trip_texts()) {
    const std::vector<uint32_t> ids = tokenizer->encode(text);
    for (uint32_t id : ids) ASSERT_LT(id, tokenizer->vocab_size());
    EXPECT_EQ(tokenizer->decode(ids), text);
  }
}

TEST_F(SentencePieceTest, CompressesTextLikeItsTrainingCorpus) {
  const auto tokenizer = load_sentencepiece(model_path_);
  const std::string text = test::english_text(99, 20);
  const std::vector<uint32_t> ids = tokenizer->encode(text);
  EXPECT_LT(ids.size() * 2, text.size()) << "fewer than 2 bytes per token";
  EXPECT_EQ(tokenizer->decode(ids), text);
}

TEST_F(SentencePieceTest, DecodeRejectsOutOfRangeIdNamingItsPosition) {
  const auto tokenizer = load_sentencepiece(model_path_);
  const std::vector<uint32_t> ids = {5, tokenizer->vocab_size()};
  const std::string message = test::error_of([&] { tokenizer->decode(ids); });
  EXPECT_NE(message.find(std::to_string(tokenizer->vocab_size())), std::string::npos) << message;
  EXPECT_NE(message.find("position 1"), std::string::npos) << message;
}

TEST_F(SentencePieceTest, TrainingIsDeterministic) {
  TempDir again;
  const std::string corpus = again / "corpus.txt";
  test::write_file(corpus, test::english_text(1, 400));
  SentencePieceTrainOptions options;
  options.vocab_size = 400;
  train_sentencepiece({corpus}, again / "sp", options);
  // The .model file also records its own path; the .vocab holds every piece and score.
  EXPECT_TRUE(test::read_file(again / "sp.vocab") == test::read_file(*dir_ / "sp.vocab"));
}

TEST(SentencePiece, TrainingIsQuietAndBpeWorksToo) {
  TempDir dir;
  const std::string corpus = dir / "corpus.txt";
  test::write_file(corpus, test::english_text(2, 200));
  SentencePieceTrainOptions options;
  options.vocab_size = 320;
  options.model_type = "bpe";
  ::testing::internal::CaptureStderr();
  const std::string model = train_sentencepiece({corpus}, dir / "bpe", options);
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
  const auto tokenizer = load_sentencepiece(model);
  const std::string text = "The model was trained on a long context.";
  EXPECT_EQ(tokenizer->decode(tokenizer->encode(text)), text);
}

TEST(SentencePiece, TrainingOnMissingFileNamesIt) {
  TempDir dir;
  const std::string missing = dir / "no_such_corpus.txt";
  const std::string message =
      test::error_of([&] { train_sentencepiece({missing}, dir / "sp", SentencePieceTrainOptions{}); });
  EXPECT_NE(message.find(missing), std::string::npos) << message;
}

TEST(SentencePiece, LoadingMissingModelNamesTheFile) {
  TempDir dir;
  const std::string missing = dir / "missing.model";
  const std::string message = test::error_of([&] { load_sentencepiece(missing); });
  EXPECT_NE(message.find(missing), std::string::npos) << message;
}

TEST(SentencePiece, LoadingGarbageModelNamesTheFile) {
  TempDir dir;
  const std::string garbage = dir / "garbage.model";
  test::write_file(garbage, "this is not a SentencePiece model\n\x01\x02\xff\xfe");
  const std::string message = test::error_of([&] { load_sentencepiece(garbage); });
  EXPECT_NE(message.find(garbage), std::string::npos) << message;
}

}  // namespace
}  // namespace cadtrain::data
