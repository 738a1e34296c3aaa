/// \file transport/mqtt/endpoint.hpp
/// A client's side of the extension protocol around one `session`:
/// request/reply, the inbox of pushes, and the attach that makes the hub push.
/// Internal to the MQTT transports.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "../../clock.hpp"
#include "../../codec/protocol.hpp"
#include "../../errors.hpp"
#include "../../message.hpp"
#include "../../token_source.hpp"
#include "options.hpp"
#include "session.hpp"

namespace devicebound::mqtt {

/// The extension protocol the MQTT transports speak (codec/protocol.hpp).
namespace protocol = codec::protocol;

}  // namespace devicebound::mqtt

namespace devicebound::mqtt::detail {

using namespace std::chrono_literals;

/// `n` random bytes as lowercase hex.
inline std::string random_hex(std::size_t n) {
  static const token_source tokens = system_token_source();
  static std::mutex m;
  std::string s;
  while (s.size() < 2 * n) {
    lock_token t;
    {
      std::lock_guard<std::mutex> g(m);
      t = tokens();
    }
    for (auto b : t.bytes) {
      static constexpr char hex[] = "0123456789abcdef";
      s += hex[b >> 4];
      s += hex[b & 0xF];
    }
  }
  s.resize(2 * n);
  return s;
}

/// What a client (device or service) needs around a session: open/close with a
/// will, requests with `$.rid` answered on `.../reply/`, and an inbox of pushes.
///
/// Wakeups are targeted: a reply wakes only the thread waiting for it, a push
/// wakes one receiver (many threads may share a connection: a thundering herd
/// on every reply costs more CPU than the MQTT traffic itself).
class endpoint {
 public:
  struct push {
    std::string topic;
    std::string payload;
  };
  /// The will (and goodbye) topic for a connection id; empty: no will.
  using will_for = std::function<std::string(std::string_view connection_id)>;

  /// With `follow_hub_status`, also subscribes to the hub's retained status and
  /// counts its `online`s (`hub_online()`).
  endpoint(connection_options options, std::string client_id, protocol::party p, bool clean,
           std::vector<std::string> filters, will_for will, bool follow_hub_status = false)
      : clean_(clean),
        filters_(with_status(std::move(filters), follow_hub_status)),
        will_(std::move(will)),
        reply_head_(protocol::push_head(p, client_id, protocol::push_reply)),
        rid_prefix_(random_hex(4) + "-"),
        session_(
            std::move(options), std::move(client_id),
            [this](std::string_view t, std::string_view pl) { on_message(t, pl); },
            [this](std::string_view) { on_lost(); }) {}

  endpoint(const endpoint&) = delete;
  endpoint& operator=(const endpoint&) = delete;

  const connection_options& options() const noexcept { return session_.options(); }
  const std::string& client_id() const noexcept { return session_.client_id(); }
  int nodelay_sockets() const noexcept { return session_.nodelay_sockets(); }

  result<void> open() {
    std::lock_guard<std::mutex> op(open_mutex_);
    {
      std::lock_guard<std::mutex> g(m_);
      if (open_)
        return {};
    }
    std::string conn = random_hex(8);
    std::optional<session::will_message> will;
    if (will_)
      will = session::will_message{will_(conn), {}, false};
    auto r = session_.connect(clean_, filters_, will);
    if (!r)
      return r.error();
    {
      std::lock_guard<std::mutex> g(m_);
      if (!session_.connected())  // lost again already
        return make_error(errc::not_connected, "the connection to the broker dropped at once");
      open_ = true;
      connection_id_ = std::move(conn);
      ++epoch_;
    }
    return {};
  }

  /// Publishes the goodbye (the will topic, if any) when asked, and disconnects.
  void close(bool say_goodbye) {
    std::lock_guard<std::mutex> op(open_mutex_);
    std::string conn;
    {
      std::lock_guard<std::mutex> g(m_);
      conn = connection_id_;
    }
    if (say_goodbye && will_ && session_.connected())
      (void)session_.publish(will_(conn), {});
    session_.disconnect(1s);
    mark_down();
  }

  bool is_open() const {
    std::lock_guard<std::mutex> g(m_);
    return open_;
  }

