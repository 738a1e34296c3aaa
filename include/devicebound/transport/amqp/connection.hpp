/// \file transport/amqp/connection.hpp
/// One AMQP 1.0 connection to IoT Hub or `devicebound-hub`, shared by the
/// device and the service transport: TLS without a SASL layer (as the Node
/// and C# SDKs, SPEC 10.2), CBS put-token with a SAS token from the
/// connection string and its renewal (SPEC 10.4-10.7), one sending link whose
/// dispositions answer requests, and one receiving link with a credit window
/// whose deliveries are settled with an outcome the hub answers.
///
/// Threads: each `open()` starts a Qpid Proton C proactor and one I/O thread
/// that owns every Proton object of the connection. Other threads never touch
/// them: they queue a task and call `pn_proactor_interrupt` (thread-safe), and
/// wait on a condition variable for the I/O thread's answer. The C API rather
/// than Proton C++'s container: Proton C++ settles a received delivery as
/// soon as it is accepted, rejected or released and shows neither the
/// rcv-settle-mode nor the condition of a remote `rejected` outcome, so a
/// lost lock (SPEC 10.15.1) or a send's error condition (SPEC 10.10.2) could
/// not be reported. docs/amqp.md, "The AMQP transport", has the rest.
#pragma once

#include <proton/condition.h>
#include <proton/connection.h>
#include <proton/delivery.h>
#include <proton/disposition.h>
#include <proton/event.h>
#include <proton/link.h>
#include <proton/proactor.h>
#include <proton/session.h>
#include <proton/ssl.h>
#include <proton/terminus.h>
#include <proton/transport.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <proton/message.hpp>
#include <proton/message_id.hpp>
#include <proton/scalar.hpp>
#include <proton/value.hpp>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "../../auth/signature.hpp"
#include "../../clock.hpp"
#include "../../codec/amqp_errors.hpp"
#include "../../errors.hpp"
#include "../../token_source.hpp"
#include "options.hpp"

namespace devicebound::amqp::detail {

/// 2 * n lowercase hex digits of system randomness (link names, container ids).
inline std::string random_hex(std::size_t n) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  const token_source random = system_token_source();
  while (out.size() < 2 * n) {
    const lock_token t = random();
    for (auto b : t.bytes) {
      if (out.size() == 2 * n)
        break;
      out.push_back(hex[b >> 4]);
      out.push_back(hex[b & 0xF]);
    }
  }
  return out;
}

/// The links a connection attaches besides `$cbs`.
struct link_plan {
  /// Target of the sending link, attached at open (service: `/messages/devicebound`);
  /// empty: none (device).
  std::string send_address;
  /// Source of the receiving link, attached by the first `receive` (device C2D,
  /// feedback), and its target address (C# sends the device id, SPEC 10.13).
  std::string receive_address;
  std::string receive_target;
};

/// How this side settles a received delivery (SPEC 10.11.3, 10.15).
enum class outcome : std::uint8_t { accepted, rejected, released };

/// A delivery received on the receiving link and not settled yet.
struct incoming {
  std::vector<char> bytes;  ///< the encoded message, all its sections
  std::string tag;          ///< the delivery tag (16 bytes from IoT Hub)
};

class connection {
 public:
  connection(connection_options options, link_plan plan)
      : options_(std::move(options)), plan_(std::move(plan)) {
    if (options_.container_id.empty())
      options_.container_id = "devicebound-" + random_hex(8);
    options_.token_renew_at = std::clamp(options_.token_renew_at, 0.1, 0.95);
  }
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;
  ~connection() { close(); }

  const connection_options& options() const noexcept { return options_; }

  /// Connects, puts a token on `$cbs` and attaches the sending link. Opening an
  /// open connection does nothing. Errors: the put-token's status (401
  /// `unauthorized`, ...), a refused link's condition, `not_connected` when the
  /// transport fails (TLS, TCP), `timeout` after `connect_timeout`.
  result<void> open() {
    std::unique_lock<std::mutex> lock(open_mutex_);
    {
      std::lock_guard<std::mutex> g(m_);
      if (phase_ == phase::open)
        return {};
    }
    stop_thread();
    auto address = connect_address(options_.credentials);
    if (!address)
      return address.error();
    if (auto t = make_token(); !t)
      return t.error();
    {
      std::lock_guard<std::mutex> g(m_);
      phase_ = phase::opening;
      failure_.reset();
      tasks_.clear();
      io_ended_ = false;
      inbox_.clear();
      receiver_ = receiver_state::none;
      ++generation_;
    }
    start(*address);
    std::unique_lock<std::mutex> g(m_);
    const time_point deadline = saturating_add(system_clock{}.now(), options_.connect_timeout);
    const bool done =
        wait_until(system_clock{}, g, cv_, deadline, [&] { return phase_ != phase::opening; });
    if (phase_ == phase::open)
      return {};
    error e = failure_ ? *failure_
                       : make_error(errc::timeout, "AMQP connection to " + address->host + ":" +
                                                       std::to_string(address->port) +
                                                       " did not open within the connect timeout");
    (void)done;
    g.unlock();
    stop_thread();
    return e;
  }

