// Fuzzes the feedback body codec (SPEC 4.5): decode arbitrary bytes; whatever
// decodes must survive encode -> decode unchanged, and encode must be stable
// (parse -> serialize -> parse, as nlohmann/json's own fuzzers do).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <devicebound/codec/feedback_json.hpp>
#include <string>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using devicebound::codec::decode_feedback_json;
  using devicebound::codec::encode_feedback_json;

  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const auto first = decode_feedback_json(input);
  if (!first.has_value()) {
    if (first.code() != devicebound::errc::malformed || first.error().message.empty())
      std::abort();
    return 0;
  }

  const std::string text = encode_feedback_json(*first);
  const auto second = decode_feedback_json(text);
  if (!second.has_value())
    std::abort();
  if (*second != *first)
    std::abort();
  if (encode_feedback_json(*second) != text)
    std::abort();
  return 0;
}
