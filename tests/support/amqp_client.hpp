/// \file tests/support/amqp_client.hpp
/// A small blocking AMQP 1.0 client on Qpid Proton's C proactor, for tests that
/// must see every byte the official SDKs depend on (SASL variants, CBS reply
/// types, delivery tags, dispositions, refusals): tests/test_amqp_door.cpp and
/// tests/hostile/. Plain or TLS; every wait is bounded. Link devicebound::proton.
#pragma once

#include <proton/condition.h>
#include <proton/connection.h>
#include <proton/delivery.h>
#include <proton/disposition.h>
#include <proton/event.h>
#include <proton/link.h>
#include <proton/proactor.h>
#include <proton/sasl.h>
#include <proton/sasl_plugin.h>
#include <proton/session.h>
#include <proton/ssl.h>
#include <proton/terminus.h>
#include <proton/transport.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <iostream>
#include <map>
#include <optional>
#include <proton/message.hpp>
#include <proton/message_id.hpp>
#include <proton/scalar.hpp>
#include <proton/value.hpp>
#include <string>
#include <utility>
#include <vector>

namespace devicebound::test_support::amqp_client {

using namespace std::chrono_literals;

/// The connection's hostname and the CBS audience unless a test names another.
inline const std::string default_hostname = "testhub.example";

// --- the client's MSSBCBS mechanism (what Python's uamqp sends) -------------------------------

inline std::string g_offered_mechanisms;

inline const pnx_sasl_implementation mssbcbs_client = {
    [](pn_transport_t*) {},
    [](pn_transport_t*) -> const char* { return ""; },
    [](pn_transport_t*) -> bool { return false; },
    [](pn_transport_t*) -> bool { return true; },
    [](pn_transport_t*) {},
    [](pn_transport_t*, const char*, const pn_bytes_t*) {},
    [](pn_transport_t*, const pn_bytes_t*) {},
    [](pn_transport_t* t, const char* mechs) -> bool {
      g_offered_mechanisms = mechs;
      // uamqp-c aborts unless the exact, case-sensitive name is offered (SPEC 10.2.4).
      const std::string m = std::string(" ") + mechs + " ";
      if (m.find(" MSSBCBS ") == std::string::npos)
        return false;
      pnx_sasl_set_selected_mechanism(t, "MSSBCBS");
      pnx_sasl_set_bytes_out(t, pn_bytes(0, ""));
      pnx_sasl_set_desired_state(t, SASL_POSTED_INIT);
      return true;
    },
    [](pn_transport_t*, const pn_bytes_t*) {},
    [](pn_transport_t*, const pn_bytes_t*) {},
    [](pn_transport_t*) -> bool { return false; },
    [](pn_transport_t*) -> ssize_t { return 0; },
    [](pn_transport_t*, pn_bytes_t, pn_bytes_t*) -> ssize_t { return 0; },
    [](pn_transport_t*, pn_bytes_t, pn_bytes_t*) -> ssize_t { return 0; },
};

// --- a blocking AMQP client ------------------------------------------------------------------

struct received {
  pn_delivery_t* delivery = nullptr;
  proton::message msg;
  std::string tag;
  bool settled = false;
};

enum class sasl_mode { none, anonymous, mssbcbs, plain };

class client {
 public:
  /// Connects to 127.0.0.1:`port`. With `tls_ca`, over TLS, checking the
  /// server's certificate against that CA and the name "localhost".
  client(std::uint16_t port, sasl_mode mode, const std::string& user = {},
         const std::string& password = {}, const std::string& hostname = default_hostname,
         const std::string& tls_ca = {}) {
    proactor_ = pn_proactor();
    conn_ = pn_connection();
    pn_connection_set_container(conn_, "test-client");
    pn_connection_set_hostname(conn_, hostname.c_str());
    pn_transport_t* t = pn_transport();
    if (!tls_ca.empty()) {
      ssl_domain_ = pn_ssl_domain(PN_SSL_MODE_CLIENT);
      pn_ssl_domain_set_trusted_ca_db(ssl_domain_, tls_ca.c_str());
      pn_ssl_domain_set_peer_authentication(ssl_domain_, PN_SSL_VERIFY_PEER_NAME, nullptr);
      pn_ssl_t* ssl = pn_ssl(t);
      pn_ssl_init(ssl, ssl_domain_, nullptr);
      pn_ssl_set_peer_hostname(ssl, "localhost");
    }
    if (mode != sasl_mode::none) {
      pn_sasl_t* s = pn_sasl(t);
      if (mode == sasl_mode::anonymous)
        pn_sasl_allowed_mechs(s, "ANONYMOUS");
      if (mode == sasl_mode::plain) {
        pn_sasl_allowed_mechs(s, "PLAIN");
        pn_sasl_set_allow_insecure_mechs(s, true);
        pn_connection_set_user(conn_, user.c_str());
        pn_connection_set_password(conn_, password.c_str());
      }
      if (mode == sasl_mode::mssbcbs)
        pnx_sasl_set_implementation(t, &mssbcbs_client, nullptr);
    }
    pn_connection_open(conn_);
    session_ = pn_session(conn_);
    pn_session_open(session_);
    const std::string addr = "127.0.0.1:" + std::to_string(port);
    pn_proactor_connect2(proactor_, conn_, t, addr.c_str());
  }
  ~client() {
    if (!closed_) {
      pn_connection_close(conn_);
      (void)wait([&] { return closed_; }, 2s);
    }
    pn_proactor_free(proactor_);
    if (ssl_domain_)
      pn_ssl_domain_free(ssl_domain_);
  }
  client(const client&) = delete;
  client& operator=(const client&) = delete;

