// What a protocol front door and the router say to each other.
//
// A front door (MQTT through the broker and its plugin today; AMQP and HTTPS
// next) only translates: it decodes its wire into the typed requests below,
// hands them to the engine thread, and encodes the replies and pushes the
// router produces back onto its wire. Every door shares the one router, the
// one engine thread and the one store (DESIGN.md, principle 6).
#pragma once

#include <cstdint>
#include <devicebound/auth/policy.hpp>
#include <devicebound/errors.hpp>
#include <devicebound/feedback_batch.hpp>
#include <devicebound/identity.hpp>
#include <devicebound/message.hpp>
#include <devicebound/settlement.hpp>
#include <functional>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace devicebound::hubd {

/// Which front door a request came through; the router sends its reply and the
/// pushes it causes back through the same door. Assigned by `main`.
using door_id = std::uint32_t;

/// Where a reply goes: the door, and an address that only that door reads
/// (MQTT: who asked, and the request id to echo). Empty `address`: no reply
/// wanted (a detach, a broker event).
struct reply_to {
  door_id door = 0;
  std::string address;
};

// --- requests: wire -> router ------------------------------------------------------------

/// A back end sends a message to a device (SPEC 1.1).
struct send_request {
  std::string service;  ///< who sends (logs only)
  std::string device;
  message msg;
};
/// A device (or a door polling for it, as HTTPS does) takes its next message.
struct receive_request {
  std::string device;
};
/// A device completes, rejects or abandons a message it holds.
struct settle_request {
  std::string device;
  lock_token token;
  disposition how = disposition::complete;
};
/// A back end purges a device's queue.
struct purge_request {
  std::string service;
  std::string device;
};
/// A back end asks how many messages a device has pending.
struct queue_depth_request {
  std::string device;
};
/// A back end takes the next feedback batch (a poll, as HTTPS does).
struct feedback_receive_request {
  std::string service;
};
/// A back end completes or abandons a feedback batch.
struct feedback_settle_request {
  std::string service;
  lock_token token;
  bool complete = true;
};
/// A back end attaches to have feedback batches pushed, at most `window` locked at once.
struct feedback_attach_request {
  std::string service;
  std::string connection;  ///< tells this attach from an older connection's
  std::uint32_t window = 1;
};
/// A back end stops taking pushed feedback (its connection closed).
struct feedback_detach_request {
  std::string service;
  std::string connection;  ///< ignored unless it names the current attach
};
/// An administrator registers or removes a device, or checks the hub is there.
struct add_device_request {
  std::string admin;
  std::string device;
};
struct remove_device_request {
  std::string admin;
  std::string device;
};
struct ping_request {};

/// The identity registry (SPEC 12; HTTPS today). `if_match` is the etag the
/// caller sent, quotes stripped (`"*"` stays `*`); nullopt: no `If-Match`.
/// PUT: create (no `If-Match`, device absent), update (`If-Match` `*` or the
/// current etag); no `If-Match` on an existing device is 409
/// `DeviceAlreadyExists`; `If-Match` on a missing device or a stale etag is 412
/// `PreconditionFailed` (SPEC 12.2.2). Replies `device_reply`.
struct registry_put_request {
  std::string admin;  ///< who asks (logs only)
  device_identity_update update;
  std::optional<std::string> if_match;
};
/// Replies `device_reply`, or 404 `DeviceNotFound`.
struct registry_get_request {
  std::string device;
};
/// Replies `devices_reply` with at most `top` devices, by device id (SPEC 12.3.2).
struct registry_list_request {
  std::uint32_t top = 1000;
};
/// Deletes the identity, its queue and its pending feedback records (the
/// hub's `remove_device`); replies `done_reply`, 404, or 412 on a stale etag.
/// Every door is told (`device_revoked`).
struct registry_delete_request {
  std::string admin;
  std::string device;
  std::optional<std::string> if_match;
};
/// The shared access policies (devicebound's admin API: IoT Hub manages them
/// through ARM, docs/https.md "Policies"). Every one needs all four rights.
/// Replies `policies_reply`.
struct policy_list_request {};
/// Replies `policy_reply`, or 404 for an unknown policy.
struct policy_get_request {
  std::string name;
};
/// Creates or replaces a policy. Empty keys are generated on a create and kept
/// on a replace. `create_only`: 409 if the policy exists (`If-None-Match: *`).
/// Refused (409) when no policy with all four rights would be left.
struct policy_put_request {
  std::string admin;  ///< who asks (logs only)
  auth::shared_access_policy policy;
  bool create_only = false;
};
/// Which key `policy_renew_request` regenerates (`az iot hub policy renew-key --renew-key`).
enum class renew_key : std::uint8_t { primary, secondary, swap };

