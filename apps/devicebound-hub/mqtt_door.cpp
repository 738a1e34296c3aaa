#include "mqtt_door.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <devicebound/codec/feedback_json.hpp>
#include <devicebound/codec/iso8601.hpp>
#include <devicebound/codec/topic.hpp>
#include <devicebound/validate.hpp>
#include <utility>
#include <vector>

namespace devicebound::hubd {

namespace {

using namespace std::chrono_literals;
namespace proto = devicebound::codec::protocol;
using proto::party;

/// The reply address of an MQTT request: who asked and the request id to echo,
/// `{party digit}{id length}:{id}{request id}`. Read back only by this door.
std::string encode_address(party p, std::string_view id, std::string_view rid) {
  std::string a(1, static_cast<char>('0' + static_cast<int>(p)));
  a += std::to_string(id.size());
  a += ':';
  a += id;
  a += rid;
  return a;
}

struct address {
  party p = party::service;
  std::string_view id;
  std::string_view rid;
};

std::optional<address> decode_address(std::string_view a) {
  if (a.size() < 3)
    return std::nullopt;
  address out;
  out.p = static_cast<party>(a[0] - '0');
  const auto colon = a.find(':');
  const auto n = colon == std::string_view::npos
                     ? std::nullopt
                     : proto::parse_unsigned<std::size_t>(a.substr(1, colon - 1));
  if (!n || colon + 1 + *n > a.size())
    return std::nullopt;
  out.id = a.substr(colon + 1, *n);
  out.rid = a.substr(colon + 1 + *n);
  return out;
}

/// The request id of a bag we could not fully read, so that the error still
/// reaches the requester.
std::string salvage_request_id(std::string_view bag) {
  std::size_t start = 0;
  while (start <= bag.size()) {
    std::size_t end = bag.find('&', start);
    if (end == std::string_view::npos)
      end = bag.size();
    const auto entry = bag.substr(start, end - start);
    const auto eq = entry.find('=');
    if (eq != std::string_view::npos) {
      auto k = codec::percent_decode(entry.substr(0, eq));
      if (k && *k == proto::key_request_id) {
        auto v = codec::percent_decode(entry.substr(eq + 1));
        if (v)
          return *v;
      }
    }
    start = end + 1;
  }
  return {};
}

std::uint32_t window_of(const codec::property_bag& bag) {
  const std::string* v = proto::find(bag, proto::key_window);
  const auto n = v ? proto::parse_unsigned<std::uint32_t>(*v) : std::nullopt;
  return std::max<std::uint32_t>(n.value_or(1), 1);
}

retry::basic_policy<retry::exponential_backoff_with_jitter> make_reconnect_policy(
    const reconnect_config& c) {
  retry::options o;
  o.first = retry::first_retry::immediate;  // a dropped connection is retried at once
  o.reset_on_success = true;
  // Only the CONNACK refusals (bad credentials, 401000) are fatal for the daemon.
  return retry::basic_policy<retry::exponential_backoff_with_jitter>(
      {c.initial, c.cap, duration{0}, retry::jitter::up_to(0.1)}, o,
      retry::classifier::of(retry::error_table::consolidated));
}

}  // namespace

mqtt_door::mqtt_door(mqtt::connection_options broker, reconnect_config reconnect,
                     broker_dialect dialect, std::unique_ptr<broker_events> events)
    : broker_(std::move(broker)),
      dialect_(std::move(dialect)),
      events_(events ? std::move(events) : std::make_unique<plugin_events>()),
      reconnect_(make_reconnect_policy(reconnect)),
      session_(
          broker_, broker_.client_id,
          [this](std::string_view topic, std::string_view payload) { on_message(topic, payload); },
          [this](std::string_view cause) {
            lost_ = true;
            spdlog::warn("lost the broker connection ({}); queues kept", cause);
            emit({id_, {}}, door_status{false, false});
          }) {}

// The event source's thread calls into this door: stopped before any member goes.
mqtt_door::~mqtt_door() {
  events_->stop();
}

result<void> mqtt_door::start(door_id id, request_sink sink, std::stop_token stop) {
  id_ = id;
  sink_ = std::move(sink);
  stop_ = std::move(stop);
  if (auto r = events_->start([this](broker_event e) { on_event(std::move(e)); }); !r)
    return r;
  started_ = true;
  return {};
}

void mqtt_door::emit(reply_to to, request r) {
  if (sink_)
    sink_(inbound{std::move(to), std::move(r)});
}

time_point mqtt_door::poll(time_point now) {
  if (!started_ || failure_)
    return time_point::max();
  if (lost_.exchange(false) && connected_) {
    connected_ = false;
    auto d = reconnect_.start(now);
    next_attempt_ = d ? d->at : now;
  }
  if (connected_)
    return time_point::max();
  if (next_attempt_ == time_point::max() && reconnect_.state() == retry::state::idle) {
    // First connect.
    auto d = reconnect_.start(now);
    next_attempt_ = d && d->what == retry::verdict::attempt_now ? d->at : now;
  }
  if (now < next_attempt_)
    return next_attempt_;
  if (reconnect_.state() == retry::state::waiting)
    (void)reconnect_.timer_fired(now);
  auto r = connect();
  if (stop_.stop_requested())
    return time_point::max();
  if (r) {
    next_attempt_ = time_point::max();
    (void)reconnect_.attempt_succeeded(now);
    return time_point::max();
  }
  auto d = reconnect_.attempt_failed(r.code(), now);
  if (!d || d->what == retry::verdict::give_up) {
    spdlog::critical("giving up on the broker: {}", r.error().message);
    failure_ = r.error();
    return time_point::max();
  }
  next_attempt_ = d->at;
  spdlog::warn("cannot connect to the broker: {} (retry in {} ms)", r.error().message,
               (d->at - now).count());
  return next_attempt_;
}

result<void> mqtt_door::connect() {
  spdlog::debug("connecting to {}:{}", broker_.host, broker_.port);
  std::vector<std::string> filters{std::string(proto::hub_requests_filter)};
  filters.insert(filters.end(), dialect_.event_filters.begin(), dialect_.event_filters.end());
  const mqtt::session::will_message will{std::string(proto::hub_status_topic), "offline", true};
  lost_ = false;
  auto r = session_.connect(false, filters, will, stop_);
  if (!r)
    return r.error();
  connected_ = true;
  spdlog::info("connected to the broker at {}:{} (session {}; TCP_NODELAY on {} socket(s))",
               broker_.host, broker_.port, *r ? "resumed" : "new", session_.nodelay_sockets());
  // Without a session at the broker (first start, or it restarted), whatever it
  // knew about devices is gone too: they announce themselves again.
  emit({id_, {}}, door_status{true, !*r});
  (void)session_.publish(std::string(proto::hub_status_topic), "online", true);
  return {};
}

void mqtt_door::stop() {
  events_->stop();
  if (!connected_)
    return;
  (void)session_.publish(std::string(proto::hub_status_topic), "offline", true);
  session_.disconnect(1s);
  connected_ = false;
}

// --- incoming: on Paho's thread ------------------------------------------------------------

void mqtt_door::on_message(std::string_view topic, std::string_view payload) {
  if (topic.starts_with(proto::hub_requests_prefix))
    on_request(topic, payload);
  else if (auto e = events_->on_mqtt(topic, payload))
    on_event(std::move(*e));
  else if (topic.starts_with(proto::broker_events_prefix))
    spdlog::warn("ignored a malformed broker event on {}", topic);
  else
    spdlog::debug("ignored a message on {}", topic);
}

void mqtt_door::on_request(std::string_view topic, std::string_view payload) {
  auto t = proto::parse_request_topic(topic);
  if (!t) {
    spdlog::warn("ignored a malformed request: {}", t.error().message);
    return;
  }
  const party from = t->from;
  const std::string id(t->id);
  const std::string op(t->op);
  const std::string target(t->target);
  const auto refuse = [&](std::string_view rid, error e) {
    emit({id_, encode_address(from, id, rid)}, refused_request{std::move(e)});
  };

  if (from == party::service && op == proto::op_send) {
    if (target.empty())
      return refuse(
          salvage_request_id(t->bag),
          make_error(errc::malformed, "send needs a device id: .../send/{deviceId}/{bag}"));
    auto d = proto::decode_send_bag(target, t->bag);
    if (!d)
      return refuse(salvage_request_id(t->bag), d.error());
    d->first.body = std::string(payload);
    return emit({id_, encode_address(from, id, d->second)},
                send_request{id, target, std::move(d->first)});
  }

  auto bag = proto::decode_unique_bag(t->bag);
  if (!bag)
    return refuse(
        salvage_request_id(t->bag),
        make_error(errc::malformed, "request " + std::string(topic) + ": " + bag.error().message));
  const std::string* rid_p = proto::find(*bag, proto::key_request_id);
  const std::string rid = rid_p ? *rid_p : std::string();
  const reply_to to{id_, encode_address(from, id, rid)};
  const auto needs_target = [&]() -> bool {
    if (!target.empty())
      return true;
    refuse(rid, make_error(errc::malformed, "operation '" + op + "' needs a device id after it"));
    return false;
  };
  const auto no_target = [&]() -> bool {
    if (target.empty())
      return true;
    refuse(rid, make_error(errc::malformed, "operation '" + op + "' takes no device id"));
    return false;
  };
  const auto lock = [&]() -> std::optional<lock_token> {
    const std::string* v = proto::find(*bag, proto::key_lock_token);
    auto tok = v ? lock_token::parse(*v) : std::nullopt;
    if (!tok)
      refuse(rid, make_error(errc::malformed, "operation '" + op + "' needs $.lock, a lock token"));
    return tok;
  };
  const std::string* conn_p = proto::find(*bag, proto::key_connection);
  const std::string conn = conn_p ? *conn_p : std::string();

  switch (from) {
    case party::service:
      if (op == proto::op_purge) {
        if (needs_target())
          emit(to, purge_request{id, target});
      } else if (op == proto::op_depth) {
        if (needs_target())
          emit(to, queue_depth_request{target});
      } else if (op == proto::op_attach) {
        if (no_target())
          emit(to, feedback_attach_request{id, conn, window_of(*bag)});
      } else if (op == proto::op_detach) {
        if (conn_p)  // no connection id: not ours
          emit({id_, {}}, feedback_detach_request{id, conn});
      } else if (op == proto::op_feedback_complete || op == proto::op_feedback_abandon) {
        if (!no_target())
          return;
        if (auto tok = lock())
          emit(to, feedback_settle_request{id, *tok, op == proto::op_feedback_complete});
      } else {
        refuse(rid, make_error(errc::malformed, "unknown service operation '" + op + "'"));
      }
      return;
    case party::device:
      if (!target.empty()) {
        refuse(rid, make_error(errc::malformed, "device operations take no second device id"));
      } else if (op == proto::op_attach) {
        emit(to, device_present{id, conn, window_of(*bag), nullptr});
      } else if (op == proto::op_detach) {
        if (conn_p)  // no connection id: not ours
          emit({id_, {}}, device_absent{id, conn});
      } else if (op == proto::op_complete || op == proto::op_reject || op == proto::op_abandon) {
        if (auto tok = lock()) {
          const disposition d = op == proto::op_complete ? disposition::complete
                                : op == proto::op_reject ? disposition::reject
                                                         : disposition::abandon;
          emit(to, settle_request{id, *tok, d});
        }
      } else {
        refuse(rid, make_error(errc::malformed, "unknown device operation '" + op + "'"));
      }
      return;
    case party::admin:
      if (op == proto::op_ping) {
        if (no_target())
          emit(to, ping_request{});
      } else if (op == proto::op_add) {
        if (needs_target())
          emit(to, add_device_request{id, target});
      } else if (op == proto::op_remove) {
        if (needs_target())
          emit(to, remove_device_request{id, target});
      } else {
        refuse(rid, make_error(errc::malformed, "unknown admin operation '" + op + "'"));
      }
      return;
  }
}

// On Paho's thread (plugin events) or the event source's own (RabbitMQ).
void mqtt_door::on_event(broker_event e) {
  const reply_to none{id_, {}};  // broker events are not answered
  switch (e.what) {
    case broker_event::kind::subscribed:
      emit(none, device_present{std::move(e.device), {}, 0, dialect_.delivery_tag});
      return;
    case broker_event::kind::delivered:
      emit(none, device_delivered{std::move(e.device), std::move(e.tag)});
      return;
    case broker_event::kind::disconnected:
      emit(none, device_absent{std::move(e.device), std::nullopt});
      return;
  }
}

// --- outgoing: on the engine thread, after the commit ----------------------------------------

void mqtt_door::release(std::span<const outbound> items) {
  // Everything is encoded first and then handed to Paho back to back: each
  // publish wakes Paho's sending thread, which takes Paho's one lock to write;
  // encoding between publishes let it take that lock in between and the
  // engine thread wait for it, once per item (docs/architecture.md, "The engine
  // loop's costs").
  outgoing_.clear();
  payloads_.clear();
  // `payload` views the item's body (alive for this call) or one of `payloads_`.
  // Pushes (messages, feedback) go at QoS 1: the broker keeps them for a
  // device or back end that is away. Answers go at QoS 0: a client drops every
  // request still waiting when its connection drops, so an answer the broker
  // kept for it would be thrown away; at QoS 0 an answer costs two packets
  // fewer (docs/architecture.md, "Answers at QoS 0").
  const auto publish = [&](std::string topic, std::string_view payload) {
    outgoing_.push_back({std::move(topic), payload, 1});
  };
  const auto answer = [&](std::string topic) {
    outgoing_.push_back({std::move(topic), std::string_view(), 0});
  };
  for (const auto& item : items) {
    if (const auto* rp = std::get_if<reply>(&item)) {
      const auto a = decode_address(rp->to.address);
      if (!a)
        continue;
      if (const auto* e = std::get_if<error>(&rp->what)) {
        spdlog::debug("-> {} '{}' request {}: {} {}", to_string(a->p), a->id, a->rid, e->numeric(),
                      e->message);
        answer(proto::reply_writer(a->p, a->id, a->rid, e).str());
        continue;
      }
      auto w = proto::reply_writer(a->p, a->id, a->rid);
      std::visit(
          [&](const auto& x) {
            using T = std::decay_t<decltype(x)>;
            if constexpr (std::is_same_v<T, sent_reply>) {
              w.add(proto::key_sequence_number, x.sequence_number)
                  .add(proto::key_expiry, codec::format_iso8601(x.expiry_time_utc));
            } else if constexpr (std::is_same_v<T, count_reply>) {
              w.add(proto::key_count, x.count);
            } else if constexpr (std::is_same_v<T, depth_reply>) {
              w.add(proto::key_depth, x.depth);
            } else if constexpr (std::is_same_v<T, window_reply>) {
              w.add(proto::key_window, std::uint64_t{x.window});
            } else if constexpr (std::is_same_v<T, generation_reply>) {
              w.add(proto::key_generation_id, x.generation_id);
            }
          },
          rp->what);
      answer(w.str());
    } else if (const auto* dp = std::get_if<device_push>(&item)) {
      // A failed publish leaves the message locked: it comes again after the lock expires.
      publish(
          dp->settles ? proto::device_message_topic(dp->device, dp->msg, dp->connection) : dp->tag,
          dp->msg.body);
    } else if (const auto* fp = std::get_if<feedback_push>(&item)) {
      publish(proto::feedback_topic(fp->service, fp->batch, fp->connection),
              payloads_.emplace_back(codec::encode_feedback_json(fp->batch.records)));
    }
  }
  for (const auto& [topic, payload, qos] : outgoing_) {
    if (!connected_) {
      spdlog::debug("not connected: dropped publish to {}", topic);
      continue;
    }
    if (auto r = session_.publish(topic, payload, false, qos); !r)
      spdlog::warn("publish to {} failed: {}", topic, r.error().message);
  }
}

}  // namespace devicebound::hubd
