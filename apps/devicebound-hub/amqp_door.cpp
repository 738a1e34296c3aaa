#include "amqp_door.hpp"

#include <proton/condition.h>
#include <proton/connection.h>
#include <proton/delivery.h>
#include <proton/disposition.h>
#include <proton/event.h>
#include <proton/link.h>
#include <proton/listener.h>
#include <proton/netaddr.h>
#include <proton/proactor.h>
#include <proton/sasl.h>
#include <proton/sasl_plugin.h>
#include <proton/session.h>
#include <proton/ssl.h>
#include <proton/terminus.h>
#include <proton/transport.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <devicebound/auth/authenticate.hpp>
#include <devicebound/clock.hpp>
#include <devicebound/codec/amqp.hpp>
#include <map>
#include <mutex>
#include <proton/error.hpp>
#include <proton/message.hpp>
#include <proton/scalar.hpp>
#include <thread>
#include <unordered_map>
#include <variant>

namespace devicebound::hubd {

namespace {

namespace amqp = codec::amqp;
using amqp::link_kind;

/// Connections over `max_connections` waiting for their open, to be told why
/// they are closed; beyond this many, a connection over the limit is closed at
/// the TCP level at once.
constexpr std::uint32_t max_refusing_connections = 64;
/// How long a connection over the limit may take to send its open.
constexpr int refused_close_grace_ms = 2000;
/// Pushes kept for a link without credit; older ones are dropped (their locks expire).
constexpr std::size_t max_pending_pushes = 256;
/// How often put-token expiries are checked.
constexpr pn_millis_t expiry_check_ms = 1000;
/// How long a connection whose device was revoked stays open, its links closed,
/// so the client's detaches are answered before the close (see `close_at`).
constexpr int revoked_close_grace_ms = 1000;

/// CBS put-token `type` values (SPEC 10.5.2).
constexpr std::string_view cbs_type_servicebus = "servicebus.windows.net:sastoken";
constexpr std::string_view cbs_type_devices = "azure-devices.net:sastoken";

std::string_view str(const char* s) {
  return s ? std::string_view(s) : std::string_view();
}

std::optional<std::uint64_t> parse_u64(std::string_view s) {
  std::uint64_t v = 0;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || s.empty())
    return std::nullopt;
  return v;
}

/// Whether a listen host is a loopback address (plain AMQP is allowed there).
bool loopback_host(std::string_view host) {
  return host == "localhost" || host.starts_with("127.") || host == "::1" || host == "[::1]";
}

/// `host:port` split at the last ':'.
std::optional<std::pair<std::string, std::string>> split_host_port(std::string_view a) {
  const auto colon = a.rfind(':');
  if (colon == std::string_view::npos || colon + 1 == a.size())
    return std::nullopt;
  return std::pair{std::string(a.substr(0, colon)), std::string(a.substr(colon + 1))};
}

void set_condition(pn_condition_t* c, const error& e) {
  const auto cond = amqp::to_error_condition(e);
  pn_condition_set_name(c, cond.name().c_str());
  pn_condition_set_description(c, cond.description().c_str());
}

void set_condition(pn_condition_t* c, std::string_view name, const std::string& description) {
  pn_condition_set_name(c, std::string(name).c_str());
  pn_condition_set_description(c, description.c_str());
}

}  // namespace

// --- per-connection state (owned by the proactor thread) ------------------------------------

namespace {

/// A grant of a connection: a verified token (CBS put-token or SASL PLAIN).
struct grant {
  std::string key;  ///< policy|scope: a renewal replaces the grant of the same key
  auth::principal who;
  /// The token as put, and when: when keys or rights change, the token is
  /// verified again against the new ones at that time (so its expiry is judged
  /// as it was), and the grant goes if it no longer verifies.
  std::string token;
  time_point granted_at{};
};

/// An item the door pushes on a link that has no credit yet.
struct pending_push {
  amqp::outgoing_delivery delivery;
  std::uint64_t sequence_number = 0;  ///< device messages: a newer push of it replaces this one
  bool feedback = false;
  lock_token token;
};

struct link_state {
  std::uint64_t id = 0;
  pn_link_t* pn = nullptr;
  link_kind kind = link_kind::unknown;
  std::string device;
  bool we_send = false;
  bool open = true;
  bool present = false;  ///< device_present / feedback_attach sent
  std::uint32_t window = 0;
  auth::access_rights needs = auth::access_rights::none;  ///< none: no token needed
  std::string service;                                    ///< feedback: the back end's name
  std::deque<pending_push> pending;
};

/// A delivery the door sent and the peer has not settled yet.
struct sent_delivery {
  std::uint64_t link = 0;
  bool feedback = false;
  lock_token token;
  bool applied = false;  ///< its first outcome went to the router
  std::uint64_t op = 0;  ///< the settle request waiting for its reply (0: none)
};

/// What a reply address stands for.
struct op_state {
  enum class kind : std::uint8_t { send, settle, presence } what = kind::send;
  std::uint64_t link = 0;
  pn_delivery_t* delivery = nullptr;  ///< null: nothing to answer on the wire
};

struct conn_state {
  std::uint64_t id = 0;
  pn_connection_t* pn = nullptr;
  pn_transport_t* transport = nullptr;
  amqp_door::impl* door = nullptr;
  std::string peer;
  std::vector<grant> grants;
  std::unordered_map<pn_link_t*, link_state> links;
  std::unordered_map<std::uint64_t, pn_link_t*> link_by_id;
  std::unordered_map<pn_delivery_t*, std::string> incoming;  ///< partial transfers
  std::unordered_map<pn_delivery_t*, bool> oversized;
  std::unordered_map<pn_delivery_t*, sent_delivery> sent;
  std::unordered_map<std::uint64_t, op_state> ops;
  std::deque<std::pair<proton::message, std::string>> cbs_replies;  ///< reply, wanted reply-to
  std::uint64_t next_link = 1;
  std::uint64_t next_op = 1;
  std::uint64_t next_tag = 1;
  /// A revoked device's connection closes at this time: a grace period in which
  /// the client's own detaches (its `$cbs` links) are still answered, so its
  /// SDK learns of the end at once instead of waiting for a rundown timer.
  std::optional<time_point> close_at;
  std::string close_why;
  std::string close_condition = "amqp:unauthorized-access";
  /// Admitted connections: closed at the TCP level if no open frame arrives by
  /// then (`--amqp-open-timeout`); cleared by the open.
  std::optional<time_point> open_deadline;
  /// Over `max_connections`: its open is answered with a close, nothing else is served.
  bool refused = false;
  /// Over the limit with too many others waiting: closed at the TCP level.
  bool drop = false;
  /// Sessions the peer began and we answered, still open.
  std::unordered_map<pn_session_t*, bool> sessions;
};

}  // namespace

// --- the door ---------------------------------------------------------------------------------

struct amqp_door::impl {
  amqp_door_config config;
  door_id id = 0;
  request_sink sink;
  pn_proactor_t* proactor = nullptr;
  pn_ssl_domain_t* ssl = nullptr;
  std::vector<pn_listener_t*> listeners;
  std::thread thread;
  std::atomic<bool> stopping{false};

  // Start-up handshake with the proactor thread.
  std::mutex start_m;
  std::condition_variable start_cv;
  std::size_t opened = 0;
  std::optional<error> start_error;
  std::vector<std::string> bound;

  mutable std::mutex failure_m;
  std::optional<error> failed;

