#include "engine/model/tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace deltaserve {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using Json = nlohmann::json;

constexpr char kDemoDir[] = "engine/model/demo-qwen35/";

std::string ReadFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::ostringstream contents;
  contents << file.rdbuf();
  return contents.str();
}

// GPT-2's byte-to-character table, written out independently of the code
// under test.
std::string ByteChar(unsigned char b) {
  int code = b;
  const bool printable =
      (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
  if (!printable) {
    int n = 0;
    for (int c = 0; c < b; ++c) {
      const bool p =
          (c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE;
      if (!p) ++n;
    }
    code = 256 + n;
  }
  std::string out;
  if (code < 0x80) {
    out.push_back(static_cast<char>(code));
  } else {
    out.push_back(static_cast<char>(0xC0 | (code >> 6)));
    out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
  }
  return out;
}

std::vector<std::string> Pieces(std::string_view text, SplitPattern pattern) {
  std::vector<std::string> out;
  for (std::string_view piece : SplitByPattern(text, pattern)) {
    out.emplace_back(piece);
  }
  return out;
}

// ---------------------------------------------------------------------------
// The demo model's tokenizer against golden.json.

class DemoTokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto tokenizer =
        Tokenizer::FromFile(std::string(kDemoDir) + "tokenizer.json");
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = tokenizer->release();
    golden_ =
        new Json(Json::parse(ReadFile(std::string(kDemoDir) + "golden.json")));
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete golden_;
  }

  static const Tokenizer* tokenizer_;
  static const Json* golden_;
};

const Tokenizer* DemoTokenizerTest::tokenizer_ = nullptr;
const Json* DemoTokenizerTest::golden_ = nullptr;

TEST_F(DemoTokenizerTest, GoldenStringsEncodeAndDecode) {
  const Json& strings = (*golden_)["strings"];
  ASSERT_EQ(strings.size(), 12u);
  for (const Json& entry : strings) {
    const std::string name = entry["name"].get<std::string>();
    const std::string text = entry["text"].get<std::string>();
    const std::vector<int32_t> want = entry["ids"].get<std::vector<int32_t>>();
    auto ids = tokenizer_->Encode(text);
    ASSERT_TRUE(ids.ok()) << name << ": " << ids.status();
    EXPECT_EQ(*ids, want) << name;
    EXPECT_EQ(tokenizer_->Decode(want), entry["decoded"].get<std::string>())
        << name;
    const std::vector<std::string> tokens =
        entry["tokens"].get<std::vector<std::string>>();
    ASSERT_EQ(tokens.size(), want.size()) << name;
    for (size_t k = 0; k < want.size(); ++k) {
      EXPECT_EQ(tokenizer_->IdToToken(want[k]), tokens[k]) << name << " " << k;
      EXPECT_EQ(tokenizer_->TokenToId(tokens[k]), want[k]) << name << " " << k;
    }
  }
}

TEST_F(DemoTokenizerTest, GoldenPromptsEncodeAndContinuationsDecode) {
  const Json& prompts = (*golden_)["prompts"];
  ASSERT_EQ(prompts.size(), 3u);
  for (const Json& prompt : prompts) {
    const std::string name = prompt["name"].get<std::string>();
    auto ids = tokenizer_->Encode(prompt["text"].get<std::string>());
    ASSERT_TRUE(ids.ok()) << name << ": " << ids.status();
    EXPECT_EQ(*ids, prompt["prompt_ids"].get<std::vector<int32_t>>()) << name;
    EXPECT_EQ(
        tokenizer_->Decode(prompt["greedy32_ids"].get<std::vector<int32_t>>()),
        prompt["greedy32_text"].get<std::string>())
        << name;
  }
}

TEST_F(DemoTokenizerTest, VocabularyAndSpecialTokens) {
  EXPECT_EQ(tokenizer_->vocab_size(), 4096);
  EXPECT_THAT(tokenizer_->special_token_ids(), ElementsAre(0, 1, 2));
  EXPECT_TRUE(tokenizer_->IsSpecialToken(2));
  EXPECT_FALSE(tokenizer_->IsSpecialToken(3));
  EXPECT_EQ(tokenizer_->TokenToId("<|endoftext|>"), 0);
  EXPECT_EQ(tokenizer_->TokenToId("<|im_end|>"), 2);
  EXPECT_EQ(tokenizer_->TokenToId("no such token"), std::nullopt);
  EXPECT_EQ(tokenizer_->TokenToId("\xC4\xA0the"), 299);  // "Ġthe"
  EXPECT_EQ(tokenizer_->TokenBytes(299), " the");
  EXPECT_EQ(tokenizer_->TokenBytes(1), "<|im_start|>");
  EXPECT_EQ(tokenizer_->TokenBytes(-1), "");
  EXPECT_EQ(tokenizer_->TokenBytes(4096), "");
  EXPECT_EQ(tokenizer_->IdToToken(4096), std::nullopt);
  // Ids that name no token are skipped.
  EXPECT_EQ(tokenizer_->Decode({299, -5, 99999, 299}), " the the");
}