  /// Closes the connection (AMQP close, then the socket); waits for the I/O thread.
  void close() {
    std::lock_guard<std::mutex> lock(open_mutex_);
    stop_thread();
  }

  bool is_open() const {
    std::lock_guard<std::mutex> g(m_);
    return phase_ == phase::open;
  }

  /// Sends an encoded message on the sending link and waits for the hub's
  /// outcome: `accepted` is success, `rejected` its condition as an `error`.
  result<void> send(std::vector<char> bytes) {
    auto id = post_op([this, bytes = std::move(bytes)](std::uint64_t op) mutable {
      io_send(op, std::move(bytes));
    });
    if (!id)
      return id.error();
    return wait_op(*id, saturating_add(system_clock{}.now(), options_.request_timeout));
  }

  /// The next delivery on the receiving link (attached on the first call, with
  /// `prefetch` credit); nullopt when none came by `deadline` or `stop` was
  /// requested. Errors: `not_connected`, or the condition of a refused attach.
  result<std::optional<incoming>> receive(time_point deadline, const std::stop_token& stop) {
    std::unique_lock<std::mutex> g(m_);
    if (phase_ != phase::open)
      return not_connected();
    if (receiver_ == receiver_state::none) {
      receiver_ = receiver_state::attaching;
      post_locked([this] { io_attach_receiver(); });
    }
    std::stop_callback wake(stop, [this] {
      { std::lock_guard<std::mutex> w(m_); }
      cv_.notify_all();
    });
    const std::uint64_t gen = generation_;
    wait_until(system_clock{}, g, cv_, deadline, [&] {
      return stop.stop_requested() || !inbox_.empty() || phase_ != phase::open ||
             generation_ != gen || receiver_ == receiver_state::failed;
    });
    if (!inbox_.empty() && generation_ == gen) {
      incoming in = std::move(inbox_.front());
      inbox_.pop_front();
      return std::optional<incoming>(std::move(in));
    }
    if (receiver_ == receiver_state::failed && receiver_error_) {
      receiver_ = receiver_state::none;  // the next receive attaches again
      return *receiver_error_;
    }
    if (phase_ != phase::open || generation_ != gen)
      return not_connected();
    return std::optional<incoming>{};
  }

  /// Settles a received delivery (by its tag) with `o`, unsettled, and waits
  /// for the hub's settled answer: `accepted` is success; `rejected` carries
  /// the error (`com.microsoft:message-lock-lost` → 412002). A tag this
  /// connection does not hold (settled, or from an earlier connection) is
  /// 412002 at once. With `wait` false, settles and returns at once.
  result<void> settle(std::string tag, outcome o, bool wait = true) {
    auto id = post_op([this, tag = std::move(tag), o, wait](std::uint64_t op) mutable {
      io_settle(op, tag, o, wait);
    });
    if (!id)
      return id.error();
    return wait_op(*id, saturating_add(system_clock{}.now(), options_.request_timeout));
  }

  /// Tokens the hub accepted on this object (renewals included), for tests and logs.
  std::uint64_t tokens_accepted() const {
    std::lock_guard<std::mutex> g(m_);
    return tokens_accepted_;
  }

 private:
  enum class phase : std::uint8_t { idle, opening, open, closed };
  enum class receiver_state : std::uint8_t { none, attaching, attached, failed };

  struct token_text {
    std::string text;
    std::string audience;
    std::uint64_t expiry = 0;
  };

  struct op {
    bool done = false;
    std::optional<error> failure;
  };

  static error not_connected(std::string why = "the AMQP connection is not open") {
    return make_error(errc::not_connected, std::move(why));
  }

  // --- user threads ------------------------------------------------------------------------------