  // Engine thread -> proactor thread.
  std::mutex mailbox_m;
  std::unordered_map<std::uint64_t, pn_connection_t*> live;  ///< guarded: alive connections
  std::unordered_map<std::uint64_t, std::vector<outbound>> mailbox;

  // Proactor thread only.
  std::unordered_map<pn_connection_t*, std::unique_ptr<conn_state>> conns;
  std::uint64_t next_conn = 1;
  std::uint32_t refusing = 0;  ///< connections in `conns` that are `refused`
  std::uint64_t refused_total = 0;
  /// Admitted connections (not `refused`), read by `connections()`.
  std::atomic<std::uint32_t> admitted{0};

  explicit impl(amqp_door_config c) : config(std::move(c)) {}

  /// Whether tokens are verified (an enabled identity view), or test mode.
  bool auth_on() const noexcept { return config.identities && config.identities->enabled(); }

  void emit(std::string address, request r) {
    if (sink)
      sink(inbound{reply_to{id, std::move(address)}, std::move(r)});
  }

  static std::string op_address(const conn_state& c, std::uint64_t op) {
    return std::to_string(c.id) + ":" + std::to_string(op);
  }
  static std::string link_key(const conn_state& c, const link_state& l) {
    return "amqp/" + std::to_string(c.id) + "/" + std::to_string(l.id);
  }

  // --- the loop -------------------------------------------------------------------------------

  void run() {
    bool done = false;
    while (!done) {
      pn_event_batch_t* batch = pn_proactor_wait(proactor);
      while (pn_event_t* e = pn_event_batch_next(batch)) {
        try {
          if (!handle(e))
            done = true;
        } catch (const std::exception& ex) {
          // A bug must not take the daemon down with it: the connection goes instead.
          spdlog::error("amqp: {} handling {}", ex.what(), pn_event_type_name(pn_event_type(e)));
          if (pn_connection_t* c = pn_event_connection(e)) {
            set_condition(pn_connection_condition(c), "amqp:internal-error", ex.what());
            pn_connection_close(c);
          }
        }
      }
      pn_proactor_done(proactor, batch);
    }
  }

  /// false: the loop ends.
  bool handle(pn_event_t* e) {
    switch (pn_event_type(e)) {
      case PN_LISTENER_OPEN: {
        pn_listener_t* l = pn_event_listener(e);
        char host[256] = {0}, port[32] = {0};
        pn_netaddr_host_port(pn_listener_addr(l), host, sizeof host, port, sizeof port);
        std::lock_guard<std::mutex> g(start_m);
        bound.push_back(std::string(host) + ":" + port);
        ++opened;
        start_cv.notify_all();
        return true;
      }
      case PN_LISTENER_ACCEPT:
        accept(pn_event_listener(e));
        return true;
      case PN_LISTENER_CLOSE: {
        pn_condition_t* c = pn_listener_condition(pn_event_listener(e));
        if (pn_condition_is_set(c) && !stopping) {
          error err = make_error(errc::not_connected,
                                 "AMQP listener: " + std::string(str(pn_condition_get_name(c))) +
                                     ": " + std::string(str(pn_condition_get_description(c))));
          spdlog::critical("{}", err.message);
          {
            std::lock_guard<std::mutex> g(start_m);
            if (!start_error)
              start_error = err;
            start_cv.notify_all();
          }
          std::lock_guard<std::mutex> g(failure_m);
          if (!failed)
            failed = err;
        }
        return true;
      }
      case PN_PROACTOR_TIMEOUT:
        if (!stopping) {
          // Expiries are checked on each connection's own events.
          for (auto& [pn, c] : conns)
            if (!c->grants.empty() || c->close_at || c->open_deadline)
              pn_connection_wake(pn);
          pn_proactor_set_timeout(proactor, expiry_check_ms);
        }
        return true;
      case PN_PROACTOR_INTERRUPT:
        if (stopping) {
          pn_proactor_cancel_timeout(proactor);
          for (auto* l : listeners)
            pn_listener_close(l);
          pn_proactor_disconnect(proactor, nullptr);
        }
        return true;
      case PN_PROACTOR_INACTIVE:
        return !stopping;
      default:
        break;
    }
    pn_connection_t* pc = pn_event_connection(e);
    if (!pc)
      return true;
    auto it = conns.find(pc);
    if (it == conns.end())
      return true;
    conn_state& c = *it->second;
    if (c.refused && pn_event_type(e) != PN_TRANSPORT_CLOSED)
      return refused_event(c, e);
    switch (pn_event_type(e)) {
      case PN_CONNECTION_REMOTE_OPEN: {
        c.open_deadline.reset();
        char peer[128] = {0};
        if (const pn_netaddr_t* a = pn_transport_remote_addr(c.transport))
          pn_netaddr_str(a, peer, sizeof peer);
        c.peer = peer;
        pn_connection_set_container(pc, "devicebound-hub");
        pn_connection_open(pc);
        spdlog::debug("amqp: connection {} from {} open (hostname '{}')", c.id, c.peer,
                      str(pn_connection_remote_hostname(pc)));
        break;
      }
      case PN_SESSION_REMOTE_OPEN: {
        pn_session_t* s = pn_event_session(e);
        if (!(pn_session_state(s) & PN_LOCAL_UNINIT))
          break;
        pn_session_open(s);
        if (c.sessions.size() >= config.max_sessions) {
          // The begin is answered, then the session ended: the connection and
          // its other sessions go on.
          spdlog::info("amqp: connection {}: a session over the limit of {} ended", c.id,
                       config.max_sessions);
          set_condition(pn_session_condition(s), "amqp:resource-limit-exceeded",
                        "this connection has " + std::to_string(config.max_sessions) +
                            " sessions, the most the hub allows (--amqp-max-sessions)");
          pn_session_close(s);
          break;
        }
        c.sessions.emplace(s, true);
        break;
      }
      case PN_SESSION_REMOTE_CLOSE: {
        pn_session_t* s = pn_event_session(e);
        c.sessions.erase(s);
        for (auto& [pl, l] : c.links)
          if (pn_link_session(pl) == s)
            link_gone(c, l);
        pn_session_close(s);
        break;
      }
      case PN_LINK_REMOTE_OPEN:
        attach(c, pn_event_link(e));
        break;
      case PN_LINK_REMOTE_CLOSE:
      case PN_LINK_REMOTE_DETACH: {
        pn_link_t* pl = pn_event_link(e);
        if (auto l = c.links.find(pl); l != c.links.end())
          link_gone(c, l->second);
        if (!(pn_link_state(pl) & PN_LOCAL_CLOSED))
          pn_link_close(pl);
        forget_link(c, pl);
        break;
      }
      case PN_LINK_FLOW:
        if (auto l = c.links.find(pn_event_link(e)); l != c.links.end())
          flow(c, l->second);
        break;
      case PN_DELIVERY:
        delivery(c, pn_event_delivery(e));
        break;
      case PN_CONNECTION_REMOTE_CLOSE:
        pn_connection_close(pc);
        break;
      case PN_CONNECTION_WAKE:
        wake(c);
        break;
      case PN_TRANSPORT_CLOSED:
        closed(c);
        conns.erase(it);
        break;
      default:
        break;
    }
    return true;
  }

  // --- connections ----------------------------------------------------------------------------

