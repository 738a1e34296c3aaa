// devicebound mosquitto plugin (plugin API v5, mosquitto 2.0).
//
// Tells the devicebound hub daemon what plain MQTT does not: that a device
// subscribed to its device-bound topic, that the broker handed a device-bound
// message to the device's connection, and that the device left. Enforces the
// topic ACL of docs/stock-devices.md (a back end's topics by the rights its
// token grants, topic_acl.hpp) and authenticates clients with IoT Hub SAS
// tokens, verified by the same code as the hub's other doors (auth/).
//
// Events, all QoS 1, retain 0, published by the broker itself:
//   devicebound/broker/subscribed/{id}    payload: the filter
//   devicebound/broker/delivered/{id}     payload: the full device-bound topic
//   devicebound/broker/disconnected/{id}  payload: empty
//
// Options (plugin_opt_<name> in mosquitto.conf):
//   registry_db  the hub's SQLite store, read-only: devices and policies are
//                looked up there at CONNECT, and after each hub commit every
//                connected client is checked again: one whose device was
//                deleted or disabled, or whose token no longer verifies or no
//                longer grants its connection (a key regenerated, a policy
//                deleted or its connect right removed), is disconnected
//                (docs/architecture.md, "Identity channel to the broker
//                plugin"; docs/security.md, "Revocation on the broker").
//   registry_busy_timeout_ms  how long a lookup waits for a busy file (250).
//   iothub_hostname  the hub's host name (`devicebound-hub --iothub-hostname`):
//                a device's username must name it, and every token's `sr` must
//                be scoped to it. Unset: a device's token must name the host
//                of its username, and a back end's token any host (test set-ups).
//   auth_file    device and policy keys: the identities when there is no
//                registry_db, and the fallback until the registry exists.
//                Reloaded on SIGHUP; connected clients are then checked again
//                as after a registry change. Without either, any client may
//                connect (test mode).
//   state_file   where to keep the ids of devices whose persistent session holds
//                the device-bound subscription, so that a device reconnecting
//                after a broker restart is announced again (pair it with
//                mosquitto's `persistence true`).
//   max_devices  at most this many devices connected at once (0..100000000;
//                -1 or unset: no cap). A device's CONNECT beyond it is closed
//                without a CONNACK (the plugin API can only answer "not
//                authorized" otherwise), as mosquitto's max_connections
//                closes a connection, so SDKs retry; one line is logged. A
//                device reconnecting with the id of a connected device takes
//                its slot over. Back ends are never counted nor refused.
//                Exact, unlike mosquitto 2.0.11's max_connections
//                (device_cap.hpp). Given twice, the last one counts.
//
// mosquitto runs all plugin callbacks on its one main thread, so the plugin
// state needs no locking. No exception leaves a callback.

#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <devicebound/auth/authenticate.hpp>
#include <exception>
#include <fstream>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "../../apps/devicebound-hub/auth_file.hpp"
#include "client_auth.hpp"
#include "device_cap.hpp"
#include "registry_db.hpp"
#include "topic_acl.hpp"

#ifdef DEVICEBOUND_HAVE_MOSQUITTO_H
#include <mosquitto.h>
#else
// libmosquitto-dev is not installed: the values of mosquitto.h, which are ABI.
enum {
  MOSQ_ERR_SUCCESS = 0,
  MOSQ_ERR_NOMEM = 1,
  MOSQ_ERR_INVAL = 3,
  MOSQ_ERR_CONN_REFUSED = 5,
  MOSQ_ERR_NOT_SUPPORTED = 10,
  MOSQ_ERR_AUTH = 11,
  MOSQ_ERR_ACL_DENIED = 12,
  MOSQ_ERR_UNKNOWN = 13
};
#define MOSQ_LOG_INFO 0x01
#define MOSQ_LOG_NOTICE 0x02
#define MOSQ_LOG_WARNING 0x04
#define MOSQ_LOG_ERR 0x08
#define MOSQ_LOG_DEBUG 0x10
#endif

#define DB_LOG_PREFIX "devicebound: "