constexpr std::string_view to_string(renew_key k) noexcept {
  switch (k) {
    case renew_key::primary:
      return "primary";
    case renew_key::secondary:
      return "secondary";
    case renew_key::swap:
      return "swap";
  }
  return "unknown";
}

/// `primary`, `secondary` or `swap`, in any case; nullopt otherwise.
constexpr std::optional<renew_key> parse_renew_key(std::string_view s) noexcept {
  for (auto k : {renew_key::primary, renew_key::secondary, renew_key::swap})
    if (auth::iequals(s, to_string(k)))
      return k;
  return std::nullopt;
}
/// Regenerates a key, or swaps the two; replies `policy_reply`.
struct policy_renew_request {
  std::string admin;
  std::string name;
  renew_key which = renew_key::primary;
};
/// Deletes a policy; replies `done_reply`. Refused (409) for the last policy
/// with all four rights.
struct policy_delete_request {
  std::string admin;
  std::string name;
};
/// A request the door could not decode: the router answers it with `why`, in
/// order with the replies around it.
struct refused_request {
  error why;
};

/// The presence events: a device became able to take pushed messages (attached
/// on the extension protocol; a stock device subscribed), or went away.
struct device_present {
  std::string device;
  std::string connection;  ///< tells this presence from an older connection's
  /// At most this many pushed, unsettled messages at once; 0: the hub's
  /// `max_in_flight`. Clamped to 1..max_in_flight.
  std::uint32_t window = 0;
  /// Set by a door whose devices do not settle (a stock IoT Hub MQTT device
  /// PUBACKs on receipt, SPEC 6.2.2): the tag by which the door will report
  /// `device_delivered` for a push of `m`. The router completes the message then.
  std::string (*delivery_tag)(std::string_view device, const message& m) = nullptr;
};
struct device_absent {
  std::string device;
  /// Only the presence made on this connection ends; nullopt: whichever it is.
  std::optional<std::string> connection;
};
/// A push reached a device that does not settle: the router completes it.
struct device_delivered {
  std::string device;
  std::string tag;
};
/// The door's own link to its peers came up or went down. Down: nothing is
/// pushed through it. Up with `peers_forgot`: every device and back end that
/// was present through this door is presumed gone (a broker without our session).
struct door_status {
  bool up = false;
  bool peers_forgot = false;
};

using request =
    std::variant<send_request, receive_request, settle_request, purge_request, queue_depth_request,
                 feedback_receive_request, feedback_settle_request, feedback_attach_request,
                 feedback_detach_request, add_device_request, remove_device_request, ping_request,
                 refused_request, device_present, device_absent, device_delivered, door_status,
                 registry_put_request, registry_get_request, registry_list_request,
                 registry_delete_request, policy_list_request, policy_get_request,
                 policy_put_request, policy_renew_request, policy_delete_request>;

/// One request as the engine thread takes it from a door.
struct inbound {
  reply_to from;
  request what;
};

// --- replies and pushes: router -> wire --------------------------------------------------

/// A request succeeded with nothing to say (settle, ping, remove, ...).
struct done_reply {};
struct sent_reply {
  std::uint64_t sequence_number = 0;
  time_point expiry_time_utc{};
};
struct count_reply {  ///< purge: how many were purged
  std::uint64_t count = 0;
};
struct depth_reply {
  std::uint64_t depth = 0;
};
struct window_reply {  ///< attach: the window granted
  std::uint32_t window = 1;
};
struct generation_reply {  ///< add: the device's generation id
  std::string generation_id;
};
struct message_reply {  ///< receive: the message, or none queued
  std::optional<message> msg;
};
struct feedback_reply {  ///< feedback receive: the batch, or none
  std::optional<feedback_batch> batch;
};
struct device_reply {  ///< registry put/get: the device as the registry API shows it
  device_view device;
};
struct devices_reply {  ///< registry list
  std::vector<device_view> devices;
};
struct policy_reply {  ///< policy get, put, renew: the policy as stored now
  auth::shared_access_policy policy;
  bool created = false;  ///< put: it did not exist
};
struct policies_reply {  ///< policy list, by name
  std::vector<auth::shared_access_policy> policies;
};

