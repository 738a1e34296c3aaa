// Fuzzes the device-bound topic codec (SPEC 5.8-5.10): decode arbitrary bytes;
// whatever decodes must survive encode -> decode with every property equal,
// and encode must be stable (parse -> serialize -> parse, as nlohmann/json's
// own fuzzers do). Errors must be errc::malformed with a message.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <devicebound/codec/topic.hpp>
#include <string>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using devicebound::codec::decode_devicebound_topic;
  using devicebound::codec::devicebound_topic_options;
  using devicebound::codec::encode_devicebound_topic;
  using devicebound::codec::matches_devicebound_filter;

  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const auto first = decode_devicebound_topic(input);
  if (!first.has_value()) {
    if (first.code() != devicebound::errc::malformed || first.error().message.empty())
      std::abort();
    return 0;
  }
  if (!matches_devicebound_filter(input, first->device_id))
    std::abort();

  // $.ctime is carried only when asked; ask, so every decoded property is checked.
  devicebound_topic_options options;
  options.include_creation_time = true;
  const std::string topic = encode_devicebound_topic(first->device_id, first->message, options);
  const auto second = decode_devicebound_topic(topic);
  if (!second.has_value())
    std::abort();
  if (*second != *first)
    std::abort();
  if (encode_devicebound_topic(second->device_id, second->message, options) != topic)
    std::abort();
  return 0;
}