TEST_F(DemoTokenizerTest, SpecialTokensInsideTextAreMatched) {
  auto ids = tokenizer_->Encode("a<|endoftext|>b<|im_start|><|im_end|>");
  ASSERT_TRUE(ids.ok()) << ids.status();
  auto a = tokenizer_->Encode("a");
  auto b = tokenizer_->Encode("b");
  ASSERT_TRUE(a.ok() && b.ok());
  std::vector<int32_t> want = *a;
  want.push_back(0);
  want.insert(want.end(), b->begin(), b->end());
  want.push_back(1);
  want.push_back(2);
  EXPECT_EQ(*ids, want);

  // A prefix of a special token is ordinary text.
  auto partial = tokenizer_->Encode("<|im_sta");
  ASSERT_TRUE(partial.ok());
  for (int32_t id : *partial) EXPECT_FALSE(tokenizer_->IsSpecialToken(id));
  EXPECT_EQ(tokenizer_->Decode(*partial), "<|im_sta");

  // The text around a special token is pre-tokenized on its own: the space
  // before "<|im_end|>" is not merged into the following word.
  auto spaced = tokenizer_->Encode("hi <|im_end|> there");
  ASSERT_TRUE(spaced.ok());
  EXPECT_EQ(tokenizer_->Decode(*spaced), "hi <|im_end|> there");
  EXPECT_EQ(std::count(spaced->begin(), spaced->end(), 2), 1);
}

TEST_F(DemoTokenizerTest, InvalidUtf8IsRejected) {
  for (const char* text : {"\xFF", "abc\xC3", "\xC0\xAF", "\xED\xA0\x80",
                           "\xF4\x90\x80\x80", "ok\x80ok"}) {
    auto ids = tokenizer_->Encode(text);
    ASSERT_FALSE(ids.ok()) << text;
    EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(ids.status().message(), HasSubstr("not valid UTF-8"));
  }
}

TEST_F(DemoTokenizerTest, RoundTripsAssortedText) {
  for (const char* text :
       {"", " ", "\n", "  leading and trailing  ", "tabs\tand\r\nCRLF\r\n",
        "x\n\n  y", "It's HE'LL we'Ve", "\xE2\x80\x83wide\xE3\x80\x80space",
        "\xF0\x9D\x90\x80\xF0\x9D\x9F\x8F math", "\xC2\xA0nbsp\xC2\xA0 x",
        "e\xCC\x81 combining",
        "\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x92\xBB"}) {
    auto ids = tokenizer_->Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(tokenizer_->Decode(*ids), text);
  }
}