  void accept(pn_listener_t* listener) {
    auto c = std::make_unique<conn_state>();
    c->id = next_conn++;
    c->door = this;
    c->pn = pn_connection();
    c->transport = pn_transport();
    pn_transport_set_server(c->transport);
    // The server reads the client's protocol header: TLS, SASL (ANONYMOUS,
    // PLAIN, MSSBCBS) or bare AMQP (Node, C#) are all accepted (SPEC 10.2).
    pn_transport_require_auth(c->transport, false);
    if (ssl) {
      pn_ssl_init(pn_ssl(c->transport), ssl, nullptr);
      pn_transport_require_encryption(c->transport, true);
    }
    pn_transport_set_max_frame(c->transport, config.max_frame_size);
    pn_sasl(c->transport);
    pnx_sasl_set_implementation(c->transport, &sasl_impl, c.get());
    if (admitted.load() >= config.max_connections) {
      // Over the limit: this connection only is refused. It is told why when its
      // open arrives (within a grace period); beyond a few such, at the TCP level.
      c->refused = true;
      c->close_condition = "amqp:resource-limit-exceeded";
      c->close_why = "the hub has " + std::to_string(config.max_connections) +
                     " AMQP connections, the most it allows (--amqp-max-connections)";
      c->close_at = system_clock{}.now() + std::chrono::milliseconds(refused_close_grace_ms);
      c->drop = refusing >= max_refusing_connections;
      ++refusing;
      if (refused_total++ % 1000 == 0)
        spdlog::warn("amqp: {} connections open (--amqp-max-connections): new ones are closed",
                     config.max_connections);
    } else {
      admitted.fetch_add(1);
      c->open_deadline = system_clock{}.now() + config.open_timeout;
    }
    {
      std::lock_guard<std::mutex> g(mailbox_m);
      live[c->id] = c->pn;
    }
    pn_connection_t* pn = c->pn;
    conns.emplace(pn, std::move(c));
    pn_listener_accept2(listener, pn, conns[pn]->transport);
  }

  void closed(conn_state& c) {
    if (c.refused)
      --refusing;
    else
      admitted.fetch_sub(1);
    {
      std::lock_guard<std::mutex> g(mailbox_m);
      live.erase(c.id);
      mailbox.erase(c.id);
    }
    for (auto& [pl, l] : c.links)
      link_gone(c, l);
    pn_condition_t* cond = pn_transport_condition(c.transport);
    if (pn_condition_is_set(cond))
      spdlog::debug("amqp: connection {} from {} closed: {}: {}", c.id, c.peer,
                    str(pn_condition_get_name(cond)), str(pn_condition_get_description(cond)));
    else
      spdlog::debug("amqp: connection {} from {} closed", c.id, c.peer);
  }

  /// Closes a connection at the TCP level (no AMQP close: the peer may never
  /// have sent its header).
  static void drop_transport(conn_state& c) {
    pn_transport_close_tail(c.transport);
    pn_transport_close_head(c.transport);
  }

  /// An event of a connection over `max_connections`: its open is answered
  /// with a close naming the limit; nothing else it asks for is served.
  bool refused_event(conn_state& c, pn_event_t* e) {
    switch (pn_event_type(e)) {
      case PN_CONNECTION_BOUND:
        if (c.drop)
          drop_transport(c);
        break;
      case PN_CONNECTION_REMOTE_OPEN:
        if (!(pn_connection_state(c.pn) & PN_LOCAL_CLOSED)) {
          pn_connection_set_container(c.pn, "devicebound-hub");
          pn_connection_open(c.pn);
          set_condition(pn_connection_condition(c.pn), c.close_condition, c.close_why);
          pn_connection_close(c.pn);
        }
        break;
      case PN_CONNECTION_WAKE:
        if (c.close_at && system_clock{}.now() >= *c.close_at) {
          c.close_at.reset();
          drop_transport(c);  // it never sent its open (or never read our close)
        }
        break;
      default:
        break;
    }
    return true;
  }

  // --- authentication -------------------------------------------------------------------------

  /// Verifies a SAS token (CBS put-token, SASL PLAIN) and keeps it as a grant.
  result<auth::principal> authenticate(conn_state& c, std::string_view token, time_point now) {
    result<auth::principal> who = make_error(errc::unauthorized, "");
    if (auth_on()) {
      who = config.identities->authenticate(token, config.iothub_hostname, now);
    } else {
      // Test mode: a well-formed, unexpired token speaks for whom it names.
      auto t = auth::parse_sas_token(token);
      if (!t)
        return auth::make_auth_error(auth::auth_failure::malformed_token, t.error().message);
      auto scope = auth::parse_sas_resource(t->resource);
      if (!scope)
        return auth::make_auth_error(auth::auth_failure::malformed_token, scope.error().message);
      auth::principal p;
      p.policy = t->key_name;
      p.scope = scope->path;
      p.device_id = scope->device_id;
      p.expiry = t->expiry;
      p.valid_until = auth::detail::valid_until(t->expiry, auth::verify_options{}.clock_skew);
      if (now > p.valid_until)
        return auth::make_auth_error(auth::auth_failure::expired,
                                     "se " + std::to_string(t->expiry) + " is in the past");
      p.rights = auth::access_rights::device_connect;
      if (t->key_name) {
        p.rights = auth::access_rights::all;
        for (const auto& d : auth::default_policies)
          if (d.name == *t->key_name)
            p.rights = d.rights;
      }
      who = std::move(p);
    }
    if (!who)
      return who;
    const std::string key = who->policy.value_or("") + "|" + who->scope;
    auto g = std::find_if(c.grants.begin(), c.grants.end(),
                          [&](const grant& x) { return x.key == key; });
    if (g != c.grants.end()) {
      g->who = *who;  // renewal (SPEC 10.7.1)
      g->token = std::string(token);
      g->granted_at = now;
    } else {
      c.grants.push_back(grant{key, *who, std::string(token), now});
    }
    return who;
  }

  /// Whether a live grant of `c` allows what `l` needs; `why` says why not.
  bool authorized(conn_state& c, const link_state& l, time_point now, std::string* why) {
    if (!auth_on() || l.needs == auth::access_rights::none)
      return true;
    std::string last = "no SAS token was put on this connection's $cbs link";
    for (const auto& g : c.grants) {
      if (now > g.who.valid_until) {
        last = "the SAS token expired";
        continue;
      }
      auto r = auth::authorize(g.who, l.needs, l.device);
      if (r)
        return true;
      last = r.error().message;
    }
    if (why)
      *why = last;
    return false;
  }

  /// Prunes expired grants and closes the links no grant covers any more.
  void check_expiries(conn_state& c, time_point now) {
    if (c.open_deadline && now >= *c.open_deadline) {
      c.open_deadline.reset();
      spdlog::info("amqp: connection {}: no open frame within {} s (--amqp-open-timeout): closed",
                   c.id, config.open_timeout.count());
      drop_transport(c);
      return;
    }
    if (c.close_at && now >= *c.close_at) {
      c.close_at.reset();
      if (!(pn_connection_state(c.pn) & PN_LOCAL_CLOSED)) {
        spdlog::info("amqp: connection {}: closing: {}", c.id, c.close_why);
        // Each session ends first, with the same condition: a client that meets a
        // connection close with its links still attached detaches them and waits
        // for answers that never come (the Node SDK's 45 s rundown); a session end
        // before it lets it drop them at once, however late it noticed the revocation.
        for (pn_session_t* ssn = pn_session_head(c.pn, PN_LOCAL_ACTIVE); ssn;
             ssn = pn_session_next(ssn, PN_LOCAL_ACTIVE)) {
          set_condition(pn_session_condition(ssn), c.close_condition, c.close_why);
          pn_session_close(ssn);
        }
        set_condition(pn_connection_condition(c.pn), c.close_condition, c.close_why);
        pn_connection_close(c.pn);
      }
      return;
    }
    if (!auth_on() || c.grants.empty())
      return;
    for (auto& [pl, l] : c.links) {
      if (!l.open || l.needs == auth::access_rights::none)
        continue;
      std::string why;
      if (authorized(c, l, now, &why))
        continue;
      spdlog::info("amqp: connection {}: closing link '{}' ({}): {}", c.id, str(pn_link_name(pl)),
                   amqp::to_string(l.kind), why);
      link_gone(c, l);
      set_condition(pn_link_condition(pl), "amqp:unauthorized-access",
                    "the SAS token that authorised this link expired: " + why);
      pn_link_close(pl);
    }
    std::erase_if(c.grants, [&](const grant& g) { return now > g.who.valid_until; });
  }

