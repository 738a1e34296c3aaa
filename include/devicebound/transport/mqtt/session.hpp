/// \file transport/mqtt/session.hpp
/// `mqtt::session`: one MQTT 3.1.1 connection through Paho MQTT C's async API
/// (link `paho-mqtt3as`). Paho's known problems and how this works around them
/// are in docs/mqtt-transport.md.
#pragma once

#include <MQTTAsync.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../../errors.hpp"
#include "../../message.hpp"
#include "nodelay.hpp"
#include "options.hpp"

namespace devicebound::mqtt {

using namespace std::chrono_literals;

/// One MQTT 3.1.1 connection through Paho's async API: connect (with
/// subscriptions and a will), publish at QoS 1, disconnect. Incoming messages
/// and connection loss go to the handlers, on Paho's threads, with no lock of
/// ours held. Thread-safe. Used by the transports and by the daemon; public so that a
/// front door or a benchmark can speak raw MQTT with the same connection rules.
class session {
 public:
  using message_handler = std::function<void(std::string_view topic, std::string_view payload)>;
  using lost_handler = std::function<void(std::string_view cause)>;

  struct will_message {
    std::string topic;
    std::string payload;
    bool retained = false;
  };

  session(connection_options options, std::string client_id, message_handler on_message,
          lost_handler on_lost)
      : options_(std::move(options)),
        client_id_(std::move(client_id)),
        on_message_(std::move(on_message)),
        on_lost_(std::move(on_lost)) {}

  session(const session&) = delete;
  session& operator=(const session&) = delete;

  ~session() {
    disconnect(500ms);
    std::unique_lock<std::mutex> g(op_mutex_);
    destroy_handle();
  }

  const std::string& client_id() const noexcept { return client_id_; }
  const connection_options& options() const noexcept { return options_; }

  /// Connects, then subscribes to `filters` at QoS 1. Returns whether the broker
  /// still had a session for this client (CONNACK session present). Errors:
  /// `not_connected` (no broker), `unauthorized` (CONNACK 4/5), `server_busy`
  /// (CONNACK 3), `timeout`, `argument_invalid` (bad options).
  result<bool> connect(bool clean_session, const std::vector<std::string>& filters,
                       const std::optional<will_message>& will, const std::stop_token& stop = {}) {
    std::unique_lock<std::mutex> op(op_mutex_);
    if (connected_.load())
      return session_present_;
    if (auto r = ensure_handle(); !r)
      return r.error();
    peers_ = detail::resolve_peers(options_.host, options_.port);

    MQTTAsync_connectOptions co = MQTTAsync_connectOptions_initializer;
    co.MQTTVersion = MQTTVERSION_3_1_1;
    co.keepAliveInterval = seconds_of(options_.keep_alive, 1);
    co.cleansession = clean_session ? 1 : 0;
    co.connectTimeout = seconds_of(options_.connect_timeout, 1);
    co.retryInterval = 0;
    co.automaticReconnect = 0;
    co.onSuccess = &on_connect_success;
    co.onFailure = &on_connect_failure;
    if (options_.username)
      co.username = options_.username->c_str();
    if (options_.password_source) {
      connect_password_ = options_.password_source();
      co.password = connect_password_.c_str();
    } else if (options_.password) {
      co.password = options_.password->c_str();
    }
    MQTTAsync_willOptions wo = MQTTAsync_willOptions_initializer;
    if (will) {
      wo.topicName = will->topic.c_str();
      wo.message = nullptr;
      wo.payload.data = will->payload.data();
      wo.payload.len = static_cast<int>(will->payload.size());
      wo.qos = 1;
      wo.retained = will->retained ? 1 : 0;
      co.will = &wo;
    }
    MQTTAsync_SSLOptions so = MQTTAsync_SSLOptions_initializer;
    if (options_.tls) {
      const auto& t = *options_.tls;
      const auto cstr = [](const std::string& s) {
        return s.empty() ? nullptr : s.c_str();
      };
      so.trustStore = cstr(t.ca_file);
      so.CApath = cstr(t.ca_path);
      so.keyStore = cstr(t.cert_file);
      so.privateKey = cstr(t.key_file);
      so.privateKeyPassword = cstr(t.key_password);
      so.enableServerCertAuth = t.verify_server ? 1 : 0;
      so.verify = t.verify_server ? 1 : 0;
      co.ssl = &so;
    }

    const auto deadline = std::chrono::steady_clock::now() + options_.connect_timeout + 5s;
    co.context = begin_op();
    if (const int rc = MQTTAsync_connect(handle_, &co); rc != MQTTASYNC_SUCCESS)
      return paho_error(rc, "connect");
    auto done = wait_op(deadline, stop);
    if (!done)
      return done.error();
    if (done->code != MQTTASYNC_SUCCESS)
      return connect_error(done->code, done->text);
    session_present_ = done->session_present;

    if (!filters.empty()) {
      std::vector<char*> topics;
      std::vector<int> qos(filters.size(), 1);
      for (const auto& f : filters)
        topics.push_back(const_cast<char*>(f.c_str()));
      MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
      ro.onSuccess = &on_op_success;
      ro.onFailure = &on_op_failure;
      ro.context = begin_op();
      const int rc = MQTTAsync_subscribeMany(handle_, static_cast<int>(filters.size()),
                                             topics.data(), qos.data(), &ro);
      if (rc != MQTTASYNC_SUCCESS) {
        abort_connection();
        return paho_error(rc, "subscribe");
      }
      auto sub = wait_op(std::chrono::steady_clock::now() + options_.connect_timeout + 5s, stop);
      if (!sub || sub->code != MQTTASYNC_SUCCESS) {
        abort_connection();
        if (!sub)
          return sub.error();
        return make_error(errc::not_connected,
                          "the broker refused the subscription to " + filters.front() +
                              (sub->text.empty() ? std::string() : ": " + sub->text));
      }
    }
    return session_present_;
  }