TEST_F(DemoTokenizerTest, EncodeIsThreadSafe) {
  const Json& strings = (*golden_)["strings"];
  std::vector<std::thread> threads;
  std::vector<int> failures(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        for (const Json& entry : strings) {
          auto ids = tokenizer_->Encode(entry["text"].get<std::string>());
          if (!ids.ok() || *ids != entry["ids"].get<std::vector<int32_t>>()) {
            ++failures[t];
          }
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_THAT(failures, ElementsAre(0, 0, 0, 0));
}

TEST_F(DemoTokenizerTest, IncrementalDecoderNeverSplitsCharacters) {
  const std::string text =
      "def f():\n    return '\xF0\x9F\xA6\x80\xF0\x9F\x9A\x80' + "
      "\"\xE4\xBD\xA0\xE5\xA5\xBD\xEF\xBC\x8C\xE4\xB8\x96\xE7\x95\x8C\" "
      "# na\xC3\xAFve \xD7\xA9\xD7\x9C\xD7\x95\xD7\x9D<|im_end|>";
  auto ids = tokenizer_->Encode(text);
  ASSERT_TRUE(ids.ok()) << ids.status();
  IncrementalDecoder decoder(tokenizer_);
  std::string streamed;
  int held_back_steps = 0;
  for (int32_t id : *ids) {
    const std::string piece = decoder.Push(id);
    EXPECT_TRUE(IsValidUtf8(piece)) << "after id " << id;
    if (decoder.pending_bytes() > 0) ++held_back_steps;
    streamed += piece;
  }
  EXPECT_EQ(decoder.Flush(), "");
  EXPECT_EQ(streamed, tokenizer_->Decode(*ids));
  EXPECT_EQ(streamed, text);
  // Byte-level BPE splits these characters across tokens, so some bytes
  // must have been held back along the way.
  EXPECT_GT(held_back_steps, 0);
}

TEST_F(DemoTokenizerTest, IncrementalDecoderHoldsBackAndFlushes) {
  // The emoji U+1F980 is four tokens of one byte each (golden "emoji").
  const std::vector<int32_t> crab = {175, 256, 102, 225};
  ASSERT_EQ(tokenizer_->Decode(crab), "\xF0\x9F\xA6\x80");
  IncrementalDecoder decoder(tokenizer_);
  EXPECT_EQ(decoder.Push(crab[0]), "");
  EXPECT_EQ(decoder.Push(crab[1]), "");
  EXPECT_EQ(decoder.Push(crab[2]), "");
  EXPECT_EQ(decoder.pending_bytes(), 3u);
  EXPECT_EQ(decoder.Push(crab[3]), "\xF0\x9F\xA6\x80");
  EXPECT_EQ(decoder.pending_bytes(), 0u);

  // An incomplete character at the end becomes U+FFFD on Flush.
  EXPECT_EQ(decoder.Push(crab[0]), "");
  EXPECT_EQ(decoder.Push(crab[1]), "");
  EXPECT_EQ(decoder.Flush(), "\xEF\xBF\xBD");
  EXPECT_EQ(decoder.pending_bytes(), 0u);

  // A byte that can never start a character is replaced at once, and the
  // text after it is not held back.
  const std::optional<int32_t> continuation =
      tokenizer_->TokenToId(ByteChar(0x80));
  ASSERT_TRUE(continuation.has_value());
  const std::optional<int32_t> x = tokenizer_->TokenToId("x");
  ASSERT_TRUE(x.has_value());
  EXPECT_EQ(decoder.Push(*continuation), "\xEF\xBF\xBD");
  EXPECT_EQ(decoder.Push(*x), "x");
  // A lead byte followed by a non-continuation: replaced, then the ASCII.
  EXPECT_EQ(decoder.Push(crab[0]), "");
  EXPECT_EQ(decoder.Push(*x), "\xEF\xBF\xBDx");
}

// ---------------------------------------------------------------------------
// Loading errors.

TEST(TokenizerLoadTest, MalformedJsonIsInvalidArgument) {
  for (const char* json : {"", "{", "{\"model\": }", "[1, 2]", "null"}) {
    auto tokenizer = Tokenizer::FromJson(json);
    ASSERT_FALSE(tokenizer.ok()) << json;
    EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kInvalidArgument)
        << json;
  }
  EXPECT_THAT(Tokenizer::FromJson("{").status().message(),
              HasSubstr("malformed JSON"));
}

TEST(TokenizerLoadTest, MissingFileIsNotFound) {
  auto tokenizer = Tokenizer::FromFile("/nonexistent/tokenizer.json");
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kNotFound);
}

TEST(TokenizerLoadTest, ErrorsNameTheFile) {
  const char* tmpdir = std::getenv("TEST_TMPDIR");
  const std::string path =
      std::string(tmpdir != nullptr ? tmpdir : "/tmp") + "/broken.json";
  {
    std::ofstream file(path);
    file << "{\"model\": {\"type\": \"BPE\"";
  }
  auto tokenizer = Tokenizer::FromFile(path);
  ASSERT_FALSE(tokenizer.ok());
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(tokenizer.status().message(), HasSubstr(path));
  std::remove(path.c_str());
}

// A small GPT-2 style tokenizer.json: every byte, a few merges.
Json SmallTokenizer(const std::vector<std::string>& merges) {
  Json vocab = Json::object();
  for (int b = 0; b < 256; ++b) vocab[ByteChar(b)] = b;
  Json merge_list = Json::array();
  for (const std::string& merge : merges) {
    const size_t space = merge.find(' ');
    const std::string merged = merge.substr(0, space) + merge.substr(space + 1);
    if (!vocab.contains(merged)) vocab[merged] = static_cast<int>(vocab.size());
    merge_list.push_back(merge);
  }
  return Json{{"version", "1.0"},
              {"added_tokens", Json::array()},
              {"normalizer", nullptr},
              {"pre_tokenizer",
               {{"type", "ByteLevel"},
                {"add_prefix_space", true},
                {"trim_offsets", true},
                {"use_regex", true}}},
              {"post_processor", nullptr},
              {"decoder", {{"type", "ByteLevel"}}},
              {"model",
               {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"vocab", vocab},
                {"merges", merge_list}}}};
}