namespace {

namespace auth = devicebound::auth;
namespace broker = devicebound::broker;
using devicebound::errc;
using devicebound::result;
using steady = std::chrono::steady_clock;

constexpr std::string_view event_prefix = "devicebound/broker/";
// How often the plugin tries to open a registry_db that is not there yet, and
// how often at most it asks the open one whether the hub committed. The hub
// commits for messages too, so while it works every check that sees a commit
// looks each connected client's rows up again (an indexed read or two each;
// HMACs only for a client whose rows changed: broker::recheck).
constexpr auto registry_retry_interval = std::chrono::milliseconds(500);
constexpr auto registry_check_interval = std::chrono::milliseconds(100);

// What the plugin knows about one client id.
struct client_rec {
  mosquitto* conn = nullptr;  // the current authenticated connection, null when offline
  bool subscribed = false;    // its broker session holds devices/{id}/messages/devicebound/#
  bool persistent = false;    // that session outlives the connection (CleanSession 0)
  bool device = false;        // the connection authenticated as device {id}
  // What the current connection authenticated with; absent in test mode.
  std::optional<broker::admitted_client> admitted;
};

// Where identities come from right now.
enum class identity_source {
  none,         // test mode: no registry_db, no auth_file
  auth_file,    // the auth file (no registry_db, or the registry is not there yet)
  registry,     // the hub's registry (registry_db)
  unavailable,  // registry_db configured, not there yet, no auth_file: refuse everyone
};

struct plugin_state {
  mosquitto_plugin_id_t* id = nullptr;
  std::string auth_file;      // empty: none
  std::string state_file;     // empty: no restart memory
  std::string registry_path;  // empty: no registry_db
  std::string hostname;       // plugin_opt_iothub_hostname, normalised; empty: not checked
  std::chrono::milliseconds busy_timeout{250};
  std::unordered_map<std::string, client_rec> clients;
  // Device connections among `clients`' live ones (plugin_opt_max_devices).
  // Every change of a `conn` goes through it: connect, disconnect (which a
  // kick and a taken-over connection end in too).
  broker::device_cap devices;
  std::optional<devicebound::hubd::auth_registry> file_keys;
  broker::registry_db registry;
  std::string registry_problem;  // why the registry is not open (logged when it changes)
  steady::time_point next_registry_open{};
  steady::time_point next_registry_check{};
  bool recheck_pending = false;  // the connected clients are still to be checked
  // From a reload (SIGHUP) to the next tick: mosquitto asks basic auth again
  // for every client it holds, connected or an offline session
  // (mosquitto_security_apply, right after MOSQ_EVT_RELOAD, before it reads
  // any socket again). Those calls are no CONNECT (see on_basic_auth).
  bool reapplying = false;
  bool state_dirty = false;
  std::time_t state_written_at = 0;
  // The client being disconnected by kick_revoked_clients: mosquitto checks
  // its subscriptions again while it does (check_subscription_acls).
  struct revoked {
    std::string id;
    bool deleted = false;
  };
  std::optional<revoked> kicking;
  // What each live connection's token grants, by connection: the topic ACL's
  // rights (broker::allowed). Set at CONNECT (all rights in test mode),
  // updated when a recheck finds the policy changed, dropped at disconnect.
  std::unordered_map<const mosquitto*, auth::access_rights> rights;
  // The connection on_disconnect just dropped: mosquitto checks its will
  // (MOSQ_ACL_WRITE) right after the disconnect event (context__disconnect),
  // for a connection taken over too. Until the next tick.
  std::optional<std::pair<const mosquitto*, auth::access_rights>> leaving;
};

plugin_state* g_state = nullptr;

broker::connection_kind kind_of(const client_rec& rec) {
  if (rec.conn == nullptr)
    return broker::connection_kind::none;
  return rec.device ? broker::connection_kind::device : broker::connection_kind::back_end;
}

identity_source source() {
  if (g_state->registry.is_open())
    return identity_source::registry;
  if (g_state->file_keys)
    return identity_source::auth_file;
  return g_state->registry_path.empty() ? identity_source::none : identity_source::unavailable;
}

// The rights `client` (client id `id`) holds: its live connection's; for an
// offline persistent session (mosquitto routes messages to it, asking
// MOSQ_ACL_READ), those of the connection it last had, as mosquitto asks again
// with the new connection's before it hands them over (connection_check_acl);
// none for a connection the plugin did not let in (or a delayed will that
// comes after its connection left).
auth::access_rights rights_of(const mosquitto* client, std::string_view id) {
  if (auto it = g_state->rights.find(client); it != g_state->rights.end())
    return it->second;
  if (g_state->leaving && g_state->leaving->first == client)
    return g_state->leaving->second;
  if (auto it = g_state->clients.find(std::string(id));
      it != g_state->clients.end() && it->second.conn == nullptr) {
    if (it->second.admitted)
      return it->second.admitted->rights;
    if (source() == identity_source::none)
      return auth::access_rights::all;  // test mode
  }
  return auth::access_rights::none;
}

// -------------------------------------------------------------------------- //
// Identities, from whichever source is current.

result<std::optional<auth::device_credentials>> find_device(std::string_view id) {
  if (g_state->registry.is_open()) {
    auto d = g_state->registry.device(id);
    if (!d)
      return d.error();
    if (!*d)
      return std::optional<auth::device_credentials>{};
    return std::optional<auth::device_credentials>((*d)->credentials);
  }
  if (g_state->file_keys) {
    const auto& devices = g_state->file_keys->devices;
    if (auto it = devices.find(id); it != devices.end())
      return std::optional<auth::device_credentials>(it->second);
  }
  return std::optional<auth::device_credentials>{};
}

result<std::optional<auth::shared_access_policy>> find_policy(std::string_view name) {
  if (g_state->registry.is_open())
    return g_state->registry.policy(name);
  if (g_state->file_keys)
    if (const auto* p = auth::find_policy(g_state->file_keys->policies, name))
      return std::optional<auth::shared_access_policy>(*p);
  return std::optional<auth::shared_access_policy>{};
}

// -------------------------------------------------------------------------- //
// Authentication.

void refuse_log(std::string_view id, const std::string& why) {
  mosquitto_log_printf(MOSQ_LOG_NOTICE, DB_LOG_PREFIX "refused client %.*s: %s",
                       static_cast<int>(id.size()), id.data(), why.c_str());
}

devicebound::time_point now_utc() {
  return std::chrono::time_point_cast<devicebound::duration>(std::chrono::system_clock::now());
}

// Verifies `password` for client `id`. `device` is set when the username has
// the device form `{host}/{id}/?...`: the token must then act for device `id`
// of hub `{host}`. Returns what the connection authenticated with, kept to
// check it again when the identities change (kick_revoked_clients).
std::optional<broker::admitted_client> authenticate_client(
    std::string_view id, const char* password,
    const std::optional<broker::device_username>& device) {
  if (password == nullptr) {
    refuse_log(id, "no credentials");
    return std::nullopt;
  }
  const std::string_view text = password;
  if (!text.starts_with(auth::sas_token_prefix)) {
    // A raw key is never a password (issue 14): back ends sign a token with
    // their policy's key (`devicebound-hub --broker-sas-key`), as devices do.
    refuse_log(id, device ? "NotASasToken: a device's password must be a SAS token"
                          : "NotASasToken: a back end's password must be a SAS token signed "
                            "with a policy's key; raw keys are refused");
    return std::nullopt;
  }

  auto token = auth::parse_sas_token(text);
  if (!token) {
    refuse_log(id, "MalformedSasToken: " + token.error().message);
    return std::nullopt;
  }
  // The hub's host: plugin_opt_iothub_hostname when given (a device's
  // username must name it too); else the device's username names it, and a
  // back end's token is taken for whatever hub it names.
  std::string host = g_state->hostname;
  if (device && !host.empty() && auth::normalise_host(device->host) != host) {
    refuse_log(id, "WrongHub: the username names hub '" + std::string(device->host) +
                       "'; this hub is '" + host + "'");
    return std::nullopt;
  }
  if (!host.empty()) {
    // checked by authenticate() against the token's sr
  } else if (device) {
    host = std::string(device->host);
  } else {
    auto scope = auth::parse_sas_resource(token->resource);
    if (!scope) {
      refuse_log(id, "MalformedSasToken: " + scope.error().message);
      return std::nullopt;
    }
    host = scope->host;
  }
  // The rows the decision rests on, kept with the connection.
  broker::credential_rows rows;
  if (token->key_name) {
    auto policy = find_policy(*token->key_name);
    if (!policy) {
      refuse_log(id, policy.error().message);
      return std::nullopt;
    }
    rows.policy = std::move(*policy);
  }
  if (device) {
    auto d = find_device(id);
    if (!d) {
      refuse_log(id, d.error().message);
      return std::nullopt;
    }
    rows.device = std::move(*d);
  }
  std::optional<std::string> lookup_error;
  const auth::device_key_lookup lookup =
      [&](std::string_view device_id) -> std::optional<auth::device_credentials> {
    if (device && device_id == id)
      return rows.device;
    auto d = find_device(device_id);
    if (!d) {
      lookup_error = d.error().message;
      return std::nullopt;
    }
    return *d;
  };
  std::span<const auth::shared_access_policy> policies;
  if (rows.policy)
    policies = std::span<const auth::shared_access_policy>(&*rows.policy, 1);
  const auto now = now_utc();
  auto who = broker::admit(id, *token, host, device.has_value(), policies, lookup, now);
  if (lookup_error) {
    refuse_log(id, *lookup_error);
    return std::nullopt;
  }
  if (!who) {
    refuse_log(id, who.error().message);
    return std::nullopt;
  }
  return broker::admitted_client{std::move(*token), std::move(host), device.has_value(), now,
                                 std::move(rows),   who->rights};
}

// -------------------------------------------------------------------------- //
// Events.

void emit(std::string_view kind, std::string_view id, std::string_view payload) {
  std::string topic(event_prefix);
  topic.append(kind).append("/").append(id);
  const int rc = mosquitto_broker_publish_copy(
      nullptr, topic.c_str(), static_cast<int>(payload.size()), payload.data(), 1, false, nullptr);
  if (rc != MOSQ_ERR_SUCCESS)
    mosquitto_log_printf(MOSQ_LOG_ERR, DB_LOG_PREFIX "could not publish %s (error %d)",
                         topic.c_str(), rc);
}

std::string devicebound_filter(std::string_view id) {
  std::string f(broker::devices_prefix);
  f.append(id).append(broker::devicebound_suffix).append("#");
  return f;
}

void emit_subscribed(std::string_view id) {
  emit("subscribed", id, devicebound_filter(id));
}

void set_subscribed(client_rec& rec, bool subscribed) {
  if (rec.subscribed != subscribed) {
    rec.subscribed = subscribed;
    if (rec.persistent)
      g_state->state_dirty = true;
  }
}

// A back end subscribed to `filter`: announce every online device whose
// session holds the device-bound subscription and whose event topic the
// filter matches, so that a hub that (re)starts learns who is there.
void announce_online(const std::string& filter) {
  for (const auto& [id, rec] : g_state->clients) {
    if (rec.conn == nullptr || !rec.subscribed)
      continue;
    const std::string topic = std::string(event_prefix) + "subscribed/" + id;
    if (broker::filter_matches(filter.c_str(), topic.c_str()))
      emit_subscribed(id);
  }
}

// -------------------------------------------------------------------------- //
// State file: ids of devices whose persistent session holds the subscription.

void state_write() {
  if (g_state->state_file.empty()) {
    g_state->state_dirty = false;
    return;
  }
  const std::string tmp = g_state->state_file + ".tmp";
  bool ok = true;
  {
    std::ofstream out(tmp, std::ios::trunc);
    ok = static_cast<bool>(out);
    for (const auto& [id, rec] : g_state->clients)
      if (ok && rec.subscribed && rec.persistent && id.find_first_of("\r\n") == std::string::npos)
        ok = static_cast<bool>(out << id << '\n');
    out.close();
    ok = ok && !out.fail();
  }
  if (ok && std::rename(tmp.c_str(), g_state->state_file.c_str()) == 0) {
    g_state->state_dirty = false;
    g_state->state_written_at = std::time(nullptr);
  } else {
    mosquitto_log_printf(MOSQ_LOG_ERR, DB_LOG_PREFIX "cannot write %s",
                         g_state->state_file.c_str());
    std::remove(tmp.c_str());
  }
}

void state_read() {
  if (g_state->state_file.empty())
    return;
  std::ifstream in(g_state->state_file);
  std::string line;
  while (in && std::getline(in, line)) {  // no file: first start
    if (!line.empty() && line.back() == '\r')
      line.pop_back();
    if (line.empty())
      continue;
    client_rec& rec = g_state->clients[line];
    rec.subscribed = true;
    rec.persistent = true;
  }
}

// -------------------------------------------------------------------------- //
// Identity sources.

// (Re)loads the auth file; on failure keeps the keys it had.
bool auth_file_reload() {
  auto loaded = devicebound::hubd::load_auth_file(g_state->auth_file);
  if (!loaded) {
    mosquitto_log_printf(MOSQ_LOG_ERR, DB_LOG_PREFIX "auth_file refused: %s",
                         loaded.error().message.c_str());
    return false;
  }
  mosquitto_log_printf(
      MOSQ_LOG_NOTICE, DB_LOG_PREFIX "auth_file %s: %lu device(s), %lu policy(ies)",
      g_state->auth_file.c_str(), static_cast<unsigned long>(loaded->devices.size()),
      static_cast<unsigned long>(loaded->policies.size()));
  g_state->file_keys = std::move(*loaded);
  return true;
}

// Checks every connected client again against the current source and
// disconnects those it no longer lets in (broker::recheck): a device deleted
// or disabled (or, after a switch of source, unknown to it), a token that no
// longer verifies (its key regenerated, its policy deleted) or no longer
// grants the connection (the policy lost ServiceConnect/DeviceConnect). Per
// client an indexed read or two; HMACs only for a client whose device or
// policy row changed since it was last verified. False when the source could
// not be read: nobody was disconnected, the caller tries again.
bool kick_revoked_clients() {
  struct kick {
    std::string id;
    broker::recheck_verdict verdict;
    std::string reason;
    bool device;
  };
  std::vector<kick> kicks;
  // One read per policy per pass, however many clients share it.
  std::unordered_map<std::string, std::optional<auth::shared_access_policy>> policies;
  const auto cannot_check = [](const std::string& why) {
    if (!g_state->recheck_pending)  // once, not at every retry
      mosquitto_log_printf(MOSQ_LOG_WARNING,
                           DB_LOG_PREFIX "cannot check the connected clients: %s (tried again)",
                           why.c_str());
    return false;
  };
  for (auto& [id, rec] : g_state->clients) {
    // Every connection let in while a source is in force has its credentials
    // kept; only test mode (no source, never switched) has none.
    if (rec.conn == nullptr || !rec.admitted)
      continue;
    broker::credential_rows rows;
    if (rec.admitted->device) {
      auto d = find_device(id);
      if (!d)
        return cannot_check(d.error().message);
      rows.device = std::move(*d);
    }
    if (const auto& name = rec.admitted->token.key_name) {
      auto it = policies.find(*name);
      if (it == policies.end()) {
        auto p = find_policy(*name);
        if (!p)
          return cannot_check(p.error().message);
        it = policies.emplace(*name, std::move(*p)).first;
      }
      rows.policy = it->second;
    }
    auto checked = broker::recheck(*rec.admitted, id, rows);
    if (checked.verdict == broker::recheck_verdict::stays) {
      rec.admitted->verified_with = std::move(rows);
      if (checked.rights != rec.admitted->rights) {
        // Still let in, with other rights: the topic ACL applies them from the
        // next PUBLISH, SUBSCRIBE or delivery on (a subscription it holds
        // stays, but no message it may no longer read is handed to it).
        mosquitto_log_printf(MOSQ_LOG_NOTICE, DB_LOG_PREFIX "%s %s now holds %s (was %s)",
                             rec.admitted->device ? "device" : "back end", id.c_str(),
                             auth::to_string(checked.rights).c_str(),
                             auth::to_string(rec.admitted->rights).c_str());
        rec.admitted->rights = checked.rights;
        g_state->rights[rec.conn] = checked.rights;
      }
    } else
      kicks.push_back({id, checked.verdict, std::move(checked.reason), rec.admitted->device});
  }
  for (const auto& k : kicks) {
    const bool deleted = k.verdict == broker::recheck_verdict::deleted;
    const bool revoked = k.verdict == broker::recheck_verdict::revoked;
    mosquitto_log_printf(MOSQ_LOG_NOTICE, DB_LOG_PREFIX "disconnecting %s %s: %s%s",
                         k.device ? "device" : "back end", k.id.c_str(),
                         revoked ? "its credentials no longer hold: " : "", k.reason.c_str());
    // Without its will: the hub already knows (it made the change).
    g_state->kicking = plugin_state::revoked{k.id, deleted};
    mosquitto_kick_client_by_clientid(k.id.c_str(), false);
    g_state->kicking.reset();
    if (deleted) {
      // Its persistent session's subscription is not announced again.
      if (auto it = g_state->clients.find(k.id); it != g_state->clients.end()) {
        if (it->second.conn == nullptr) {
          if (it->second.persistent && it->second.subscribed)
            g_state->state_dirty = true;
          g_state->clients.erase(it);
        }
      }
    }
  }
  return true;
}

// Tries to open registry_db; logs when the reason it cannot changes.
void registry_try_open() {
  std::string why;
  // Probing never waits for a lock: a locked file is tried again later.
  const auto status =
      g_state->registry.open(g_state->registry_path, std::chrono::milliseconds(0), why);
  if (status == broker::registry_open::ready) {
    g_state->registry_problem.clear();
    // Lookups and change checks may wait up to the busy timeout.
    g_state->registry.set_busy_timeout(g_state->busy_timeout);
    mosquitto_log_printf(MOSQ_LOG_NOTICE,
                         DB_LOG_PREFIX
                         "registry_db %s: devices and policies come from the hub's "
                         "registry%s",
                         g_state->registry_path.c_str(),
                         g_state->file_keys ? " (auth_file no longer used)" : "");
    // who came in through the auth file and is not admitted by the registry
    g_state->recheck_pending = !kick_revoked_clients();
    return;
  }
  if (why != g_state->registry_problem) {
    g_state->registry_problem = why;
    if (g_state->file_keys)
      mosquitto_log_printf(MOSQ_LOG_WARNING,
                           DB_LOG_PREFIX
                           "registry_db not usable yet: %s; using auth_file %s "
                           "until it is",
                           why.c_str(), g_state->auth_file.c_str());
    else
      mosquitto_log_printf(MOSQ_LOG_WARNING,
                           DB_LOG_PREFIX
                           "registry_db not usable yet: %s; no auth_file: every "
                           "client is refused until it is",
                           why.c_str());
  }
}

void registry_tick() {
  const auto now = steady::now();
  if (!g_state->registry.is_open()) {
    if (now >= g_state->next_registry_open) {
      g_state->next_registry_open = now + registry_retry_interval;
      registry_try_open();
    }
    return;
  }
  if (now < g_state->next_registry_check)
    return;
  g_state->next_registry_check = now + registry_check_interval;
  // The tick never waits for a busy file: it tries again at the next check.
  // Only a CONNECT waits (up to the busy timeout), for its own answer.
  struct no_wait {
    no_wait() { g_state->registry.set_busy_timeout(std::chrono::milliseconds(0)); }
    ~no_wait() { g_state->registry.set_busy_timeout(g_state->busy_timeout); }
  } during_tick;
  auto changed = g_state->registry.changed();
  if (!changed) {
    if (changed.error().message != g_state->registry_problem) {
      g_state->registry_problem = changed.error().message;
      mosquitto_log_printf(MOSQ_LOG_WARNING, DB_LOG_PREFIX "%s (tried again)",
                           changed.error().message.c_str());
    }
    return;
  }
  g_state->registry_problem.clear();
  if (*changed || g_state->recheck_pending)
    g_state->recheck_pending = !kick_revoked_clients();
}

// -------------------------------------------------------------------------- //
// Callbacks.

int on_basic_auth(int, void* event_data, void*) {
  auto* ed = static_cast<mosquitto_evt_basic_auth*>(event_data);
  // mosquitto re-checking a client it already holds after a reload: nothing
  // connects. The plugin's own check of the connected clients (on_reload,
  // kick_revoked_clients) decides who leaves; an offline session is checked
  // when its device connects again. Taken for a CONNECT, it would make an
  // offline session the device's connection (announced, counted).
  if (g_state->reapplying)
    return MOSQ_ERR_SUCCESS;
  const char* raw_id = mosquitto_client_id(ed->client);
  const std::string id = raw_id ? raw_id : "";
  if (id.empty() || broker::has_wildcard_or_slash(id)) {
    mosquitto_log_printf(MOSQ_LOG_NOTICE,
                         DB_LOG_PREFIX "refused client id '%s': it may not contain + # /",
                         id.c_str());
    return MOSQ_ERR_AUTH;
  }
  const auto device = broker::parse_device_username(ed->username);
  if (device && device->device != id) {
    refuse_log(id, "its username names another device");
    return MOSQ_ERR_AUTH;
  }
  std::optional<broker::admitted_client> admitted;
  switch (source()) {
    case identity_source::none:
      break;
    case identity_source::unavailable:
      refuse_log(id, "registry_db " + g_state->registry_path + " is not usable yet (" +
                         g_state->registry_problem + ") and there is no auth_file");
      return MOSQ_ERR_AUTH;
    case identity_source::auth_file:
    case identity_source::registry:
      admitted = authenticate_client(id, ed->password, device);
      if (!admitted)
        return MOSQ_ERR_AUTH;
      break;
  }

  const auto incoming =
      device ? broker::connection_kind::device : broker::connection_kind::back_end;
  const auto found = g_state->clients.find(id);
  const auto current =
      found == g_state->clients.end() ? broker::connection_kind::none : kind_of(found->second);
  if (!g_state->devices.admits(current, incoming)) {
    // Not MOSQ_ERR_AUTH (CONNACK "not authorized", which SDKs take as final):
    // mosquitto closes the connection without a CONNACK, as at its own
    // max_connections, and the device tries again later.
    mosquitto_log_printf(MOSQ_LOG_NOTICE,
                         DB_LOG_PREFIX
                         "refused device %s: %lu devices connected, "
                         "plugin_opt_max_devices %lu",
                         id.c_str(), static_cast<unsigned long>(g_state->devices.connected()),
                         static_cast<unsigned long>(*g_state->devices.limit()));
    return MOSQ_ERR_CONN_REFUSED;
  }

  client_rec& rec = g_state->clients[id];
  g_state->devices.connected(current, incoming);
  // Test mode (no identities): every right, only the topic rules apply.
  g_state->rights[ed->client] = admitted ? admitted->rights : auth::access_rights::all;
  if (g_state->leaving && g_state->leaving->first == ed->client)
    g_state->leaving.reset();
  // From here this connection is the client's current one. A connection it
  // takes over is disconnected right after this callback and its disconnect
  // event is not published (see on_disconnect): with a persistent session the
  // device simply stays online. A clean session ends the old session and its
  // subscription, so that is reported as a disconnect now.
  if (rec.conn != nullptr && rec.conn != ed->client && mosquitto_client_clean_session(ed->client))
    emit("disconnected", id, "");
  rec.conn = ed->client;
  rec.device = device.has_value();
  rec.admitted = std::move(admitted);
  if (mosquitto_client_clean_session(ed->client)) {
    if (rec.persistent && rec.subscribed)
      g_state->state_dirty = true;
    rec.subscribed = false;
    rec.persistent = false;
  } else {
    if (!rec.persistent && rec.subscribed)
      g_state->state_dirty = true;
    rec.persistent = true;
    // The session keeps the subscription and stock SDKs do not subscribe
    // again on reconnect: announce the device as subscribed now.
    if (rec.subscribed)
      emit_subscribed(id);
  }
  return MOSQ_ERR_SUCCESS;
}

int on_acl_check(int, void* event_data, void*) {
  auto* ed = static_cast<mosquitto_evt_acl_check*>(event_data);
  const char* raw_id = mosquitto_client_id(ed->client);
  if (raw_id == nullptr || ed->topic == nullptr)
    return MOSQ_ERR_ACL_DENIED;
  const std::string_view id = raw_id;
  const std::string_view topic = ed->topic;
  const bool device = broker::is_device_client(mosquitto_client_username(ed->client), id);
  // What the connection's token grants (broker::allowed: each back-end topic
  // needs its right). Asked at every check: mosquitto caches no answer, so a
  // right a recheck took away counts from the next check on.
  const auth::access_rights rights = rights_of(ed->client, id);

  switch (ed->access) {
    case MOSQ_ACL_SUBSCRIBE: {
      if (g_state->kicking && g_state->kicking->id == id) {
        // mosquitto re-checks a kicked client's subscriptions. A deleted
        // device's session loses them (a device created again with this id
        // starts afresh); a disabled one keeps them for when it is enabled.
        return g_state->kicking->deleted ? MOSQ_ERR_ACL_DENIED : MOSQ_ERR_SUCCESS;
      }
      const std::string_view filter = broker::strip_share(topic);
      const broker::place pl = broker::classify(filter, id);
      if (!broker::may_read(pl, device, rights))
        return MOSQ_ERR_ACL_DENIED;
      if (pl.area == broker::area::devices && pl.owner == broker::owner::self &&
          pl.rest == "/messages/devicebound/#") {
        set_subscribed(g_state->clients[std::string(id)], true);
        emit_subscribed(id);
      }
      // Only for a back end that may read the events (the hub).
      broker::place events;
      events.area = broker::area::broker;
      if ((pl.area == broker::area::broker || pl.area == broker::area::other) &&
          broker::may_read(events, device, rights))
        announce_online(std::string(filter));
      return MOSQ_ERR_SUCCESS;
    }
    case MOSQ_ACL_UNSUBSCRIBE: {
      const broker::place pl = broker::classify(broker::strip_share(topic), id);
      if (pl.area == broker::area::devices && pl.owner == broker::owner::self &&
          pl.rest == "/messages/devicebound/#") {
        if (auto it = g_state->clients.find(std::string(id)); it != g_state->clients.end())
          set_subscribed(it->second, false);
      }
      return MOSQ_ERR_SUCCESS;
    }
    case MOSQ_ACL_READ: {
      const broker::place pl = broker::classify(topic, id);
      if (!broker::may_read(pl, device, rights))
        return MOSQ_ERR_ACL_DENIED;
      if (pl.area == broker::area::devices && pl.owner == broker::owner::self &&
          broker::is_devicebound_rest(pl.rest)) {
        // Only for the live connection. A message routed to an offline
        // session is checked again when the device reconnects, just before
        // mosquitto sends it (connection_check_acl).
        auto it = g_state->clients.find(std::string(id));
        if (it != g_state->clients.end() && it->second.conn == ed->client)
          emit("delivered", id, topic);
      }
      return MOSQ_ERR_SUCCESS;
    }
    case MOSQ_ACL_WRITE: {
      const broker::place pl = broker::classify(topic, id);
      if (!broker::may_write(pl, device, rights))
        return MOSQ_ERR_ACL_DENIED;
      if (ed->retain && broker::is_devicebound_topic_of_anyone(topic))
        return MOSQ_ERR_ACL_DENIED;  // device-bound messages are never retained
      return MOSQ_ERR_SUCCESS;
    }
    default:
      return MOSQ_ERR_ACL_DENIED;
  }
}

int on_disconnect(int, void* event_data, void*) {
  auto* ed = static_cast<mosquitto_evt_disconnect*>(event_data);
  // Its rights, kept for the will check that follows (plugin_state::leaving).
  if (auto it = g_state->rights.find(ed->client); it != g_state->rights.end()) {
    g_state->leaving.emplace(it->first, it->second);
    g_state->rights.erase(it);
  }
  const char* raw_id = mosquitto_client_id(ed->client);
  if (raw_id == nullptr)
    return MOSQ_ERR_SUCCESS;  // never authenticated
  const std::string id = raw_id;
  auto it = g_state->clients.find(id);
  // Not authenticated, or taken over by a newer connection with the same id,
  // which is the one that counts.
  if (it == g_state->clients.end() || it->second.conn != ed->client)
    return MOSQ_ERR_SUCCESS;
  g_state->devices.left(kind_of(it->second));
  it->second.conn = nullptr;
  emit("disconnected", id, "");
  if (!it->second.persistent)
    g_state->clients.erase(it);
  return MOSQ_ERR_SUCCESS;
}

int on_tick(int, void*, void*) {
  g_state->reapplying = false;
  g_state->leaving.reset();
  if (g_state->state_dirty && std::time(nullptr) != g_state->state_written_at)
    state_write();
  if (!g_state->registry_path.empty())
    registry_tick();
  return MOSQ_ERR_SUCCESS;
}

int on_reload(int, void*, void*) {
  g_state->reapplying = true;
  // New keys in the auth file count for connected clients too, as a registry
  // change does (while the registry is in force the file is not consulted).
  if (!g_state->auth_file.empty() && auth_file_reload() && source() == identity_source::auth_file)
    g_state->recheck_pending = !kick_revoked_clients();
  return MOSQ_ERR_SUCCESS;
}

// No exception may unwind into mosquitto (C): a callback that throws refuses
// what it was asked and logs why.
template <int (*Callback)(int, void*, void*), int OnError>
int guarded(int event, void* event_data, void* userdata) {
  try {
    return Callback(event, event_data, userdata);
  } catch (const std::exception& e) {
    mosquitto_log_printf(MOSQ_LOG_ERR, DB_LOG_PREFIX "event %d failed: %s", event, e.what());
  } catch (...) {
    mosquitto_log_printf(MOSQ_LOG_ERR, DB_LOG_PREFIX "event %d failed", event);
  }
  return OnError;
}

struct registration {
  int event;
  MOSQ_FUNC_generic_callback cb;
};

constexpr registration registrations[] = {
    {MOSQ_EVT_BASIC_AUTH, guarded<on_basic_auth, MOSQ_ERR_AUTH>},
    {MOSQ_EVT_ACL_CHECK, guarded<on_acl_check, MOSQ_ERR_ACL_DENIED>},
    {MOSQ_EVT_DISCONNECT, guarded<on_disconnect, MOSQ_ERR_SUCCESS>},
    {MOSQ_EVT_TICK, guarded<on_tick, MOSQ_ERR_SUCCESS>},
    {MOSQ_EVT_RELOAD, guarded<on_reload, MOSQ_ERR_SUCCESS>},
};

void state_free() {
  delete g_state;
  g_state = nullptr;
}

int parse_options(const mosquitto_opt* options, int option_count) {
  for (int i = 0; i < option_count; ++i) {
    const std::string_view key = options[i].key;
    const std::string value = options[i].value ? options[i].value : "";
    if (key == "auth_file") {
      g_state->auth_file = value;
    } else if (key == "state_file") {
      g_state->state_file = value;
    } else if (key == "registry_db") {
      g_state->registry_path = value;
    } else if (key == "iothub_hostname") {
      g_state->hostname = auth::normalise_host(value);
    } else if (key == "max_devices") {
      char* end = nullptr;
      const long long n = std::strtoll(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || n < -1 || n > 100000000) {
        mosquitto_log_printf(MOSQ_LOG_ERR,
                             DB_LOG_PREFIX
                             "plugin_opt_max_devices must be 0..100000000 (devices), or -1 "
                             "for no cap, not '%s'",
                             value.c_str());
        return MOSQ_ERR_INVAL;
      }
      g_state->devices = broker::device_cap(
          n < 0 ? std::nullopt : std::optional<std::size_t>(static_cast<std::size_t>(n)));
    } else if (key == "registry_busy_timeout_ms") {
      char* end = nullptr;
      const long ms = std::strtol(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || ms < 0 || ms > 10000) {
        mosquitto_log_printf(MOSQ_LOG_ERR,
                             DB_LOG_PREFIX
                             "plugin_opt_registry_busy_timeout_ms must be 0..10000 "
                             "(milliseconds), not '%s'",
                             value.c_str());
        return MOSQ_ERR_INVAL;
      }
      g_state->busy_timeout = std::chrono::milliseconds(ms);
    } else {
      mosquitto_log_printf(MOSQ_LOG_ERR, DB_LOG_PREFIX "unknown option plugin_opt_%s",
                           options[i].key);
      return MOSQ_ERR_INVAL;
    }
    if (value.empty()) {
      mosquitto_log_printf(MOSQ_LOG_ERR, DB_LOG_PREFIX "plugin_opt_%s needs a value",
                           options[i].key);
      return MOSQ_ERR_INVAL;
    }
  }
  return MOSQ_ERR_SUCCESS;
}

int plugin_init(mosquitto_plugin_id_t* identifier, void** userdata, mosquitto_opt* options,
                int option_count) {
  g_state = new plugin_state;
  g_state->id = identifier;
  if (const int rc = parse_options(options, option_count); rc != MOSQ_ERR_SUCCESS)
    return rc;
  if (!g_state->auth_file.empty() && !auth_file_reload())
    return MOSQ_ERR_INVAL;
  if (!g_state->registry_path.empty())
    registry_try_open();
  if (source() == identity_source::none)
    mosquitto_log_printf(MOSQ_LOG_WARNING, DB_LOG_PREFIX
                         "no plugin_opt_registry_db, no plugin_opt_auth_file: test "
                         "mode, clients are not authenticated");
  state_read();

  for (std::size_t r = 0; r < std::size(registrations); ++r) {
    const int rc = mosquitto_callback_register(identifier, registrations[r].event,
                                               registrations[r].cb, nullptr, g_state);
    if (rc != MOSQ_ERR_SUCCESS) {
      mosquitto_log_printf(MOSQ_LOG_ERR,
                           DB_LOG_PREFIX "cannot register callback for event %d (error %d)",
                           registrations[r].event, rc);
      while (r-- > 0)
        mosquitto_callback_unregister(identifier, registrations[r].event, registrations[r].cb,
                                      nullptr);
      return rc;
    }
  }
  *userdata = g_state;
  const char* mode = "test mode";
  switch (source()) {
    case identity_source::registry:
      mode = "SAS authentication against the hub's registry";
      break;
    case identity_source::auth_file:
      mode = g_state->registry_path.empty() ? "SAS authentication against the auth_file"
                                            : "SAS authentication against the auth_file until "
                                              "the registry is there";
      break;
    case identity_source::unavailable:
      mode = "every client refused until the registry is there";
      break;
    case identity_source::none:
      break;
  }
  std::string cap = "no cap on devices";
  if (const auto limit = g_state->devices.limit())
    cap = "at most " + std::to_string(*limit) + " devices connected";
  mosquitto_log_printf(MOSQ_LOG_NOTICE, DB_LOG_PREFIX "plugin ready (%s; %s)", mode, cap.c_str());
  return MOSQ_ERR_SUCCESS;
}

}  // namespace