  /// Publishes at QoS 1 (retain as given). Paho copies topic and payload and
  /// retransmits unacknowledged publishes on reconnect. Does not wait for PUBACK.
  /// `qos` 0 sends it once, with no PUBACK (what the hub's answers use: see
  /// docs/architecture.md, "Answers at QoS 0"); any other value means QoS 1.
  result<void> publish(const std::string& topic, std::string_view payload, bool retained = false,
                       int qos = 1) {
    std::lock_guard<std::mutex> g(handle_mutex_);
    if (!handle_ || !connected_.load())
      return make_error(errc::not_connected, "not connected to the broker");
    MQTTAsync_message m = MQTTAsync_message_initializer;
    m.payload = const_cast<char*>(payload.data());
    m.payloadlen = static_cast<int>(payload.size());
    m.qos = qos == 0 ? 0 : 1;
    m.retained = retained ? 1 : 0;
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    const int rc = MQTTAsync_sendMessage(handle_, topic.c_str(), &m, &ro);
    if (rc != MQTTASYNC_SUCCESS)
      return paho_error(rc, "publish to " + topic);
    return {};
  }

  /// Sends DISCONNECT after what was published before, and waits at most
  /// `timeout` for Paho to confirm (Paho 1.3.11-12 may take up to a second or two
  /// when the process has other MQTT clients: eclipse-paho/paho.mqtt.c#1430).
  void disconnect(duration timeout) {
    std::unique_lock<std::mutex> op(op_mutex_);
    if (!handle_)
      return;
    const bool was = connected_.exchange(false);
    if (!was && !MQTTAsync_isConnected(handle_))
      return;
    MQTTAsync_disconnectOptions dop = MQTTAsync_disconnectOptions_initializer;
    // 0: do not hold the DISCONNECT back for PUBACKs; earlier publishes go out first
    // anyway (Paho's commands are sent in order).
    dop.timeout = 0;
    dop.onSuccess = &on_op_success;
    dop.onFailure = &on_op_failure;
    dop.context = begin_op();
    if (MQTTAsync_disconnect(handle_, &dop) != MQTTASYNC_SUCCESS)
      return;
    (void)wait_op(std::chrono::steady_clock::now() + timeout, {}, false);
  }

  bool connected() const noexcept { return connected_.load(); }
  /// Sockets the last connect set TCP_NODELAY on.
  int nodelay_sockets() const noexcept { return nodelay_sockets_.load(); }

 private:
  struct op_result {
    int code = 0;
    std::string text;
    bool session_present = false;
  };

  static int seconds_of(duration d, int at_least) {
    const auto s = std::chrono::duration_cast<std::chrono::seconds>(d + 999ms).count();
    return static_cast<int>(std::max<long long>(s, at_least));
  }

  std::string server_uri() const {
    std::string host = options_.host;
    if (host.find(':') != std::string::npos && !host.starts_with('['))
      host = "[" + host + "]";
    return std::string(options_.tls ? "ssl://" : "tcp://") + host + ":" +
           std::to_string(options_.port);
  }