std::unique_ptr<Tokenizer> Load(const Json& json) {
  auto tokenizer = Tokenizer::FromJson(json.dump());
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? *std::move(tokenizer) : nullptr;
}

std::vector<std::string> TokenStrings(const Tokenizer& tokenizer,
                                      std::string_view text) {
  std::vector<std::string> out;
  auto ids = tokenizer.Encode(text);
  EXPECT_TRUE(ids.ok()) << ids.status();
  if (!ids.ok()) return out;
  for (int32_t id : *ids) out.push_back(tokenizer.IdToToken(id).value_or("?"));
  return out;
}

TEST(TokenizerLoadTest, UnsupportedConfigurationsAreRejected) {
  struct Case {
    std::string name;
    std::function<void(Json*)> edit;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"wordpiece", [](Json* j) { (*j)["model"]["type"] = "WordPiece"; },
       "WordPiece"},
      {"no vocab", [](Json* j) { (*j)["model"].erase("vocab"); },
       "model.vocab"},
      {"no merges", [](Json* j) { (*j)["model"].erase("merges"); },
       "model.merges"},
      {"bad merge", [](Json* j) { (*j)["model"]["merges"].push_back("zz qq"); },
       "model.merges[1]"},
      {"merge not two",
       [](Json* j) { (*j)["model"]["merges"].push_back("a b c"); },
       "model.merges[1]"},
      {"vocab id", [](Json* j) { (*j)["model"]["vocab"]["a"] = "x"; },
       "model.vocab[\"a\"]"},
      {"nfkc",
       [](Json* j) {
         (*j)["normalizer"] = {{"type", "NFKC"}};
       },
       "NFKC"},
      {"no pre_tokenizer", [](Json* j) { (*j)["pre_tokenizer"] = nullptr; },
       "pre_tokenizer"},
      {"metaspace",
       [](Json* j) {
         (*j)["pre_tokenizer"] = {{"type", "Metaspace"}};
       },
       "Metaspace"},
      {"unknown regex",
       [](Json* j) {
         (*j)["pre_tokenizer"] = {
             {"type", "Sequence"},
             {"pretokenizers",
              {{{"type", "Split"},
                {"pattern", {{"Regex", "\\w+"}}},
                {"behavior", "Isolated"},
                {"invert", false}},
               {{"type", "ByteLevel"}, {"use_regex", false}}}}};
       },
       "\\w+"},
      {"decoder",
       [](Json* j) {
         (*j)["decoder"] = {{"type", "WordPiece"}};
       },
       "decoder"},
      {"added token",
       [](Json* j) {
         (*j)["added_tokens"] = {{{"content", "<s>"}}};
       },
       "added_tokens[0].id"},
  };
  for (const Case& c : cases) {
    Json json = SmallTokenizer({"a b"});
    c.edit(&json);
    auto tokenizer = Tokenizer::FromJson(json.dump());
    ASSERT_FALSE(tokenizer.ok()) << c.name;
    EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kInvalidArgument)
        << c.name;
    EXPECT_THAT(tokenizer.status().message(), HasSubstr(c.message)) << c.name;
  }
}

TEST(TokenizerNormalizerTest, NfcComposesBeforeSplitting) {
  // "e" + U+0301 (combining acute) is "é" (U+00E9) in NFC.
  const std::string decomposed = "caf\x65\xcc\x81 au lait";
  const std::string composed = "caf\xc3\xa9 au lait";
  Json json = SmallTokenizer({"a b"});
  auto plain = Load(json);
  json["normalizer"] = {{"type", "NFC"}};
  auto nfc = Load(json);
  ASSERT_NE(plain, nullptr);
  ASSERT_NE(nfc, nullptr);
  EXPECT_NE(*plain->Encode(decomposed), *plain->Encode(composed));
  EXPECT_EQ(*nfc->Encode(decomposed), *nfc->Encode(composed));
  EXPECT_EQ(nfc->Decode(*nfc->Encode(decomposed)),
            " " + composed);  // prefix space
  // ASCII and text already in NFC are unchanged.
  EXPECT_EQ(*nfc->Encode("x = 1\n"), *plain->Encode("x = 1\n"));
  EXPECT_EQ(*nfc->Encode(composed), *plain->Encode(composed));
}