// -------------------------------------------------------------------------- //
// Plugin entry points (C linkage: declared in mosquitto_plugin.h).

#if defined(__GNUC__)
#define DB_EXPORT __attribute__((visibility("default")))
#else
#define DB_EXPORT
#endif

DB_EXPORT int mosquitto_plugin_version(int supported_version_count, const int* supported_versions) {
  for (int i = 0; i < supported_version_count; ++i)
    if (supported_versions[i] == 5)
      return 5;
  return -1;
}

DB_EXPORT int mosquitto_plugin_init(mosquitto_plugin_id_t* identifier, void** userdata,
                                    struct mosquitto_opt* options, int option_count) {
  try {
    const int rc = plugin_init(identifier, userdata, options, option_count);
    if (rc != MOSQ_ERR_SUCCESS)
      state_free();
    return rc;
  } catch (const std::exception& e) {
    mosquitto_log_printf(MOSQ_LOG_ERR, DB_LOG_PREFIX "cannot start: %s", e.what());
  } catch (...) {
    mosquitto_log_printf(MOSQ_LOG_ERR, DB_LOG_PREFIX "cannot start");
  }
  state_free();
  return MOSQ_ERR_UNKNOWN;
}

DB_EXPORT int mosquitto_plugin_cleanup(void*, struct mosquitto_opt*, int) {
  if (g_state == nullptr)
    return MOSQ_ERR_SUCCESS;
  try {
    for (const auto& r : registrations)
      mosquitto_callback_unregister(g_state->id, r.event, r.cb, nullptr);
    if (g_state->state_dirty)
      state_write();
  } catch (...) {
    mosquitto_log_printf(MOSQ_LOG_ERR, DB_LOG_PREFIX "cleanup failed");
  }
  state_free();
  return MOSQ_ERR_SUCCESS;
}
