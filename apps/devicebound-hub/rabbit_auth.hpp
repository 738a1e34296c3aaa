// RabbitMQ's HTTP auth backend (`rabbitmq_auth_backend_http`), answered by the
// hub: the decisions only, sans-I/O (docs/scale-out.md, "RabbitMQ as the broker").
//
// RabbitMQ asks four questions, each a GET query or a POST form
// (application/x-www-form-urlencoded), and reads `allow` or `deny` in a 200 body:
//
//   user      username, password, client_id            may this client log in?
//   vhost     username, vhost, ip, tags [, client_id]  may it use this virtual host?
//   resource  username, vhost, resource, name, permission, tags
//                                                      may it configure/write/read this
//                                                      exchange or queue?
//   topic     username, vhost, resource=topic, name (the exchange), permission,
//             routing_key, variable_map.client_id, variable_map.username, tags
//                                                      may it publish to / subscribe to it?
//
// The password is sent only to `user`: that call verifies the SAS token with the
// project's one verifier (devicebound/auth/authenticate.hpp). The other calls are
// answered from what RabbitMQ says about the already logged-in connection: its
// username (a device's `{host}/{id}/?...`, or a back end's policy name) and its
// MQTT client id. The topic rules are the mosquitto plugin's
// (broker/plugin/topic_acl.hpp), applied to the routing key mapped back to the
// MQTT topic its subscribers see (RabbitMQ writes MQTT `/` as `.` and `+` as `*`).
#pragma once

#include <devicebound/auth/authenticate.hpp>
#include <devicebound/auth/policy.hpp>
#include <devicebound/auth/rights.hpp>
#include <devicebound/auth/sas_token.hpp>
#include <devicebound/codec/property_bag.hpp>
#include <devicebound/device_id.hpp>
#include <devicebound/errors.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../../broker/plugin/client_auth.hpp"
#include "../../broker/plugin/topic_acl.hpp"

namespace devicebound::hubd::rabbit {

/// Untrusted text for a reason: quoted, at most 64 bytes, non-printables escaped.
inline std::string shown(std::string_view s) {
  return codec::detail::quote_for_message(s);
}

/// What the hub's answers depend on besides the identities.
struct auth_settings {
  /// The IoT hub host name: `sr` must name it, and a device's username too.
  std::string hub_host = "localhost";
  /// The only virtual host clients may use.
  std::string vhost = "/";
  /// The exchange the MQTT plugin publishes to and binds on (`mqtt.exchange`).
  std::string exchange = "amq.topic";
};

/// The four questions.
enum class endpoint { user, vhost, resource, topic };

/// The request path each question arrives on (what the generated RabbitMQ
/// configuration names: `auth_http.user_path = http://HOST:PORT/auth/user`).
constexpr std::string_view path_of(endpoint e) noexcept {
  switch (e) {
    case endpoint::user:
      return "/auth/user";
    case endpoint::vhost:
      return "/auth/vhost";
    case endpoint::resource:
      return "/auth/resource";
    case endpoint::topic:
      return "/auth/topic";
  }
  return "";
}

/// The question a request path asks, or nothing.
inline std::optional<endpoint> endpoint_of(std::string_view path) noexcept {
  for (endpoint e : {endpoint::user, endpoint::vhost, endpoint::resource, endpoint::topic})
    if (path == path_of(e))
      return e;
  return std::nullopt;
}

/// A decoded form: names and values in the order sent.
using form = std::vector<std::pair<std::string, std::string>>;

/// Decodes `a=1&b=x+y&c=%2F` (application/x-www-form-urlencoded, as RabbitMQ
/// writes it: `+` is a space). Errors (`errc::malformed`): a bad escape, text
/// that is not UTF-8, a NUL byte, an entry without `=`, a name given twice.
inline result<form> parse_form(std::string_view text) {
  form out;
  std::size_t start = 0;
  while (start <= text.size()) {
    std::size_t end = text.find('&', start);
    if (end == std::string_view::npos)
      end = text.size();
    const std::string_view entry = text.substr(start, end - start);
    start = end + 1;
    if (entry.empty())
      continue;
    const std::size_t eq = entry.find('=');
    if (eq == std::string_view::npos || eq == 0)
      return make_error(errc::malformed, "form entry " + shown(entry) + " is not name=value");
    auto decode = [](std::string_view s) {
      std::string spaced(s);
      for (char& c : spaced)
        if (c == '+')
          c = ' ';
      return codec::percent_decode(spaced);
    };
    auto name = decode(entry.substr(0, eq));
    if (!name)
      return make_error(errc::malformed, "form name: " + name.error().message);
    auto value = decode(entry.substr(eq + 1));
    if (!value)
      return make_error(errc::malformed,
                        "form value of " + shown(*name) + ": " + value.error().message);
    if (name->find('\0') != std::string::npos || value->find('\0') != std::string::npos)
      return make_error(errc::malformed, "form entry " + shown(entry) + " holds a NUL byte");
    for (const auto& [n, v] : out)
      if (n == *name)
        return make_error(errc::malformed, "form name " + shown(*name) + " appears twice");
    out.emplace_back(std::move(*name), std::move(*value));
  }
  return out;
}

/// The value of `name` in `f`, or nothing.
inline const std::string* field(const form& f, std::string_view name) {
  for (const auto& [n, v] : f)
    if (n == name)
      return &v;
  return nullptr;
}

/// An answer, and why (for the hub's log; RabbitMQ only sees `body()`).
struct decision {
  bool allow = false;
  std::string reason;