/// The answer to one request, to the door it came through.
struct reply {
  reply_to to;
  std::variant<error, done_reply, sent_reply, count_reply, depth_reply, window_reply,
               generation_reply, message_reply, feedback_reply, device_reply, devices_reply,
               policy_reply, policies_reply>
      what;
};

/// A message pushed to a present device (it is locked: `msg.lock_token`).
struct device_push {
  door_id door = 0;
  std::string device;
  std::string connection;  ///< of the presence it goes to
  bool settles = true;     ///< false: a stock device (see `device_present::delivery_tag`)
  std::string tag;         ///< when it does not settle: its delivery tag
  message msg;
};
/// A feedback batch pushed to an attached back end (locked: `batch.lock_token`).
struct feedback_push {
  door_id door = 0;
  std::string service;
  std::string connection;
  feedback_batch batch;
};

/// `door` of an outbound item that goes to every door.
inline constexpr door_id every_door = static_cast<door_id>(-1);

/// A device was deleted or disabled (committed): every door closes what that
/// device has open (AMQP links and connections; the broker plugin kicks MQTT
/// clients itself, from the store). Sent with `door == every_door`.
struct device_revoked {
  door_id door = every_door;
  std::string device;
  bool deleted = false;  ///< false: disabled
};

/// Keys or rights changed (committed): a policy was created, replaced, had a
/// key regenerated or was deleted (`policies`), or these devices' identities
/// were updated or removed. A door that keeps what a token granted (AMQP's CBS
/// grants) verifies those grants again and closes what no longer verifies.
/// Sent with `door == every_door`; the identity view is already updated.
struct credentials_changed {
  door_id door = every_door;
  bool policies = false;
  std::vector<std::string> devices;
};

using outbound =
    std::variant<reply, device_push, feedback_push, device_revoked, credentials_changed>;

/// The door an `outbound` item leaves through.
inline door_id door_of(const outbound& o) {
  return std::visit(
      [](const auto& x) -> door_id {
        if constexpr (requires { x.to; })
          return x.to.door;
        else
          return x.door;
      },
      o);
}

// --- the interface a protocol adapter implements -----------------------------------------

/// Where a door hands what it decoded: the engine thread's queue. Thread-safe;
/// a door calls it from its own I/O threads.
using request_sink = std::function<void(inbound)>;

/// A protocol front door. `main` creates the doors, gives each its id and the
/// engine's sink, and runs them on the one engine thread's loop:
///
/// - `start` connects or listens; afterwards the door decodes what arrives
///   (requests, presence, its own link going up or down) into `inbound` items
///   and passes them to the sink, from any thread. A door reports `door_status`
///   whenever its link changes.
/// - `poll` lets a door that needs it do timed work on the engine thread (MQTT:
///   reconnect under its retry policy); it returns when it next wants to be
///   polled (time_point::max(): not before something arrives).
/// - `release` is called on the engine thread with the replies and pushes of
///   this door, in order, and only after the store committed the changes they
///   report. It encodes them onto the wire; a push that cannot go out stays
///   locked in the hub and comes again when its lock expires.
/// - `stop` says goodbye (MQTT: the hub's offline status) and closes.
class front_door {
 public:
  virtual ~front_door() = default;
  /// For logs: "mqtt", "amqp", "https".
  virtual std::string_view name() const noexcept = 0;
  /// `stop` is requested when the daemon stops: a door blocked in a connect returns.
  virtual result<void> start(door_id id, request_sink sink, std::stop_token stop) = 0;
  virtual time_point poll(time_point now) = 0;
  virtual void release(std::span<const outbound> items) = 0;
  virtual void stop() = 0;
  /// Set when the door gave up for good (MQTT: the broker refused our credentials).
  virtual std::optional<error> failure() const = 0;
};

}  // namespace devicebound::hubd