  /// Changes on every open and every loss: an attach is valid for one epoch.
  std::uint64_t epoch() const {
    std::lock_guard<std::mutex> g(m_);
    return epoch_;
  }

  /// Counts the hub's `online` statuses seen (with `follow_hub_status`): an attach
  /// is valid only until the hub comes online again (a restarted hub forgot it).
  std::uint64_t hub_online() const {
    std::lock_guard<std::mutex> g(m_);
    return hub_online_;
  }

  std::string connection_id() const {
    std::lock_guard<std::mutex> g(m_);
    return connection_id_;
  }

  /// Publishes `request` + `$.rid` with `payload` and waits for the reply. The
  /// result is the reply bag when `$.code` is 0, else the hub's error;
  /// `not_connected` if the connection drops first; `timeout` after `wait`.
  result<codec::property_bag> request(codec::bag_writer request, std::string_view payload,
                                      duration wait, const std::stop_token& stop = {}) {
    auto slot = std::make_shared<pending>();
    std::string rid;
    {
      std::lock_guard<std::mutex> g(m_);
      if (!open_)
        return not_connected();
      rid = rid_prefix_ + std::to_string(++next_rid_);
      pending_.emplace(rid, slot);
      slot->epoch = epoch_;
    }
    const std::string topic = std::move(request.add(protocol::key_request_id, rid)).take();
    if (auto p = session_.publish(topic, payload); !p) {
      std::lock_guard<std::mutex> g(m_);
      pending_.erase(rid);
      return p.error();
    }
    std::stop_callback wake(stop, [this, slot] {
      { std::lock_guard<std::mutex> g(m_); }
      slot->cv.notify_all();
    });
    std::unique_lock<std::mutex> g(m_);
    const auto deadline = std::chrono::steady_clock::now() + wait;
    slot->cv.wait_until(g, deadline, [&] {
      return slot->reply.has_value() || epoch_ != slot->epoch || stop.stop_requested();
    });
    pending_.erase(rid);
    if (slot->reply)
      return protocol::reply_result(std::move(*slot->reply));
    if (epoch_ != slot->epoch || !open_)
      return make_error(errc::not_connected,
                        "the connection to the broker dropped before the hub answered");
    if (stop.stop_requested())
      return make_error(errc::timeout, "stopped before the hub answered");
    return make_error(errc::timeout, "no answer from devicebound-hub within " +
                                         std::to_string(wait.count()) +
                                         " ms (is the daemon running and connected?)");
  }

  /// The next push: nullopt at `deadline`, on `stop`, or early when the hub comes
  /// online again (the caller attaches again); `not_connected` when the connection
  /// is closed or lost (pushes already received are handed out first).
  result<std::optional<push>> next_push(time_point deadline, const std::stop_token& stop) {
    std::stop_callback wake(stop, [this] {
      { std::lock_guard<std::mutex> g(m_); }
      inbox_cv_.notify_all();
    });
    std::unique_lock<std::mutex> g(m_);
    const std::uint64_t online = hub_online_;
    inbox_cv_.wait_until(g, deadline, [&] {
      return !inbox_.empty() || !open_ || stop.stop_requested() || hub_online_ != online;
    });
    if (!inbox_.empty()) {
      push p = std::move(inbox_.front());
      inbox_.pop_front();
      if (!inbox_.empty())
        inbox_cv_.notify_one();  // more for the next receiver
      return std::optional<push>(std::move(p));
    }
    if (!open_)
      return not_connected();
    return std::optional<push>{};
  }

  /// Tells the hub that this connection takes pushes for `id` (`party`'s
  /// device or back end), up to `prefetch` unsettled at a time. Done once per
  /// connection and again after the hub comes online again; waits at most
  /// `attach_retry` (at least a round trip's worth even when `deadline` has
  /// passed). 404001 if the hub does not know the device.
  result<void> attach(protocol::party party, std::string_view id, time_point deadline,
                      const std::stop_token& stop) {
    std::uint64_t epoch = 0, online = 0;
    std::string connection;
    {
      std::lock_guard<std::mutex> g(m_);
      if (attached_epoch_ == epoch_ && epoch_ != 0 && attached_online_ == hub_online_)
        return {};
      if (!open_)
        return not_connected();
      epoch = epoch_;
      online = hub_online_;
      connection = connection_id_;
    }
    const auto& o = options();
    const system_clock c;
    const duration left = deadline > c.now() ? deadline - c.now() : duration::zero();
    const duration wait = std::min(o.attach_retry, std::max(left, duration{500}));
    auto r = request(
        protocol::attach_request(party, id, connection, std::max<std::uint32_t>(o.prefetch, 1)), {},
        wait, stop);
    if (!r)
      return r.error();
    std::lock_guard<std::mutex> g(m_);
    attached_epoch_ = epoch;
    attached_online_ = online;
    return {};
  }

