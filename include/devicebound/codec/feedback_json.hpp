/// \file feedback_json.hpp
/// The JSON body of a feedback message: an array of records (SPEC 4.5).
///
/// Its own small reader and writer rather than nlohmann/json: this header is on
/// the MQTT service transport's include path (codec/protocol.hpp), which stays
/// light (docs/architecture.md). They behave as the nlohmann-based codec they
/// replaced, byte for byte and message for message; fuzz/feedback_json_fuzz.cpp
/// holds them against it (fuzz/feedback_json_reference.hpp).
#pragma once

#include <array>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "../errors.hpp"
#include "../feedback_batch.hpp"
#include "iso8601.hpp"
#include "utf8.hpp"

namespace devicebound::codec {

namespace detail {

/// Appends `s` as a quoted JSON string, as nlohmann/json's `dump` writes it
/// (ensure_ascii off, error_handler_t::replace): UTF-8 as it is; `"`, `\` and
/// the control characters escaped (`\b \f \n \r \t`, the others `\u00xx` in
/// lowercase hex); `/` and DEL as they are; each ill-formed UTF-8 sequence
/// (the longest well-formed prefix of one, or a byte that begins none) as one
/// U+FFFD, the byte that broke it read again.
inline void append_json_string(std::string& out, std::string_view s) {
  static constexpr char hex[] = "0123456789abcdef";
  static constexpr std::string_view escaped = "\"\\\b\f\n\r\t", letters = "\"\\bfnrt";
  out += '"';
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      const utf8_step step = utf8_next(s, i);
      if (step.ok)
        out.append(s.substr(i, step.size));
      else
        out += "\xEF\xBF\xBD";
      i += step.size == 0 ? 1 : step.size;
      continue;
    }
    ++i;
    if (const auto k = escaped.find(static_cast<char>(c)); k != escaped.npos) {
      out += '\\';
      out += letters[k];
    } else if (c < 0x20) {
      out += "\\u00";
      out += hex[c >> 4];
      out += hex[c & 0xF];
    } else {
      out += static_cast<char>(c);
    }
  }
  out += '"';
}

/// JSON value kinds, named as nlohmann/json's `type_name()` names them.
enum class json_kind : std::uint8_t { missing, null, boolean, number, string, array, object };

constexpr const char* json_kind_name(json_kind k) noexcept {
  constexpr const char* names[] = {"missing", "null",  "boolean", "number",
                                   "string",  "array", "object"};
  return names[static_cast<std::size_t>(k)];
}

/// Reads a feedback body in one pass, without a DOM: checks the whole text's
/// syntax and builds the records of the top-level array on the way. Syntax
/// errors win over record errors (the first record error is kept until the
/// end), and every message is as nlohmann/json 3.11's parser (with the
/// trimming the reference does) would have given it, byte position included:
/// the count of bytes read, the one that failed included, the end of input
/// counting as one byte.
///
/// Nesting is tracked in a string with a byte per level, not by recursion, so
/// `[[[[...` of any depth costs a byte a level and no stack; there is no depth
/// limit, as there was none with nlohmann's (also iterative) parser.
///
/// nlohmann quirks kept, so the same bodies are accepted: a UTF-8 BOM at the
/// very start is skipped (a partial one is an error); a NUL byte outside a
/// string ends the input, and the bytes after it are not read (a C sender's
/// terminator); `\u0000` is allowed in strings.
class feedback_reader {
 public:
  explicit feedback_reader(std::string_view in) noexcept : in_(in) {}

