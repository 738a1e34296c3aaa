// The wire form of a request forwarded between hub instances, and of its answer
// (docs/scale-out.md, "Forwarding requests"). Sans-I/O: bytes in, typed values
// out. The transport (forward.cpp) carries these bytes as AMQP 0-9-1 message bodies.
//
// A forwarded request names its request id (a uuid, the key of the owner's
// de-duplication cache), the origin's reply queue and correlation, the partition
// it is for, and one device-scoped request: send, receive, settle, purge, queue
// depth, add/remove device, registry get/put/delete. Its answer carries the
// correlation, the request id and the owner's `reply::what`, unchanged.
//
// Layout: the magic `DBF1`, a frame type byte (`Q` request, `A` answer), then
// the fields in a fixed order: integers big-endian, strings as a u32 length and
// bytes, an optional as a presence byte and the value, time points as signed
// milliseconds since the epoch. Decoding refuses (errc::malformed, naming what
// and where) a wrong magic or frame type, an unknown kind, an enum out of range,
// a truncated field and trailing bytes.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

#include "front_door.hpp"

namespace devicebound::hubd::forward {

/// The kinds of request that are forwarded (device-scoped request/reply).
using forwarded_request =
    std::variant<send_request, receive_request, settle_request, purge_request, queue_depth_request,
                 add_device_request, remove_device_request, registry_get_request,
                 registry_put_request, registry_delete_request>;

/// What the owner's router may answer a forwarded request with.
using answer_what = decltype(reply::what);

struct request_frame {
  std::string request_id;  ///< uuid text; the de-duplication key
  std::uint32_t partition = 0;
  std::string reply_queue;  ///< the origin's exclusive reply queue
  std::string correlation;  ///< the origin's key for the waiting caller
  forwarded_request what;
};

struct answer_frame {
  std::string correlation;
  std::string request_id;
  answer_what what;
};

/// Whether `r` is a kind that is forwarded; the forwarded copy, or nullopt.
inline std::optional<forwarded_request> forwardable(const request& r) {
  return std::visit(
      [](const auto& x) -> std::optional<forwarded_request> {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_constructible_v<forwarded_request, T> &&
                      !std::is_same_v<T, forwarded_request>)
          return forwarded_request(x);
        else
          return std::nullopt;
      },
      r);
}

/// The `request` a forwarded one is.
inline request to_request(forwarded_request f) {
  return std::visit([](auto&& x) -> request { return request(std::move(x)); }, std::move(f));
}

namespace detail {

inline constexpr std::string_view magic = "DBF1";

class writer {
 public:
  std::string out;
  void u8(std::uint8_t v) { out.push_back(static_cast<char>(v)); }
  void u32(std::uint32_t v) {
    for (int s = 24; s >= 0; s -= 8)
      u8(static_cast<std::uint8_t>(v >> s));
  }
  void u64(std::uint64_t v) {
    for (int s = 56; s >= 0; s -= 8)
      u8(static_cast<std::uint8_t>(v >> s));
  }
  void str(std::string_view s) {
    u32(static_cast<std::uint32_t>(s.size()));
    out.append(s);
  }
  void flag(bool b) { u8(b ? 1 : 0); }
  void time(time_point t) { u64(static_cast<std::uint64_t>(t.time_since_epoch().count())); }
  template <class T, class F>
  void opt(const std::optional<T>& v, F&& f) {
    flag(v.has_value());
    if (v)
      f(*v);
  }
  void opt_str(const std::optional<std::string>& v) {
    opt(v, [&](const std::string& s) { str(s); });
  }
  void opt_time(const std::optional<time_point>& v) {
    opt(v, [&](time_point t) { time(t); });
  }
  void token(const lock_token& t) { out.append(reinterpret_cast<const char*>(t.bytes.data()), 16); }
};

class reader {
 public:
  explicit reader(std::string_view in) : in_(in) {}

  bool failed() const noexcept { return failed_; }
  const std::string& why() const noexcept { return why_; }
  bool at_end() const noexcept { return pos_ == in_.size(); }
  std::size_t pos() const noexcept { return pos_; }