  void start(const endpoint_address& address) {
    pn_proactor_t* p = pn_proactor();
    {
      std::lock_guard<std::mutex> g(m_);
      proactor_ = p;
    }
    connect_to_ = address;
    thread_ = std::thread([this] { io_run(); });
  }

  /// Asks the I/O thread to close, waits for it, frees the proactor. open_mutex_ held.
  void stop_thread() {
    if (!thread_.joinable())
      return;
    post([this] { io_close(); });
    {
      // A hub that never answers our close: cut the socket after a grace period.
      std::unique_lock<std::mutex> g(m_);
      const time_point until = saturating_add(system_clock{}.now(), std::chrono::seconds(2));
      if (!wait_until(system_clock{}, g, cv_, until, [&] { return io_ended_; }))
        pn_proactor_disconnect(proactor_, nullptr);
    }
    thread_.join();
    pn_proactor_t* p = nullptr;
    {
      std::lock_guard<std::mutex> g(m_);
      p = std::exchange(proactor_, nullptr);
      tasks_.clear();
      fail_all(not_connected("the AMQP connection was closed"));
      phase_ = phase::closed;
      cv_.notify_all();
    }
    pn_proactor_free(p);
  }

  void post(std::function<void()> task) {
    std::lock_guard<std::mutex> g(m_);
    post_locked(std::move(task));
  }
  void post_locked(std::function<void()> task) {
    tasks_.push_back(std::move(task));
    if (proactor_)
      pn_proactor_interrupt(proactor_);
  }

  /// Registers an operation and queues its task; its id, or `not_connected`.
  result<std::uint64_t> post_op(std::function<void(std::uint64_t)> task) {
    std::lock_guard<std::mutex> g(m_);
    if (phase_ != phase::open)
      return not_connected();
    const std::uint64_t id = next_op_++;
    ops_.emplace(id, op{});
    post_locked([task = std::move(task), id] { task(id); });
    return id;
  }

  result<void> wait_op(std::uint64_t id, time_point deadline) {
    std::unique_lock<std::mutex> g(m_);
    wait_until(system_clock{}, g, cv_, deadline, [&] {
      auto it = ops_.find(id);
      return it == ops_.end() || it->second.done;
    });
    auto it = ops_.find(id);
    if (it == ops_.end())
      return not_connected();
    if (!it->second.done) {
      ops_.erase(it);
      return make_error(errc::timeout, "the hub did not answer within the request timeout");
    }
    auto failure = std::move(it->second.failure);
    ops_.erase(it);
    if (failure)
      return *failure;
    return {};
  }

  /// Ends every waiting operation with `e`. m_ held.
  void fail_all(const error& e) {
    for (auto& [id, o] : ops_)
      if (!o.done) {
        o.done = true;
        o.failure = e;
      }
  }

  // --- the I/O thread --------------------------------------------------------------------------

  void finish_op(std::uint64_t id, std::optional<error> failure) {
    std::lock_guard<std::mutex> g(m_);
    auto it = ops_.find(id);
    if (it != ops_.end()) {
      it->second.done = true;
      it->second.failure = std::move(failure);
    }
    cv_.notify_all();
  }