  /// Pumps events until `pred` or `timeout`.
  bool wait(const std::function<bool()>& pred, std::chrono::milliseconds timeout = 10s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    // What the caller did to the connection outside an event batch is written
    // out only when the proactor handles the connection: wake it.
    if (!closed_)
      pn_connection_wake(conn_);
    while (!pred()) {
      if (std::chrono::steady_clock::now() >= deadline)
        return false;
      pn_proactor_set_timeout(proactor_, 20);
      pn_event_batch_t* b = pn_proactor_wait(proactor_);
      while (pn_event_t* e = pn_event_batch_next(b))
        handle(e);
      pn_proactor_done(proactor_, b);
    }
    return true;
  }

  /// Writes out what the caller changed (dispositions, credit) without waiting for anything.
  void flush() {
    woken_ = false;
    (void)wait([&] { return woken_ || closed_; }, 2s);
  }

  bool opened() {
    return wait([&] { return closed_ || (pn_connection_state(conn_) & PN_REMOTE_ACTIVE); }) &&
           !closed_;
  }
  bool closed() const { return closed_; }
  const std::string& close_condition() const { return close_condition_; }

  /// One more session: begun, or ended by the hub (then `session_error` says why).
  pn_session_t* begin_session() {
    pn_session_t* s = pn_session(conn_);
    pn_session_open(s);
    (void)wait([&] {
      return closed_ || session_errors_.count(s) > 0 || (pn_session_state(s) & PN_REMOTE_ACTIVE);
    });
    return s;
  }
  /// The session was ended by the hub with this condition ("" while it is open).
  std::string session_error(pn_session_t* s) {
    (void)wait([&] { return closed_ || session_errors_.count(s) > 0; }, 2s);
    auto it = session_errors_.find(s);
    return it == session_errors_.end() ? std::string() : it->second;
  }