// ---------------------------------------------------------------------------
// BPE and pipeline behaviour on small tokenizers.

TEST(SmallTokenizerTest, ByteLevelRegexAndPrefixSpace) {
  const std::string g = ByteChar(' ');  // "Ġ"
  auto tokenizer = Load(SmallTokenizer(
      {"h e", "l l", "he ll", "hell o", g + " hello", g + " w", g + "w o"}));
  ASSERT_NE(tokenizer, nullptr);
  // add_prefix_space turns "hello" into " hello"; the GPT-2 regex splits
  // before each space.
  EXPECT_THAT(TokenStrings(*tokenizer, "hello hello"),
              ElementsAre(g + "hello", g + "hello"));
  EXPECT_THAT(TokenStrings(*tokenizer, " wo"), ElementsAre(g + "wo"));
  auto ids = tokenizer->Encode("hello  world");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(tokenizer->Decode(*ids), " hello  world");
}

TEST(SmallTokenizerTest, MergesApplyByRankThenLeftmost) {
  // "b c" ranks before "a b": "abc" is a + bc, not ab + c.
  auto by_rank = Load(SmallTokenizer({"b c", "a b"}));
  ASSERT_NE(by_rank, nullptr);
  EXPECT_THAT(TokenStrings(*by_rank, "abc"),
              ElementsAre(ByteChar(' '), "a", "bc"));
  auto reversed = Load(SmallTokenizer({"a b", "b c"}));
  ASSERT_NE(reversed, nullptr);
  EXPECT_THAT(TokenStrings(*reversed, "abc"),
              ElementsAre(ByteChar(' '), "ab", "c"));
  // Equal ranks: leftmost first.
  auto leftmost = Load(SmallTokenizer({"a a"}));
  ASSERT_NE(leftmost, nullptr);
  EXPECT_THAT(TokenStrings(*leftmost, "aaa"),
              ElementsAre(ByteChar(' '), "aa", "a"));
  EXPECT_THAT(TokenStrings(*leftmost, "aaaa"),
              ElementsAre(ByteChar(' '), "aa", "aa"));
}

TEST(SmallTokenizerTest, MergesAsPairsAndIgnoreMerges) {
  Json json = SmallTokenizer({});
  json["model"]["merges"] =
      Json::array({Json::array({"a", "b"}), Json::array({"ab", "c"})});
  json["model"]["vocab"]["ab"] = 256;
  json["model"]["vocab"]["abc"] = 257;
  json["model"]["vocab"]["abcd"] = 258;
  json["pre_tokenizer"]["add_prefix_space"] = false;
  auto tokenizer = Load(json);
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_THAT(TokenStrings(*tokenizer, "abcd"), ElementsAre("abc", "d"));
  json["model"]["ignore_merges"] = true;
  auto ignoring = Load(json);
  ASSERT_NE(ignoring, nullptr);
  EXPECT_THAT(TokenStrings(*ignoring, "abcd"), ElementsAre("abcd"));
}

TEST(SmallTokenizerTest, AddedTokensLongestMatchAndStrip) {
  Json json = SmallTokenizer({});
  json["pre_tokenizer"]["add_prefix_space"] = false;
  json["added_tokens"] = {
      {{"id", 300}, {"content", "<a>"}, {"special", true}},
      {{"id", 301}, {"content", "<a><b>"}, {"special", true}},
      {{"id", 302},
       {"content", "<m>"},
       {"special", false},
       {"lstrip", true},
       {"rstrip", true}},
  };
  auto tokenizer = Load(json);
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_EQ(tokenizer->vocab_size(), 303);
  EXPECT_THAT(tokenizer->special_token_ids(), ElementsAre(300, 301));
  auto ids = tokenizer->Encode("<a><b><a>x");
  ASSERT_TRUE(ids.ok());
  // Byte b has id b in this vocabulary.
  EXPECT_THAT(*ids, ElementsAre(301, 300, 'x'));
  ids = tokenizer->Encode("x  <m>  y");
  ASSERT_TRUE(ids.ok());
  EXPECT_THAT(*ids, ElementsAre('x', 302, 'y'));
  EXPECT_EQ(tokenizer->Decode({300, 302}), "<a><m>");
}

