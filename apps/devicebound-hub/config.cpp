#include "config.hpp"

#include <toml++/toml.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <devicebound/auth/shared_access_key.hpp>
#include <devicebound/version.hpp>
#include <filesystem>

namespace devicebound::hubd {

using namespace std::chrono_literals;

// --- enum spellings: the one place (to become the `parse_<enum>`/`to_string` beside each enum) --

template <class E>
std::optional<E> parse_setting(std::string_view s) {
  // The spellings live beside their enums; the daemon only refuses `off`,
  // which is for tests, not for a hub that acknowledges sends.
  if constexpr (std::is_same_v<E, delivery_count_rule>)
    return parse_delivery_count_rule(s);
  else if constexpr (std::is_same_v<E, expiry_cap_policy>)
    return parse_expiry_cap_policy(s);
  else if constexpr (std::is_same_v<E, purge_feedback>)
    return parse_purge_feedback(s);
  else {
    const auto v = parse_sqlite_sync(s);
    return v == sqlite_sync::off ? std::nullopt : v;
  }
}
template std::optional<delivery_count_rule> parse_setting(std::string_view);
template std::optional<expiry_cap_policy> parse_setting(std::string_view);
template std::optional<purge_feedback> parse_setting(std::string_view);
template std::optional<sqlite_sync> parse_setting(std::string_view);

std::string_view setting_name(sqlite_sync s) {
  return to_string(s);
}

// --- limits -----------------------------------------------------------------------------------

std::optional<std::string> limits_config::problem() const {
  const auto out = [](std::string_view flag, std::uint64_t v, std::uint64_t lo, std::uint64_t hi,
                      std::string_view unit) -> std::optional<std::string> {
    if (v >= lo && v <= hi)
      return std::nullopt;
    return std::string(flag) + ": must be " + std::to_string(lo) + ".." + std::to_string(hi) +
           std::string(unit) + ", not " + std::to_string(v);
  };
  constexpr std::uint64_t mib = 1024 * 1024;
  for (auto p : {out("--amqp-max-connections", amqp_max_connections, 1, 100000, ""),
                 out("--amqp-max-sessions", amqp_max_sessions, 1, 65536, ""),
                 out("--amqp-max-links", amqp_max_links, 1, 65536, ""),
                 out("--amqp-max-frame-size", amqp_max_frame_size, 512, 16 * mib, " bytes"),
                 out("--amqp-max-message-size", amqp_max_message_size, 1024, 64 * mib, " bytes"),
                 out("--amqp-open-timeout", amqp_open_timeout_seconds, 1, 3600, " seconds"),
                 out("--https-max-connections", https_max_connections, 1, 100000, ""),
                 out("--https-max-header-bytes", https_max_header_bytes, 1024, mib, " bytes"),
                 out("--https-max-body-bytes", https_max_body_bytes, 1024, 64 * mib, " bytes"),
                 out("--https-idle-timeout", https_idle_timeout_seconds, 1, 3600, " seconds")})
    if (p)
      return p;
  return throttle.problem();
}

// --- files and flags -----------------------------------------------------------------------

std::string default_store_path(const std::string& client_id) {
  namespace fs = std::filesystem;
  const auto absolute = [](const char* name) -> const char* {
    const char* v = std::getenv(name);
    return v && v[0] == '/' ? v : nullptr;  // relative values are ignored (XDG)
  };
  const std::string file = client_id + ".db";
  if (const char* d = absolute("STATE_DIRECTORY")) {
    const std::string_view dirs(d);  // may list several, separated by ':'
    return (fs::path(dirs.substr(0, dirs.find(':'))) / file).string();
  }
  if (const char* x = absolute("XDG_STATE_HOME"))
    return (fs::path(x) / "devicebound" / file).string();
  if (const char* h = absolute("HOME"))
    return (fs::path(h) / ".local" / "state" / "devicebound" / file).string();
  return file;
}

std::optional<duration> parse_duration(std::string_view s) {
  std::int64_t n = 0;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
  if (ec != std::errc{} || p == s.data() || n < 0)
    return std::nullopt;
  const std::string_view unit(p, static_cast<std::size_t>(s.data() + s.size() - p));
  if (unit == "ms")
    return duration{n};
  if (unit == "s")
    return std::chrono::duration_cast<duration>(std::chrono::seconds{n});
  if (unit == "min" || unit == "m")
    return std::chrono::duration_cast<duration>(std::chrono::minutes{n});
  if (unit == "h")
    return std::chrono::duration_cast<duration>(std::chrono::hours{n});
  if (unit == "d")
    return std::chrono::duration_cast<duration>(std::chrono::hours{24 * n});
  return std::nullopt;
}

namespace {

/// A CLI11 validator/converter for durations.
duration duration_arg(const std::string& s, const std::string& what) {
  auto d = parse_duration(s);
  if (!d)
    throw CLI::ValidationError(what, "'" + s + "' is not a duration (e.g. 250ms, 2s, 5min, 1h)");
  return *d;
}

/// Prints what CLI11 prints (the error, or --help / --version) and returns our
/// exit code: 0 for --help / --version, `exit_config` (2) for every usage error,
/// not CLI11's own codes (105 for a validation error, 109 for an unknown flag, ...).
int usage_exit(const CLI::App& app, const CLI::Error& e) {
  return app.exit(e) == 0 ? int{exit_ok} : int{exit_config};
}

/// Whether a listen address (`host:port`, `[v6]:port`) names a loopback host.
bool loopback_listen(std::string_view address) {
  const auto colon = address.rfind(':');
  std::string_view host = address.substr(0, colon == std::string_view::npos ? 0 : colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  return host == "localhost" || host.starts_with("127.") || host == "::1";
}

}  // namespace

/// Reads the TOML file into `c` (only the keys present; see docs/mqtt-quickstart.md).
void load_toml(const std::string& path, daemon_config& c) {
  toml::table t;
  try {
    t = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    throw config_error(path + ": " + std::string(e.description()));
  }
  const auto str = [&](toml::node_view<toml::node> n, std::string_view name, std::string& out) {
    if (!n)
      return;
    auto v = n.value<std::string>();
    if (!v)
      throw config_error(path + ": " + std::string(name) + " must be a string");
    out = *v;
  };
  const auto opt_str = [&](toml::node_view<toml::node> n, std::string_view name,
                           std::optional<std::string>& out) {
    if (!n)
      return;
    std::string s;
    str(n, name, s);
    out = s;
  };
  const auto dur = [&](toml::node_view<toml::node> n, std::string_view name, duration& out) {
    if (!n)
      return;
    auto v = n.value<std::string>();
    auto d = v ? parse_duration(*v) : std::nullopt;
    if (!d)
      throw config_error(path + ": " + std::string(name) +
                         " must be a duration string such as \"2s\" or \"250ms\"");
    out = *d;
  };
  const auto num = [&]<class T>(toml::node_view<toml::node> n, std::string_view name, T& out) {
    if (!n)
      return;
    auto v = n.value<std::int64_t>();
    if (!v || *v < 0)
      throw config_error(path + ": " + std::string(name) + " must be a non-negative integer");
    out = static_cast<T>(*v);
  };
  const auto setting = [&]<class E>(toml::node_view<toml::node> n, std::string_view name,
                                    std::string_view choices, E& out) {
    if (!n)
      return;
    std::string s;
    str(n, name, s);
    const auto v = parse_setting<E>(s);
    if (!v)
      throw config_error(path + ": " + std::string(name) + " must be " + std::string(choices));
    out = *v;
  };
  const auto flag = [&](toml::node_view<toml::node> n, std::string_view name, bool& out) {
    if (!n)
      return;
    auto v = n.value<bool>();
    if (!v)
      throw config_error(path + ": " + std::string(name) + " must be true or false");
    out = *v;
  };

  auto b = t["broker"];
  str(b["host"], "broker.host", c.broker.host);
  num(b["port"], "broker.port", c.broker.port);
  str(b["client_id"], "broker.client_id", c.broker.client_id);
  opt_str(b["username"], "broker.username", c.broker.username);
  opt_str(b["password"], "broker.password", c.broker.password);
  opt_str(b["sas_key"], "broker.sas_key", c.broker_sas_key);
  dur(b["keep_alive"], "broker.keep_alive", c.broker.keep_alive);
  dur(b["connect_timeout"], "broker.connect_timeout", c.broker.connect_timeout);
  if (auto tls = b["tls"]; tls) {
    mqtt::tls_options o;
    str(tls["ca_file"], "broker.tls.ca_file", o.ca_file);
    str(tls["ca_path"], "broker.tls.ca_path", o.ca_path);
    str(tls["cert_file"], "broker.tls.cert_file", o.cert_file);
    str(tls["key_file"], "broker.tls.key_file", o.key_file);
    str(tls["key_password"], "broker.tls.key_password", o.key_password);
    flag(tls["verify_server"], "broker.tls.verify_server", o.verify_server);
    c.broker.tls = o;
  }

  auto h = t["hub"];
  str(h["name"], "hub.name", c.hub.name);
  dur(h["default_ttl"], "hub.default_ttl", c.hub.default_ttl);
  dur(h["lock_duration"], "hub.lock_duration", c.hub.lock_duration);
  num(h["max_delivery_count"], "hub.max_delivery_count", c.hub.max_delivery_count);
  num(h["max_queue_depth"], "hub.max_queue_depth", c.hub.max_queue_depth);
  num(h["max_message_size"], "hub.max_message_size", c.hub.max_message_size);
  dur(h["feedback_ttl"], "hub.feedback_ttl", c.hub.feedback_ttl);
  dur(h["feedback_lock_duration"], "hub.feedback_lock_duration", c.hub.feedback_lock_duration);
  num(h["feedback_max_delivery_count"], "hub.feedback_max_delivery_count",
      c.hub.feedback_max_delivery_count);
  num(h["feedback_batch_size"], "hub.feedback_batch_size", c.hub.feedback_batch_size);
  dur(h["feedback_batch_interval"], "hub.feedback_batch_interval", c.hub.feedback_batch_interval);
  setting(h["delivery_count_rule"], "hub.delivery_count_rule", "abandon_only or every_delivery",
          c.hub.delivery_count);
  setting(h["expiry_over_cap"], "hub.expiry_over_cap", "clamp or reject", c.hub.expiry_over_cap);
  setting(h["purge_feedback"], "hub.purge_feedback", "negative_acks or none",
          c.hub.purge_feedback_for);

  auto d = t["delivery"];
  num(d["max_in_flight"], "delivery.max_in_flight", c.max_in_flight);
  flag(d["auto_register"], "delivery.auto_register", c.auto_register);

  if (auto devs = t["devices"]; devs) {
    const toml::array* a = devs.as_array();
    if (!a)
      throw config_error(path + ": devices must be an array of device ids");
    for (const auto& e : *a) {
      auto v = e.value<std::string>();
      if (!v)
        throw config_error(path + ": devices must be an array of strings");
      c.devices.push_back(*v);
    }
  }

  auto r = t["reconnect"];
  dur(r["initial"], "reconnect.initial", c.reconnect.initial);
  dur(r["max"], "reconnect.max", c.reconnect.cap);

  auto st = t["store"];
  str(st["path"], "store.path", c.store.path);
  flag(st["in_memory"], "store.in_memory", c.store.in_memory);
  setting(st["sync"], "store.sync", "full or normal", c.store.sync);

  auto am = t["amqp"];
  if (auto l = am["listen"]; l) {
    if (auto one = l.value<std::string>()) {
      c.amqp.listen.push_back(*one);
    } else if (const toml::array* a = l.as_array()) {
      for (const auto& e : *a) {
        auto v = e.value<std::string>();
        if (!v)
          throw config_error(path + ": amqp.listen must be a string or an array of strings");
        c.amqp.listen.push_back(*v);
      }
    } else {
      throw config_error(path + ": amqp.listen must be a string or an array of strings");
    }
  }
  str(am["tls_server_cert"], "amqp.tls_server_cert", c.amqp.tls_server_cert);
  str(am["tls_server_key"], "amqp.tls_server_key", c.amqp.tls_server_key);
  str(am["tls_server_key_password"], "amqp.tls_server_key_password",
      c.amqp.tls_server_key_password);
  flag(am["insecure"], "amqp.insecure", c.amqp.insecure);
  str(am["iothub_hostname"], "amqp.iothub_hostname", c.amqp.iothub_hostname);
  str(am["auth_file"], "amqp.auth_file", c.amqp.auth_file);

  auto hs = t["https"];
  if (auto l = hs["listen"]; l) {
    if (auto one = l.value<std::string>()) {
      c.https.listen.push_back(*one);
    } else if (const toml::array* a = l.as_array()) {
      for (const auto& e : *a) {
        auto v = e.value<std::string>();
        if (!v)
          throw config_error(path + ": https.listen must be a string or an array of strings");
        c.https.listen.push_back(*v);
      }
    } else {
      throw config_error(path + ": https.listen must be a string or an array of strings");
    }
  }
  flag(hs["insecure"], "https.insecure", c.https.insecure);
  num(hs["request_timeout"], "https.request_timeout", c.https.request_timeout_seconds);

  auto li = t["limits"];
  num(li["amqp_max_connections"], "limits.amqp_max_connections", c.limits.amqp_max_connections);
  num(li["amqp_max_sessions"], "limits.amqp_max_sessions", c.limits.amqp_max_sessions);
  num(li["amqp_max_links"], "limits.amqp_max_links", c.limits.amqp_max_links);
  num(li["amqp_max_frame_size"], "limits.amqp_max_frame_size", c.limits.amqp_max_frame_size);
  num(li["amqp_open_timeout"], "limits.amqp_open_timeout", c.limits.amqp_open_timeout_seconds);
  num(li["amqp_max_message_size"], "limits.amqp_max_message_size", c.limits.amqp_max_message_size);
  num(li["https_max_connections"], "limits.https_max_connections", c.limits.https_max_connections);
  num(li["https_max_header_bytes"], "limits.https_max_header_bytes",
      c.limits.https_max_header_bytes);
  num(li["https_max_body_bytes"], "limits.https_max_body_bytes", c.limits.https_max_body_bytes);
  num(li["https_request_timeout"], "limits.https_request_timeout", c.https.request_timeout_seconds);
  num(li["https_idle_timeout"], "limits.https_idle_timeout", c.limits.https_idle_timeout_seconds);
  num(li["max_in_flight"], "limits.max_in_flight", c.max_in_flight);
  if (auto th = li["throttle"]; th) {
    std::string s;
    str(th, "limits.throttle", s);
    const auto tier = parse_throttle_tier(s);
    if (!tier)
      throw config_error(path + ": limits.throttle must be off, free, S1, S2 or S3, not '" + s +
                         "'");
    c.limits.throttle.tier = *tier;
  }
  num(li["throttle_units"], "limits.throttle_units", c.limits.throttle.units);

  str(t["log"]["level"], "log.level", c.log_level);
}

std::variant<daemon_config, int> load_config(int argc, char** argv) {
  CLI::App app{"devicebound-hub: IoT Hub-style cloud-to-device messaging over an MQTT broker"};
  app.set_version_flag("--version", std::string(devicebound::version));
  std::string config_path;
  app.add_option("-c,--config", config_path, "TOML configuration file")->check(CLI::ExistingFile);

  // Flags override the file; so they are read into optionals first.
  std::optional<std::string> host, client_id, username, password, broker_sas_key, tls_ca, tls_cert,
      tls_key, tls_key_password, hub_name, log_level, lock, ttl, batch_interval, reconnect_initial,
      reconnect_max, feedback_lock, store_path, store_sync, tls_server_cert, tls_server_key,
      tls_server_key_password, iothub_hostname, auth_file;
  std::vector<std::string> amqp_listen;
  bool amqp_insecure = false;
  std::vector<std::string> https_listen;
  bool https_insecure = false;
  std::optional<std::string> rabbit_auth_listen, broker_kind, rabbit_amqp_url;
  std::optional<std::uint32_t> https_request_timeout;
  std::optional<std::uint32_t> amqp_max_connections, amqp_max_sessions, amqp_max_links,
      amqp_max_frame_size, amqp_open_timeout, https_max_connections, https_max_header_bytes,
      https_idle_timeout, throttle_units;
  std::optional<std::uint64_t> amqp_max_message_size, https_max_body_bytes;
  std::optional<std::string> throttle;
  std::optional<std::uint16_t> port;
  std::optional<std::uint32_t> max_delivery, max_depth, max_in_flight;
  std::vector<std::string> devices;
  bool auto_register = false, tls = false, tls_insecure = false, in_memory = false;
  app.add_option("--host", host, "broker host (default 127.0.0.1)");
  app.add_option("-p,--port", port, "broker port (default 1883)");
  app.add_option("--client-id", client_id, "MQTT client id (default devicebound-hub)");
  app.add_option("-u,--username", username, "broker user name");
  app.add_option("-P,--password", password, "broker password");
  app.add_option("--broker-sas-key", broker_sas_key,
                 "a shared access policy's key (base64): the hub connects to the broker as "
                 "--username (the policy's name) with a SAS token it signs with this key for "
                 "--iothub-hostname, fresh at each connect (the devicebound plugin refuses raw "
                 "keys as passwords)");
  app.add_flag("--tls", tls, "connect with TLS (ssl://)");
  app.add_option("--tls-ca", tls_ca, "PEM file of trusted CA certificates (implies --tls)");
  app.add_option("--tls-cert", tls_cert, "PEM client certificate (implies --tls)");
  app.add_option("--tls-key", tls_key, "PEM client private key (implies --tls)");
  app.add_option("--tls-key-password", tls_key_password, "password of the private key");
  app.add_flag("--tls-insecure", tls_insecure, "do not verify the broker's certificate");
  app.add_option("-d,--device", devices, "register a device id (repeatable)");
  app.add_flag("--auto-register", auto_register,
               "register unknown devices on their first send, attach or subscribe");
  app.add_option("--hub-name", hub_name, "the hub's name (userId of feedback)");
  app.add_option("--lock-duration", lock, "lock (visibility) timeout, e.g. 60s (1s..5min)");
  app.add_option("--default-ttl", ttl, "default message TTL, e.g. 1h (1min..2d)");
  app.add_option("--max-delivery-count", max_delivery, "max delivery count (1..100)");
  app.add_option("--max-queue-depth", max_depth, "pending messages per device (1..10000)");
  app.add_option("--feedback-batch-interval", batch_interval,
                 "feedback batching interval, e.g. 15s (0s..15s)");
  app.add_option("--feedback-lock-duration", feedback_lock, "feedback lock duration (5s..300s)");
  app.add_option("--max-in-flight", max_in_flight,
                 "locked, unsettled pushes per device or back end (default 4)");
  app.add_option("--reconnect-initial", reconnect_initial, "first reconnect wait (default 100ms)");
  app.add_option("--reconnect-max", reconnect_max, "longest reconnect wait (default 10s)");
  app.add_option("--store", store_path,
                 "SQLite store file (default: $STATE_DIRECTORY, $XDG_STATE_HOME/devicebound or "
                 "~/.local/state/devicebound, file {client-id}.db)");
  app.add_flag("--in-memory", in_memory,
               "no store: keep the queues in memory only (lost when the daemon stops)");
  app.add_option("--store-sync", store_sync,
                 "normal (default: survives a crash of the daemon; an OS crash or power cut "
                 "may lose the last ~100 ms) or full (fsync every commit: survives power loss)");
  app.add_option("--amqp-listen", amqp_listen,
                 "listen for AMQP 1.0 (the official Azure SDKs) on HOST:PORT (repeatable; IoT "
                 "Hub's port is 5671)");
  app.add_option(
      "--tls-server-cert", tls_server_cert,
      "PEM certificate the AMQP and HTTPS listeners present (TLS); not --tls-cert, which is the "
      "MQTT client certificate");
  app.add_option("--tls-server-key", tls_server_key, "PEM private key of --tls-server-cert");
  app.add_option("--tls-server-key-password", tls_server_key_password,
                 "password of --tls-server-key");
  app.add_flag("--amqp-insecure", amqp_insecure,
               "allow plain AMQP (no TLS) on a non-loopback --amqp-listen address");
  app.add_option("--https-listen", https_listen,
                 "serve IoT Hub's REST API over HTTPS on HOST:PORT (repeatable; IoT Hub's port is "
                 "443; TLS with --tls-server-cert/--tls-server-key; docs/https.md)");
  app.add_option("--rabbit-auth-listen", rabbit_auth_listen,
                 "answer RabbitMQ's HTTP auth backend on HOST:PORT (plain HTTP, loopback only; "
                 "needs --auth-file; docs/scale-out.md)");
  app.add_option("--broker", broker_kind,
                 "the MQTT broker: mosquitto (default; devicebound's plugin) or rabbitmq "
                 "(RabbitMQ's MQTT plugin; needs --rabbit-auth-listen and --rabbit-amqp-url; "
                 "docs/scale-out.md)");
  app.add_option("--rabbit-amqp-url", rabbit_amqp_url,
                 "with --broker rabbitmq: amqp://USER:PASSWORD@HOST:PORT/, a RabbitMQ user "
                 "that reads the event exchange and the firehose (presence and delivery)");
  app.add_flag("--https-insecure", https_insecure,
               "plain HTTP instead of HTTPS, on loopback --https-listen addresses only (tests)");
  app.add_option("--https-request-timeout", https_request_timeout,
                 "seconds a client has to send one request's header and body before it gets 408 "
                 "(1..3600, default 30)");
  app.add_option("--https-idle-timeout", https_idle_timeout,
                 "seconds an idle keep-alive HTTPS connection is kept (1..3600, default 60)");
  app.add_option("--https-max-connections", https_max_connections,
                 "open HTTPS connections; more are closed at once (default 1000)");
  app.add_option("--https-max-header-bytes", https_max_header_bytes,
                 "largest request line + headers; more is 431 (default 16384)");
  app.add_option("--https-max-body-bytes", https_max_body_bytes,
                 "largest request body; more is 413 MessageTooLarge (default 262144)");
  app.add_option("--amqp-max-connections", amqp_max_connections,
                 "open AMQP connections; more are closed with amqp:resource-limit-exceeded "
                 "(default 1000)");
  app.add_option("--amqp-max-sessions", amqp_max_sessions,
                 "sessions per AMQP connection; more are ended with amqp:resource-limit-exceeded "
                 "(default 16)");
  app.add_option("--amqp-max-links", amqp_max_links,
                 "links per AMQP connection; more are refused with amqp:resource-limit-exceeded "
                 "(default 64)");
  app.add_option("--amqp-max-frame-size", amqp_max_frame_size,
                 "AMQP max-frame-size advertised in open; a bigger frame closes the connection "
                 "(default 65536)");
  app.add_option("--amqp-open-timeout", amqp_open_timeout,
                 "seconds an AMQP connection has from its TCP connect to its open frame (TLS and "
                 "SASL included) before it is closed (slow or silent clients; default 30)");
  app.add_option("--amqp-max-message-size", amqp_max_message_size,
                 "largest AMQP transfer; more is rejected with amqp:link:message-size-exceeded "
                 "(default 262144)");
  app.add_option("--throttle", throttle,
                 "IoT Hub's C2D throttles of a tier: off (default), free, S1, S2 or S3 (SPEC "
                 "2.7); over the rate: 429001 ThrottlingException");
  app.add_option("--throttle-units", throttle_units, "units of the --throttle tier (1..200)");
  app.add_option("--iothub-hostname", iothub_hostname,
                 "the IoT Hub host name SAS tokens must name (sr), e.g. myhub.example (default "
                 "localhost)");
  app.add_option("--auth-file", auth_file,
                 "device keys and shared access policies for SAS verification over AMQP "
                 "(docs/amqp-door.md); without it: test mode, tokens are not verified")
      ->check(CLI::ExistingFile);
  // --cluster (docs/scale-out.md, "The hub in a cluster")
  bool cluster = false;
  std::optional<std::uint32_t> partitions, expected_instances;
  std::optional<std::string> instance, lease_ttl, lease_renew, overflow_after, startup_grace,
      cluster_schema;
  app.add_flag("--cluster", cluster,
               "run as one instance of a partitioned hub on PostgreSQL (--store CONNINFO, "
               "--partitions, --instance; docs/scale-out.md)");
  app.add_option("--partitions", partitions, "--cluster: the hub's partition count K (1..1024)");
  app.add_option("--instance", instance, "--cluster: this instance's name (in the lease rows)");
  app.add_option("--lease-ttl", lease_ttl, "--cluster: lease time to live (default 5s)");
  app.add_option("--lease-renew", lease_renew, "--cluster: lease renewal interval (default 1s)");
  app.add_option("--expected-instances", expected_instances,
                 "--cluster: how many instances share the partitions (default: unset, claim all)");
  app.add_option("--overflow-after", overflow_after,
                 "--cluster with --expected-instances: how often partitions beyond this "
                 "instance's share are claimed (default 5s)");
  app.add_option("--startup-grace", startup_grace,
                 "--cluster with --expected-instances: how long after its start an instance "
                 "leaves the partitions beyond its share to peers starting with it (default: "
                 "--overflow-after)");
  std::optional<std::string> forward_amqp_url, forward_timeout;
  app.add_option("--forward-amqp-url", forward_amqp_url,
                 "--cluster: forward requests for partitions served by other instances through "
                 "this RabbitMQ, amqp://USER:PASSWORD@HOST:PORT/ (default: --rabbit-amqp-url; "
                 "none: they are answered 503001)");
  app.add_option("--forward-timeout", forward_timeout,
                 "--cluster: how long a forwarded request waits for its answer before the caller "
                 "gets 503001 (100ms..10min, default 10s)");
  app.add_option("--cluster-schema", cluster_schema,
                 "--cluster: the PostgreSQL schema of the hub (default devicebound)");
  app.add_option("-l,--log-level", log_level,
                 "trace, debug, info, warn, error, critical or off (default info)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return usage_exit(app, e);
  }

  daemon_config cfg;
  try {
    if (!config_path.empty())
      load_toml(config_path, cfg);
    if (host)
      cfg.broker.host = *host;
    if (port)
      cfg.broker.port = *port;
    if (client_id)
      cfg.broker.client_id = *client_id;
    if (username)
      cfg.broker.username = *username;
    if (password)
      cfg.broker.password = *password;
    if (broker_sas_key)
      cfg.broker_sas_key = *broker_sas_key;
    if (tls || tls_ca || tls_cert || tls_key || tls_insecure) {
      auto& t = cfg.broker.tls ? *cfg.broker.tls : cfg.broker.tls.emplace();
      if (tls_ca)
        t.ca_file = *tls_ca;
      if (tls_cert)
        t.cert_file = *tls_cert;
      if (tls_key)
        t.key_file = *tls_key;
      if (tls_key_password)
        t.key_password = *tls_key_password;
      if (tls_insecure)
        t.verify_server = false;
    }
    cfg.devices.insert(cfg.devices.end(), devices.begin(), devices.end());
    if (auto_register)
      cfg.auto_register = true;
    if (hub_name)
      cfg.hub.name = *hub_name;
    if (lock)
      cfg.hub.lock_duration = duration_arg(*lock, "--lock-duration");
    if (ttl)
      cfg.hub.default_ttl = duration_arg(*ttl, "--default-ttl");
    if (batch_interval)
      cfg.hub.feedback_batch_interval = duration_arg(*batch_interval, "--feedback-batch-interval");
    if (feedback_lock)
      cfg.hub.feedback_lock_duration = duration_arg(*feedback_lock, "--feedback-lock-duration");
    if (max_delivery)
      cfg.hub.max_delivery_count = *max_delivery;
    if (max_depth)
      cfg.hub.max_queue_depth = *max_depth;
    if (max_in_flight)
      cfg.max_in_flight = *max_in_flight;
    if (reconnect_initial)
      cfg.reconnect.initial = duration_arg(*reconnect_initial, "--reconnect-initial");
    if (reconnect_max)
      cfg.reconnect.cap = duration_arg(*reconnect_max, "--reconnect-max");
    if (log_level)
      cfg.log_level = *log_level;
    cfg.amqp.listen.insert(cfg.amqp.listen.end(), amqp_listen.begin(), amqp_listen.end());
    if (tls_server_cert)
      cfg.amqp.tls_server_cert = *tls_server_cert;
    if (tls_server_key)
      cfg.amqp.tls_server_key = *tls_server_key;
    if (tls_server_key_password)
      cfg.amqp.tls_server_key_password = *tls_server_key_password;
    if (amqp_insecure)
      cfg.amqp.insecure = true;
    if (iothub_hostname)
      cfg.amqp.iothub_hostname = *iothub_hostname;
    if (auth_file)
      cfg.amqp.auth_file = *auth_file;
    cfg.https.listen.insert(cfg.https.listen.end(), https_listen.begin(), https_listen.end());
    if (https_insecure)
      cfg.https.insecure = true;
    if (rabbit_auth_listen)
      cfg.rabbit_auth_listen = *rabbit_auth_listen;
    if (broker_kind)
      cfg.broker_kind = *broker_kind;
    if (rabbit_amqp_url)
      cfg.rabbit_amqp_url = *rabbit_amqp_url;
    if (https_request_timeout)
      cfg.https.request_timeout_seconds = *https_request_timeout;
    const auto set = [](auto& out, const auto& v) {
      if (v)
        out = *v;
    };
    set(cfg.limits.amqp_max_connections, amqp_max_connections);
    set(cfg.limits.amqp_max_sessions, amqp_max_sessions);
    set(cfg.limits.amqp_max_links, amqp_max_links);
    set(cfg.limits.amqp_max_frame_size, amqp_max_frame_size);
    set(cfg.limits.amqp_max_message_size, amqp_max_message_size);
    set(cfg.limits.amqp_open_timeout_seconds, amqp_open_timeout);
    set(cfg.limits.https_max_connections, https_max_connections);
    set(cfg.limits.https_max_header_bytes, https_max_header_bytes);
    set(cfg.limits.https_max_body_bytes, https_max_body_bytes);
    set(cfg.limits.https_idle_timeout_seconds, https_idle_timeout);
    set(cfg.limits.throttle.units, throttle_units);
    if (throttle) {
      const auto tier = parse_throttle_tier(*throttle);
      if (!tier)
        throw CLI::ValidationError("--throttle",
                                   "must be off, free, S1, S2 or S3, not '" + *throttle + "'");
      cfg.limits.throttle.tier = *tier;
    }
    if (auto p = cfg.limits.problem()) {
      const auto colon = p->find(':');
      throw CLI::ValidationError(p->substr(0, colon), p->substr(colon + 2));
    }
    if (cfg.https.request_timeout_seconds < 1 || cfg.https.request_timeout_seconds > 3600)
      throw CLI::ValidationError("--https-request-timeout", "must be 1..3600 seconds");
    // Plain listeners on loopback only, unless the insecure flag (docs/security.md).
    if (cfg.amqp.tls_server_cert.empty() && !cfg.amqp.insecure)
      for (const auto& a : cfg.amqp.listen)
        if (!loopback_listen(a))
          throw CLI::ValidationError("--amqp-listen",
                                     a + ": plain AMQP (no --tls-server-cert) only on a loopback "
                                         "address, unless --amqp-insecure");
    if (cfg.https.insecure)
      for (const auto& a : cfg.https.listen)
        if (!loopback_listen(a))
          throw CLI::ValidationError(
              "--https-listen", a + ": plain HTTP (--https-insecure) only on a loopback address");
    if (!cfg.https.listen.empty() && !cfg.https.insecure && cfg.amqp.tls_server_cert.empty())
      throw CLI::ValidationError("--https-listen",
                                 "needs --tls-server-cert and --tls-server-key (or "
                                 "--https-insecure for plain HTTP on a loopback address)");
    if (cfg.amqp.tls_server_cert.empty() != cfg.amqp.tls_server_key.empty())
      throw CLI::ValidationError("--tls-server-cert", "needs --tls-server-key, and the reverse");
    if (store_path) {
      cfg.store.path = *store_path;
      cfg.store.in_memory = false;
    }
    if (in_memory)
      cfg.store.in_memory = true;
    if (store_sync) {
      const auto sync = parse_setting<sqlite_sync>(*store_sync);
      if (!sync)
        throw CLI::ValidationError("--store-sync", "must be full or normal");
      cfg.store.sync = *sync;
    }
    if (in_memory && store_path)
      throw CLI::ValidationError("--in-memory", "excludes --store");
    if (cluster) {
      auto& c = cfg.cluster;
      c.enabled = true;
      if (!store_path)
        throw CLI::ValidationError("--cluster", "needs --store CONNINFO (PostgreSQL)");
      if (!partitions)
        throw CLI::ValidationError("--cluster", "needs --partitions K");
      if (!instance || instance->empty())
        throw CLI::ValidationError("--cluster", "needs --instance NAME");
      c.partitions = *partitions;
      c.instance = *instance;
      if (lease_ttl)
        c.lease_ttl = duration_arg(*lease_ttl, "--lease-ttl");
      if (lease_renew)
        c.lease_renew = duration_arg(*lease_renew, "--lease-renew");
      c.expected_instances = expected_instances;
      if (overflow_after)
        c.overflow_after = duration_arg(*overflow_after, "--overflow-after");
      if (startup_grace)
        c.startup_grace = duration_arg(*startup_grace, "--startup-grace");
      if (cluster_schema)
        c.schema = *cluster_schema;
      c.forward_amqp_url = forward_amqp_url ? *forward_amqp_url : cfg.rabbit_amqp_url;
      if (forward_timeout) {
        c.forward_timeout = duration_arg(*forward_timeout, "--forward-timeout");
        if (c.forward_timeout < std::chrono::milliseconds(100) ||
            c.forward_timeout > std::chrono::minutes(10))
          throw CLI::ValidationError("--forward-timeout",
                                     "'" + *forward_timeout + "' is out of range (100ms..10min)");
      }
    } else if (partitions || instance || lease_ttl || lease_renew || expected_instances ||
               overflow_after || startup_grace || cluster_schema || forward_amqp_url ||
               forward_timeout) {
      throw CLI::ValidationError("--partitions",
                                 "--partitions, --instance, --lease-*, --forward-* and "
                                 "--expected-instances need --cluster");
    }
    if (cfg.broker_sas_key) {
      if (cfg.broker.password)
        throw CLI::ValidationError("--broker-sas-key", "excludes --password (broker.password)");
      if (!cfg.broker.username || cfg.broker.username->empty())
        throw CLI::ValidationError("--broker-sas-key",
                                   "needs --username: the name of the policy the key belongs to");
      if (auto k = auth::shared_access_key::from_base64(*cfg.broker_sas_key); !k)
        throw CLI::ValidationError("--broker-sas-key", k.error().message);
    }
  } catch (const config_error& e) {
    std::fprintf(stderr, "devicebound-hub: %s\n", e.what());
    return int{exit_config};
  } catch (const CLI::Error& e) {
    return usage_exit(app, e);
  }
  return cfg;
}

}  // namespace devicebound::hubd