  /// What RabbitMQ reads: `allow` (no user tags: no management access) or `deny`.
  std::string_view body() const noexcept { return allow ? "allow" : "deny"; }
};

inline decision allow() {
  return {true, {}};
}
inline decision deny(std::string reason) {
  return {false, std::move(reason)};
}

/// Why `id` cannot be an MQTT client id on RabbitMQ, or nothing. RabbitMQ turns
/// every `/` of a topic into `.`, so a `.` in a device id would split its topic
/// level in two; a lone `*` is a wildcard word in RabbitMQ's topic bindings.
/// Device ids must also be valid IoT Hub ids (`validate_device_id`).
inline std::optional<std::string> rabbit_id_problem(std::string_view id) {
  if (id.empty())
    return "the client id is empty";
  if (auto v = validate_device_id(id); !v)
    return v.error().message;
  if (id.find('.') != std::string_view::npos)
    return "client id " + shown(id) +
           " contains '.', which RabbitMQ turns into a topic level separator; such ids are "
           "refused when RabbitMQ is the broker";
  if (id == "*")
    return "client id '*' is a wildcard word in RabbitMQ's topic bindings";
  return std::nullopt;
}

/// The MQTT topic (or filter) a routing key (or binding key) stands for, as
/// RabbitMQ's MQTT plugin turns one into the other: each `.` is a level
/// separator `/`, and a word that is exactly `*` is the MQTT wildcard `+`.
inline std::string mqtt_topic_of(std::string_view routing_key) {
  std::string out;
  out.reserve(routing_key.size());
  std::size_t start = 0;
  for (;;) {
    const std::size_t dot = routing_key.find('.', start);
    const std::string_view word = routing_key.substr(start, dot - start);
    out += word == "*" ? std::string_view("+") : word;
    if (dot == std::string_view::npos)
      break;
    out += '/';
    start = dot + 1;
  }
  return out;
}

/// Who a logged-in connection is, from what RabbitMQ tells about it.
struct connection_identity {
  std::string client_id;
  bool device = false;  ///< the username is `{host}/{client_id}/?...`
};

/// The MQTT client id RabbitMQ sends: `client_id` (user) or
/// `variable_map.client_id` (vhost, topic).
inline const std::string* client_id_field(const form& f) {
  if (const std::string* c = field(f, "client_id"))
    return c;
  return field(f, "variable_map.client_id");
}

/// Checks the connection's username and client id against each other and this
/// hub: a device username must name this hub and the client id; ids RabbitMQ
/// cannot carry are refused. `need_client_id`: the call must carry it.
inline result<connection_identity> identify(const form& f, const auth_settings& s,
                                            bool need_client_id) {
  const std::string* username = field(f, "username");
  if (username == nullptr || username->empty())
    return make_error(errc::unauthorized, "no username");
  const std::string* client_id = client_id_field(f);
  const auto device = broker::parse_device_username(username->c_str());
  connection_identity out;
  if (device) {
    if (auth::normalise_host(device->host) != auth::normalise_host(s.hub_host))
      return make_error(errc::unauthorized, "WrongHub: the username names hub " +
                                                shown(device->host) + "; this hub is " +
                                                shown(s.hub_host));
    if (client_id != nullptr && *client_id != device->device)
      return make_error(errc::unauthorized, "the username names device " + shown(device->device) +
                                                ", the client id is " + shown(*client_id));
    out.device = true;
    out.client_id = std::string(device->device);
  } else {
    if (client_id == nullptr) {
      if (need_client_id)
        return make_error(errc::unauthorized, "no client_id (not an MQTT connection?)");
    } else {
      out.client_id = *client_id;
    }
  }
  if (need_client_id || !out.client_id.empty())
    if (auto problem = rabbit_id_problem(out.client_id))
      return make_error(errc::unauthorized, *problem);
  return out;
}

/// The identities `user` checks tokens against (identity_view in the daemon).
struct identities {
  std::span<const auth::shared_access_policy> policies;
  auth::device_key_lookup devices;
};

/// `user`: the password must be a SAS token for this hub (raw keys refused),
/// admitted by the mosquitto plugin's own rule (`broker::admit`,
/// broker/plugin/client_auth.hpp):
/// - a device (username `{hub}/{id}/?...`, client id `{id}`): signed by the
///   device's key, or by a policy with DeviceConnect for the hub or that device;
///   the device registered and enabled;
/// - anyone else, a back end: a hub-wide token of a policy that may connect; here
///   it must grant ServiceConnect (devicebound's own device transport, a
///   DeviceConnect policy on a back-end connection, speaks the plugin's
///   extension topics, which RabbitMQ does not serve).
inline decision check_user(const form& f, const auth_settings& s, const identities& ids,
                           time_point now) {
  auto who = identify(f, s, true);
  if (!who)
    return deny(who.error().message);
  const std::string* password = field(f, "password");
  if (password == nullptr || password->empty())
    return deny("NotASasToken: no password");
  if (!password->starts_with(auth::sas_token_prefix))
    return deny(who->device ? "NotASasToken: a device's password must be a SAS token"
                            : "NotASasToken: a back end's password must be a SAS token signed "
                              "with a policy's key; raw keys are refused");
  auto token = auth::parse_sas_token(*password);
  if (!token)
    return deny("MalformedSasToken: " + token.error().message);
  auto p = broker::admit(who->client_id, *token, s.hub_host, who->device, ids.policies, ids.devices,
                         now);
  if (!p)
    return deny(p.error().message);
  if (!who->device && !auth::includes(p->rights, auth::access_rights::service_connect))
    return deny("policy " + *p->policy + " grants " + auth::to_string(p->rights) +
                "; a back end on RabbitMQ needs ServiceConnect");
  return allow();
}

/// `vhost`: only the configured virtual host, for a consistent identity.
inline decision check_vhost(const form& f, const auth_settings& s) {
  auto who = identify(f, s, false);
  if (!who)
    return deny(who.error().message);
  const std::string* vhost = field(f, "vhost");
  if (vhost == nullptr || *vhost != s.vhost)
    return deny("virtual host " + shown(vhost ? *vhost : std::string()) + " is not " +
                shown(s.vhost));
  return allow();
}

/// `resource`: what the MQTT plugin declares for client `{id}`: the exchange
/// (read: bind a subscription; write: publish; never configure) and its own
/// session queues `mqtt-subscription-{id}qos0|qos1` (any permission).
inline decision check_resource(const form& f, const auth_settings& s) {
  auto who = identify(f, s, true);
  if (!who)
    return deny(who.error().message);
  const std::string* vhost = field(f, "vhost");
  const std::string* resource = field(f, "resource");
  const std::string* name = field(f, "name");
  const std::string* permission = field(f, "permission");
  if (vhost == nullptr || resource == nullptr || name == nullptr || permission == nullptr)
    return deny("the call lacks vhost, resource, name or permission");
  if (*vhost != s.vhost)
    return deny("virtual host " + shown(*vhost) + " is not " + shown(s.vhost));
  const bool configure = *permission == "configure";
  if (!configure && *permission != "write" && *permission != "read")
    return deny("unknown permission " + shown(*permission));
  if (*resource == "exchange") {
    if (*name != s.exchange)
      return deny("exchange " + shown(*name) + " is not " + shown(s.exchange));
    if (configure)
      return deny("nobody configures the exchange " + shown(*name));
    return allow();
  }
  if (*resource != "queue")
    return deny("resource kind " + shown(*resource) + " is not allowed");
  constexpr std::string_view prefix = "mqtt-subscription-";
  std::string_view q = *name;
  if (!q.starts_with(prefix) || !(q.ends_with("qos0") || q.ends_with("qos1")) ||
      q.size() < prefix.size() + 4)
    return deny("queue " + shown(*name) + " is not an MQTT session queue");
  const std::string_view queue_id = q.substr(prefix.size(), q.size() - prefix.size() - 4);
  if (queue_id != who->client_id)
    return deny("queue " + shown(*name) + " is not client " + shown(who->client_id) + "'s");
  return allow();
}

/// `topic`: the exchange's routing key, mapped back to its MQTT topic, checked
/// with the plugin's rules (broker::classify, may_read for `read` = subscribe,
/// may_write for `write` = publish) for the connection's client id.
inline decision check_topic(const form& f, const auth_settings& s) {
  auto who = identify(f, s, true);
  if (!who)
    return deny(who.error().message);
  const std::string* vhost = field(f, "vhost");
  const std::string* name = field(f, "name");
  const std::string* permission = field(f, "permission");
  const std::string* routing_key = field(f, "routing_key");
  if (vhost == nullptr || name == nullptr || permission == nullptr || routing_key == nullptr)
    return deny("the call lacks vhost, name, permission or routing_key");
  if (const std::string* resource = field(f, "resource"); resource && *resource != "topic")
    return deny("resource kind " + shown(*resource) + " is not topic");
  if (*vhost != s.vhost)
    return deny("virtual host " + shown(*vhost) + " is not " + shown(s.vhost));
  if (*name != s.exchange)
    return deny("exchange " + shown(*name) + " is not " + shown(s.exchange));
  const std::string topic = mqtt_topic_of(*routing_key);
  const broker::place pl = broker::classify(topic, who->client_id);
  // RabbitMQ asks about topics without the password, so the token's rights
  // are not known here: a device's do not matter (its own topics), and a back
  // end is known to hold ServiceConnect (`check_user`), so it gets what that
  // right grants (the plugin's rule, topic_acl.hpp): no admin topics, no
  // device's topics, whatever else its policy grants.
  const auto rights =
      who->device ? auth::access_rights::device_connect : auth::access_rights::service_connect;
  if (*permission == "read") {
    if (!broker::may_read(pl, who->device, rights))
      return deny("client " + shown(who->client_id) + " may not subscribe to " + shown(topic));
    return allow();
  }
  if (*permission == "write") {
    if (!broker::may_write(pl, who->device, rights))
      return deny("client " + shown(who->client_id) + " may not publish to " + shown(topic));
    return allow();
  }
  return deny("unknown permission " + shown(*permission));
}

/// One request: the question and its form text (the GET query or the POST body).
inline decision decide(endpoint e, std::string_view form_text, const auth_settings& s,
                       const identities& ids, time_point now) {
  auto f = parse_form(form_text);
  if (!f)
    return deny(f.error().message);
  switch (e) {
    case endpoint::user:
      return check_user(*f, s, ids, now);
    case endpoint::vhost:
      return check_vhost(*f, s);
    case endpoint::resource:
      return check_resource(*f, s);
    case endpoint::topic:
      return check_topic(*f, s);
  }
  return deny("unknown endpoint");
}

}  // namespace devicebound::hubd::rabbit