  void io_run() {
    io_ = io_state{};
    pn_connection_t* c = pn_connection();
    io_.connection = c;
    pn_connection_set_container(c, options_.container_id.c_str());
    pn_connection_set_hostname(c, connect_to_.host.c_str());  // open.hostname (SPEC 10.3.1)
    pn_transport_t* t = pn_transport();
    // No pn_sasl(t): the plain AMQP header follows TLS, as Node and C# send it (SPEC 10.2).
    pn_transport_set_idle_timeout(
        t,
        static_cast<pn_millis_t>(
            std::chrono::duration_cast<std::chrono::milliseconds>(options_.idle_timeout).count()));
    if (options_.tls) {
      pn_ssl_domain_t* domain = pn_ssl_domain(PN_SSL_MODE_CLIENT);
      bool ok = domain != nullptr;
      if (ok && !options_.tls->ca_file.empty())
        ok = pn_ssl_domain_set_trusted_ca_db(domain, options_.tls->ca_file.c_str()) == 0;
      if (ok)
        ok = pn_ssl_domain_set_peer_authentication(
                 domain,
                 options_.tls->verify_server ? PN_SSL_VERIFY_PEER_NAME : PN_SSL_ANONYMOUS_PEER,
                 nullptr) == 0;
      pn_ssl_t* ssl = ok ? pn_ssl(t) : nullptr;
      if (ssl)
        ok = pn_ssl_init(ssl, domain, nullptr) == 0 &&
             pn_ssl_set_peer_hostname(ssl, connect_to_.host.c_str()) == 0;
      if (domain)
        pn_ssl_domain_free(domain);
      if (!ok || !ssl) {
        io_fail(make_error(errc::argument_invalid,
                           options_.tls->ca_file.empty()
                               ? std::string("cannot set up TLS (Proton built without SSL?)")
                               : "cannot set up TLS with CA file '" + options_.tls->ca_file + "'"));
        pn_transport_free(t);
        pn_connection_free(c);
        io_.connection = nullptr;
        std::lock_guard<std::mutex> g(m_);
        io_ended_ = true;
        cv_.notify_all();
        return;
      }
    }
    pn_connection_open(c);
    io_.session = pn_session(c);
    pn_session_open(io_.session);
    // CBS: a sender to $cbs and a receiver from $cbs whose target is the
    // requests' reply-to (SPEC 10.4.1, 10.4.2).
    io_.cbs_sender = pn_sender(io_.session, ("cbs-sender-" + random_hex(4)).c_str());
    pn_terminus_set_address(pn_link_target(io_.cbs_sender), "$cbs");
    pn_terminus_set_address(pn_link_source(io_.cbs_sender), "cbs");
    pn_link_set_snd_settle_mode(io_.cbs_sender, PN_SND_UNSETTLED);
    pn_link_open(io_.cbs_sender);
    io_.cbs_receiver = pn_receiver(io_.session, ("cbs-receiver-" + random_hex(4)).c_str());
    pn_terminus_set_address(pn_link_source(io_.cbs_receiver), "$cbs");
    pn_terminus_set_address(pn_link_target(io_.cbs_receiver), "cbs");
    pn_link_open(io_.cbs_receiver);
    pn_link_flow(io_.cbs_receiver, 10);
    io_put_token();

    char addr[PN_MAX_ADDR];
    pn_proactor_addr(addr, sizeof addr, connect_to_.host.c_str(),
                     std::to_string(connect_to_.port).c_str());
    pn_proactor_connect2(proactor_, c, t, addr);

    bool finished = false;
    while (!finished) {
      pn_event_batch_t* batch = pn_proactor_wait(proactor_);
      while (pn_event_t* e = pn_event_batch_next(batch)) {
        if (!io_handle(e))
          finished = true;
      }
      pn_proactor_done(proactor_, batch);
    }
    std::lock_guard<std::mutex> g(m_);
    io_ended_ = true;
    cv_.notify_all();
  }

  /// Handles one event; false when the connection is gone and the thread may end.
  bool io_handle(pn_event_t* e) {
    switch (pn_event_type(e)) {
      // Work done outside a connection's own batch is written out only when the
      // connection is processed next: wake it.
      case PN_PROACTOR_INTERRUPT:
        io_run_tasks();
        if (io_.connection)
          pn_connection_wake(io_.connection);
        break;
      case PN_PROACTOR_TIMEOUT:
        io_timer();
        if (io_.connection)
          pn_connection_wake(io_.connection);
        break;
      case PN_CONNECTION_REMOTE_CLOSE: {
        pn_connection_t* c = pn_event_connection(e);
        io_fail(
            condition_error(pn_connection_remote_condition(c), "the hub closed the connection"));
        pn_connection_close(c);
        break;
      }
      case PN_SESSION_REMOTE_CLOSE: {
        pn_session_t* s = pn_event_session(e);
        io_fail(condition_error(pn_session_remote_condition(s), "the hub ended the session"));
        pn_session_close(s);
        pn_connection_close(io_.connection);
        break;
      }
      case PN_LINK_REMOTE_OPEN:
        io_link_opened(pn_event_link(e));
        break;
      case PN_LINK_REMOTE_CLOSE:
      case PN_LINK_REMOTE_DETACH:
        io_link_closed(pn_event_link(e));
        break;
      case PN_LINK_FLOW:
        io_flush(pn_event_link(e));
        break;
      case PN_DELIVERY:
        io_delivery(pn_event_delivery(e));
        break;
      case PN_TRANSPORT_CLOSED: {
        pn_transport_t* t = pn_event_transport(e);
        io_fail(condition_error(pn_transport_condition(t), "the AMQP connection was lost"));
        pn_proactor_cancel_timeout(proactor_);
        io_.connection = nullptr;
        return false;  // the only connection: the thread ends after this batch
      }
      case PN_PROACTOR_INACTIVE:
        return false;
      default:
        break;
    }
    return true;
  }