  void fail(std::string what) {
    if (!failed_) {
      failed_ = true;
      why_ = std::move(what) + " at byte " + std::to_string(pos_);
    }
  }
  bool take(std::size_t n, std::string_view what, std::string_view& got) {
    if (failed_)
      return false;
    if (in_.size() - pos_ < n) {
      fail("truncated " + std::string(what));
      return false;
    }
    got = in_.substr(pos_, n);
    pos_ += n;
    return true;
  }
  std::uint8_t u8(std::string_view what) {
    std::string_view b;
    return take(1, what, b) ? static_cast<std::uint8_t>(b[0]) : 0;
  }
  std::uint32_t u32(std::string_view what) {
    std::string_view b;
    if (!take(4, what, b))
      return 0;
    std::uint32_t v = 0;
    for (char c : b)
      v = v << 8 | static_cast<std::uint8_t>(c);
    return v;
  }
  std::uint64_t u64(std::string_view what) {
    std::string_view b;
    if (!take(8, what, b))
      return 0;
    std::uint64_t v = 0;
    for (char c : b)
      v = v << 8 | static_cast<std::uint8_t>(c);
    return v;
  }
  std::string str(std::string_view what) {
    const std::uint32_t n = u32(what);
    std::string_view b;
    return take(n, what, b) ? std::string(b) : std::string();
  }
  bool flag(std::string_view what) {
    const auto v = u8(what);
    if (v > 1)
      fail(std::string(what) + ": a flag other than 0 or 1");
    return v == 1;
  }
  time_point time(std::string_view what) {
    return time_point(duration(static_cast<std::int64_t>(u64(what))));
  }
  template <class E>
  E enumerated(std::string_view what, std::uint8_t last) {
    const auto v = u8(what);
    if (v > last)
      fail(std::string(what) + " " + std::to_string(v) + " out of range");
    return static_cast<E>(v);
  }
  std::optional<std::string> opt_str(std::string_view what) {
    if (!flag(what))
      return std::nullopt;
    return str(what);
  }
  std::optional<time_point> opt_time(std::string_view what) {
    if (!flag(what))
      return std::nullopt;
    return time(what);
  }
  lock_token token(std::string_view what) {
    lock_token t;
    std::string_view b;
    if (take(16, what, b))
      for (std::size_t i = 0; i < 16; ++i)
        t.bytes[i] = static_cast<std::uint8_t>(b[i]);
    return t;
  }