TEST(SmallTokenizerTest, SingleWordAddedTokens) {
  Json json = SmallTokenizer({});
  json["pre_tokenizer"]["add_prefix_space"] = false;
  json["added_tokens"] = {{{"id", 300},
                           {"content", "zqj"},
                           {"special", false},
                           {"single_word", true},
                           {"normalized", true}}};
  auto tokenizer = Load(json);
  ASSERT_NE(tokenizer, nullptr);
  auto count = [&](std::string_view text) {
    auto ids = tokenizer->Encode(text);
    EXPECT_TRUE(ids.ok());
    return ids.ok() ? std::count(ids->begin(), ids->end(), 300) : -1;
  };
  EXPECT_EQ(count("zqj"), 1);
  EXPECT_EQ(count("a zqj b"), 1);
  EXPECT_EQ(count("zqj."), 1);
  EXPECT_EQ(count("zqjs zqj"), 1);
  EXPECT_EQ(count("azqjb"), 0);
  EXPECT_EQ(count("_zqj"), 0);
  EXPECT_EQ(count("1zqj"), 0);
  EXPECT_EQ(count("\xC3\xA9zqj"), 0);          // After a letter.
  EXPECT_EQ(count("zqj\xCC\x81"), 0);          // Before a combining mark.
  EXPECT_EQ(count("\xF0\x93\xB2\x8Bzqj"), 0);  // After a Unicode 16 letter.
}

// ---------------------------------------------------------------------------
// The pre-tokenizer split scanner.

