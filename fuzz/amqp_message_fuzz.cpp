// Fuzz target: an encoded AMQP message → devicebound (as a C2D send, as a
// device delivery, as feedback) → AMQP → devicebound again. No crash for any
// input; for input the codec accepts, the second mapping equals the first.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <devicebound/codec/amqp.hpp>
#include <proton/error.hpp>
#include <proton/message.hpp>
#include <span>
#include <vector>

namespace {

namespace amqp = devicebound::codec::amqp;

void check(bool ok) {
  if (!ok)
    std::abort();
}

proton::message wire(const proton::message& m) {
  proton::message out;
  out.decode(m.encode());
  return out;
}

void as_c2d_send(const proton::message& in, std::span<const char> bytes) {
  const auto first = amqp::decode_c2d_send(in, bytes);
  if (!first)
    return;
  const auto encoded = amqp::encode_c2d_send(*first);
  check(encoded.has_value());
  const auto second = amqp::decode_c2d_send(wire(*encoded));
  check(second.has_value());
  check(second->device_id == first->device_id);
  check(second->module_id == first->module_id);
  check(second->ids == first->ids);
  auto expected = first->message;
  expected.to = second->message.to;  // re-sent in the canonical relative form
  check(second->message == expected);
}

void as_delivery(const proton::message& in, std::span<const char> bytes) {
  // The tag is taken from the first 16 bytes of input when there are that many.
  proton::binary tag;
  if (bytes.size() >= 16)
    tag.assign(bytes.begin(), bytes.begin() + 16);
  const auto first = amqp::decode_c2d_delivery(in, tag, bytes);
  if (!first)
    return;
  auto m = *first;
  if (m.delivery_count > 255)
    m.delivery_count = 255;
  const auto d = amqp::encode_c2d_delivery(m);
  check(d.has_value());
  const auto second = amqp::decode_c2d_delivery(wire(d->message), d->tag);
  check(second.has_value());
  check(*second == m);
}

void as_feedback(const proton::message& in, std::span<const char> bytes) {
  proton::binary tag;
  if (bytes.size() >= 16)
    tag.assign(bytes.end() - 16, bytes.end());
  const auto first = amqp::decode_feedback(in, tag, bytes);
  if (!first)
    return;
  auto batch = *first;
  if (batch.delivery_count > 255)
    batch.delivery_count = 255;
  const auto d = amqp::encode_feedback(batch);
  const auto second = amqp::decode_feedback(wire(d.message), d.tag);
  check(second.has_value());
  check(*second == batch);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::vector<char> bytes(reinterpret_cast<const char*>(data),
                                reinterpret_cast<const char*>(data) + size);
  proton::message in;
  try {
    in.decode(bytes);
  } catch (const proton::error&) {
    return 0;  // not an AMQP message
  }
  // The section walker may refuse bytes Proton accepted (it is stricter):
  // that is an error result, never a crash.
  (void)amqp::data_body(bytes);
  as_c2d_send(in, bytes);
  as_delivery(in, bytes);
  as_feedback(in, bytes);
  (void)amqp::parse_link_address(in.to());
  return 0;
}