 private:
  std::string_view in_;
  std::size_t pos_ = 0;
  bool failed_ = false;
  std::string why_;
};

inline void put(writer& w, const message& m) {
  w.str(m.body);
  w.opt_str(m.message_id);
  w.opt_str(m.correlation_id);
  w.opt_str(m.user_id);
  w.opt_str(m.to);
  w.opt_time(m.expiry_time_utc);
  w.u8(static_cast<std::uint8_t>(m.ack));
  w.opt_str(m.content_type);
  w.opt_str(m.content_encoding);
  w.opt_time(m.creation_time_utc);
  w.u32(static_cast<std::uint32_t>(m.app_properties.size()));
  for (const auto& [k, v] : m.app_properties) {
    w.str(k);
    w.str(v);
  }
  w.u64(m.sequence_number);
  w.opt_time(m.enqueued_time_utc);
  w.u32(m.delivery_count);
  w.opt(m.lock_token, [&](const lock_token& t) { w.token(t); });
}

inline message get_message(reader& r) {
  message m;
  m.body = r.str("message body");
  m.message_id = r.opt_str("message id");
  m.correlation_id = r.opt_str("correlation id");
  m.user_id = r.opt_str("user id");
  m.to = r.opt_str("to");
  m.expiry_time_utc = r.opt_time("expiry time");
  m.ack = r.enumerated<ack_mode>("ack mode", static_cast<std::uint8_t>(ack_mode::full));
  m.content_type = r.opt_str("content type");
  m.content_encoding = r.opt_str("content encoding");
  m.creation_time_utc = r.opt_time("creation time");
  const std::uint32_t n = r.u32("property count");
  for (std::uint32_t i = 0; i < n && !r.failed(); ++i) {
    auto k = r.str("property name");
    auto v = r.str("property value");
    m.app_properties.insert_or_assign(std::move(k), std::move(v));
  }
  m.sequence_number = r.u64("sequence number");
  m.enqueued_time_utc = r.opt_time("enqueued time");
  m.delivery_count = r.u32("delivery count");
  if (r.flag("lock token"))
    m.lock_token = r.token("lock token");
  return m;
}

inline void put(writer& w, const device_view& d) {
  const device_identity& i = d.identity;
  w.str(i.device_id);
  w.str(i.generation_id);
  w.u64(i.version);
  w.u8(static_cast<std::uint8_t>(i.status));
  w.str(i.status_reason);
  w.time(i.status_updated);
  w.u8(static_cast<std::uint8_t>(i.auth));
  w.str(i.primary_key.bytes());
  w.str(i.secondary_key.bytes());
  w.str(i.primary_thumbprint);
  w.str(i.secondary_thumbprint);
  w.flag(i.iot_edge);
  w.flag(d.connected);
  w.u64(d.cloud_to_device_count);
  w.time(d.connection_state_updated);
  w.time(d.last_activity);
}

inline device_view get_device_view(reader& r) {
  device_view d;
  device_identity& i = d.identity;
  i.device_id = r.str("device id");
  i.generation_id = r.str("generation id");
  i.version = r.u64("version");
  i.status = r.enumerated<device_status>("device status",
                                         static_cast<std::uint8_t>(device_status::disabled));
  i.status_reason = r.str("status reason");
  i.status_updated = r.time("status updated");
  i.auth = r.enumerated<auth_type>("auth type", static_cast<std::uint8_t>(auth_type::none));
  i.primary_key = auth::shared_access_key::from_bytes(r.str("primary key"));
  i.secondary_key = auth::shared_access_key::from_bytes(r.str("secondary key"));
  i.primary_thumbprint = r.str("primary thumbprint");
  i.secondary_thumbprint = r.str("secondary thumbprint");
  i.iot_edge = r.flag("iot edge");
  d.connected = r.flag("connected");
  d.cloud_to_device_count = r.u64("cloud-to-device count");
  d.connection_state_updated = r.time("connection state updated");
  d.last_activity = r.time("last activity");
  return d;
}

inline void put(writer& w, const device_identity_update& u) {
  w.str(u.device_id);
  w.u8(static_cast<std::uint8_t>(u.status));
  w.str(u.status_reason);
  w.u8(static_cast<std::uint8_t>(u.auth));
  w.str(u.primary_key);
  w.str(u.secondary_key);
  w.str(u.primary_thumbprint);
  w.str(u.secondary_thumbprint);
  w.flag(u.iot_edge);
}

inline device_identity_update get_update(reader& r) {
  device_identity_update u;
  u.device_id = r.str("device id");
  u.status = r.enumerated<device_status>("device status",
                                         static_cast<std::uint8_t>(device_status::disabled));
  u.status_reason = r.str("status reason");
  u.auth = r.enumerated<auth_type>("auth type", static_cast<std::uint8_t>(auth_type::none));
  u.primary_key = r.str("primary key");
  u.secondary_key = r.str("secondary key");
  u.primary_thumbprint = r.str("primary thumbprint");
  u.secondary_thumbprint = r.str("secondary thumbprint");
  u.iot_edge = r.flag("iot edge");
  return u;
}

inline bool header(reader& r, char frame) {
  std::string_view m;
  if (!r.take(magic.size(), "magic", m))
    return false;
  if (m != magic) {
    r.fail("not a forwarded frame (no DBF1 magic)");
    return false;
  }
  const auto t = static_cast<char>(r.u8("frame type"));
  if (!r.failed() && t != frame)
    r.fail(std::string("frame type '") + t + "' where '" + frame + "' was expected");
  return !r.failed();
}

template <class T>
result<T> finish(reader& r, T value, std::string_view what) {
  if (!r.failed() && !r.at_end())
    r.fail("trailing bytes after the " + std::string(what));
  if (r.failed())
    return make_error(errc::malformed,
                      "the forwarded " + std::string(what) + " is malformed: " + r.why());
  return value;
}

}  // namespace detail