  // --- links ----------------------------------------------------------------------------------

  void refuse(pn_link_t* pl, std::string_view condition, const std::string& description) {
    // A refused attach: null terminus on our side, then a detach with the error.
    pn_terminus_set_type(pn_link_is_sender(pl) ? pn_link_source(pl) : pn_link_target(pl),
                         PN_UNSPECIFIED);
    pn_link_open(pl);
    set_condition(pn_link_condition(pl), condition, description);
    pn_link_close(pl);
  }

  void attach(conn_state& c, pn_link_t* pl) {
    const bool we_send = pn_link_is_sender(pl);
    const std::string address(str(
        pn_terminus_get_address(we_send ? pn_link_remote_source(pl) : pn_link_remote_target(pl))));
    pn_terminus_copy(pn_link_source(pl), pn_link_remote_source(pl));
    pn_terminus_copy(pn_link_target(pl), pn_link_remote_target(pl));
    pn_link_set_snd_settle_mode(pl, pn_link_remote_snd_settle_mode(pl));
    // We settle what we receive ourselves, with one terminal outcome (SPEC 10.8.2);
    // on our sending links the receiver chooses (C#: second, SPEC 10.11.3, 10.15.1).
    pn_link_set_rcv_settle_mode(pl, we_send ? pn_link_remote_rcv_settle_mode(pl) : PN_RCV_FIRST);

    const auto open_links = static_cast<std::size_t>(std::count_if(
        c.links.begin(), c.links.end(), [](const auto& kv) { return kv.second.open; }));
    if (open_links >= config.max_links) {
      spdlog::info("amqp: connection {}: refused link to '{}': over the limit of {} links", c.id,
                   address, config.max_links);
      return refuse(pl, "amqp:resource-limit-exceeded",
                    "this connection has " + std::to_string(config.max_links) +
                        " links, the most the hub allows (--amqp-max-links)");
    }
    auto parsed = amqp::parse_link_address(address);
    if (!parsed) {
      spdlog::info("amqp: connection {}: refused link to '{}': {}", c.id, address,
                   parsed.error().message);
      return refuse(pl, amqp::condition(parsed.error().code), parsed.error().message);
    }
    link_state l;
    l.pn = pl;
    l.kind = parsed->kind;
    l.device = parsed->device_id;
    l.we_send = we_send;
    bool direction_ok = true;
    switch (l.kind) {
      case link_kind::cbs:
        break;
      case link_kind::c2d_send:
        direction_ok = !we_send;
        l.needs = auth::access_rights::service_connect;
        break;
      case link_kind::feedback:
      case link_kind::file_notifications:
        direction_ok = we_send;
        l.needs = auth::access_rights::service_connect;
        break;
      case link_kind::device_c2d:
        direction_ok = we_send;
        l.needs = auth::access_rights::device_connect;
        break;
      case link_kind::device_telemetry:
        direction_ok = !we_send;
        l.needs = auth::access_rights::device_connect;
        break;
      case link_kind::device_twin:
      case link_kind::device_methods:
        l.needs = auth::access_rights::device_connect;
        break;
      case link_kind::unknown:
        spdlog::info("amqp: connection {}: refused link to unknown address '{}'", c.id, address);
        return refuse(pl, "amqp:not-found", "no such node: '" + address + "'");
    }
    if (!direction_ok) {
      spdlog::info("amqp: connection {}: refused a {} link to '{}'", c.id,
                   we_send ? "receiving" : "sending", address);
      return refuse(
          pl, "amqp:not-allowed",
          std::string("'") + address + "' takes no " + (we_send ? "receiver" : "sender") + " link");
    }
    if (parsed->module_id && l.kind == link_kind::device_c2d)
      return refuse(pl, "amqp:not-implemented", "module identities are not supported");
    const time_point now = system_clock{}.now();
    std::string why;
    if (!authorized(c, l, now, &why)) {
      spdlog::info("amqp: connection {}: refused link to '{}': {}", c.id, address, why);
      return refuse(pl, "amqp:unauthorized-access", why);
    }
    l.id = c.next_link++;
    if (l.kind == link_kind::feedback || l.kind == link_kind::c2d_send) {
      // The back end's name in logs and in the router (one feedback attach per link).
      std::string who = "anonymous";
      for (const auto& g : c.grants)
        if (g.who.policy && auth::authorize(g.who, l.needs))
          who = *g.who.policy;
      l.service = who + "@" + link_key(c, l);
    }
    if (!we_send)
      pn_link_set_max_message_size(pl, config.max_message_size);
    pn_link_open(pl);
    if (!we_send)
      pn_link_flow(pl, static_cast<int>(config.link_credit));
    spdlog::debug("amqp: connection {}: link '{}' {} '{}' ({}{}{})", c.id, str(pn_link_name(pl)),
                  we_send ? "from" : "to", address, amqp::to_string(l.kind),
                  l.device.empty() ? "" : ", device ", l.device);
    c.link_by_id[l.id] = pl;
    auto& stored = c.links.emplace(pl, std::move(l)).first->second;
    if (we_send)
      flow(c, stored);
  }

  /// The link ended (peer detach, session or connection end, token expiry).
  void link_gone(conn_state& c, link_state& l) {
    if (!l.open)
      return;
    l.open = false;
    l.pending.clear();
    if (!l.present)
      return;
    l.present = false;
    if (l.kind == link_kind::device_c2d)
      emit({}, device_absent{l.device, link_key(c, l)});
    else if (l.kind == link_kind::feedback)
      emit({}, feedback_detach_request{l.service, link_key(c, l)});
  }

  /// A link both sides have detached: its state goes and Proton frees it (after
  /// our detach is written), so a client that attaches and detaches in a loop
  /// does not grow the connection's memory.
  void forget_link(conn_state& c, pn_link_t* pl) {
    if (auto it = c.links.find(pl); it != c.links.end()) {
      const std::uint64_t id = it->second.id;
      c.link_by_id.erase(id);
      // Replies still to come for it find nothing (their deliveries are freed).
      std::erase_if(c.ops, [&](const auto& kv) { return kv.second.link == id; });
      std::erase_if(c.sent, [&](const auto& kv) { return kv.second.link == id; });
      c.links.erase(it);
    }
    std::erase_if(c.incoming, [&](const auto& kv) { return pn_delivery_link(kv.first) == pl; });
    std::erase_if(c.oversized, [&](const auto& kv) { return pn_delivery_link(kv.first) == pl; });
    pn_link_free(pl);
  }