  /// Creates the Paho handle (once; again after a wedged operation).
  result<void> ensure_handle() {
    if (handle_ && !wedged_)
      return {};
    destroy_handle();
    MQTTAsync_createOptions cr = MQTTAsync_createOptions_initializer;
    cr.MQTTVersion = MQTTVERSION_3_1_1;
    cr.sendWhileDisconnected = 0;
    cr.maxBufferedMessages = options_.max_buffered_messages;
    MQTTAsync h = nullptr;
    const std::string uri = server_uri();
    int rc = MQTTAsync_createWithOptions(&h, uri.c_str(), client_id_.c_str(),
                                         MQTTCLIENT_PERSISTENCE_NONE, nullptr, &cr);
    if (rc != MQTTASYNC_SUCCESS)
      return make_error(errc::argument_invalid, "cannot create an MQTT client for " + uri +
                                                    " (Paho error " + std::to_string(rc) + ")");
    rc = MQTTAsync_setCallbacks(h, this, &on_connection_lost, &on_message_arrived, nullptr);
    if (rc != MQTTASYNC_SUCCESS) {
      MQTTAsync_destroy(&h);
      return make_error(errc::server_error, "cannot set the MQTT callbacks");
    }
    std::lock_guard<std::mutex> g(handle_mutex_);
    handle_ = h;
    wedged_ = false;
    return {};
  }

  void destroy_handle() {
    MQTTAsync h = nullptr;
    {
      std::lock_guard<std::mutex> g(handle_mutex_);
      h = std::exchange(handle_, nullptr);
    }
    if (h)
      MQTTAsync_destroy(&h);
  }

  /// After a failed subscribe: drop the connection so that `connected()` is false.
  void abort_connection() {
    connected_.store(false);
    MQTTAsync_disconnectOptions dop = MQTTAsync_disconnectOptions_initializer;
    dop.timeout = 0;
    (void)MQTTAsync_disconnect(handle_, &dop);
  }

  /// Paho's context for one operation's completion callbacks: a late answer to
  /// an operation we stopped waiting for is recognised by its id and ignored.
  struct op_context {
    session* self = nullptr;
    std::uint64_t id = 0;
    bool answered = false;  ///< Paho called back: it no longer holds this context
  };

  /// Starts the next operation; returns the context to hand to Paho.
  op_context* begin_op() {
    std::lock_guard<std::mutex> g(m_);
    std::erase_if(contexts_, [](const auto& c) { return c->answered; });
    op_done_ = false;
    op_ = {};
    contexts_.push_back(std::make_unique<op_context>(op_context{this, ++op_id_, false}));
    return contexts_.back().get();
  }

  result<op_result> wait_op(std::chrono::steady_clock::time_point deadline,
                            const std::stop_token& stop, bool wedge_on_timeout = true) {
    std::stop_callback wake(stop, [this] {
      { std::lock_guard<std::mutex> g(m_); }
      cv_.notify_all();
    });
    std::unique_lock<std::mutex> g(m_);
    while (!op_done_) {
      if (stop.stop_requested())
        return make_error(errc::not_connected, "stopped while connecting to the broker");
      if (cv_.wait_until(g, deadline) == std::cv_status::timeout && !op_done_) {
        if (wedge_on_timeout)
          wedged_ = true;  // a connect may still be pending: use a fresh handle next time
        return make_error(errc::timeout, "no answer from the MQTT broker at " + server_uri());
      }
    }
    return op_;
  }

  /// Records the answer to operation `c`, unless it is a late one.
  void finish_op(op_context* c, op_result r, bool now_connected = false) {
    {
      std::lock_guard<std::mutex> g(m_);
      c->answered = true;
      if (c->id != op_id_)
        return;
      if (now_connected)
        connected_.store(true);
      op_ = std::move(r);
      op_done_ = true;
    }
    cv_.notify_all();
  }

  static error paho_error(int rc, const std::string& what) {
    switch (rc) {
      case MQTTASYNC_DISCONNECTED:
        return make_error(errc::not_connected, what + ": not connected to the broker");
      case MQTTASYNC_MAX_BUFFERED_MESSAGES:
      case MQTTASYNC_MAX_MESSAGES_INFLIGHT:
      case MQTTASYNC_NO_MORE_MSGIDS:
        return make_error(errc::server_busy, what + ": too many MQTT messages in flight (Paho " +
                                                 std::to_string(rc) + ")");
      case MQTTASYNC_BAD_UTF8_STRING:
        return make_error(errc::malformed, what + ": the topic is not valid UTF-8");
      default:
        return make_error(errc::not_connected,
                          what + " failed (Paho error " + std::to_string(rc) + ")");
    }
  }