  /// A link, attached (or refused: then `link_error` says why).
  pn_link_t* attach(bool sender, const std::string& address, int credit = 0,
                    pn_rcv_settle_mode_t rcv_mode = PN_RCV_FIRST) {
    const std::string name = (sender ? "s-" : "r-") + std::to_string(next_link_++);
    pn_link_t* l = sender ? pn_sender(session_, name.c_str()) : pn_receiver(session_, name.c_str());
    pn_terminus_set_address(sender ? pn_link_target(l) : pn_link_source(l), address.c_str());
    pn_link_set_rcv_settle_mode(l, rcv_mode);
    pn_link_open(l);
    if (!sender && credit > 0)
      pn_link_flow(l, credit);
    // A refused attach arrives with its detach, possibly in one batch.
    (void)wait([&] {
      return closed_ || link_errors_.count(l) > 0 || (pn_link_state(l) & PN_REMOTE_ACTIVE);
    });
    return l;
  }
  /// The link was detached by the hub with this condition ("" while attached).
  std::string link_error(pn_link_t* l) {
    (void)wait([&] { return closed_ || link_errors_.count(l) > 0; }, 2s);
    auto it = link_errors_.find(l);
    return it == link_errors_.end() ? std::string() : it->second;
  }
  bool link_closed_by_peer(pn_link_t* l) const { return link_errors_.count(l) > 0; }
  /// Attached and not detached by the hub (checked now, without waiting).
  bool attached(pn_link_t* l) const {
    return !closed_ && !link_closed_by_peer(l) && (pn_link_state(l) & PN_REMOTE_ACTIVE);
  }

  pn_delivery_t* send(pn_link_t* l, const proton::message& m, bool settled = false) {
    if (!wait([&] { return closed_ || pn_link_credit(l) > 0; }))
      return nullptr;
    std::vector<char> bytes;
    m.encode(bytes);
    const std::string tag = std::to_string(next_tag_++);
    pn_delivery_t* d = pn_delivery(l, pn_dtag(tag.data(), tag.size()));
    pn_link_send(l, bytes.data(), bytes.size());
    pn_link_advance(l);
    if (settled)
      pn_delivery_settle(d);
    return d;
  }

  /// Waits for the hub's settled outcome of `d`; the state, the condition name.
  std::pair<std::uint64_t, std::string> outcome(pn_delivery_t* d) {
    if (!d)
      return {0, "(not sent)"};
    (void)wait([&] { return closed_ || pn_delivery_settled(d); });
    const std::uint64_t state = pn_delivery_remote_state(d);
    pn_condition_t* c = pn_disposition_condition(pn_delivery_remote(d));
    std::string cond = pn_condition_is_set(c) ? pn_condition_get_name(c) : "";
    if (pn_delivery_settled(d))
      pn_delivery_settle(d);
    return {state, cond};
  }

  std::optional<received> next(pn_link_t* l, std::chrono::milliseconds timeout = 10s) {
    if (!wait([&] { return closed_ || !inbox_[l].empty(); }, timeout))
      return std::nullopt;
    if (inbox_[l].empty())
      return std::nullopt;
    received r = std::move(inbox_[l].front());
    inbox_[l].pop_front();
    return r;
  }