  /// Credit arrived on a link we send on.
  void flow(conn_state& c, link_state& l) {
    if (!l.open || !l.we_send)
      return;
    if (l.kind == link_kind::cbs) {
      flush_cbs(c);
    } else {
      while (!l.pending.empty() && pn_link_credit(l.pn) > 0) {
        pending_push p = std::move(l.pending.front());
        l.pending.pop_front();
        send_push(c, l, std::move(p));
      }
      const int credit = pn_link_credit(l.pn);
      // Presence (and the feedback attach) once the receiver grants credit: the
      // window is that credit, clamped by the router (SPEC 10.14.5).
      if (credit > 0 && (!l.present || static_cast<std::uint32_t>(credit) > l.window)) {
        l.window = static_cast<std::uint32_t>(credit);
        if (l.kind == link_kind::device_c2d || l.kind == link_kind::feedback) {
          const std::uint64_t op = c.next_op++;
          c.ops[op] = op_state{op_state::kind::presence, l.id, nullptr};
          if (l.kind == link_kind::device_c2d)
            emit(op_address(c, op), device_present{l.device, link_key(c, l), l.window, nullptr});
          else
            emit(op_address(c, op), feedback_attach_request{l.service, link_key(c, l), l.window});
        }
        l.present = true;
      }
    }
    if (pn_link_get_drain(l.pn) && l.pending.empty())
      pn_link_drained(l.pn);
  }

  pn_delivery_t* send_message(conn_state& c, link_state& l, const proton::message& m,
                              const std::string& tag, bool settled) {
    std::vector<char> bytes;
    m.encode(bytes);
    pn_delivery_t* d = pn_delivery(l.pn, pn_dtag(tag.data(), tag.size()));
    pn_link_send(l.pn, bytes.data(), bytes.size());
    pn_link_advance(l.pn);
    if (settled) {
      pn_delivery_settle(d);
      return nullptr;
    }
    (void)c;
    return d;
  }

  void send_push(conn_state& c, link_state& l, pending_push p) {
    const std::string tag(reinterpret_cast<const char*>(p.delivery.tag.data()),
                          p.delivery.tag.size());
    pn_delivery_t* d = send_message(c, l, p.delivery.message, tag, false);
    c.sent[d] = sent_delivery{l.id, p.feedback, p.token, false, 0};
  }

  void queue_push(conn_state& c, link_state& l, pending_push p) {
    if (pn_link_credit(l.pn) > 0 && l.pending.empty())
      return send_push(c, l, std::move(p));
    if (!p.feedback)
      std::erase_if(l.pending, [&](const pending_push& x) {
        return !x.feedback && x.sequence_number == p.sequence_number;
      });
    l.pending.push_back(std::move(p));
    if (l.pending.size() > max_pending_pushes)
      l.pending.pop_front();  // its lock expires and it comes again
  }

  // --- CBS (SPEC 10.4-10.7) -------------------------------------------------------------------

  void put_token(conn_state& c, const proton::message& req) {
    const auto prop = [&](const char* name) -> std::string {
      const auto& props = req.properties();
      if (props.empty() || !props.exists(name))
        return {};
      const proton::scalar v = props.get(name);
      if (v.type() == proton::STRING)
        return proton::get<std::string>(v);
      if (v.type() == proton::SYMBOL)
        return std::string(proton::get<proton::symbol>(v));
      return {};
    };
    std::int32_t status = amqp::cbs_status_ok;
    std::string description = "OK";
    const std::string operation = prop("operation");
    const std::string type = prop("type");
    const std::string audience = prop("name");
    if (operation != "put-token") {
      status = 400;
      description = "unsupported CBS operation '" + operation + "' (only put-token)";
    } else if (type != cbs_type_servicebus && type != cbs_type_devices) {
      status = 400;
      description = "unsupported token type '" + type + "' (expected " +
                    std::string(cbs_type_servicebus) + " or " + std::string(cbs_type_devices) + ")";
    } else if (req.body().type() != proton::STRING) {
      status = 400;
      description = "the put-token body must be an AMQP string holding the SAS token";
    } else {
      auto who = authenticate(c, proton::get<std::string>(req.body()), system_clock{}.now());
      if (!who) {
        status = amqp::cbs_status_code(who.error().code);
        description = who.error().message;
      } else {
        description = "OK";
      }
    }
    if (status == amqp::cbs_status_ok)
      spdlog::debug("amqp: connection {}: put-token for '{}' accepted", c.id, audience);
    else
      spdlog::info("amqp: connection {}: put-token for '{}' refused: {} {}", c.id, audience, status,
                   description);
    proton::message reply;
    // The request's id with its AMQP type (string, ulong, uuid, binary): SPEC 10.6.1.
    reply.correlation_id(req.id());
    reply.properties().put("status-code", proton::scalar(status));  // an AMQP int (10.6.2)
    reply.properties().put("status-description", proton::scalar(description));
    if (!req.reply_to().empty())
      reply.to(req.reply_to());
    c.cbs_replies.emplace_back(std::move(reply), req.reply_to());
    flush_cbs(c);
  }

  /// Sends queued put-token replies on the connection's `$cbs` sender link,
  /// preferring the one whose target is the request's reply-to (SPEC 10.4.2).
  void flush_cbs(conn_state& c) {
    while (!c.cbs_replies.empty()) {
      auto& [reply, reply_to] = c.cbs_replies.front();
      link_state* best = nullptr;
      for (auto& [pl, l] : c.links) {
        if (!l.open || !l.we_send || l.kind != link_kind::cbs)
          continue;
        if (!reply_to.empty() &&
            str(pn_terminus_get_address(pn_link_remote_target(pl))) == reply_to) {
          best = &l;
          break;
        }
        if (!best || l.id < best->id)
          best = &l;
      }
      if (!best || pn_link_credit(best->pn) <= 0)
        return;  // again when such a link attaches or gets credit
      const std::uint64_t n = c.next_tag++;
      const std::string tag(reinterpret_cast<const char*>(&n), sizeof n);
      const bool settled = pn_link_remote_snd_settle_mode(best->pn) != PN_SND_UNSETTLED;
      send_message(c, *best, reply, tag, settled);
      c.cbs_replies.pop_front();
    }
  }

  // --- deliveries -----------------------------------------------------------------------------

  void delivery(conn_state& c, pn_delivery_t* d) {
    pn_link_t* pl = pn_delivery_link(d);
    auto it = c.links.find(pl);
    if (pn_link_is_sender(pl))
      return outcome(c, it == c.links.end() ? nullptr : &it->second, d);
    if (!pn_delivery_readable(d) && !pn_delivery_partial(d) && !pn_delivery_aborted(d))
      return;
    if (pn_delivery_aborted(d)) {
      c.incoming.erase(d);
      c.oversized.erase(d);
      pn_delivery_settle(d);
      return;
    }
    std::string& buf = c.incoming[d];
    char chunk[16384];
    for (;;) {
      const ssize_t n = pn_link_recv(pl, chunk, sizeof chunk);
      if (n <= 0)
        break;
      if (buf.size() + static_cast<std::size_t>(n) > config.max_message_size)
        c.oversized[d] = true;
      else
        buf.append(chunk, static_cast<std::size_t>(n));
    }
    if (pn_delivery_partial(d))
      return;
    std::string bytes = std::move(buf);
    c.incoming.erase(d);
    const bool too_big = c.oversized.erase(d) > 0;
    pn_link_advance(pl);
    if (it == c.links.end() || !it->second.open) {
      pn_delivery_update(d, PN_RELEASED);
      pn_delivery_settle(d);
      return;
    }
    link_state& l = it->second;
    if (pn_link_credit(pl) < static_cast<int>(config.link_credit / 2))
      pn_link_flow(pl, static_cast<int>(config.link_credit) - pn_link_credit(pl));
    const bool presettled = pn_delivery_settled(d);

    if (l.kind == link_kind::c2d_send)
      return c2d_send(c, l, d, bytes, too_big, presettled);
    if (too_big) {
      spdlog::info("amqp: connection {}: a transfer over {} bytes on '{}' rejected", c.id,
                   config.max_message_size, str(pn_link_name(pl)));
      if (!presettled) {
        set_condition(pn_disposition_condition(pn_delivery_local(d)),
                      "amqp:link:message-size-exceeded",
                      "the transfer is larger than " + std::to_string(config.max_message_size) +
                          " bytes (--amqp-max-message-size)");
        pn_delivery_update(d, PN_REJECTED);
      }
      pn_delivery_settle(d);
      return;
    }

    if (l.kind == link_kind::cbs && !too_big) {
      proton::message m;
      try {
        m.decode(std::vector<char>(bytes.begin(), bytes.end()));
        put_token(c, m);
      } catch (const proton::error& e) {
        spdlog::info("amqp: connection {}: undecodable CBS request: {}", c.id, e.what());
      }
    }
    // Telemetry, twin, methods: accepted and dropped (SPEC 10.16).
    if (!presettled)
      pn_delivery_update(d, PN_ACCEPTED);
    pn_delivery_settle(d);
  }