  error connect_error(int code, const std::string& text) const {
    const std::string where = "connecting to " + server_uri();
    const std::string detail = text.empty() ? std::string() : " (" + text + ")";
    switch (code) {
      case 1:
        return make_error(errc::not_supported, where + ": the broker refused MQTT 3.1.1" + detail);
      case 2:
        return make_error(errc::unauthorized,
                          where + ": client id '" + client_id_ + "' rejected" + detail);
      case 3:
        return make_error(errc::server_busy, where + ": server unavailable" + detail);
      case 4:
        return make_error(errc::unauthorized, where + ": bad user name or password" + detail);
      case 5:
        return make_error(errc::unauthorized, where + ": not authorized" + detail);
      default:
        return make_error(errc::not_connected,
                          where + " failed (Paho " + std::to_string(code) + ")" + detail);
    }
  }

  // --- Paho callbacks (Paho's threads) ---

  static void on_connect_success(void* ctx, MQTTAsync_successData* d) {
    auto* c = static_cast<op_context*>(ctx);
    session* s = c->self;
    op_result r;
    r.session_present = d && d->alt.connect.sessionPresent;
    // Before anything else goes out: the subscription and every later publish.
    s->nodelay_sockets_.store(detail::set_tcp_nodelay_to(s->peers_, s->options_.port));
    s->finish_op(c, std::move(r), true);
  }

  static void on_connect_failure(void* ctx, MQTTAsync_failureData* d) {
    auto* c = static_cast<op_context*>(ctx);
    op_result r;
    r.code = d ? d->code : MQTTASYNC_FAILURE;
    if (r.code == MQTTASYNC_SUCCESS)
      r.code = MQTTASYNC_FAILURE;
    if (d && d->message)
      r.text = d->message;
    c->self->finish_op(c, std::move(r));
  }

  static void on_op_success(void* ctx, MQTTAsync_successData*) {
    auto* c = static_cast<op_context*>(ctx);
    c->self->finish_op(c, {});
  }

  static void on_op_failure(void* ctx, MQTTAsync_failureData* d) {
    op_result r;
    r.code = d && d->code != MQTTASYNC_SUCCESS ? d->code : MQTTASYNC_FAILURE;
    if (d && d->message)
      r.text = d->message;
    auto* c = static_cast<op_context*>(ctx);
    c->self->finish_op(c, std::move(r));
  }

  static void on_connection_lost(void* ctx, char* cause) {
    auto* s = static_cast<session*>(ctx);
    s->connected_.store(false);
    if (s->on_lost_)
      s->on_lost_(cause ? std::string_view(cause) : std::string_view("connection lost"));
    if (cause)
      MQTTAsync_free(cause);
  }

  static int on_message_arrived(void* ctx, char* topic, int topic_len, MQTTAsync_message* m) {
    auto* s = static_cast<session*>(ctx);
    const std::size_t tl = topic_len > 0 ? static_cast<std::size_t>(topic_len) : std::strlen(topic);
    const std::string_view payload(static_cast<const char*>(m->payload),
                                   static_cast<std::size_t>(m->payloadlen));
    if (s->on_message_)
      s->on_message_(std::string_view(topic, tl), payload);
    MQTTAsync_freeMessage(&m);
    MQTTAsync_free(topic);
    return 1;
  }

  const connection_options options_;
  const std::string client_id_;
  const message_handler on_message_;
  const lost_handler on_lost_;

  std::mutex op_mutex_;      ///< one connect/disconnect at a time
  std::mutex handle_mutex_;  ///< guards handle_ against publish during (re)creation
  MQTTAsync handle_ = nullptr;
  bool wedged_ = false;
  bool session_present_ = false;
  std::vector<sockaddr_storage> peers_;
  std::string connect_password_;  ///< the password of the running connect (password_source)
  std::atomic<bool> connected_{false};
  std::atomic<int> nodelay_sockets_{0};

  std::mutex m_;
  std::condition_variable cv_;
  bool op_done_ = false;
  op_result op_;
  std::uint64_t op_id_ = 0;
  std::vector<std::unique_ptr<op_context>> contexts_;
};

}  // namespace devicebound::mqtt
