// `--set a.b.c=value` overrides, and the effective config (every default made explicit).
#include <google/protobuf/stubs/strutil.h>
#include <google/protobuf/text_format.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "common/error.h"
#include "configs/config.h"
#include "configs/config_text.h"

namespace cadtrain::config {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t");
  const auto e = s.find_last_not_of(" \t");
  return b == std::string::npos ? std::string{} : s.substr(b, e - b + 1);
}

const FieldDescriptor* find_field(const Descriptor* desc, const std::string& name) {
  const FieldDescriptor* field = desc->FindFieldByName(name);
  if (field != nullptr) return field;
  std::string names;
  for (int i = 0; i < desc->field_count(); ++i) names += fmt::format("{}{}", i ? ", " : "", desc->field(i)->name());
  fail("{} has no field '{}' (its fields: {})", desc->name(), name, names);
}

// Text-format spelling of `value` for `field`: strings may be given unquoted on a command line.
std::string text_value(const FieldDescriptor* field, const std::string& value) {
  const bool quoted = !value.empty() && (value.front() == '"' || value.front() == '\'');
  if (field->type() == FieldDescriptor::TYPE_STRING && !field->is_repeated() && !quoted) {
    return fmt::format("\"{}\"", google::protobuf::CEscape(value));
  }
  return value;
}

// Sets every unset singular field to its default, recursing into messages.
void fill_defaults(Message* msg) {
  const Reflection* r = msg->GetReflection();
  const Descriptor* desc = msg->GetDescriptor();
  for (int i = 0; i < desc->field_count(); ++i) {
    const FieldDescriptor* f = desc->field(i);
    if (f->is_repeated()) {
      if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
        for (int j = 0; j < r->FieldSize(*msg, f); ++j) fill_defaults(r->MutableRepeatedMessage(msg, f, j));
      }
      continue;
    }
    if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      fill_defaults(r->MutableMessage(msg, f));
      continue;
    }
    if (r->HasField(*msg, f)) continue;
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32: r->SetInt32(msg, f, r->GetInt32(*msg, f)); break;
      case FieldDescriptor::CPPTYPE_INT64: r->SetInt64(msg, f, r->GetInt64(*msg, f)); break;
      case FieldDescriptor::CPPTYPE_UINT32: r->SetUInt32(msg, f, r->GetUInt32(*msg, f)); break;
      case FieldDescriptor::CPPTYPE_UINT64: r->SetUInt64(msg, f, r->GetUInt64(*msg, f)); break;
      case FieldDescriptor::CPPTYPE_FLOAT: r->SetFloat(msg, f, r->GetFloat(*msg, f)); break;
      case FieldDescriptor::CPPTYPE_DOUBLE: r->SetDouble(msg, f, r->GetDouble(*msg, f)); break;
      case FieldDescriptor::CPPTYPE_BOOL: r->SetBool(msg, f, r->GetBool(*msg, f)); break;
      case FieldDescriptor::CPPTYPE_ENUM: r->SetEnum(msg, f, r->GetEnum(*msg, f)); break;
      case FieldDescriptor::CPPTYPE_STRING: r->SetString(msg, f, r->GetString(*msg, f)); break;
      case FieldDescriptor::CPPTYPE_MESSAGE: break;
    }
  }
}

}  // namespace

void apply_override(RunConfig& cfg, const std::string& assignment) {
  with_context(fmt::format("--set {}", assignment), [&] {
    const auto eq = assignment.find('=');
    if (eq == std::string::npos || trim(assignment.substr(0, eq)).empty()) {
      fail("expected field.path=value, e.g. optimizer.lr=3e-4");
    }
    const std::string path = trim(assignment.substr(0, eq));
    const std::string value = trim(assignment.substr(eq + 1));

    Message* msg = &cfg;
    size_t start = 0;
    for (size_t dot = path.find('.'); dot != std::string::npos; dot = path.find('.', start)) {
      const FieldDescriptor* field = find_field(msg->GetDescriptor(), path.substr(start, dot - start));
      if (field->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE || field->is_repeated()) {
        fail("'{}' is not a message field, so nothing can be set inside it", field->full_name());
      }
      msg = msg->GetReflection()->MutableMessage(msg, field);
      start = dot + 1;
    }
    const FieldDescriptor* leaf = find_field(msg->GetDescriptor(), path.substr(start));
    // The override replaces the field (a repeated field's whole list), it never appends.
    msg->GetReflection()->ClearField(msg, leaf);
    google::protobuf::TextFormat::Parser parser;
    CollectingErrors errors;
    parser.RecordErrorsTo(&errors);
    // Parsed into a scratch message first: a value such as "3 n_heads: 8" would set a second field.
    std::unique_ptr<Message> parsed(msg->New());
    if (!parser.MergeFromString(fmt::format("{}: {}", leaf->name(), text_value(leaf, value)), parsed.get())) {
      std::string message = fmt::format("cannot set {}", leaf->full_name());
      // The parser's line:column refer to our one-line snippet, so keep only its words.
      for (const auto& e : errors.errors()) message += ": " + e.substr(e.find(' ') + 1);
      fail("{}", message);
    }
    std::vector<const FieldDescriptor*> set;
    parsed->GetReflection()->ListFields(*parsed, &set);
    if (set.size() > 1 || (set.size() == 1 && set.front() != leaf) || (set.empty() && !leaf->is_repeated())) {
      fail("the value sets more than {} (one --set sets one field; give each field its own --set)",
           leaf->full_name());
    }
    msg->MergeFrom(*parsed);
  });
}

std::string effective_config_text(const RunConfig& cfg, const std::string& provenance) {
  RunConfig full = cfg;
  fill_defaults(&full);
  std::string body;
  google::protobuf::TextFormat::PrintToString(full, &body);
  return fmt::format(
      "# Effective config: every field explicit, defaults included (schema: configs/cadtrain.proto).\n"
      "# From: {}\n{}",
      provenance, body);
}

void write_effective_config(const RunConfig& cfg, const std::string& provenance, const std::string& path) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << effective_config_text(cfg, provenance);
    out.close();
    if (!out) fail("cannot write effective config {}", tmp);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) fail("cannot rename {} to {}: {}", tmp, path, ec.message());
}

}  // namespace cadtrain::config