  /// The next push for an attached receiver: attaches first when needed (the
  /// hub did not answer yet: tries again until `deadline`), and again when the
  /// connection or the hub changed while it waited. nullopt at `deadline` or
  /// on `stop`.
  result<std::optional<push>> next_attached_push(protocol::party party, std::string_view id,
                                                 time_point deadline, const std::stop_token& stop) {
    const system_clock c;
    for (;;) {
      if (auto a = attach(party, id, deadline, stop); !a) {
        if (a.code() != errc::timeout)
          return a.error();
        if (c.now() >= deadline || stop.stop_requested())
          return std::optional<push>{};
        continue;
      }
      auto p = next_push(deadline, stop);
      if (!p || *p || stop.stop_requested() || c.now() >= deadline)
        return p;
    }
  }

  result<void> publish(const std::string& topic, std::string_view payload) {
    return session_.publish(topic, payload);
  }

  static error not_connected() {
    return make_error(errc::not_connected, "not connected to the MQTT broker");
  }

 private:
  /// One request waiting for its reply.
  struct pending {
    std::optional<codec::property_bag> reply;
    std::uint64_t epoch = 0;
    std::condition_variable cv;
  };

  static std::vector<std::string> with_status(std::vector<std::string> filters, bool follow) {
    if (follow)
      filters.emplace_back(protocol::hub_status_topic);
    return filters;
  }

  void on_message(std::string_view topic, std::string_view payload) {
    if (topic == protocol::hub_status_topic) {
      if (payload != "online")
        return;
      {
        std::lock_guard<std::mutex> g(m_);
        ++hub_online_;
      }
      inbox_cv_.notify_all();  // receivers attach again
      return;
    }
    if (topic.starts_with(reply_head_)) {
      auto bag = protocol::decode_unique_bag(topic.substr(reply_head_.size()));
      if (!bag)
        return;  // not ours to answer: a malformed reply is dropped
      const std::string* rid = protocol::find(*bag, protocol::key_request_id);
      if (!rid)
        return;
      std::lock_guard<std::mutex> g(m_);
      auto it = pending_.find(*rid);
      if (it == pending_.end())
        return;  // a late answer to a request that gave up
      it->second->reply = std::move(*bag);
      it->second->cv.notify_all();  // under the lock: the waiter owns the slot with us
      return;
    }
    {
      std::lock_guard<std::mutex> g(m_);
      inbox_.push_back(push{std::string(topic), std::string(payload)});
    }
    inbox_cv_.notify_one();
  }

  void on_lost() { mark_down(); }

  /// Closed or lost: every waiter learns it.
  void mark_down() {
    std::lock_guard<std::mutex> g(m_);
    open_ = false;
    ++epoch_;
    for (auto& [rid, slot] : pending_)
      slot->cv.notify_all();
    inbox_cv_.notify_all();
  }

  const bool clean_;
  const std::vector<std::string> filters_;
  const will_for will_;
  const std::string reply_head_;
  const std::string rid_prefix_;

  std::mutex open_mutex_;
  mutable std::mutex m_;
  std::condition_variable inbox_cv_;
  bool open_ = false;
  std::uint64_t epoch_ = 0;
  std::uint64_t hub_online_ = 0;
  std::uint64_t attached_epoch_ = 0;   ///< epoch_ of the last attach that was answered
  std::uint64_t attached_online_ = 0;  ///< hub_online_ at that attach
  std::string connection_id_;
  std::uint64_t next_rid_ = 0;
  std::unordered_map<std::string, std::shared_ptr<pending>> pending_;
  std::deque<push> inbox_;

  session session_;  ///< last: destroyed (its callbacks stopped) before the state above
};

}  // namespace devicebound::mqtt::detail