  void c2d_send(conn_state& c, link_state& l, pn_delivery_t* d, const std::string& bytes,
                bool too_big, bool presettled) {
    std::string address;
    if (presettled) {
      pn_delivery_settle(d);  // nobody waits for an outcome
    } else {
      const std::uint64_t op = c.next_op++;
      c.ops[op] = op_state{op_state::kind::send, l.id, d};
      address = op_address(c, op);
    }
    if (too_big)
      return emit(address, refused_request{make_error(errc::message_too_large,
                                                      "the transfer is larger than " +
                                                          std::to_string(config.max_message_size) +
                                                          " bytes (--amqp-max-message-size)")});
    proton::message m;
    try {
      m.decode(std::vector<char>(bytes.begin(), bytes.end()));
    } catch (const proton::error& e) {
      return emit(address,
                  refused_request{make_error(errc::argument_invalid,
                                             std::string("undecodable message: ") + e.what())});
    }
    auto s = amqp::decode_c2d_send(m, std::span<const char>(bytes.data(), bytes.size()));
    if (!s)
      return emit(address, refused_request{s.error()});
    if (s->module_id)
      return emit(address, refused_request{make_error(
                               errc::argument_invalid,
                               "cloud-to-device messages to modules are not supported")});
    const std::string service = l.service.empty() ? "amqp/" + std::to_string(c.id) : l.service;
    emit(address, send_request{service, std::move(s->device_id), std::move(s->message)});
  }

  /// The peer's outcome for a delivery we sent (device C2D, feedback, CBS reply).
  void outcome(conn_state& c, link_state* l, pn_delivery_t* d) {
    auto it = c.sent.find(d);
    const bool settled = pn_delivery_settled(d);
    if (it == c.sent.end()) {
      if (settled)
        pn_delivery_settle(d);
      return;
    }
    sent_delivery& s = it->second;
    const std::uint64_t state = pn_delivery_remote_state(d);
    const bool terminal = state == PN_ACCEPTED || state == PN_REJECTED || state == PN_RELEASED ||
                          state == PN_MODIFIED;
    if (!s.applied && (terminal || settled) && l && l->open) {
      // The first terminal outcome wins (Node's autoaccept, SPEC 10.11.3).
      s.applied = true;
      const std::uint64_t op = c.next_op++;
      c.ops[op] = op_state{op_state::kind::settle, s.link, settled ? nullptr : d};
      s.op = op;
      if (s.feedback) {
        // accepted -> complete; released/modified -> abandon; rejected -> the
        // batch is dropped (dead-lettered), which is a complete for the hub.
        const bool complete = state == PN_ACCEPTED || state == PN_REJECTED;
        emit(op_address(c, op), feedback_settle_request{l->service, s.token, complete});
      } else {
        const disposition how = state == PN_ACCEPTED   ? disposition::complete
                                : state == PN_REJECTED ? disposition::reject
                                                       : disposition::abandon;
        emit(op_address(c, op), settle_request{l->device, s.token, how});
      }
    }
    if (settled) {
      if (s.op)
        if (auto o = c.ops.find(s.op); o != c.ops.end())
          o->second.delivery = nullptr;
      c.sent.erase(it);
      pn_delivery_settle(d);
    }
  }

  // --- from the engine thread -----------------------------------------------------------------

  void wake(conn_state& c) {
    std::vector<outbound> items;
    {
      std::lock_guard<std::mutex> g(mailbox_m);
      if (auto it = mailbox.find(c.id); it != mailbox.end()) {
        items = std::move(it->second);
        mailbox.erase(it);
      }
    }
    for (auto& item : items)
      std::visit([&](auto& x) { deliver(c, x); }, item);
    check_expiries(c, system_clock{}.now());
  }

  link_state* link_of(conn_state& c, std::uint64_t link) {
    auto it = c.link_by_id.find(link);
    if (it == c.link_by_id.end())
      return nullptr;
    auto l = c.links.find(it->second);
    return l == c.links.end() ? nullptr : &l->second;
  }

  void deliver(conn_state& c, reply& r) {
    const auto colon = r.to.address.find(':');
    const auto op_id = parse_u64(std::string_view(r.to.address).substr(colon + 1));
    if (!op_id)
      return;
    auto it = c.ops.find(*op_id);
    if (it == c.ops.end())
      return;
    const op_state op = it->second;
    c.ops.erase(it);
    link_state* l = link_of(c, op.link);
    const error* e = std::get_if<error>(&r.what);
    switch (op.what) {
      case op_state::kind::presence:
        if (e && l && l->open) {
          spdlog::info("amqp: connection {}: closing link '{}': {}", c.id, str(pn_link_name(l->pn)),
                       e->message);
          l->present = false;  // the router holds no presence to end
          link_gone(c, *l);
          set_condition(pn_link_condition(l->pn), *e);
          pn_link_close(l->pn);
        }
        return;
      case op_state::kind::send:
        // The outcome of a C2D send, after the store committed it (SPEC 10.10).
        if (!op.delivery || !l || !l->open)
          return;
        if (e) {
          set_condition(pn_disposition_condition(pn_delivery_local(op.delivery)), *e);
          pn_delivery_update(op.delivery, PN_REJECTED);
        } else {
          pn_delivery_update(op.delivery, PN_ACCEPTED);
        }
        pn_delivery_settle(op.delivery);
        return;
      case op_state::kind::settle: {
        // An unsettled outcome (rcv-settle-mode second, C#) is answered with a
        // settled disposition: accepted, or rejected with the lock error (SPEC 10.15.1).
        if (!op.delivery)
          return;
        auto s = c.sent.find(op.delivery);
        if (s == c.sent.end())
          return;
        c.sent.erase(s);
        if (l && l->open) {
          if (e) {
            set_condition(pn_disposition_condition(pn_delivery_local(op.delivery)), *e);
            pn_delivery_update(op.delivery, PN_REJECTED);
          } else {
            pn_delivery_update(op.delivery, PN_ACCEPTED);
          }
        }
        pn_delivery_settle(op.delivery);
        return;
      }
    }
  }

  void deliver(conn_state& c, device_push& p) {
    link_state* l = link_for_push(c, p.connection);
    if (!l)
      return;  // gone: the lock expires and the message comes again
    auto out = amqp::encode_c2d_delivery(p.msg);
    if (!out) {
      spdlog::error("amqp: cannot encode message {} for '{}': {}", p.msg.sequence_number, p.device,
                    out.error().message);
      return;
    }
    queue_push(c, *l,
               pending_push{std::move(*out), p.msg.sequence_number, false, *p.msg.lock_token});
  }