 private:
  void handle(pn_event_t* e) {
    switch (pn_event_type(e)) {
      case PN_CONNECTION_WAKE:
        woken_ = true;
        break;
      case PN_LINK_REMOTE_CLOSE:
      case PN_LINK_REMOTE_DETACH: {
        pn_link_t* l = pn_event_link(e);
        pn_condition_t* c = pn_link_remote_condition(l);
        link_errors_[l] = pn_condition_is_set(c) ? pn_condition_get_name(c) : "(none)";
        if (pn_condition_is_set(c))
          std::cerr << "link detached: " << pn_condition_get_name(c) << ": "
                    << (pn_condition_get_description(c) ? pn_condition_get_description(c) : "")
                    << "\n";
        pn_link_close(l);
        break;
      }
      case PN_SESSION_REMOTE_CLOSE: {
        pn_session_t* s = pn_event_session(e);
        pn_condition_t* c = pn_session_remote_condition(s);
        session_errors_[s] = pn_condition_is_set(c) ? pn_condition_get_name(c) : "(none)";
        pn_session_close(s);
        break;
      }
      case PN_DELIVERY: {
        pn_delivery_t* d = pn_event_delivery(e);
        pn_link_t* l = pn_delivery_link(d);
        if (pn_link_is_sender(l) || !pn_delivery_readable(d) || pn_delivery_partial(d))
          break;
        std::string bytes;
        char buf[16384];
        ssize_t n;
        while ((n = pn_link_recv(l, buf, sizeof buf)) > 0)
          bytes.append(buf, static_cast<std::size_t>(n));
        pn_link_advance(l);
        received r;
        r.delivery = d;
        r.msg.decode(std::vector<char>(bytes.begin(), bytes.end()));
        const pn_delivery_tag_t tag = pn_delivery_tag(d);
        r.tag.assign(tag.start, tag.size);
        r.settled = pn_delivery_settled(d);
        inbox_[l].push_back(std::move(r));
        break;
      }
      case PN_CONNECTION_REMOTE_CLOSE: {
        pn_condition_t* c = pn_connection_remote_condition(conn_);
        if (pn_condition_is_set(c))
          close_condition_ = pn_condition_get_name(c);
        pn_connection_close(conn_);
        break;
      }
      case PN_TRANSPORT_CLOSED: {
        pn_condition_t* c = pn_transport_condition(pn_event_transport(e));
        if (close_condition_.empty() && pn_condition_is_set(c))
          close_condition_ = pn_condition_get_name(c);
        closed_ = true;
        break;
      }
      default:
        break;
    }
  }

  pn_proactor_t* proactor_ = nullptr;
  pn_ssl_domain_t* ssl_domain_ = nullptr;
  pn_connection_t* conn_ = nullptr;
  pn_session_t* session_ = nullptr;
  bool closed_ = false;
  bool woken_ = false;
  std::string close_condition_;
  std::map<pn_link_t*, std::string> link_errors_;
  std::map<pn_session_t*, std::string> session_errors_;
  std::map<pn_link_t*, std::deque<received>> inbox_;
  int next_link_ = 0;
  int next_tag_ = 0;
};

// --- CBS ----------------------------------------------------------------------------------

struct cbs_reply {
  proton::value status;  ///< status-code as sent (its AMQP type matters)
  std::string description;
  proton::message_id correlation_id;
};

class cbs {
 public:
  explicit cbs(client& c, std::string audience = default_hostname)
      : c_(c), audience_(std::move(audience)) {
    send_ = c.attach(true, "$cbs");
    recv_ = c.attach(false, "$cbs", 10);
  }
  std::optional<cbs_reply> put(const std::string& token, proton::message_id id = std::string("r1"),
                               const std::string& type = "servicebus.windows.net:sastoken",
                               std::chrono::milliseconds timeout = 10s) {
    proton::message m;
    m.id(id);
    m.to("$cbs");
    m.reply_to("cbs");
    m.properties().put("operation", "put-token");
    m.properties().put("type", type);
    m.properties().put("name", audience_);
    m.body(token);
    if (!c_.send(send_, m))
      return std::nullopt;
    auto r = c_.next(recv_, timeout);
    if (!r)
      return std::nullopt;
    pn_link_flow(recv_, 1);  // one reply taken: room for the next
    cbs_reply out;
    out.status = r->msg.properties().get("status-code");
    out.description = proton::get<std::string>(r->msg.properties().get("status-description"));
    out.correlation_id = r->msg.correlation_id();
    return out;
  }
  /// A good put-token (status 200).
  bool ok(const std::string& token) {
    auto r = put(token);
    return r && r->status.type() == proton::INT && proton::get<std::int32_t>(r->status) == 200;
  }

 private:
  client& c_;
  std::string audience_;
  pn_link_t* send_ = nullptr;
  pn_link_t* recv_ = nullptr;
};

}  // namespace devicebound::test_support::amqp_client