/// The bytes of a forwarded request.
inline std::string encode(const request_frame& f) {
  detail::writer w;
  w.out.append(detail::magic);
  w.u8('Q');
  w.str(f.request_id);
  w.u32(f.partition);
  w.str(f.reply_queue);
  w.str(f.correlation);
  w.u8(static_cast<std::uint8_t>(f.what.index()));
  std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, send_request>) {
          w.str(x.service);
          w.str(x.device);
          detail::put(w, x.msg);
        } else if constexpr (std::is_same_v<T, receive_request> ||
                             std::is_same_v<T, queue_depth_request> ||
                             std::is_same_v<T, registry_get_request>) {
          w.str(x.device);
        } else if constexpr (std::is_same_v<T, settle_request>) {
          w.str(x.device);
          w.token(x.token);
          w.u8(static_cast<std::uint8_t>(x.how));
        } else if constexpr (std::is_same_v<T, purge_request>) {
          w.str(x.service);
          w.str(x.device);
        } else if constexpr (std::is_same_v<T, add_device_request> ||
                             std::is_same_v<T, remove_device_request>) {
          w.str(x.admin);
          w.str(x.device);
        } else if constexpr (std::is_same_v<T, registry_put_request>) {
          w.str(x.admin);
          detail::put(w, x.update);
          w.opt_str(x.if_match);
        } else {
          static_assert(std::is_same_v<T, registry_delete_request>);
          w.str(x.admin);
          w.str(x.device);
          w.opt_str(x.if_match);
        }
      },
      f.what);
  return std::move(w.out);
}

/// A forwarded request from its bytes; errc::malformed naming the problem.
inline result<request_frame> decode_request(std::string_view bytes) {
  detail::reader r(bytes);
  request_frame f;
  if (detail::header(r, 'Q')) {
    f.request_id = r.str("request id");
    f.partition = r.u32("partition");
    f.reply_queue = r.str("reply queue");
    f.correlation = r.str("correlation");
    if (!r.failed() && f.request_id.empty())
      r.fail("empty request id");
    const auto kind = r.u8("request kind");
    switch (r.failed() ? 255 : kind) {
      case 0: {
        send_request x;
        x.service = r.str("service");
        x.device = r.str("device");
        x.msg = detail::get_message(r);
        f.what = std::move(x);
        break;
      }
      case 1:
        f.what = receive_request{r.str("device")};
        break;
      case 2: {
        settle_request x;
        x.device = r.str("device");
        x.token = r.token("lock token");
        x.how = r.enumerated<disposition>("disposition",
                                          static_cast<std::uint8_t>(disposition::abandon));
        f.what = std::move(x);
        break;
      }
      case 3: {
        purge_request x;
        x.service = r.str("service");
        x.device = r.str("device");
        f.what = std::move(x);
        break;
      }
      case 4:
        f.what = queue_depth_request{r.str("device")};
        break;
      case 5:
      case 6: {
        std::string admin = r.str("admin");
        std::string device = r.str("device");
        if (kind == 5)
          f.what = add_device_request{std::move(admin), std::move(device)};
        else
          f.what = remove_device_request{std::move(admin), std::move(device)};
        break;
      }
      case 7:
        f.what = registry_get_request{r.str("device")};
        break;
      case 8: {
        registry_put_request x;
        x.admin = r.str("admin");
        x.update = detail::get_update(r);
        x.if_match = r.opt_str("if-match");
        f.what = std::move(x);
        break;
      }
      case 9: {
        registry_delete_request x;
        x.admin = r.str("admin");
        x.device = r.str("device");
        x.if_match = r.opt_str("if-match");
        f.what = std::move(x);
        break;
      }
      default:
        if (!r.failed())
          r.fail("unknown request kind " + std::to_string(kind));
    }
  }
  return detail::finish(r, std::move(f), "request");
}

