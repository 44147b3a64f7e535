// Internal to configs/: a protobuf text-format error collector that keeps every message with
// its 1-based line:column, shared by the file loader and --set overrides.
#pragma once

#include <google/protobuf/io/tokenizer.h>

#include <algorithm>
#include <regex>
#include <string>
#include <vector>

#include <fmt/format.h>

namespace cadtrain::config {

class CollectingErrors : public google::protobuf::io::ErrorCollector {
 public:
  // `text` (optional) is the parsed source: errors then quote the line with a caret under the
  // column and name the field being set there, since the parser's own words often do not.
  explicit CollectingErrors(const std::string* text = nullptr) : text_(text) {}

  void AddError(int line, google::protobuf::io::ColumnNumber column, const std::string& message) override {
    std::string error = fmt::format("{}:{}: {}", line + 1, column + 1, message);
    if (text_ != nullptr) error += quote_line(line, column);
    errors_.push_back(error);
  }
  void AddWarning(int line, google::protobuf::io::ColumnNumber column, const std::string& message) override {
    AddError(line, column, message);
  }
  const std::vector<std::string>& errors() const { return errors_; }

 private:
  std::string quote_line(int line, int column) const {
    size_t begin = 0;
    for (int i = 0; i < line && begin != std::string::npos; ++i) {
      begin = text_->find('\n', begin);
      if (begin != std::string::npos) ++begin;
    }
    if (begin == std::string::npos || begin >= text_->size()) return {};
    const std::string source_line = text_->substr(begin, text_->find('\n', begin) - begin);
    std::string out;
    // The field being set: the last "name:" before the error's column.
    static const std::regex field_re(R"(([A-Za-z_][A-Za-z0-9_]*)\s*:)");
    const std::string before = source_line.substr(0, std::min<size_t>(column + 1, source_line.size()));
    std::string field;
    for (std::sregex_iterator it(before.begin(), before.end(), field_re), end; it != end; ++it) {
      field = (*it)[1];
    }
    if (!field.empty()) out += fmt::format(" (field '{}')", field);
    return fmt::format("{}\n      {}\n      {}^", out, source_line, std::string(column, ' '));
  }

  const std::string* text_;
  std::vector<std::string> errors_;
};

}  // namespace cadtrain::config
