/// \file codec/json_syntax_error.hpp
/// Names where and why nlohmann/json stopped parsing a body, in ASCII and without echoing
/// the input: "at byte 3: invalid string: ill-formed UTF-8 byte". For the JSON that goes
/// through nlohmann (the registry's device JSON; the feedback codec's test oracle).
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>

namespace devicebound::codec {

namespace detail {

/// A SAX handler that only records why and where parsing stopped: run it after the
/// exception-free DOM parse has failed, to name the problem. It drops nlohmann's
/// `last read: '...'` by matching the exact token text, and an overflowing number is not
/// repeated.
class json_syntax_error final : public nlohmann::json_sax<nlohmann::json> {
 public:
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return true; }
  bool key(string_t&) override { return true; }
  bool end_object() override { return true; }
  bool start_array(std::size_t) override { return true; }
  bool end_array() override { return true; }
  bool parse_error(std::size_t byte, const std::string& last_token,
                   const nlohmann::json::exception& ex) override {
    byte_ = byte;
    what_ = ex.what();
    last_token_ = last_token;
    return false;
  }

  /// "at byte 3: invalid string: ill-formed UTF-8 byte". nlohmann's text is
  /// trimmed of its id, line/column and the echo of the input (`last read:
  /// '...'`, the overflowing number), so the message is always ASCII.
  std::string describe() const {
    std::string text = what_;
    if (const auto p = text.find("] "); text.starts_with("[json.exception.") && p != text.npos)
      text.erase(0, p + 2);
    if (text.starts_with("parse error at line "))
      if (const auto p = text.find(": "); p != text.npos)
        text.erase(0, p + 2);
    if (text.starts_with("syntax error while parsing value - "))
      text.erase(0, 35);
    if (const auto p = text.find("; last read: '" + last_token_ + "'"); p != text.npos)
      text.erase(p, 15 + last_token_.size());
    if (text.starts_with("number overflow parsing '"))
      text = "number overflow";
    for (char& c : text)
      if (c < 0x20 || c > 0x7E)
        c = '?';
    return "at byte " + std::to_string(byte_) + ": " + text;
  }

 private:
  std::size_t byte_ = 0;
  std::string what_;
  std::string last_token_;
};

}  // namespace detail

}  // namespace devicebound::codec
