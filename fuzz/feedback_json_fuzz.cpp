// Fuzzes the feedback body codec (SPEC 4.5), differentially: the codec's own
// reader and writer (codec/feedback_json.hpp) against the nlohmann/json based
// codec they replaced (fuzz/feedback_json_reference.hpp), which must agree on
// every input:
// - decode: accept or reject alike, the same records, the same error message
//   (byte positions included);
// - encode: the same bytes for the decoded records, and for records whose
//   strings are the raw input (invalid UTF-8 included).
// Then, as nlohmann/json's own fuzzers do: whatever decodes must survive
// encode -> decode unchanged, and encode must be stable.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <devicebound/codec/feedback_json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "feedback_json_reference.hpp"

namespace {

[[noreturn]] void differ(const char* what, const std::string& ours, const std::string& reference) {
  std::fprintf(stderr, "feedback_json_fuzz: %s differ\n  ours:      %s\n  reference: %s\n", what,
               ours.c_str(), reference.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace codec = devicebound::codec;
  namespace reference = devicebound::fuzz_reference;

  const std::string_view input(reinterpret_cast<const char*>(data), size);

  // The raw input as every string field of a record (one field each when it
  // splits in six), encoded by both.
  {
    devicebound::feedback_record r;
    r.original_message_id = r.description = r.device_id = r.device_generation_id =
        std::string(input);
    std::vector<devicebound::feedback_record> records = {r};
    const std::size_t sixth = size / 6;
    if (sixth > 0) {
      r.original_message_id = input.substr(0, sixth);
      r.description = input.substr(sixth, sixth);
      r.device_id = input.substr(2 * sixth, sixth);
      r.device_generation_id = input.substr(3 * sixth);
      records.push_back(r);
    }
    const std::string ours = codec::encode_feedback_json(records);
    const std::string theirs = reference::encode_feedback_json(records);
    if (ours != theirs)
      differ("encodings of the raw input", ours, theirs);
  }

  const auto first = codec::decode_feedback_json(input);
  const auto expected = reference::decode_feedback_json(input);
  if (first.has_value() != expected.has_value())
    differ("accept/reject", first.has_value() ? "accepted" : first.error().message,
           expected.has_value() ? "accepted" : expected.error().message);
  if (!first.has_value()) {
    if (first.code() != devicebound::errc::malformed || first.error().message.empty())
      std::abort();
    if (first.error().message != expected.error().message)
      differ("error messages", first.error().message, expected.error().message);
    for (const char c : first.error().message)
      if (c < 0x20 || c > 0x7E)
        differ("error messages (not printable ASCII)", first.error().message, "");
    return 0;
  }
  if (*first != *expected)
    differ("records", codec::encode_feedback_json(*first),
           reference::encode_feedback_json(*expected));

  const std::string text = codec::encode_feedback_json(*first);
  const std::string reference_text = reference::encode_feedback_json(*first);
  if (text != reference_text)
    differ("encodings", text, reference_text);
  const auto second = codec::decode_feedback_json(text);
  if (!second.has_value())
    std::abort();
  if (*second != *first)
    std::abort();
  if (codec::encode_feedback_json(*second) != text)
    std::abort();
  return 0;
}
