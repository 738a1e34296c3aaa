// Request forwarding between the instances of a cluster (docs/scale-out.md,
// "Forwarding requests"): any instance answers for any device.
//
// Transport: RabbitMQ (AMQP 0-9-1, rabbitmq-c) on one connection owned by the
// door's own thread. One durable quorum queue per partition,
// `devicebound.partition.{k}`, with `x-single-active-consumer`; an instance
// consumes queue k while it serves partition k (manual acks). Each connection
// has one exclusive, auto-deleted reply queue.
//
// - Origin: the cluster engine hands a device-scoped request for a partition it
//   does not serve to `forward`; it is published (persistent, expiring after the
//   forward timeout) to queue k; the answer comes back on the reply queue by
//   correlation and is given to the engine (`take_answers`) as the reply to the
//   original caller. No answer within the timeout, or no connection: 503001.
// - Owner: a delivery of queue k enters the engine as a request of this door
//   (address: `delivery_address`); the engine's reply is released to this door
//   only after the partition's commit, and is then published to the origin's
//   reply queue and the delivery acked. `requeue` returns a delivery the engine
//   did not run (partition not served, lease lost at commit) to its queue.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "forward_codec.hpp"
#include "front_door.hpp"

namespace devicebound::hubd {

/// The queue of partition k.
inline std::string partition_queue(std::uint32_t k) {
  return "devicebound.partition." + std::to_string(k);
}

/// Where the engine's reply to a forwarded delivery goes: the connection it
/// came on, its delivery tag, its partition and request id.
struct delivery_ref {
  std::uint64_t connection = 0;
  std::uint64_t tag = 0;
  std::uint32_t partition = 0;
  std::string request_id;
};

inline std::string delivery_address(const delivery_ref& d) {
  return std::to_string(d.connection) + ' ' + std::to_string(d.tag) + ' ' +
         std::to_string(d.partition) + ' ' + d.request_id;
}

inline std::optional<delivery_ref> parse_delivery_address(std::string_view s) {
  delivery_ref d;
  const auto number = [&](std::uint64_t& out) {
    const auto sp = s.find(' ');
    if (sp == std::string_view::npos || sp == 0)
      return false;
    out = 0;
    for (char c : s.substr(0, sp)) {
      if (c < '0' || c > '9')
        return false;
      out = out * 10 + static_cast<std::uint64_t>(c - '0');
    }
    s.remove_prefix(sp + 1);
    return true;
  };
  std::uint64_t k = 0;
  if (!number(d.connection) || !number(d.tag) || !number(k) || s.empty())
    return std::nullopt;
  d.partition = static_cast<std::uint32_t>(k);
  d.request_id = std::string(s);
  return d;
}

/// What the cluster engine asks of the transport. Thread-safe.
class forward_link {
 public:
  virtual ~forward_link() = default;
  /// Origin: forwards `what` to partition k's owner; its answer (or 503001)
  /// becomes a reply to `caller`, given by `take_answers`.
  virtual void forward(std::uint32_t k, reply_to caller, forward::forwarded_request what) = 0;
  /// Owner: consume partition k's queue (on claim) / stop (on lost or released).
  virtual void serve(std::uint32_t k) = 0;
  virtual void unserve(std::uint32_t k) = 0;
  /// Owner: puts the delivery at `address` back on its queue, unanswered.
  virtual void requeue(const std::string& address) = 0;
  /// Origin: the replies that came back (or timed out) since the last call.
  virtual std::vector<reply> take_answers() = 0;
  /// The door id of the forwarded requests' replies.
  virtual door_id door() const = 0;
};

struct forward_config {
  std::string host;
  std::uint16_t port = 5672;
  std::string user;
  std::string password;
  duration timeout = std::chrono::seconds(10);  ///< `--forward-timeout`
  duration reconnect = std::chrono::seconds(1);
  std::string instance;  ///< for logs
};

/// The forwarding transport as a front door (its requests are forwarded ones).
class forward_door final : public front_door, public forward_link {
 public:
  explicit forward_door(forward_config c);
  ~forward_door() override;

  std::string_view name() const noexcept override { return "forward"; }
  result<void> start(door_id id, request_sink sink, std::stop_token stop) override;
  time_point poll(time_point now) override;
  void release(std::span<const outbound> items) override;
  void stop() override;
  std::optional<error> failure() const override { return std::nullopt; }

  void forward(std::uint32_t k, reply_to caller, forward::forwarded_request what) override;
  void serve(std::uint32_t k) override;
  void unserve(std::uint32_t k) override;
  void requeue(const std::string& address) override;
  std::vector<reply> take_answers() override;
  door_id door() const override;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace devicebound::hubd