  result<std::vector<feedback_record>> read() {
    token t = scan();
    bool need_value = true;  // `t` must begin a value
    for (;;) {
      if (need_value) {
        need_value = false;
        switch (t) {
          case token::begin_object:
            value(json_kind::object);
            if ((t = scan()) == token::end_object) {
              closed('{');
              break;
            }
            nesting_ += '{';
            if (!member(t))
              return std::move(syntax_);
            need_value = true;
            continue;
          case token::begin_array:
            value(json_kind::array);
            if ((t = scan()) == token::end_array) {
              closed('[');
              break;
            }
            nesting_ += '[';
            need_value = true;
            continue;
          case token::number:
            if (overflow_) {
              why_ = "number overflow";
              return syntax_error(nullptr, token::error, nullptr);
            }
            value(json_kind::number);
            break;
          case token::string:
            value(json_kind::string);
            break;
          case token::literal_true:
          case token::literal_false:
            value(json_kind::boolean);
            break;
          case token::literal_null:
            value(json_kind::null);
            break;
          case token::error:
            return syntax_error(nullptr, t, nullptr);
          default:
            return syntax_error(nullptr, t, "'[', '{', or a literal");
        }
      }
      // A value has ended.
      if (nesting_.empty())
        break;
      t = scan();
      if (nesting_.back() == '[') {
        if (t == token::value_separator) {
          t = scan();
          need_value = true;
        } else if (t == token::end_array) {
          nesting_.pop_back();
          closed('[');
        } else {
          return syntax_error("array", t, "']'");
        }
      } else if (t == token::value_separator) {
        t = scan();
        if (!member(t))
          return std::move(syntax_);
        need_value = true;
      } else if (t == token::end_object) {
        nesting_.pop_back();
        closed('{');
      } else {
        return syntax_error("object", t, "'}'");
      }
    }
    if (const token t = scan(); t != token::end_of_input)
      return syntax_error(nullptr, t, "end of input");
    if (top_ != json_kind::array)
      return fail(std::string("is a JSON ") + json_kind_name(top_) +
                  ", expected an array of records");
    if (!problem_.empty())
      return fail(std::move(problem_));
    return std::move(records_);
  }

 private:
  // clang-format off
  enum class token : std::uint8_t {
    begin_array, end_array, begin_object, end_object, name_separator, value_separator,
    string, number, literal_true, literal_false, literal_null, end_of_input, error
  };
  // As nlohmann/json's lexer names them.
  static constexpr const char* token_name(token t) noexcept {
    constexpr const char* names[] = {
        "'['", "']'", "'{'", "'}'", "':'", "','",
        "string literal", "number literal", "true literal", "false literal", "null literal",
        "end of input", "<parse error>"};
    return names[static_cast<std::size_t>(t)];
  }
  // clang-format on

  // The record fields, in the order they are checked.
  static constexpr std::size_t field_count = 6;
  static constexpr std::array<std::string_view, field_count> field_names = {
      "originalMessageId", "enqueuedTimeUtc", "statusCode",
      "description",       "deviceId",        "deviceGenerationId"};
  enum field : std::size_t { message_id, enqueued, status, description, device, generation };

  struct field_value {
    json_kind kind = json_kind::missing;
    std::string text;  // the decoded string, if kind is string
  };

  static result<std::vector<feedback_record>> fail(std::string problem) {
    return make_error(errc::malformed, "feedback body: " + std::move(problem));
  }

  // ---- lexer --------------------------------------------------------------

  unsigned char byte(std::size_t i) const noexcept { return static_cast<unsigned char>(in_[i]); }