  /// A device was deleted or disabled (committed): its grants go, its links
  /// close, and a connection left with no grant that had one for it closes
  /// (a device's own connection). Sent to every connection; most have nothing of it.
  void deliver(conn_state& c, device_revoked& r) {
    const char* why = r.deleted ? "the device was deleted from the registry"
                                : "the device was disabled in the registry";
    const auto before = c.grants.size();
    std::erase_if(c.grants, [&](const grant& g) { return g.who.device_id == r.device; });
    const bool had_grant = c.grants.size() != before;
    bool closed_link = false;
    for (auto& [pl, l] : c.links) {
      if (!l.open || l.device != r.device)
        continue;
      link_gone(c, l);
      set_condition(pn_link_condition(pl), "amqp:unauthorized-access", why);
      pn_link_close(pl);
      closed_link = true;
    }
    if (had_grant && c.grants.empty()) {
      // Not at once: the client detaches its other links when it sees ours
      // close, and waits for our answers (the Node SDK, 45 s otherwise).
      spdlog::info("amqp: connection {}: closing in {} ms: device '{}': {}", c.id,
                   revoked_close_grace_ms, r.device, why);
      c.close_at = system_clock{}.now() + std::chrono::milliseconds(revoked_close_grace_ms);
      c.close_why = why;
    } else if (closed_link) {
      spdlog::info("amqp: connection {}: closed the links of device '{}': {}", c.id, r.device, why);
    }
  }

  /// Keys or rights changed (committed; the identity view has the change):
  /// every grant they may touch is verified again, its token at the time it
  /// was granted. A grant that no longer verifies goes; the links no remaining
  /// grant covers are detached with `amqp:unauthorized-access`, and a
  /// connection left with no grant closes after the grace period with the same
  /// condition. Grants that still verify (a token signed with the other key)
  /// and what they cover stay.
  void deliver(conn_state& c, credentials_changed& r) {
    if (!auth_on() || c.grants.empty())
      return;
    const auto touched = [&](const grant& g) {
      if (r.policies && g.who.policy)
        return true;
      return g.who.device_id &&
             std::find(r.devices.begin(), r.devices.end(), *g.who.device_id) != r.devices.end();
    };
    std::string why;
    const auto before = c.grants.size();
    for (auto& g : c.grants) {
      if (!touched(g))
        continue;
      auto again = config.identities->authenticate(g.token, config.iothub_hostname, g.granted_at);
      if (again) {
        g.who = *again;  // the rights may have changed: fewer links may be covered
        continue;
      }
      why = again.error().message;
      g.key.clear();  // dropped below
      spdlog::info("amqp: connection {}: a token no longer verifies: {}", c.id, why);
    }
    std::erase_if(c.grants, [](const grant& g) { return g.key.empty(); });
    const bool dropped = c.grants.size() != before;
    const time_point now = system_clock{}.now();
    bool closed_link = false;
    for (auto& [pl, l] : c.links) {
      if (!l.open || l.needs == auth::access_rights::none)
        continue;
      std::string reason;
      if (authorized(c, l, now, &reason))
        continue;
      spdlog::info("amqp: connection {}: closing link '{}' ({}): {}", c.id, str(pn_link_name(pl)),
                   amqp::to_string(l.kind), reason);
      link_gone(c, l);
      set_condition(pn_link_condition(pl), "amqp:unauthorized-access",
                    why.empty()
                        ? "the SAS token that authorised this link no longer grants what it "
                          "needs (the policy's rights changed): " +
                              reason
                        : "the SAS token that authorised this link no longer verifies (a key "
                          "was renewed, a policy or device changed or deleted): " +
                              why);
      pn_link_close(pl);
      closed_link = true;
    }
    if (dropped && c.grants.empty()) {
      spdlog::info("amqp: connection {}: closing in {} ms: no token verifies any more", c.id,
                   revoked_close_grace_ms);
      c.close_at = now + std::chrono::milliseconds(revoked_close_grace_ms);
      c.close_why =
          "the SAS token of this connection no longer verifies (a key was renewed, a "
          "policy or device changed or deleted): " +
          why;
      c.close_condition = "amqp:unauthorized-access";
    } else if (closed_link) {
      spdlog::info("amqp: connection {}: closed the links its tokens no longer cover", c.id);
    }
  }

  void deliver(conn_state& c, feedback_push& p) {
    link_state* l = link_for_push(c, p.connection);
    if (!l)
      return;
    queue_push(c, *l, pending_push{amqp::encode_feedback(p.batch), 0, true, p.batch.lock_token});
  }

  link_state* link_for_push(conn_state& c, std::string_view key) {
    // amqp/{conn}/{link}
    const auto slash = key.rfind('/');
    if (slash == std::string_view::npos)
      return nullptr;
    auto id = parse_u64(key.substr(slash + 1));
    link_state* l = id ? link_of(c, *id) : nullptr;
    return l && l->open ? l : nullptr;
  }

  // --- SASL (SPEC 10.2) -----------------------------------------------------------------------
  //
  // Proton's own server SASL offers ANONYMOUS (and EXTERNAL, or Cyrus's list);
  // Python's uamqp aborts unless the list holds MSSBCBS. This implementation
  // offers MSSBCBS, ANONYMOUS and PLAIN; authorization itself happens through
  // CBS, except that a PLAIN password that is a SAS token is taken as a put-token.

  static const pnx_sasl_implementation sasl_impl;

  static conn_state* sasl_conn(pn_transport_t* t) {
    return static_cast<conn_state*>(pnx_sasl_get_context(t));
  }

  /// A listener with a certificate takes SASL only inside TLS: a plain SASL
  /// header is offered no mechanism and refused, so no token is read in the clear.
  static bool sasl_in_clear(pn_transport_t* t) {
    const conn_state* c = sasl_conn(t);
    return c && c->door->ssl && !pnx_sasl_is_transport_encrypted(t);
  }

  static void sasl_process_init(pn_transport_t* t, const char* mechanism, const pn_bytes_t* recv) {
    const std::string_view mech = str(mechanism);
    conn_state* c = sasl_conn(t);
    if (sasl_in_clear(t)) {
      spdlog::info("amqp: connection {}: SASL without TLS refused", c->id);
      pnx_sasl_set_failed(t);
    } else if (mech == "ANONYMOUS" || mech == "MSSBCBS") {
      pnx_sasl_set_succeeded(t, "anonymous", nullptr);
    } else if (mech == "PLAIN" && c) {
      // authzid \0 authcid \0 password; the password is a SAS token (DOC-SAS).
      const std::string_view r(recv->start, recv->size);
      const auto first = r.find('\0');
      const auto second = first == std::string_view::npos ? first : r.find('\0', first + 1);
      bool ok = false;
      std::string user;
      if (second != std::string_view::npos) {
        user = std::string(r.substr(first + 1, second - first - 1));
        auto who = c->door->authenticate(*c, r.substr(second + 1), system_clock{}.now());
        ok = bool(who);
        if (!who)
          spdlog::info("amqp: connection {}: SASL PLAIN for '{}' refused: {}", c->id, user,
                       who.error().message);
      }
      if (ok)
        pnx_sasl_set_succeeded(t, user.c_str(), nullptr);
      else
        pnx_sasl_set_failed(t);
    } else {
      pnx_sasl_set_failed(t);
    }
    pnx_sasl_set_desired_state(t, SASL_POSTED_OUTCOME);
  }
};