  void io_run_tasks() {
    std::deque<std::function<void()>> tasks;
    {
      std::lock_guard<std::mutex> g(m_);
      tasks.swap(tasks_);
    }
    for (auto& t : tasks)
      t();
  }

  static error condition_error(pn_condition_t* c, std::string_view fallback) {
    if (c && pn_condition_is_set(c)) {
      const char* name = pn_condition_get_name(c);
      const char* description = pn_condition_get_description(c);
      error e = codec::amqp::error_from_condition(name ? name : "", description ? description : "");
      // A transport failure (TLS, TCP) is a connection problem the retry policy may retry.
      if (name && std::string_view(name).starts_with("proton:io"))
        e.code = errc::not_connected;
      if (name && std::string_view(name) == "amqp:connection:framing-error")
        e.code = errc::not_connected;
      return e;
    }
    return make_error(errc::not_connected, std::string(fallback));
  }

  /// The connection failed or ended: fail the open (if opening) and every waiter.
  void io_fail(const error& e) {
    std::lock_guard<std::mutex> g(m_);
    if (phase_ == phase::opening || phase_ == phase::open) {
      if (!failure_)
        failure_ = e;
      phase_ = phase::closed;
    }
    fail_all(failure_ ? *failure_ : e);
    inbox_.clear();
    cv_.notify_all();
  }

  void io_close() {
    if (!io_.connection)
      return;
    {
      std::lock_guard<std::mutex> g(m_);
      if (phase_ == phase::open || phase_ == phase::opening) {
        phase_ = phase::closed;
        if (!failure_)
          failure_ = not_connected("the AMQP connection was closed");
        fail_all(*failure_);
        cv_.notify_all();
      }
    }
    pn_connection_close(io_.connection);
  }

  // CBS put-token (SPEC 10.5, 10.6)
  // ----------------------------------------------------------------

  void io_put_token() {
    auto token = make_token();
    if (!token) {
      io_fail(token.error());
      if (io_.connection)
        pn_connection_close(io_.connection);
      return;
    }
    proton::message m;
    const std::string id = "devicebound-put-token-" + std::to_string(++io_.cbs_requests);
    m.id(proton::message_id(id));
    m.to("$cbs");
    m.reply_to("cbs");
    m.body(proton::value(token->text));
    auto& props = m.properties();
    props.put("operation", proton::scalar(std::string("put-token")));
    props.put("type", proton::scalar(std::string("servicebus.windows.net:sastoken")));
    props.put("name", proton::scalar(token->audience));
    io_.cbs_pending = id;
    io_.cbs_pending_expiry = token->expiry;
    std::vector<char> bytes;
    m.encode(bytes);
    io_.cbs_queue.push_back(std::move(bytes));
    io_flush(io_.cbs_sender);
  }

  void io_cbs_reply(const std::vector<char>& bytes) {
    proton::message m;
    try {
      m.decode(bytes);
    } catch (const std::exception&) {
      return;
    }
    std::string correlation;
    try {
      correlation = proton::get<std::string>(m.correlation_id());
    } catch (const std::exception&) {
      return;  // not an answer to us
    }
    if (correlation != io_.cbs_pending)
      return;
    io_.cbs_pending.clear();
    std::int32_t status = 0;
    std::string description;
    try {
      auto& props = m.properties();
      if (props.exists("status-code"))
        status = proton::coerce<std::int32_t>(props.get("status-code"));
      if (props.exists("status-description"))
        description = proton::coerce<std::string>(props.get("status-description"));
    } catch (const std::exception&) {
      status = 0;
    }
    if (const auto code = codec::amqp::errc_from_cbs_status(status); code || status == 0) {
      const errc ec = code.value_or(errc::server_error);
      io_fail(make_error(ec, "CBS put-token refused (" + std::to_string(status) +
                                 "): " + (description.empty() ? "no description" : description)));
      pn_connection_close(io_.connection);
      return;
    }
    const std::uint64_t expiry = io_.cbs_pending_expiry;
    {
      std::lock_guard<std::mutex> g(m_);
      ++tokens_accepted_;
    }
    if (options_.on_token_accepted)
      options_.on_token_accepted(expiry);
    io_schedule_renewal(expiry);
    if (!io_.authorized) {
      io_.authorized = true;
      if (plan_.send_address.empty()) {
        io_opened();
      } else {
        io_.data_sender = pn_sender(io_.session, ("sender-" + random_hex(8)).c_str());
        pn_terminus_set_address(pn_link_target(io_.data_sender), plan_.send_address.c_str());
        pn_link_set_snd_settle_mode(io_.data_sender, PN_SND_UNSETTLED);
        pn_link_set_rcv_settle_mode(io_.data_sender, PN_RCV_FIRST);
        pn_link_open(io_.data_sender);
      }
    }
  }