  // Takes `c` if it is the next byte.
  bool take(char c) noexcept {
    if (pos_ < in_.size() && in_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }

  bool next_is_digit() const noexcept {
    return pos_ < in_.size() && in_[pos_] >= '0' && in_[pos_] <= '9';
  }

  void skip_digits() noexcept {
    while (next_is_digit())
      ++pos_;
  }

  // A lexical error found once `at` bytes were read.
  token fail_at(std::size_t at, const char* why) {
    end_ = at;
    why_ = why;
    return token::error;
  }

  token scan() {
    if (pos_ == 0 && !in_.empty() && byte(0) == 0xEF) {
      static constexpr const char* bad_bom = "invalid BOM; must be 0xEF 0xBB 0xBF if given";
      if (in_.size() < 2 || byte(1) != 0xBB)
        return fail_at(2, bad_bom);
      if (in_.size() < 3 || byte(2) != 0xBF)
        return fail_at(3, bad_bom);
      pos_ = 3;
    }
    while (pos_ < in_.size() &&
           (in_[pos_] == ' ' || in_[pos_] == '\t' || in_[pos_] == '\n' || in_[pos_] == '\r'))
      ++pos_;
    if (pos_ == in_.size()) {
      end_ = pos_ + 1;
      return token::end_of_input;
    }
    const char c = in_[pos_++];
    end_ = pos_;
    if (const auto k = std::string_view("[]{}:,").find(c); k != std::string_view::npos)
      return static_cast<token>(k);  // in the order of `token`
    if (c == 't')
      return literal("rue", token::literal_true);
    if (c == 'f')
      return literal("alse", token::literal_false);
    if (c == 'n')
      return literal("ull", token::literal_null);
    if (c == '"')
      return string();
    if (c == '-' || (c >= '0' && c <= '9'))
      return number();
    if (c == '\0')
      return token::end_of_input;
    return fail_at(pos_, "invalid literal");
  }

  token literal(std::string_view rest, token t) {
    for (const char c : rest)
      if (!take(c))
        return fail_at(pos_ + 1, "invalid literal");
    end_ = pos_;
    return t;
  }

  token number() {
    const std::size_t start = pos_ - 1;
    if (in_[start] == '-') {
      if (!next_is_digit())
        return fail_at(pos_ + 1, "invalid number; expected digit after '-'");
      ++pos_;
    }
    if (in_[pos_ - 1] != '0')
      skip_digits();
    if (take('.')) {
      if (!next_is_digit())
        return fail_at(pos_ + 1, "invalid number; expected digit after '.'");
      skip_digits();
    }
    if (take('e') || take('E')) {
      if (take('+') || take('-')) {
        if (!next_is_digit())
          return fail_at(pos_ + 1, "invalid number; expected digit after exponent sign");
      } else if (!next_is_digit()) {
        return fail_at(pos_ + 1, "invalid number; expected '+', '-', or digit after exponent");
      }
      skip_digits();
    }
    end_ = pos_;
    overflow_ = overflows(in_.substr(start, pos_ - start));
    return token::number;
  }

  // Whether a JSON number's nearest double is infinite.
  static bool overflows(std::string_view text) noexcept {
    double value = 0;
    const auto [_, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec == std::errc{})
      return value > std::numeric_limits<double>::max() ||
             value < -std::numeric_limits<double>::max();
    if (ec != std::errc::result_out_of_range)
      return false;
    // Too large, or too small (an underflow, which reads as 0 or a subnormal):
    // told apart by the decimal exponent of the first nonzero digit.
    std::size_t i = text[0] == '-' ? 1 : 0;
    long long int_digits = 0, first_nonzero = -1, digits = 0;
    for (; i < text.size() && text[i] != 'e' && text[i] != 'E'; ++i) {
      if (text[i] == '.') {
        int_digits = digits;
        continue;
      }
      if (text[i] != '0' && first_nonzero < 0)
        first_nonzero = digits;
      ++digits;
    }
    if (text.find('.') == text.npos)
      int_digits = digits;
    long long exponent = 0;
    bool negative = false;
    if (i < text.size()) {
      ++i;
      negative = text[i] == '-';
      if (text[i] == '+' || text[i] == '-')
        ++i;
      for (; i < text.size() && exponent < 1'000'000'000; ++i)
        exponent = exponent * 10 + (text[i] - '0');
    }
    if (first_nonzero < 0)
      return false;
    return int_digits - 1 - first_nonzero + (negative ? -exponent : exponent) >= 0;
  }

  token string() {
    str_.clear();
    for (;;) {
      if (pos_ == in_.size())
        return fail_at(pos_ + 1, "invalid string: missing closing quote");
      const unsigned char c = byte(pos_++);
      if (c == '"') {
        end_ = pos_;
        return token::string;
      }
      if (c == '\\') {
        if (!escape())
          return token::error;
      } else if (c < 0x20) {
        return control_character(c);
      } else if (c < 0x80) {
        str_ += static_cast<char>(c);
      } else {
        const utf8_step step = utf8_next(in_, pos_ - 1);
        if (!step.ok)
          return fail_at(pos_ + step.size, "invalid string: ill-formed UTF-8 byte");
        str_.append(in_.substr(pos_ - 1, step.size));
        pos_ += step.size - 1;
      }
    }
  }

  token control_character(unsigned char c) {
    static constexpr const char* names[] = {"NUL", "SOH", "STX", "ETX", "EOT", "ENQ", "ACK", "BEL",
                                            "BS",  "HT",  "LF",  "VT",  "FF",  "CR",  "SO",  "SI",
                                            "DLE", "DC1", "DC2", "DC3", "DC4", "NAK", "SYN", "ETB",
                                            "CAN", "EM",  "SUB", "ESC", "FS",  "GS",  "RS",  "US"};
    static constexpr char hex[] = "0123456789ABCDEF";
    const std::string code = {'0', '0', hex[c >> 4], hex[c & 0xF]};
    std::string why = "invalid string: control character U+" + code + " (" + names[c] +
                      ") must be escaped to \\u" + code;
    if (const auto k = std::string_view("\b\t\n\f\r").find(static_cast<char>(c));
        k != std::string_view::npos) {
      why += " or \\";
      why += "btnfr"[k];
    }
    end_ = pos_;
    why_ = std::move(why);
    return token::error;
  }

  // After a backslash in a string; false (and why_ set) on an error.
  bool escape() {
    if (pos_ == in_.size()) {
      fail_at(pos_ + 1, "invalid string: forbidden character after backslash");
      return false;
    }
    const char e = in_[pos_++];
    static constexpr std::string_view letters = "\"\\/bfnrt", bytes = "\"\\/\b\f\n\r\t";
    if (const auto k = letters.find(e); k != letters.npos) {
      str_ += bytes[k];
      return true;
    }
    if (e == 'u')
      return unicode_escape();
    fail_at(pos_, "invalid string: forbidden character after backslash");
    return false;
  }

  // Four hex digits, or -1 (and why_ set).
  long hex4() {
    long v = 0;
    for (int k = 0; k < 4; ++k, ++pos_) {
      const char c = pos_ < in_.size() ? in_[pos_] : '\0';
      int h = -1;
      if (c >= '0' && c <= '9')
        h = c - '0';
      else if (c >= 'a' && c <= 'f')
        h = c - 'a' + 10;
      else if (c >= 'A' && c <= 'F')
        h = c - 'A' + 10;
      if (h < 0) {
        fail_at(pos_ + 1, "invalid string: '\\u' must be followed by 4 hex digits");
        return -1;
      }
      v = v * 16 + h;
    }
    return v;
  }

  bool unicode_escape() {
    static constexpr const char* lone_high =
        "invalid string: surrogate U+D800..U+DBFF must be followed by U+DC00..U+DFFF";
    long cp = hex4();
    if (cp < 0)
      return false;
    if (cp >= 0xDC00 && cp <= 0xDFFF) {
      fail_at(pos_, "invalid string: surrogate U+DC00..U+DFFF must follow U+D800..U+DBFF");
      return false;
    }
    if (cp >= 0xD800 && cp <= 0xDBFF) {
      if (!take('\\') || !take('u')) {
        fail_at(pos_ + 1, lone_high);
        return false;
      }
      const long low = hex4();
      if (low < 0)
        return false;
      if (low < 0xDC00 || low > 0xDFFF) {
        fail_at(pos_, lone_high);
        return false;
      }
      cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
    }
    const auto u = static_cast<std::uint32_t>(cp);
    if (u < 0x80) {
      str_ += static_cast<char>(u);
    } else if (u < 0x800) {
      str_ += static_cast<char>(0xC0 | u >> 6);
      str_ += static_cast<char>(0x80 | (u & 0x3F));
    } else if (u < 0x10000) {
      str_ += static_cast<char>(0xE0 | u >> 12);
      str_ += static_cast<char>(0x80 | (u >> 6 & 0x3F));
      str_ += static_cast<char>(0x80 | (u & 0x3F));
    } else {
      str_ += static_cast<char>(0xF0 | u >> 18);
      str_ += static_cast<char>(0x80 | (u >> 12 & 0x3F));
      str_ += static_cast<char>(0x80 | (u >> 6 & 0x3F));
      str_ += static_cast<char>(0x80 | (u & 0x3F));
    }
    return true;
  }

  // ---- parser -------------------------------------------------------------

  // "is not valid JSON at byte N: ...", N and the reason as nlohmann's parser
  // gives them (trimmed as the reference trims them): the context unless a
  // value was expected, the lexer's reason or the unexpected token, then the
  // token expected if there is one.
  error syntax_error(const char* context, token t, const char* expected) const {
    std::string text = "feedback body: is not valid JSON at byte " + std::to_string(end_) + ": ";
    if (context)
      text += std::string("syntax error while parsing ") + context + " - ";
    text += t == token::error ? why_ : std::string("unexpected ") + token_name(t);
    if (expected)
      text += std::string("; expected ") + expected;
    return make_error(errc::malformed, std::move(text));
  }

  // `t` must be an object's key; then `:`; on success `t` is the value's first token.
  bool member(token& t) {
    if (t != token::string) {
      syntax_ = syntax_error("object key", t, "string literal");
      return false;
    }
    field_ = field_count;
    if (nesting_.size() == 2 && nesting_[0] == '[')  // a record's own field
      for (std::size_t f = 0; f < field_count; ++f)
        if (str_ == field_names[f])
          field_ = f;
    if ((t = scan()) != token::name_separator) {
      syntax_ = syntax_error("object separator", t, "':'");
      return false;
    }
    t = scan();
    return true;
  }

  // A value of kind `k` begins (for a string: str_ holds it).
  void value(json_kind k) {
    const std::size_t depth = nesting_.size();
    if (depth == 0) {
      top_ = k;
    } else if (nesting_[0] != '[') {
      return;
    } else if (depth == 1) {
      ++count_;
      if (k == json_kind::object)
        fields_ = {};
      else if (problem_.empty())
        problem_ = "record " + std::to_string(count_ - 1) + ": is a JSON " + json_kind_name(k) +
                   ", expected an object";
    } else if (depth == 2 && nesting_[1] == '{' && field_ < field_count) {
      fields_[field_].kind = k;
      fields_[field_].text = k == json_kind::string ? str_ : std::string();
    }
  }

  // A container of kind `c` ('[' or '{') has closed.
  void closed(char c) {
    if (c == '{' && nesting_.size() == 1 && nesting_[0] == '[' && problem_.empty())
      finish_record();
  }

  void finish_record() {
    const std::string where = "record " + std::to_string(count_ - 1) + ": ";
    // A required string field; null reads as "" if `null_is_empty`.
    auto string_field = [&](field f, bool null_is_empty) -> std::string* {
      field_value& v = fields_[f];
      if (v.kind == json_kind::missing) {
        problem_ = where + std::string(field_names[f]) + " is missing";
        return nullptr;
      }
      if (v.kind == json_kind::null && null_is_empty)
        return &v.text;
      if (v.kind != json_kind::string) {
        problem_ = where + std::string(field_names[f]) + " is a " + json_kind_name(v.kind) +
                   ", expected a string";
        return nullptr;
      }
      return &v.text;
    };

    feedback_record r;
    std::string* mid = string_field(message_id, /*null_is_empty=*/true);
    if (!mid)
      return;
    r.original_message_id = std::move(*mid);

    const std::string* enq = string_field(enqueued, false);
    if (!enq)
      return;
    auto when = parse_iso8601(*enq);
    if (!when) {
      problem_ = where + "enqueuedTimeUtc: " + when.error().message;
      return;
    }
    r.enqueued_time_utc = *when;

    const std::string* code_text = string_field(status, false);
    if (!code_text)
      return;
    const auto code = parse_feedback_status(*code_text);
    if (!code) {
      problem_ = where + "statusCode " + quote_for_message(*code_text) +
                 " is not one of Success, Expired, DeliveryCountExceeded, Rejected, Purged";
      return;
    }
    r.status_code = *code;

    if (field_value& d = fields_[description];
        d.kind == json_kind::missing || d.kind == json_kind::null) {
      r.description = std::string(to_string(r.status_code));
    } else if (d.kind == json_kind::string) {
      r.description = std::move(d.text);
    } else {
      problem_ = where + "description is a " + json_kind_name(d.kind) + ", expected a string";
      return;
    }

    std::string* dev = string_field(device, false);
    if (!dev)
      return;
    r.device_id = std::move(*dev);

    std::string* gen = string_field(generation, false);
    if (!gen)
      return;
    r.device_generation_id = std::move(*gen);

    records_.push_back(std::move(r));
  }

  std::string_view in_;
  std::size_t pos_ = 0;  // bytes read
  // lexer: the last token's end (or where it failed), why it failed, its string, a number's
  // overflow
  std::size_t end_ = 0;
  std::string why_;
  std::string str_;
  bool overflow_ = false;
  // parser
  std::string nesting_;  // '[' or '{' per open container
  json_kind top_ = json_kind::missing;
  std::size_t count_ = 0;            // elements of the top-level array so far
  std::size_t field_ = field_count;  // the record field the current member sets
  std::array<field_value, field_count> fields_;
  std::vector<feedback_record> records_;
  std::string problem_;  // the first record error
  error syntax_;         // member()'s syntax error
};

}  // namespace detail

/// The feedback body, compact, fields in the service's order (SPEC 4.5):
/// `[{"originalMessageId":..,"enqueuedTimeUtc":..,"statusCode":..,"description":..,
/// "deviceId":..,"deviceGenerationId":..}]`. An empty vector gives `[]`.
/// Strings are written as `detail::append_json_string` says: invalid UTF-8 in
/// a record's strings is written as U+FFFD rather than thrown on (ids are
/// ASCII by SPEC 3.2, and encoding must not fail). The bytes are those that
/// nlohmann/json's `ordered_json::dump` wrote before.
inline std::string encode_feedback_json(const std::vector<feedback_record>& records) {
  std::string out = "[";
  for (const auto& r : records) {
    if (out.size() > 1)
      out += ',';
    out += "{\"originalMessageId\":";
    detail::append_json_string(out, r.original_message_id);
    out += ",\"enqueuedTimeUtc\":";
    detail::append_json_string(out, format_iso8601(r.enqueued_time_utc));
    out += ",\"statusCode\":";
    detail::append_json_string(out, to_string(r.status_code));
    out += ",\"description\":";
    detail::append_json_string(out, r.description);
    out += ",\"deviceId\":";
    detail::append_json_string(out, r.device_id);
    out += ",\"deviceGenerationId\":";
    detail::append_json_string(out, r.device_generation_id);
    out += '}';
  }
  out += ']';
  return out;
}

/// Decodes a feedback body; `errc::malformed` with a message naming the record
/// and field on any problem. Never throws (except `std::bad_alloc`).
///
/// Strict: the body must be a JSON array (RFC 8259, valid UTF-8, no comments,
/// numbers that fit a double) of objects; `enqueuedTimeUtc`, `statusCode`, `deviceId` and
/// `deviceGenerationId` must be present strings; `statusCode` must be one of
/// the five names, case as the service writes it; `enqueuedTimeUtc` must parse
/// with `parse_iso8601`. Syntax errors read "is not valid JSON at byte N:
/// <reason>" (ASCII, never echoing the input); see `detail::feedback_reader`
/// for the positions and for the quirks kept from nlohmann/json (a leading BOM
/// is skipped; a NUL byte outside a string ends the input).
///
/// Lenient, to read what other hubs or SDK fixtures may write:
/// - unknown fields are ignored (the service may add fields), whatever their
///   values and however deeply nested;
/// - `description` missing or null defaults to the status text (SPEC 4.5 says
///   the two agree); a present description is kept as written;
/// - `originalMessageId` null reads as "" (a message without MessageId, SPEC 4.6);
/// - an empty array decodes to no records;
/// - for a duplicated key the last value wins (as nlohmann/json did).
inline result<std::vector<feedback_record>> decode_feedback_json(std::string_view body) {
  return detail::feedback_reader(body).read();
}

}  // namespace devicebound::codec
