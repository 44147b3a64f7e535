// Preference store: JSONL import (spans, list or string rejected), malformed lines named by
// file:line and field, and a store that is truncated or corrupt refused naming file and dataset.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "data/prefs_import.h"
#include "data/prefs_store.h"
#include "test_util.h"

namespace cadtrain::data {
namespace {

using test::error_of;
using test::TempDir;

std::vector<uint32_t> bytes(const std::string& s) { return {s.begin(), s.end()}; }
std::vector<uint32_t> ids(std::span<const uint32_t> s) { return {s.begin(), s.end()}; }

PrefsImportSummary import(const TempDir& dir, const std::string& jsonl, bool skip = false) {
  test::write_file(dir / "in.jsonl", jsonl);
  PrefsImportOptions o;
  o.input = dir / "in.jsonl";
  o.output = dir / "prefs.h5";
  o.skip_malformed = skip;
  return import_prefs(o);
}

TEST(PrefsStore, JsonlRoundTripKeepsSpans) {
  TempDir dir;
  const auto s = import(dir,
                        "{\"prompt\": \"key=7? \", \"chosen\": \"7\", \"rejected\": \"3\", \"extra\": 1}\n"
                        "\n"
                        "{\"prompt\": \"Q\", \"chosen\": \"yes!\", \"rejected\": [\"no\", \"maybe\"]}\r\n");
  EXPECT_EQ(s.examples, 2u);
  EXPECT_EQ(s.responses, 5u);
  EXPECT_EQ(s.longest, 8u);  // "key=7? " + "7"; "Q" + "maybe" is 6
  const PrefsStore store = PrefsStore::open(dir / "prefs.h5");
  ASSERT_EQ(store.num_examples(), 2u);
  EXPECT_EQ(store.info().tokenizer, "byte");
  EXPECT_EQ(store.info().vocab_size, 256u);
  EXPECT_FALSE(store.has_reference());
  const PrefsExample a = store.example(0);
  EXPECT_EQ(ids(a.prompt), bytes("key=7? "));
  EXPECT_EQ(ids(a.chosen), bytes("7"));
  ASSERT_EQ(a.rejected.size(), 1u);
  EXPECT_EQ(ids(a.rejected[0]), bytes("3"));
  EXPECT_EQ(a.source_line, 1u);
  const PrefsExample b = store.example(1);
  EXPECT_EQ(ids(b.prompt), bytes("Q"));
  EXPECT_EQ(ids(b.chosen), bytes("yes!"));
  ASSERT_EQ(b.rejected.size(), 2u);
  EXPECT_EQ(ids(b.rejected[0]), bytes("no"));
  EXPECT_EQ(ids(b.rejected[1]), bytes("maybe"));
  EXPECT_EQ(b.source_line, 3u);  // the blank line 2 is counted
  EXPECT_EQ(store.longest_sequence(), 8u);
}

TEST(PrefsStore, EveryMalformedLineIsNamedAndNothingIsWritten) {
  TempDir dir;
  const std::string jsonl =
      "{\"prompt\": \"p\", \"chosen\": \"c\", \"rejected\": \"r\"}\n"  // good
      "{\"prompt\": \"p\", \"chosen\": \"c\"}\n"                       // 2: no rejected
      "{\"prompt\": \"p\", \"chosen\": 5, \"rejected\": \"r\"}\n"       // 3: number
      "{\"prompt\": \"p\", \"chosen\": \"c\", \"rejected\": []}\n"      // 4: empty list
      "{\"prompt\": \"p\", \"chosen\": \"c\", \"rejected\": [\"r\", 1]}\n"  // 5: bad element
      "{\"prompt\": \"\", \"chosen\": \"c\", \"rejected\": \"r\"}\n"    // 6: empty prompt
      "{\"prompt\": \"p\", \"chosen\": \"c\", \"rejected\": \"r\"\n"    // 7: not JSON
      "[1, 2]\n";                                                      // 8: not an object
  const std::string e = error_of([&] { import(dir, jsonl); });
  const std::string in = dir / "in.jsonl";
  EXPECT_NE(e.find("7 malformed lines"), std::string::npos) << e;
  for (const std::string& want :
       {in + ":2: rejected: missing", in + ":3: chosen: must be a string (got number)",
        in + ":4: rejected: is an empty list", in + ":5: rejected[1]: must be a string", in + ":6: prompt: is empty",
        in + ":7: (line): not valid JSON", in + ":8: (line): must be a JSON object (got array)"}) {
    EXPECT_NE(e.find(want), std::string::npos) << want << "\nin: " << e;
  }
  EXPECT_EQ(e.find(in + ":1:"), std::string::npos) << e;
  EXPECT_FALSE(std::filesystem::exists(dir / "prefs.h5"));

  const auto s = import(dir, jsonl, /*skip=*/true);
  EXPECT_EQ(s.examples, 1u);
  ASSERT_EQ(s.skipped.size(), 7u);
  EXPECT_NE(s.skipped[0].find(in + ":2:"), std::string::npos);
  EXPECT_EQ(PrefsStore::open(dir / "prefs.h5").example(0).source_line, 1u);
}

TEST(PrefsStore, ReferenceLogProbabilitiesRoundTripAndAreValidated) {
  TempDir dir;
  import(dir, "{\"prompt\": \"ab\", \"chosen\": \"c\", \"rejected\": [\"d\", \"ee\"]}\n");
  PrefsData d = PrefsStore::open(dir / "prefs.h5").data();
  d.ref_logps = {std::nan(""), -1.5, -2.25, -4.0};
  d.info.reference = "ref.ckpt";
  write_prefs_store(dir / "ref.h5", d);
  const PrefsStore store = PrefsStore::open(dir / "ref.h5");
  ASSERT_TRUE(store.has_reference());
  EXPECT_EQ(store.info().reference, "ref.ckpt");
  const PrefsExample ex = store.example(0);
  EXPECT_EQ(ex.ref_chosen, -1.5);
  EXPECT_EQ(ex.ref_rejected, (std::vector<double>{-2.25, -4.0}));

  d.ref_logps[2] = 0.5;  // a log-probability above 0
  const std::string e = error_of([&] { write_prefs_store(dir / "bad.h5", d); });
  EXPECT_NE(e.find("/ref_logps: example 0 (line 1) segment 2"), std::string::npos) << e;
  EXPECT_FALSE(std::filesystem::exists(dir / "bad.h5"));
}

TEST(PrefsStore, TruncatedOrCorruptStoreIsRefusedNamingFileAndDataset) {
  TempDir dir;
  std::string jsonl;
  const std::string marker(200, 'Z');  // a long run of one token, easy to find in the file
  jsonl += "{\"prompt\": \"" + marker + "\", \"chosen\": \"c\", \"rejected\": \"r\"}\n";
  import(dir, jsonl);
  const std::string good = test::read_file(dir / "prefs.h5");

  const std::string truncated = dir / "truncated.h5";
  test::write_file(truncated, good.substr(0, good.size() / 2));
  std::string e = error_of([&] { PrefsStore::open(truncated); });
  EXPECT_NE(e.find(truncated), std::string::npos) << e;

  // Flip one token of the marker run: the Fletcher-32 checksum of /tokens must catch it.
  const std::string z4("Z\0\0\0Z\0\0\0Z\0\0\0Z\0\0\0", 16);
  const size_t at = good.find(z4);
  ASSERT_NE(at, std::string::npos);
  std::string corrupt = good;
  corrupt[at + 4] = 'Y';
  const std::string corrupt_path = dir / "corrupt.h5";
  test::write_file(corrupt_path, corrupt);
  e = error_of([&] { PrefsStore::open(corrupt_path); });
  EXPECT_NE(e.find(corrupt_path), std::string::npos) << e;
  EXPECT_NE(e.find("/tokens"), std::string::npos) << e;

  e = error_of([&] { PrefsStore::open(dir / "missing.h5"); });
  EXPECT_NE(e.find("no such preference store"), std::string::npos) << e;
}

}  // namespace
}  // namespace cadtrain::data