  /// Renewal at `token_renew_at` of the token's remaining lifetime (SPEC 10.7.1).
  /// A SharedAccessSignature from the connection string cannot be renewed.
  void io_schedule_renewal(std::uint64_t expiry) {
    if (options_.credentials.shared_access_signature)
      return;
    const auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
        system_clock{}.now().time_since_epoch());
    const auto until = std::chrono::milliseconds(static_cast<std::int64_t>(expiry) * 1000) - now;
    const auto lifetime = std::max(until, std::chrono::milliseconds(0));
    const auto wait = std::chrono::milliseconds(
        static_cast<std::int64_t>(static_cast<double>(lifetime.count()) * options_.token_renew_at));
    io_.renew_at = std::chrono::steady_clock::now() + wait;
    pn_proactor_set_timeout(proactor_,
                            static_cast<pn_millis_t>(std::max<std::int64_t>(wait.count(), 1)));
  }

  void io_timer() {
    if (!io_.renew_at || !io_.connection)
      return;
    if (std::chrono::steady_clock::now() + std::chrono::milliseconds(5) < *io_.renew_at) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          *io_.renew_at - std::chrono::steady_clock::now());
      pn_proactor_set_timeout(proactor_,
                              static_cast<pn_millis_t>(std::max<std::int64_t>(left.count(), 1)));
      return;
    }
    io_.renew_at.reset();
    if (io_.cbs_pending.empty())
      io_put_token();
  }

  void io_opened() {
    std::lock_guard<std::mutex> g(m_);
    if (phase_ == phase::opening)
      phase_ = phase::open;
    cv_.notify_all();
  }

  // Links ---------------------------------------------------------------------------------------

  void io_attach_receiver() {
    if (!io_.connection || io_.data_receiver)
      return;
    pn_link_t* l = pn_receiver(io_.session, ("receiver-" + random_hex(8)).c_str());
    pn_terminus_set_address(pn_link_source(l), plan_.receive_address.c_str());
    if (!plan_.receive_target.empty())
      pn_terminus_set_address(pn_link_target(l), plan_.receive_target.c_str());
    // Second: we send our outcome unsettled and the hub answers it (SPEC 10.15.1).
    pn_link_set_rcv_settle_mode(l, PN_RCV_SECOND);
    pn_link_set_snd_settle_mode(l, PN_SND_UNSETTLED);
    pn_link_open(l);
    pn_link_flow(l, static_cast<int>(std::max<std::uint32_t>(options_.prefetch, 1)));
    io_.data_receiver = l;
  }

  /// A refused attach arrives as an attach with a null terminus, then a detach.
  static bool refused(pn_link_t* l) {
    pn_terminus_t* far = pn_link_is_sender(l) ? pn_link_remote_target(l) : pn_link_remote_source(l);
    return pn_terminus_get_type(far) == PN_UNSPECIFIED || pn_terminus_get_address(far) == nullptr;
  }

  void io_link_opened(pn_link_t* l) {
    if (refused(l))
      return;  // the detach with the error follows
    if (l == io_.data_sender)
      io_opened();
    if (l == io_.data_receiver) {
      std::lock_guard<std::mutex> g(m_);
      if (receiver_ == receiver_state::attaching)
        receiver_ = receiver_state::attached;
    }
  }

  void io_link_closed(pn_link_t* l) {
    error e = condition_error(pn_link_remote_condition(l), "the hub detached a link");
    if (e.code == errc::not_connected && !pn_condition_is_set(pn_link_remote_condition(l)))
      e = make_error(errc::server_error, "the hub detached the link to " + link_address(l));
    pn_link_close(l);
    if (l == io_.data_receiver) {
      std::lock_guard<std::mutex> g(m_);
      receiver_ = receiver_state::failed;
      receiver_error_ = e;
      io_.data_receiver = nullptr;
      for (auto it = io_.held.begin(); it != io_.held.end();)
        it = pn_delivery_link(it->second) == l ? io_.held.erase(it) : std::next(it);
      inbox_.clear();
      cv_.notify_all();
      return;
    }
    // The CBS or the sending link is gone: the connection is of no use any more.
    io_fail(e);
    if (io_.connection)
      pn_connection_close(io_.connection);
  }

  static std::string link_address(pn_link_t* l) {
    const char* a =
        pn_terminus_get_address(pn_link_is_sender(l) ? pn_link_target(l) : pn_link_source(l));
    return a ? a : "";
  }

  void io_send(std::uint64_t op, std::vector<char> bytes) {
    if (!io_.data_sender) {
      finish_op(op, make_error(errc::not_supported, "this connection has no sending link"));
      return;
    }
    io_.send_queue.push_back({op, std::move(bytes)});
    io_flush(io_.data_sender);
  }

  void io_flush(pn_link_t* l) {
    if (!l || !pn_link_is_sender(l))
      return;
    if (l == io_.cbs_sender) {
      while (!io_.cbs_queue.empty() && pn_link_credit(l) > 0) {
        const std::string tag = std::to_string(++io_.next_tag);
        pn_delivery(l, pn_dtag(tag.data(), tag.size()));
        auto& b = io_.cbs_queue.front();
        pn_link_send(l, b.data(), b.size());
        pn_link_advance(l);
        io_.cbs_queue.pop_front();
      }
      return;
    }
    if (l != io_.data_sender)
      return;
    while (!io_.send_queue.empty() && pn_link_credit(l) > 0) {
      const std::string tag = std::to_string(++io_.next_tag);
      pn_delivery_t* d = pn_delivery(l, pn_dtag(tag.data(), tag.size()));
      auto& [op, b] = io_.send_queue.front();
      pn_link_send(l, b.data(), b.size());
      pn_link_advance(l);
      io_.sent.emplace(d, op);
      io_.send_queue.pop_front();
    }
  }

  void io_delivery(pn_delivery_t* d) {
    pn_link_t* l = pn_delivery_link(d);
    if (pn_link_is_sender(l)) {
      if (!pn_delivery_updated(d) && !pn_delivery_settled(d))
        return;
      const std::uint64_t state = pn_delivery_remote_state(d);
      auto it = io_.sent.find(d);
      if (it != io_.sent.end() && (state != 0 || pn_delivery_settled(d))) {
        std::optional<error> failure;
        if (state == PN_REJECTED)
          failure = condition_error(pn_disposition_condition(pn_delivery_remote(d)),
                                    "the hub rejected the message");
        else if (state != PN_ACCEPTED)
          // released/modified: IoT Hub never answers a send so (SPEC 10.10.3).
          failure = make_error(errc::server_error,
                               "the hub answered the send with outcome " + std::to_string(state));
        finish_op(it->second, std::move(failure));
        io_.sent.erase(it);
      }
      if (pn_delivery_settled(d) || state != 0)
        pn_delivery_settle(d);
      return;
    }
    // A receiver: a new transfer, or the hub's answer to our outcome.
    if (auto it = io_.settling.find(d); it != io_.settling.end()) {
      if (!pn_delivery_settled(d) && !pn_delivery_updated(d))
        return;
      const std::uint64_t state = pn_delivery_remote_state(d);
      std::optional<error> failure;
      if (state == PN_REJECTED)
        failure = condition_error(pn_disposition_condition(pn_delivery_remote(d)),
                                  "the hub refused the settlement");
      if (failure && failure->code == errc::device_not_found)
        failure->code = errc::device_message_lock_lost;  // as C# reads it (SPEC 10.15.1)
      finish_op(it->second, std::move(failure));
      io_.settling.erase(it);
      pn_delivery_settle(d);
      io_credit(l);
      return;
    }
    if (!pn_delivery_readable(d) || pn_delivery_partial(d))
      return;
    std::vector<char> bytes(pn_delivery_pending(d));
    std::size_t got = 0;
    for (;;) {
      if (got == bytes.size())
        bytes.resize(bytes.size() + 1024);
      const ssize_t n = pn_link_recv(l, bytes.data() + got, bytes.size() - got);
      if (n <= 0)
        break;
      got += static_cast<std::size_t>(n);
    }
    bytes.resize(got);
    pn_link_advance(l);
    const pn_delivery_tag_t tag = pn_delivery_tag(d);
    std::string tag_bytes(tag.start, tag.size);
    if (l == io_.cbs_receiver) {
      pn_delivery_update(d, PN_ACCEPTED);
      pn_delivery_settle(d);
      pn_link_flow(l, 1);
      io_cbs_reply(bytes);
      return;
    }
    if (l != io_.data_receiver || io_.held.count(tag_bytes) != 0) {
      pn_delivery_update(d, PN_RELEASED);
      pn_delivery_settle(d);
      return;
    }
    io_.held.emplace(tag_bytes, d);
    std::lock_guard<std::mutex> g(m_);
    inbox_.push_back(incoming{std::move(bytes), std::move(tag_bytes)});
    cv_.notify_all();
  }

  /// One settled delivery frees one unit of credit: the hub keeps at most
  /// `prefetch` messages locked for us (SPEC 10.14.5).
  void io_credit(pn_link_t* l) {
    if (l == io_.data_receiver &&
        pn_link_credit(l) + static_cast<int>(io_.held.size() + io_.settling.size()) <
            static_cast<int>(std::max<std::uint32_t>(options_.prefetch, 1)))
      pn_link_flow(l, 1);
  }

  void io_settle(std::uint64_t op, const std::string& tag, outcome o, bool wait) {
    auto it = io_.held.find(tag);
    if (it == io_.held.end()) {
      finish_op(op, make_error(errc::device_message_lock_lost,
                               "the lock is unknown on this connection (settled, expired, or "
                               "received on an earlier connection)"));
      return;
    }
    pn_delivery_t* d = it->second;
    io_.held.erase(it);
    pn_delivery_update(d, o == outcome::accepted   ? PN_ACCEPTED
                          : o == outcome::rejected ? PN_REJECTED
                                                   : PN_RELEASED);
    if (!wait) {
      pn_delivery_settle(d);
      io_credit(io_.data_receiver);
      finish_op(op, std::nullopt);
      return;
    }
    io_.settling.emplace(d, op);
  }

  result<token_text> make_token() const {
    const auth::connection_string& cs = options_.credentials;
    const std::uint64_t se = auth::sas_expiry(system_clock{}.now(), options_.token_ttl);
    auto t = auth::generate_sas_token(cs, se);
    if (!t)
      return t.error();
    // `name` = the token's resource, as Node sends it (SPEC 10.7); the hub
    // authorizes on the token itself.
    return token_text{auth::to_string(*t), t->resource, t->expiry};
  }

  struct io_state {
    pn_connection_t* connection = nullptr;
    pn_session_t* session = nullptr;
    pn_link_t* cbs_sender = nullptr;
    pn_link_t* cbs_receiver = nullptr;
    pn_link_t* data_sender = nullptr;
    pn_link_t* data_receiver = nullptr;
    bool authorized = false;
    std::uint64_t cbs_requests = 0;
    std::string cbs_pending;
    std::uint64_t cbs_pending_expiry = 0;
    std::deque<std::vector<char>> cbs_queue;
    std::optional<std::chrono::steady_clock::time_point> renew_at;
    std::uint64_t next_tag = 0;
    std::deque<std::pair<std::uint64_t, std::vector<char>>> send_queue;
    std::map<pn_delivery_t*, std::uint64_t> sent;      ///< our transfers awaiting an outcome
    std::map<std::string, pn_delivery_t*> held;        ///< received, not settled (by tag)
    std::map<pn_delivery_t*, std::uint64_t> settling;  ///< our outcome sent, awaiting the hub's
  };

  connection_options options_;
  link_plan plan_;
  std::mutex open_mutex_;              ///< serialises open() and close()
  pn_proactor_t* proactor_ = nullptr;  ///< written under m_; set before the I/O thread starts
  std::thread thread_;
  endpoint_address connect_to_;
  io_state io_;  ///< the I/O thread's alone

  mutable std::mutex m_;  ///< guards everything below
  std::condition_variable_any cv_;
  phase phase_ = phase::idle;
  std::optional<error> failure_;
  std::deque<std::function<void()>> tasks_;
  std::map<std::uint64_t, op> ops_;
  std::uint64_t next_op_ = 1;
  std::deque<incoming> inbox_;
  receiver_state receiver_ = receiver_state::none;
  std::optional<error> receiver_error_;
  std::uint64_t generation_ = 0;
  std::uint64_t tokens_accepted_ = 0;
  bool io_ended_ = false;
};

}  // namespace devicebound::amqp::detail