/// The bytes of an answer. Answers that are never given to a forwarded request
/// (feedback, device lists, policies) are refused with errc::argument_invalid.
inline result<std::string> encode(const answer_frame& a) {
  detail::writer w;
  w.out.append(detail::magic);
  w.u8('A');
  w.str(a.correlation);
  w.str(a.request_id);
  w.u8(static_cast<std::uint8_t>(a.what.index()));
  bool ok = true;
  std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, error>) {
          w.u32(x.numeric());
          w.str(x.message);
        } else if constexpr (std::is_same_v<T, done_reply>) {
        } else if constexpr (std::is_same_v<T, sent_reply>) {
          w.u64(x.sequence_number);
          w.time(x.expiry_time_utc);
        } else if constexpr (std::is_same_v<T, count_reply>) {
          w.u64(x.count);
        } else if constexpr (std::is_same_v<T, depth_reply>) {
          w.u64(x.depth);
        } else if constexpr (std::is_same_v<T, generation_reply>) {
          w.str(x.generation_id);
        } else if constexpr (std::is_same_v<T, message_reply>) {
          w.opt(x.msg, [&](const message& m) { detail::put(w, m); });
        } else if constexpr (std::is_same_v<T, device_reply>) {
          detail::put(w, x.device);
        } else {
          ok = false;
        }
      },
      a.what);
  if (!ok)
    return make_error(errc::argument_invalid, "an answer of kind " +
                                                  std::to_string(a.what.index()) +
                                                  " is never given to a forwarded request");
  return std::move(w.out);
}

/// The error codes an answer may carry.
inline bool known_code(std::uint32_t c) {
  for (auto e : {errc::argument_invalid, errc::iothub_quota_exceeded,
                 errc::device_maximum_queue_depth_exceeded, errc::device_not_found,
                 errc::device_already_exists, errc::precondition_failed,
                 errc::device_message_lock_lost, errc::message_too_large, errc::throttling,
                 errc::server_error, errc::server_busy, errc::not_connected, errc::timeout,
                 errc::not_supported, errc::invalid_operation, errc::unauthorized, errc::malformed})
    if (static_cast<std::uint32_t>(e) == c)
      return true;
  return false;
}

/// An answer from its bytes; errc::malformed naming the problem.
inline result<answer_frame> decode_answer(std::string_view bytes) {
  detail::reader r(bytes);
  answer_frame a;
  if (detail::header(r, 'A')) {
    a.correlation = r.str("correlation");
    a.request_id = r.str("request id");
    const auto kind = r.u8("answer kind");
    switch (r.failed() ? 255 : kind) {
      case 0: {
        const auto code = r.u32("error code");
        if (!r.failed() && !known_code(code))
          r.fail("unknown error code " + std::to_string(code));
        a.what = error{static_cast<errc>(code), r.str("error message")};
        break;
      }
      case 1:
        a.what = done_reply{};
        break;
      case 2: {
        sent_reply s;
        s.sequence_number = r.u64("sequence number");
        s.expiry_time_utc = r.time("expiry time");
        a.what = s;
        break;
      }
      case 3:
        a.what = count_reply{r.u64("count")};
        break;
      case 4:
        a.what = depth_reply{r.u64("depth")};
        break;
      case 6:
        a.what = generation_reply{r.str("generation id")};
        break;
      case 7: {
        message_reply m;
        if (r.flag("message"))
          m.msg = detail::get_message(r);
        a.what = std::move(m);
        break;
      }
      case 9:
        a.what = device_reply{detail::get_device_view(r)};
        break;
      default:
        if (!r.failed())
          r.fail("unknown answer kind " + std::to_string(kind));
    }
  }
  return detail::finish(r, std::move(a), "answer");
}

}  // namespace devicebound::hubd::forward