TEST(SplitByPatternTest, RecognisesKnownRegexes) {
  EXPECT_EQ(
      SplitPatternFromRegex(
          R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"),
      SplitPattern::kQwen2);
  EXPECT_EQ(
      SplitPatternFromRegex(
          R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)"),
      SplitPattern::kGpt2);
  EXPECT_EQ(SplitPatternFromRegex(R"(\s+)"), std::nullopt);
}

TEST(SplitByPatternTest, Qwen2Whitespace) {
  const SplitPattern q = SplitPattern::kQwen2;
  EXPECT_THAT(Pieces("a  b", q), ElementsAre("a", " ", " b"));
  EXPECT_THAT(Pieces("a b", q), ElementsAre("a", " b"));
  EXPECT_THAT(Pieces("x\n\n  y", q), ElementsAre("x", "\n\n", " ", " y"));
  EXPECT_THAT(Pieces("  ", q), ElementsAre("  "));
  EXPECT_THAT(Pieces(" ", q), ElementsAre(" "));
  EXPECT_THAT(Pieces("hi  ", q), ElementsAre("hi", "  "));
  EXPECT_THAT(Pieces("hi \n", q), ElementsAre("hi", " \n"));
  EXPECT_THAT(Pieces("a \t\n \n  b", q),
              ElementsAre("a", " \t\n \n", " ", " b"));
  EXPECT_THAT(Pieces("\r\n\r\nend", q), ElementsAre("\r\n\r\n", "end"));
  EXPECT_THAT(Pieces("\t\td", q), ElementsAre("\t", "\td"));
  // A newline never starts a word, unlike other whitespace.
  EXPECT_THAT(Pieces("x\nfoo\r\nbar\r", q),
              ElementsAre("x", "\n", "foo", "\r\n", "bar", "\r"));
  EXPECT_THAT(Pieces("   c", q), ElementsAre("  ", " c"));
  EXPECT_THAT(Pieces("x \n", q), ElementsAre("x", " \n"));
  EXPECT_THAT(Pieces("x  1", q), ElementsAre("x", " ", " ", "1"));
  EXPECT_THAT(Pieces("", q), ElementsAre());
}

TEST(SplitByPatternTest, Qwen2UnicodeWhitespace) {
  const SplitPattern q = SplitPattern::kQwen2;
  // U+3000 IDEOGRAPHIC SPACE and U+00A0 are \s; U+200B is not.
  EXPECT_THAT(Pieces("a\xE3\x80\x80\xE3\x80\x80"
                     "b",
                     q),
              ElementsAre("a", "\xE3\x80\x80",
                          "\xE3\x80\x80"
                          "b"));
  EXPECT_THAT(Pieces("a\xC2\xA0\xC2\xA0", q),
              ElementsAre("a", "\xC2\xA0\xC2\xA0"));
  EXPECT_THAT(Pieces("a\xC2\x85\n", q), ElementsAre("a", "\xC2\x85\n"));
  EXPECT_THAT(Pieces("a\xE2\x80\x8B\xE2\x80\x8B", q),
              ElementsAre("a", "\xE2\x80\x8B\xE2\x80\x8B"));
}

TEST(SplitByPatternTest, WhiteSpaceIsTheUnicodeProperty) {
  const std::vector<std::string> white_space = {
      "\t",           "\n",           "\v",
      "\f",           "\r",           " ",
      "\xC2\x85",     "\xC2\xA0",     "\xE1\x9A\x80",
      "\xE2\x80\x80", "\xE2\x80\x85", "\xE2\x80\x8A",
      "\xE2\x80\xA8", "\xE2\x80\xA9", "\xE2\x80\xAF",
      "\xE2\x81\x9F", "\xE3\x80\x80"};
  for (const std::string& ws : white_space) {
    if (ws == "\n" || ws == "\r") continue;  // \s*[\r\n]+ applies to these.
    EXPECT_THAT(Pieces("a" + ws + ws + "b", SplitPattern::kQwen2),
                ElementsAre("a", ws, ws + "b"))
        << ws;
  }
  // Not White_Space: U+001C, U+180E, U+200B, U+FEFF are symbols here.
  for (const std::string& other :
       {std::string("\x1C"), std::string("\xE1\xA0\x8E"),
        std::string("\xE2\x80\x8B"), std::string("\xEF\xBB\xBF")}) {
    EXPECT_THAT(Pieces("a" + other + other + "b", SplitPattern::kQwen2),
                ElementsAre("a", other + other, "b"))
        << other;
  }
}

TEST(SplitByPatternTest, Qwen2LettersNumbersAndPunctuation) {
  const SplitPattern q = SplitPattern::kQwen2;
  EXPECT_THAT(Pieces("12345", q), ElementsAre("1", "2", "3", "4", "5"));
  EXPECT_THAT(Pieces("x=12;", q), ElementsAre("x", "=", "1", "2", ";"));
  EXPECT_THAT(Pieces("foo!!\n\nbar", q), ElementsAre("foo", "!!\n\n", "bar"));
  EXPECT_THAT(Pieces("(a, b):\n", q), ElementsAre("(a", ",", " b", "):\n"));
  EXPECT_THAT(Pieces("print(\"x\")", q),
              ElementsAre("print", "(\"", "x", "\")"));
  EXPECT_THAT(Pieces("na\xC3\xAFve caf\xC3\xA9", q),
              ElementsAre("na\xC3\xAFve", " caf\xC3\xA9"));
  EXPECT_THAT(
      Pieces("\xE4\xBD\xA0\xE5\xA5\xBD\xEF\xBC\x8C\xE4\xB8\x96", q),
      ElementsAre("\xE4\xBD\xA0\xE5\xA5\xBD", "\xEF\xBC\x8C\xE4\xB8\x96"));
  // Astral letters (U+1D400, U+1D401) and an astral digit (U+1D7CF).
  EXPECT_THAT(
      Pieces("\xF0\x9D\x90\x80\xF0\x9D\x90\x81\xF0\x9D\x9F\x8F", q),
      ElementsAre("\xF0\x9D\x90\x80\xF0\x9D\x90\x81", "\xF0\x9D\x9F\x8F"));
  // Unicode 16.0 letters (U+13C8B, Egyptian hieroglyph) and digits (U+1E5F1).
  EXPECT_THAT(Pieces("e\xF0\x93\xB2\x8B'll\xF0\x9E\x97\xB1", q),
              ElementsAre("e\xF0\x93\xB2\x8B", "'ll", "\xF0\x9E\x97\xB1"));
  // Other numbers: superscript two (No), roman numeral (Nl).
  EXPECT_THAT(Pieces("x\xC2\xB2\xE2\x85\xA0", q),
              ElementsAre("x", "\xC2\xB2", "\xE2\x85\xA0"));
  // A combining mark is not a letter.
  EXPECT_THAT(Pieces("e\xCC\x81t", q), ElementsAre("e", "\xCC\x81t"));
  // Emoji are symbols.
  EXPECT_THAT(Pieces(" \xF0\x9F\xA6\x80\xF0\x9F\x9A\x80!", q),
              ElementsAre(" \xF0\x9F\xA6\x80\xF0\x9F\x9A\x80!"));
}

TEST(SplitByPatternTest, Qwen2Contractions) {
  const SplitPattern q = SplitPattern::kQwen2;
  EXPECT_THAT(Pieces("'S", q), ElementsAre("'S"));
  EXPECT_THAT(Pieces("he'S here", q), ElementsAre("he", "'S", " here"));
  EXPECT_THAT(Pieces("we'Re they'LL I'm", q),
              ElementsAre("we", "'Re", " they", "'LL", " I", "'m"));
  EXPECT_THAT(Pieces("'sam", q), ElementsAre("'s", "am"));
  // Case-insensitive: the contraction wins over "'" + letters.
  EXPECT_THAT(Pieces("'Sam", q), ElementsAre("'S", "am"));
  EXPECT_THAT(Pieces("'LLama 'rEd", q), ElementsAre("'LL", "ama", " '", "rEd"));
  // LATIN SMALL LETTER LONG S case-folds to s.
  EXPECT_THAT(Pieces("'\xC5\xBFt", q), ElementsAre("'\xC5\xBF", "t"));
  EXPECT_THAT(Pieces("'x", q), ElementsAre("'x"));
  EXPECT_THAT(Pieces("it''s", q), ElementsAre("it", "''", "s"));
}

TEST(SplitByPatternTest, Gpt2) {
  const SplitPattern g = SplitPattern::kGpt2;
  EXPECT_THAT(Pieces("12345", g), ElementsAre("12345"));
  // U+1E5F1 is a digit since Unicode 16.0.
  EXPECT_THAT(Pieces("1\xF0\x9E\x97\xB1", g), ElementsAre("1\xF0\x9E\x97\xB1"));
  EXPECT_THAT(Pieces("a 123", g), ElementsAre("a", " 123"));
  EXPECT_THAT(Pieces("he'S", g), ElementsAre("he", "'", "S"));
  EXPECT_THAT(Pieces("he's", g), ElementsAre("he", "'s"));
  EXPECT_THAT(Pieces("a  b", g), ElementsAre("a", " ", " b"));
  EXPECT_THAT(Pieces("x\n\n  y", g), ElementsAre("x", "\n\n ", " y"));
  EXPECT_THAT(Pieces("\tx", g), ElementsAre("\t", "x"));
  EXPECT_THAT(Pieces("a !!", g), ElementsAre("a", " !!"));
  EXPECT_THAT(Pieces("end  ", g), ElementsAre("end", "  "));
}

TEST(SplitByPatternTest, Cl100kGroupsDigitsInThrees) {
  EXPECT_THAT(Pieces("1234567", SplitPattern::kCl100k),
              ElementsAre("123", "456", "7"));
  EXPECT_THAT(Pieces("x 12", SplitPattern::kCl100k),
              ElementsAre("x", " ", "12"));
}

TEST(SplitByPatternTest, PiecesCoverTheText) {
  const std::string text =
      "  Mixed: \xCE\xB1\xCE\xB2 12 \xF0\x9F\x98\x80\r\n\t 'LL x  ";
  for (SplitPattern p :
       {SplitPattern::kGpt2, SplitPattern::kQwen2, SplitPattern::kCl100k}) {
    std::string joined;
    for (std::string_view piece : SplitByPattern(text, p)) {
      EXPECT_FALSE(piece.empty());
      joined += piece;
    }
    EXPECT_EQ(joined, text);
  }
}

// ---------------------------------------------------------------------------
// UTF-8 helpers.

TEST(Utf8Test, IsValidUtf8) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("plain"));
  EXPECT_TRUE(IsValidUtf8("\xC3\xA9\xE4\xBD\xA0\xF0\x9F\xA6\x80"));
  EXPECT_TRUE(IsValidUtf8("\xF4\x8F\xBF\xBF"));  // U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\x80"));
  EXPECT_FALSE(IsValidUtf8("\xC3"));
  EXPECT_FALSE(IsValidUtf8("\xC1\xBF"));          // Overlong.
  EXPECT_FALSE(IsValidUtf8("\xE0\x80\xAF"));      // Overlong.
  EXPECT_FALSE(IsValidUtf8("\xED\xB0\x80"));      // Surrogate.
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // Above U+10FFFF.
  EXPECT_FALSE(IsValidUtf8("\xFE"));
}

TEST(Utf8Test, ReplaceInvalidUtf8) {
  EXPECT_EQ(ReplaceInvalidUtf8("ok"), "ok");
  EXPECT_EQ(ReplaceInvalidUtf8("a\xFF"
                               "b"),
            "a\xEF\xBF\xBD"
            "b");
  // A truncated sequence is one replacement; two stray bytes are two.
  EXPECT_EQ(ReplaceInvalidUtf8("\xF0\x9F\xA6"), "\xEF\xBF\xBD");
  EXPECT_EQ(ReplaceInvalidUtf8("\x80\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(ReplaceInvalidUtf8("\xE4\xBD"
                               "x"),
            "\xEF\xBF\xBDx");
}

}  // namespace
}  // namespace deltaserve