const pnx_sasl_implementation amqp_door::impl::sasl_impl = {
    [](pn_transport_t*) {},  // free: the context is ours
    [](pn_transport_t* t) -> const char* {
      return amqp_door::impl::sasl_in_clear(t) ? "" : "MSSBCBS ANONYMOUS PLAIN";
    },
    [](pn_transport_t* t) -> bool {  // init_server
      pnx_sasl_set_desired_state(t, SASL_POSTED_MECHANISMS);
      return true;
    },
    [](pn_transport_t*) -> bool { return false; },  // init_client: never a client
    [](pn_transport_t*) {},                         // prepare_write
    &amqp_door::impl::sasl_process_init,
    [](pn_transport_t*, const pn_bytes_t*) {},                   // process_response
    [](pn_transport_t*, const char*) -> bool { return false; },  // process_mechanisms
    [](pn_transport_t*, const pn_bytes_t*) {},                   // process_challenge
    [](pn_transport_t*, const pn_bytes_t*) {},                   // process_outcome
    [](pn_transport_t*) -> bool { return false; },               // can_encrypt
    [](pn_transport_t*) -> ssize_t { return 0; },                // max_encrypt_size
    [](pn_transport_t*, pn_bytes_t, pn_bytes_t*) -> ssize_t { return 0; },
    [](pn_transport_t*, pn_bytes_t, pn_bytes_t*) -> ssize_t { return 0; },
};

// --- front_door -------------------------------------------------------------------------------

amqp_door::amqp_door(amqp_door_config config) : impl_(std::make_unique<impl>(std::move(config))) {}

amqp_door::~amqp_door() {
  stop();
}

result<void> amqp_door::start(door_id id, request_sink sink, std::stop_token) {
  impl& d = *impl_;
  d.id = id;
  d.sink = std::move(sink);
  if (d.config.listen.empty())
    return {};
  for (const auto& a : d.config.listen) {
    auto hp = split_host_port(a);
    if (!hp)
      return make_error(errc::argument_invalid, "--amqp-listen '" + a + "' is not HOST:PORT");
    if (d.config.tls_server_cert.empty() && !d.config.insecure && !loopback_host(hp->first))
      return make_error(errc::argument_invalid,
                        "--amqp-listen " + a +
                            ": plain AMQP (no --tls-server-cert) only on a loopback address, "
                            "unless --amqp-insecure");
  }
  if (!d.config.tls_server_cert.empty()) {
    d.ssl = pn_ssl_domain(PN_SSL_MODE_SERVER);
    // TLS 1.2 or later (docs/security.md); every SDK speaks 1.2.
    if (pn_ssl_domain_set_protocols(d.ssl, "TLSv1.2 TLSv1.3") != 0)
      return make_error(errc::argument_invalid,
                        "cannot restrict the AMQP listener to TLS 1.2 and 1.3 (OpenSSL too old?)");
    if (pn_ssl_domain_set_credentials(
            d.ssl, d.config.tls_server_cert.c_str(), d.config.tls_server_key.c_str(),
            d.config.tls_key_password.empty() ? nullptr : d.config.tls_key_password.c_str()) != 0)
      return make_error(errc::argument_invalid, "cannot load the TLS server certificate '" +
                                                    d.config.tls_server_cert + "' / key '" +
                                                    d.config.tls_server_key + "'");
  }
  d.proactor = pn_proactor();
  for (const auto& a : d.config.listen) {
    pn_listener_t* l = pn_listener();
    d.listeners.push_back(l);
    pn_proactor_listen(d.proactor, l, a.c_str(), 64);
  }
  pn_proactor_set_timeout(d.proactor, expiry_check_ms);
  d.thread = std::thread([&d] { d.run(); });
  std::unique_lock<std::mutex> g(d.start_m);
  d.start_cv.wait_for(g, std::chrono::seconds(10), [&] {
    return d.start_error.has_value() || d.opened == d.config.listen.size();
  });
  if (d.start_error)
    return *d.start_error;
  if (d.opened != d.config.listen.size())
    return make_error(errc::timeout, "the AMQP listeners did not open");
  for (const auto& b : d.bound)
    spdlog::info("amqp: listening on {} ({}; {})", b, d.ssl ? "TLS" : "plain AMQP, no TLS",
                 d.auth_on() ? "SAS tokens verified for host " + d.config.iothub_hostname
                             : std::string("TEST MODE: tokens are not verified"));
  if (!d.auth_on())
    spdlog::warn(
        "amqp: no --auth-file: TEST MODE, any well-formed SAS token is accepted and links need "
        "no token at all; never expose this port");
  d.emit({}, door_status{true, true});
  return {};
}

time_point amqp_door::poll(time_point) {
  return time_point::max();
}

void amqp_door::release(std::span<const outbound> items) {
  impl& d = *impl_;
  std::vector<pn_connection_t*> touched;
  std::lock_guard<std::mutex> g(d.mailbox_m);
  for (const auto& item : items) {
    std::optional<std::uint64_t> conn;
    if (std::holds_alternative<device_revoked>(item) ||
        std::holds_alternative<credentials_changed>(item)) {
      // every connection checks whether it holds something of that device, or
      // a token the changed keys or rights concern
      for (const auto& [id, pc] : d.live) {
        d.mailbox[id].push_back(item);
        if (std::find(touched.begin(), touched.end(), pc) == touched.end())
          touched.push_back(pc);
      }
      continue;
    }
    if (const auto* r = std::get_if<reply>(&item)) {
      const std::string_view a = r->to.address;
      conn = parse_u64(a.substr(0, a.find(':')));
    } else {
      const std::string_view key = std::holds_alternative<device_push>(item)
                                       ? std::string_view(std::get<device_push>(item).connection)
                                       : std::string_view(std::get<feedback_push>(item).connection);
      // amqp/{conn}/{link}
      if (key.starts_with("amqp/")) {
        const std::string_view rest = key.substr(5);
        conn = parse_u64(rest.substr(0, rest.find('/')));
      }
    }
    if (!conn)
      continue;
    auto live = d.live.find(*conn);
    if (live == d.live.end())
      continue;  // the connection is gone; a push's lock expires and it comes again
    d.mailbox[*conn].push_back(item);
    if (std::find(touched.begin(), touched.end(), live->second) == touched.end())
      touched.push_back(live->second);
  }
  for (auto* c : touched)
    pn_connection_wake(c);  // under the lock: the connection cannot be freed meanwhile
}

void amqp_door::stop() {
  impl& d = *impl_;
  if (!d.proactor)
    return;
  d.stopping = true;
  pn_proactor_interrupt(d.proactor);
  if (d.thread.joinable())
    d.thread.join();
  {
    std::lock_guard<std::mutex> g(d.mailbox_m);
    d.live.clear();
    d.mailbox.clear();
  }
  d.conns.clear();
  pn_proactor_free(d.proactor);
  d.proactor = nullptr;
  d.listeners.clear();
  if (d.ssl)
    pn_ssl_domain_free(d.ssl);
  d.ssl = nullptr;
}

std::optional<error> amqp_door::failure() const {
  std::lock_guard<std::mutex> g(impl_->failure_m);
  return impl_->failed;
}

std::vector<std::string> amqp_door::listening() const {
  std::lock_guard<std::mutex> g(impl_->start_m);
  return impl_->bound;
}

std::uint32_t amqp_door::connections() const {
  return impl_->admitted.load();
}

}  // namespace devicebound::hubd
