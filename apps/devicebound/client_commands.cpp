// `devicebound device|policy|c2d|feedback …`: a CLI like `az iot` over IoT Hub's own
// protocols (docs/cli.md). The registry, device receive/settle and purge go
// over HTTPS (SPEC 11, 12); C2D send and feedback over AMQP (SPEC 10). Every
// command takes a connection string (`--login` or
// DEVICEBOUND_CONNECTION_STRING), so it works against `devicebound up` and,
// by the same protocols, against an IoT Hub.
#include "commands.hpp"

#ifndef DEVICEBOUND_WITH_CLIENT_COMMANDS
// Built without Qpid Proton or libcrypto: no client commands (apps/CMakeLists.txt).
namespace devicebound::cli {
void add_client_commands(CLI::App&, int&) {}
}  // namespace devicebound::cli
#else
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <devicebound/auth/connection_string.hpp>
#include <devicebound/auth/rights.hpp>
#include <devicebound/auth/signature.hpp>
#include <devicebound/auth/url.hpp>
#include <devicebound/codec/iso8601.hpp>
#include <devicebound/errors.hpp>
#include <devicebound/feedback_batch.hpp>
#include <devicebound/message.hpp>
#include <devicebound/transport/amqp/device.hpp>
#include <devicebound/transport/amqp/service.hpp>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <set>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "exit_codes.hpp"
#include "https_client.hpp"

namespace devicebound::cli {

namespace {

using json = nlohmann::ordered_json;

/// IoT Hub's REST api-version (SPEC 11.1.2).
constexpr std::string_view api_version = "2021-04-12";

// --- failures ----------------------------------------------------------------------------

/// A command's failure: IoT Hub's error name and number (0 where IoT Hub has
/// none), the message, and the exit code (exit_codes.hpp).
struct failure {
  std::string code;
  std::uint32_t number = 0;
  std::string message;
  int exit = exit_failure;
};

failure usage(std::string message) {
  return {"ArgumentInvalid", 400004, std::move(message), exit_usage};
}

int exit_for(errc e) {
  switch (e) {
    case errc::unauthorized:
      return exit_auth;
    case errc::device_not_found:
    case errc::device_message_lock_lost:
      return exit_not_found;
    case errc::not_connected:
    case errc::timeout:
    case errc::server_busy:
      return exit_unavailable;
    default:
      return exit_failure;
  }
}

failure from_error(const error& e) {
  return {std::string(to_string(e.code)), e.numeric(), e.message, exit_for(e.code)};
}

/// Numbers of IoT Hub's error names that are not an `errc` (SPEC 11.6.2).
std::uint32_t number_of(std::string_view name) {
  if (auto e = parse_errc(name))
    return static_cast<std::uint32_t>(*e);
  static constexpr std::pair<std::string_view, std::uint32_t> names[] = {
      {"IotHubUnauthorizedAccess", 401002},
      {"ServiceUnavailable", 503001},
      {"RequestTimeout", 408002},
  };
  for (const auto& [n, v] : names)
    if (n == name)
      return v;
  return 0;
}

/// An HTTP error response (SPEC 11.6): `iothub-errorcode`, and the body
/// `{"Message":"ErrorCode:<Name>;<text>",…}`.
failure from_http(const http_response& r) {
  failure f;
  std::string text;
  if (auto body = json::parse(r.body, nullptr, false); body.is_object()) {
    if (auto m = body.find("Message"); m != body.end() && m->is_string()) {
      text = m->get<std::string>();
      if (text.starts_with("ErrorCode:")) {
        const auto semi = text.find(';');
        f.code = text.substr(10, semi == std::string::npos ? std::string::npos : semi - 10);
        text = semi == std::string::npos ? std::string() : text.substr(semi + 1);
      }
    }
  }
  if (const auto* h = r.header("iothub-errorcode"))
    f.code = *h;
  if (f.code.empty())
    f.code = "HttpStatus" + std::to_string(r.status);
  f.number = number_of(f.code);
  f.message = text.empty() ? "HTTP " + std::to_string(r.status) : text;
  switch (r.status) {
    case 401:
      f.exit = exit_auth;
      break;
    case 404:
      f.exit = exit_not_found;
      break;
    case 412:
      f.exit = f.code == "DeviceMessageLockLost" ? exit_not_found : exit_failure;
      break;
    case 408:
    case 502:
    case 503:
    case 504:
      f.exit = exit_unavailable;
      break;
    default:
      f.exit = exit_failure;
  }
  return f;
}

// --- options shared by every command ------------------------------------------------------

struct common_options {
  std::string login;
  std::string output = "json";
  std::string ca_file;
  std::uint16_t amqp_port = 0;
  std::uint16_t https_port = 0;
  bool insecure = false;
  double timeout_seconds = 30;

  bool table() const { return output == "table"; }
  std::chrono::milliseconds timeout() const {
    return std::chrono::milliseconds(static_cast<std::int64_t>(timeout_seconds * 1000));
  }
};

void add_common(CLI::App* cmd, common_options& o, bool with_timeout = true) {
  cmd->add_option("--login,-l", o.login,
                  "connection string: a service one (HostName=…;SharedAccessKeyName=…;"
                  "SharedAccessKey=…) or, for device commands, a device one")
      ->envname("DEVICEBOUND_CONNECTION_STRING");
  cmd->add_option("--output,-o", o.output, "output format")
      ->check(CLI::IsMember({"json", "table"}))
      ->capture_default_str();
  cmd->add_option("--ca-file", o.ca_file,
                  "PEM file of the CA to trust (default: SSL_CERT_FILE, else the system's)");
  cmd->add_option("--amqp-port", o.amqp_port,
                  "AMQP port (default: the :port in HostName, else 5671)")
      ->envname("DEVICEBOUND_AMQP_PORT");
  cmd->add_option("--https-port", o.https_port, "HTTPS port (default 443)")
      ->envname("DEVICEBOUND_HTTPS_PORT");
  cmd->add_flag("--insecure", o.insecure,
                "plain AMQP and HTTP, no TLS (a hub on loopback started with --insecure)");
  if (with_timeout)
    cmd->add_option("--timeout,-t", o.timeout_seconds, "seconds to wait for the hub")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
}

/// The connection string of `--login` (or DEVICEBOUND_CONNECTION_STRING).
auth::connection_string login(const common_options& o) {
  if (o.login.empty())
    throw usage("no connection string: give --login or set DEVICEBOUND_CONNECTION_STRING");
  auto cs = auth::parse_connection_string(o.login);
  if (!cs)
    throw failure{"ArgumentInvalid", 400004, cs.error().message, exit_usage};
  return *cs;
}

auth::connection_string service_login(const common_options& o) {
  auto cs = login(o);
  if (cs.device_id)
    throw usage(
        "this command needs a service connection string (HostName=…;SharedAccessKeyName=…;"
        "SharedAccessKey=…), not a device one");
  return cs;
}

std::string without_port(const std::string& host) {
  const auto colon = host.rfind(':');
  return colon == std::string::npos ? host : host.substr(0, colon);
}

std::string ca_file(const common_options& o) {
  if (!o.ca_file.empty())
    return o.ca_file;
  const char* env = std::getenv("SSL_CERT_FILE");
  return env ? env : "";
}

https_endpoint https_of(const common_options& o, const auth::connection_string& cs) {
  https_endpoint ep;
  ep.host = without_port(cs.gateway_host_name ? *cs.gateway_host_name : cs.host_name);
  ep.port = o.https_port ? o.https_port : 443;
  ep.ca_file = ca_file(o);
  ep.tls = !o.insecure;
  ep.timeout = o.timeout();
  return ep;
}

amqp::connection_options amqp_of(const common_options& o, auth::connection_string cs) {
  if (o.amqp_port) {
    std::string& h = cs.gateway_host_name ? *cs.gateway_host_name : cs.host_name;
    h = without_port(h) + ":" + std::to_string(o.amqp_port);
  }
  amqp::connection_options out;
  out.credentials = std::move(cs);
  if (o.insecure)
    out.tls.reset();
  else
    out.tls = amqp::tls_options{ca_file(o), true};
  out.connect_timeout = o.timeout();
  out.request_timeout = o.timeout();
  // One message (or feedback batch) at a time: a prefetched one would stay
  // locked, unseen, until its lock expires.
  out.prefetch = 1;
  return out;
}

/// `SharedAccessSignature …` for `resource` (unencoded), signed as `cs` says:
/// the policy's key (with `skn`) or the device's.
std::string token_for(const auth::connection_string& cs, const std::string& resource) {
  const auto expiry = auth::sas_expiry(system_clock{}.now(), std::chrono::hours(1));
  if (cs.shared_access_signature)
    return auth::to_string(*cs.shared_access_signature);
  if (!cs.shared_access_key)
    throw usage("the connection string has no SharedAccessKey to sign a token with");
  return auth::to_string(
      auth::generate_sas_token(resource, *cs.shared_access_key, expiry, cs.shared_access_key_name));
}

/// The hub's name in tokens: `HostName` as given (SPEC 12.8.2 accepts it with a port).
std::string hub_resource(const auth::connection_string& cs) {
  return cs.host_name;
}

std::string device_path(std::string_view id) {
  return "/devices/" + auth::url_encode(id);
}

std::string with_api(std::string path, std::string_view more_query = {}) {
  path += "?api-version=";
  path += api_version;
  if (!more_query.empty()) {
    path += '&';
    path += more_query;
  }
  return path;
}

/// Sends a request; a transport failure or a status not in `ok` throws.
http_response call(const https_endpoint& ep, http_request req, const std::string& token,
                   std::initializer_list<unsigned> ok) {
  req.headers.emplace_back("Authorization", token);
  req.headers.emplace_back("Accept", "application/json");
  auto r = send_http(ep, req);
  if (!r)
    throw from_error(r.error());
  if (std::find(ok.begin(), ok.end(), r->status) == ok.end())
    throw from_http(*r);
  return std::move(*r);
}

json parse_json(const std::string& body) {
  auto j = json::parse(body, nullptr, false);
  if (j.is_discarded())
    throw failure{"Malformed", static_cast<std::uint32_t>(errc::malformed),
                  "the hub's response is not JSON", exit_failure};
  return j;
}

void print_json(const json& j) {
  std::cout << j.dump(-1, ' ', false, json::error_handler_t::replace) << '\n' << std::flush;
}

std::string str(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null())
    return "";
  if (it->is_string())
    return it->get<std::string>();
  return it->dump();
}

/// Left-aligned columns, two spaces apart.
void print_table(const std::vector<std::string>& head,
                 const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> width(head.size());
  for (std::size_t i = 0; i < head.size(); ++i)
    width[i] = head[i].size();
  for (const auto& r : rows)
    for (std::size_t i = 0; i < r.size() && i < width.size(); ++i)
      width[i] = std::max(width[i], r[i].size());
  const auto line = [&](const std::vector<std::string>& r) {
    std::string out;
    for (std::size_t i = 0; i < r.size(); ++i) {
      out += r[i];
      if (i + 1 < r.size())
        out += std::string(width[i] - r[i].size() + 2, ' ');
    }
    std::cout << out << '\n';
  };
  line(head);
  for (const auto& r : rows)
    line(r);
  std::cout << std::flush;
}

/// Runs a command body; prints its failure (IoT Hub code and message) to stderr.
template <class F>
void run(const common_options& o, int& code, F&& body) {
  try {
    body();
    code = exit_ok;
  } catch (const failure& f) {
    if (o.output == "json") {
      json e;
      e["error"]["code"] = f.code;
      e["error"]["errorCode"] = f.number;
      e["error"]["message"] = f.message;
      std::cerr << e.dump(-1, ' ', false, json::error_handler_t::replace) << '\n';
    } else {
      std::cerr << "error: " << f.code;
      if (f.number)
        std::cerr << " (" << f.number << ")";
      std::cerr << ": " << f.message << '\n';
    }
    code = f.exit;
  }
}

// --- device … (the identity registry, HTTPS) ----------------------------------------------

const std::vector<std::string> device_head{"DEVICE ID", "STATUS", "CONNECTION", "C2D QUEUED",
                                           "ETAG"};
std::vector<std::string> device_row(const json& d) {
  return {str(d, "deviceId"), str(d, "status"), str(d, "connectionState"),
          str(d, "cloudToDeviceMessageCount"), str(d, "etag")};
}

void print_device(const common_options& o, const json& d) {
  if (o.table())
    print_table(device_head, {device_row(d)});
  else
    print_json(d);
}

struct device_args {
  common_options common;
  std::string id;
  std::string primary_key, secondary_key, status = "enabled", status_reason, etag, key_type;
  unsigned top = 0;
};

void add_device_commands(CLI::App& app, int& code) {
  auto* device = app.add_subcommand("device", "the identity registry (az iot hub device-identity)");
  device->require_subcommand(1);
  auto a = std::make_shared<device_args>();

  auto* create =
      device->add_subcommand("create", "register a device (SAS keys generated unless given)");
  add_common(create, a->common);
  create->add_option("--device-id,-d", a->id, "device id")->required();
  create->add_option("--primary-key,--pk", a->primary_key, "base64 primary key");
  create->add_option("--secondary-key,--sk", a->secondary_key, "base64 secondary key");
  create->add_option("--status,--sta", a->status, "enabled or disabled")
      ->check(CLI::IsMember({"enabled", "disabled"}));
  create->add_option("--status-reason,--star", a->status_reason, "why the status is what it is");
  create->callback([a, &code] {
    run(a->common, code, [&] {
      const auto cs = service_login(a->common);
      json body;
      body["deviceId"] = a->id;
      body["status"] = a->status;
      if (!a->status_reason.empty())
        body["statusReason"] = a->status_reason;
      body["authentication"]["type"] = "sas";
      body["authentication"]["symmetricKey"]["primaryKey"] = a->primary_key;
      body["authentication"]["symmetricKey"]["secondaryKey"] = a->secondary_key;
      http_request req{"PUT",
                       with_api(device_path(a->id)),
                       {{"Content-Type", "application/json; charset=utf-8"}},
                       body.dump()};
      auto r = call(https_of(a->common, cs), req, token_for(cs, hub_resource(cs)), {200, 201});
      print_device(a->common, parse_json(r.body));
    });
  });

  a = std::make_shared<device_args>();  // each command its own options
  auto* show = device->add_subcommand("show", "one device's identity");
  add_common(show, a->common);
  show->add_option("--device-id,-d", a->id, "device id")->required();
  show->callback([a, &code] {
    run(a->common, code, [&] {
      const auto cs = service_login(a->common);
      auto r = call(https_of(a->common, cs), {"GET", with_api(device_path(a->id)), {}, {}},
                    token_for(cs, hub_resource(cs)), {200});
      print_device(a->common, parse_json(r.body));
    });
  });

  a = std::make_shared<device_args>();  // each command its own options
  auto* list = device->add_subcommand("list", "the registered devices");
  add_common(list, a->common);
  list->add_option("--top", a->top, "at most this many (1..1000)")->check(CLI::Range(1, 1000));
  list->callback([a, &code] {
    run(a->common, code, [&] {
      const auto cs = service_login(a->common);
      const std::string query = a->top ? "top=" + std::to_string(a->top) : std::string();
      auto r = call(https_of(a->common, cs), {"GET", with_api("/devices", query), {}, {}},
                    token_for(cs, hub_resource(cs)), {200});
      const json all = parse_json(r.body);
      if (!all.is_array())
        throw failure{"Malformed", static_cast<std::uint32_t>(errc::malformed),
                      "the hub's device list is not a JSON array", exit_failure};
      if (a->common.table()) {
        std::vector<std::vector<std::string>> rows;
        for (const auto& d : all)
          rows.push_back(device_row(d));
        print_table(device_head, rows);
      } else {
        print_json(all);
      }
    });
  });

  a = std::make_shared<device_args>();  // each command its own options
  auto* del = device->add_subcommand("delete", "remove a device (its queue goes with it)");
  add_common(del, a->common);
  del->add_option("--device-id,-d", a->id, "device id")->required();
  del->add_option("--etag,-e", a->etag, "delete only if the device's etag is still this");
  del->callback([a, &code] {
    run(a->common, code, [&] {
      const auto cs = service_login(a->common);
      std::string etag = a->etag.empty() ? "*" : a->etag;
      if (etag.size() < 2 || etag.front() != '"')
        etag = "\"" + etag + "\"";
      (void)call(https_of(a->common, cs),
                 {"DELETE", with_api(device_path(a->id)), {{"If-Match", etag}}, {}},
                 token_for(cs, hub_resource(cs)), {200, 204});
    });
  });

  a = std::make_shared<device_args>();  // each command its own options
  auto* conn = device->add_subcommand("connection-string",
                                      "a device's connection string (az: connection-string show)");
  add_common(conn, a->common);
  conn->add_option("--device-id,-d", a->id, "device id")->required();
  conn->add_option("--key-type,--kt", a->key_type, "primary or secondary")
      ->check(CLI::IsMember({"primary", "secondary"}))
      ->default_str("primary");
  conn->callback([a, &code] {
    run(a->common, code, [&] {
      const auto cs = service_login(a->common);
      auto r = call(https_of(a->common, cs), {"GET", with_api(device_path(a->id)), {}, {}},
                    token_for(cs, hub_resource(cs)), {200});
      const json d = parse_json(r.body);
      std::string key;
      if (auto au = d.find("authentication"); au != d.end() && au->is_object())
        if (auto sk = au->find("symmetricKey"); sk != au->end() && sk->is_object())
          key = str(*sk, a->key_type == "secondary" ? "secondaryKey" : "primaryKey");
      if (key.empty())
        throw failure{"ArgumentInvalid", 400004,
                      "device '" + a->id + "' has no symmetric key (not a SAS device)",
                      exit_failure};
      const std::string text =
          "HostName=" + cs.host_name + ";DeviceId=" + a->id + ";SharedAccessKey=" + key;
      if (a->common.table()) {
        std::cout << text << '\n';
      } else {
        json j;
        j["connectionString"] = text;
        print_json(j);
      }
    });
  });
}

// --- c2d … ---------------------------------------------------------------------------------

struct c2d_args {
  common_options common;
  std::string id;
  // send
  std::string data, props, ack, message_id, correlation_id, content_type, content_encoding;
  std::optional<std::int64_t> expiry_ms;
  unsigned repeat = 1;
  bool wait_on_feedback = false;
  // receive and settle
  std::string etag, transport = "https";
  unsigned lock_timeout = 0;
  bool complete = false, reject = false, abandon = false;
};

/// `a=1;b=2` (az's `--props`).
properties parse_props(std::string_view text) {
  properties out;
  std::size_t start = 0;
  while (start <= text.size()) {
    auto end = text.find(';', start);
    if (end == std::string_view::npos)
      end = text.size();
    const auto item = text.substr(start, end - start);
    start = end + 1;
    if (item.empty())
      continue;
    const auto eq = item.find('=');
    if (eq == std::string_view::npos || eq == 0)
      throw usage("--props: '" + std::string(item) + "' is not name=value (expected \"a=1;b=2\")");
    out.insert_or_assign(std::string(item.substr(0, eq)), std::string(item.substr(eq + 1)));
  }
  return out;
}

std::string new_guid() {
  std::random_device rd;
  lock_token t;
  for (auto& b : t.bytes)
    b = static_cast<std::uint8_t>(rd());
  t.bytes[6] = static_cast<std::uint8_t>((t.bytes[6] & 0x0F) | 0x40);
  t.bytes[8] = static_cast<std::uint8_t>((t.bytes[8] & 0x3F) | 0x80);
  return t.to_string();
}

json feedback_json(const feedback_record& r) {
  json j;
  j["originalMessageId"] = r.original_message_id;
  j["deviceId"] = r.device_id;
  j["statusCode"] = std::string(to_string(r.status_code));
  j["description"] = r.description;
  j["enqueuedTimeUtc"] = codec::format_iso8601(r.enqueued_time_utc);
  j["deviceGenerationId"] = r.device_generation_id;
  return j;
}

const std::vector<std::string> feedback_head{"ORIGINAL MESSAGE ID", "DEVICE ID", "STATUS",
                                             "ENQUEUED (UTC)"};
std::vector<std::string> feedback_row(const feedback_record& r) {
  return {r.original_message_id, r.device_id, std::string(to_string(r.status_code)),
          codec::format_iso8601(r.enqueued_time_utc)};
}

/// SIGINT/SIGTERM request a stop (for the commands that wait): blocked in every
/// thread, taken by one thread with sigwait.
class stop_on_signal {
 public:
  stop_on_signal() {
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGINT);
    sigaddset(&s, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &s, &old_);
    thread_ = std::thread([this, s] {
      int sig = 0;
      if (sigwait(&s, &sig) == 0 && !done_.load())
        source_.request_stop();
    });
  }
  ~stop_on_signal() {
    done_.store(true);
    pthread_kill(thread_.native_handle(), SIGTERM);
    thread_.join();
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  stop_on_signal(const stop_on_signal&) = delete;
  stop_on_signal& operator=(const stop_on_signal&) = delete;
  std::stop_token token() const { return source_.get_token(); }
  bool stopped() const { return source_.stop_requested(); }

 private:
  sigset_t old_{};
  std::stop_source source_;
  std::atomic<bool> done_{false};
  std::thread thread_;
};

/// Receives feedback batches until every id in `wanted` was seen (empty: until
/// the deadline or a signal), completing each batch; calls `on` per record.
/// Returns whether every wanted id was seen.
template <class On>
bool watch_feedback(amqp::service_connection& svc, std::set<std::string> wanted,
                    std::optional<time_point> deadline, const stop_on_signal& stop, On&& on) {
  const bool waiting_for_ids = !wanted.empty();
  for (;;) {
    if (stop.stopped())
      return false;
    duration left = std::chrono::hours(24);
    if (deadline) {
      left = *deadline - system_clock{}.now();
      if (left <= duration::zero())
        return false;
    }
    auto b = svc.receive_feedback(left, stop.token());
    if (!b)
      throw from_error(b.error());
    if (!*b)
      continue;
    for (const auto& r : (*b)->records) {
      on(r);
      wanted.erase(r.original_message_id);
    }
    if (auto c = svc.complete_feedback((*b)->lock_token); !c)
      throw from_error(c.error());
    if (waiting_for_ids && wanted.empty())
      return true;
  }
}

/// The device a device command acts as, and how it signs: a device connection
/// string (its own key), or a service one with `-d` (the policy on the device's
/// behalf, which needs DeviceConnect: iothubowner or device).
struct device_identity_login {
  auth::connection_string cs;
  std::string id;
  std::string token;
};

device_identity_login device_login(const c2d_args& a) {
  auto cs = login(a.common);
  device_identity_login out;
  if (cs.device_id) {
    if (!a.id.empty() && a.id != *cs.device_id)
      throw usage("--device-id '" + a.id + "' is not the connection string's DeviceId '" +
                  *cs.device_id + "'");
    out.id = *cs.device_id;
  } else {
    if (a.id.empty())
      throw usage("--device-id is required with a service connection string");
    out.id = a.id;
  }
  out.token = token_for(cs, cs.host_name + "/devices/" + out.id);
  out.cs = std::move(cs);
  return out;
}

std::string unquote(std::string s) {
  if (s.size() >= 2 && s.front() == '"' && s.back() == '"')
    s = s.substr(1, s.size() - 2);
  return s;
}

enum class settle_kind { complete, reject, abandon };

void settle_https(const c2d_args& a, const device_identity_login& d, const std::string& etag,
                  settle_kind kind) {
  const std::string base =
      device_path(d.id) + "/messages/devicebound/" + auth::url_encode(unquote(etag));
  http_request req;
  if (kind == settle_kind::abandon) {
    req.method = "POST";
    req.target = with_api(base + "/abandon");
  } else {
    req.method = "DELETE";
    req.target = with_api(base, kind == settle_kind::reject ? "reject" : "");
  }
  req.headers.emplace_back("If-Match", "\"" + unquote(etag) + "\"");
  (void)call(https_of(a.common, d.cs), req, d.token, {200, 204});
}

/// A received message as az prints it: data, etag, app and system properties.
void print_received(const common_options& o, const std::string& device_id, const std::string& data,
                    const std::string& etag, const json& app, const json& system) {
  if (o.table()) {
    std::vector<std::vector<std::string>> rows{
        {"deviceId", device_id}, {"etag", etag}, {"data", data}};
    for (const auto& [k, v] : system.items())
      rows.push_back({k, v.is_string() ? v.get<std::string>() : v.dump()});
    for (const auto& [k, v] : app.items())
      rows.push_back({"app:" + k, v.get<std::string>()});
    print_table({"PROPERTY", "VALUE"}, rows);
    return;
  }
  json j;
  j["deviceId"] = device_id;
  j["data"] = data;
  j["etag"] = etag;
  j["properties"]["app"] = app;
  j["properties"]["system"] = system;
  print_json(j);
}

void receive_https(const c2d_args& a) {
  const auto d = device_login(a);
  std::string query;
  if (a.lock_timeout)
    query = "iothub-messagelocktimeout=" + std::to_string(a.lock_timeout);
  auto r = call(https_of(a.common, d.cs),
                {"GET", with_api(device_path(d.id) + "/messages/devicebound", query), {}, {}},
                d.token, {200, 204});
  if (r.status == 204)
    throw failure{"NoMessage", 0, "device '" + d.id + "' has no message to receive",
                  exit_not_found};
  const std::string etag = unquote(r.header("etag") ? *r.header("etag") : "");
  json app = json::object(), system = json::object();
  static constexpr std::pair<std::string_view, std::string_view> sys[] = {
      {"iothub-messageid", "messageId"},
      {"iothub-correlationid", "correlationId"},
      {"iothub-to", "to"},
      {"iothub-userid", "userId"},
      {"iothub-ack", "ack"},
      {"iothub-expiry", "expiryTimeUtc"},
      {"iothub-enqueuedtime", "enqueuedTimeUtc"},
      {"iothub-creationtimeutc", "creationTimeUtc"},
      {"iothub-sequencenumber", "sequenceNumber"},
      {"iothub-deliverycount", "deliveryCount"},
      {"contenttype", "contentType"},
      {"contentencoding", "contentEncoding"},
  };
  for (const auto& [header, name] : sys)
    if (const auto* v = r.header(std::string(header)))
      system[std::string(name)] = *v;
  for (const auto& [k, v] : r.headers)
    if (k.starts_with("iothub-app-"))
      app[k.substr(11)] = v;
  print_received(a.common, d.id, r.body, etag, app, system);
  if (a.complete)
    settle_https(a, d, etag, settle_kind::complete);
  else if (a.reject)
    settle_https(a, d, etag, settle_kind::reject);
  else if (a.abandon)
    settle_https(a, d, etag, settle_kind::abandon);
}

void receive_amqp(const c2d_args& a) {
  auto cs = login(a.common);
  if (!cs.device_id)
    throw usage("--transport amqp needs a device connection string (DeviceId=…)");
  if (!a.id.empty() && a.id != *cs.device_id)
    throw usage("--device-id '" + a.id + "' is not the connection string's DeviceId");
  const std::string id = *cs.device_id;
  stop_on_signal stop;  // before the connection: its I/O thread inherits the blocked signals
  amqp::device_connection dev(amqp_of(a.common, cs));
  if (auto o = dev.open(); !o)
    throw from_error(o.error());
  auto m = dev.receive(a.common.timeout(), stop.token());
  if (!m)
    throw from_error(m.error());
  if (!*m)
    throw failure{"NoMessage", 0, "device '" + id + "' received no message within the time-out",
                  exit_not_found};
  const message& msg = **m;
  json app = json::object(), system = json::object();
  for (const auto& [k, v] : msg.app_properties)
    app[k] = v;
  if (msg.message_id)
    system["messageId"] = *msg.message_id;
  if (msg.correlation_id)
    system["correlationId"] = *msg.correlation_id;
  if (msg.to)
    system["to"] = *msg.to;
  if (msg.user_id)
    system["userId"] = *msg.user_id;
  system["ack"] = std::string(to_string(msg.ack));
  if (msg.expiry_time_utc)
    system["expiryTimeUtc"] = codec::format_iso8601(*msg.expiry_time_utc);
  if (msg.enqueued_time_utc)
    system["enqueuedTimeUtc"] = codec::format_iso8601(*msg.enqueued_time_utc);
  if (msg.creation_time_utc)
    system["creationTimeUtc"] = codec::format_iso8601(*msg.creation_time_utc);
  system["sequenceNumber"] = std::to_string(msg.sequence_number);
  system["deliveryCount"] = std::to_string(msg.delivery_count);
  if (msg.content_type)
    system["contentType"] = *msg.content_type;
  if (msg.content_encoding)
    system["contentEncoding"] = *msg.content_encoding;
  const std::string etag = msg.lock_token ? msg.lock_token->to_string() : "";
  print_received(a.common, id, msg.body, etag, app, system);
  if (!msg.lock_token)
    return;
  result<void> s;
  if (a.complete)
    s = dev.complete(*msg.lock_token);
  else if (a.reject)
    s = dev.reject(*msg.lock_token);
  else
    s = dev.abandon(*msg.lock_token);  // the lock dies with the link: give it back now
  if (!s)
    throw from_error(s.error());
}

/// A progress bar on stderr when it is a terminal.
class progress_bar {
 public:
  explicit progress_bar(unsigned total) : total_(total), on_(total > 1 && ::isatty(2)) {}
  void update(unsigned done) {
    if (!on_)
      return;
    constexpr unsigned width = 30;
    const unsigned filled = total_ ? done * width / total_ : width;
    std::cerr << "\r[" << std::string(filled, '#') << std::string(width - filled, ' ') << "] "
              << done << "/" << total_ << std::flush;
    if (done == total_)
      std::cerr << '\n';
  }

 private:
  unsigned total_;
  bool on_;
};

void send(const c2d_args& a) {
  const auto cs = service_login(a.common);
  message base;
  base.body = a.data;
  base.app_properties = parse_props(a.props);
  if (!a.ack.empty())
    base.ack = *parse_ack_mode(a.ack);
  else if (a.wait_on_feedback)
    base.ack = ack_mode::full;
  if (a.wait_on_feedback && base.ack == ack_mode::none)
    throw usage("--wait-on-feedback needs --ack positive, negative or full");
  if (!a.correlation_id.empty())
    base.correlation_id = a.correlation_id;
  if (!a.content_type.empty())
    base.content_type = a.content_type;
  if (!a.content_encoding.empty())
    base.content_encoding = a.content_encoding;
  if (a.expiry_ms)
    base.expiry_time_utc = time_point(std::chrono::milliseconds(*a.expiry_ms));

  stop_on_signal stop;  // before the connection: its I/O thread inherits the blocked signals
  amqp::service_connection svc(amqp_of(a.common, cs));
  if (auto o = svc.open(); !o)
    throw from_error(o.error());
  std::vector<std::string> ids;
  progress_bar bar(a.repeat);
  for (unsigned i = 0; i < a.repeat && !stop.stopped(); ++i) {
    message m = base;
    if (a.message_id.empty())
      m.message_id = new_guid();
    else
      m.message_id = a.repeat > 1 ? a.message_id + "-" + std::to_string(i + 1) : a.message_id;
    auto r = svc.send(a.id, m);
    if (!r)
      throw from_error(r.error());
    ids.push_back(*m.message_id);
    bar.update(i + 1);
  }
  if (ids.size() < a.repeat)
    throw failure{"Interrupted", 0,
                  "stopped by a signal after sending " + std::to_string(ids.size()) + " of " +
                      std::to_string(a.repeat) + " message(s)",
                  exit_failure};
  std::vector<feedback_record> records;
  bool all = true;
  if (a.wait_on_feedback) {
    const time_point deadline = system_clock{}.now() + a.common.timeout();
    all =
        watch_feedback(svc, std::set<std::string>(ids.begin(), ids.end()), deadline, stop,
                       [&](const feedback_record& r) {
                         if (std::find(ids.begin(), ids.end(), r.original_message_id) != ids.end())
                           records.push_back(r);
                       });
  }
  if (a.common.table()) {
    std::cout << "sent " << ids.size() << " message(s) to " << a.id << ":";
    for (const auto& id : ids)
      std::cout << ' ' << id;
    std::cout << '\n';
    if (a.wait_on_feedback) {
      std::vector<std::vector<std::string>> rows;
      for (const auto& r : records)
        rows.push_back(feedback_row(r));
      print_table(feedback_head, rows);
    }
    std::cout << std::flush;
  } else {
    json j;
    j["deviceId"] = a.id;
    j["sent"] = ids.size();
    j["messageIds"] = ids;
    j["ack"] = std::string(to_string(base.ack));
    if (a.wait_on_feedback) {
      j["feedback"] = json::array();
      for (const auto& r : records)
        j["feedback"].push_back(feedback_json(r));
    }
    print_json(j);
  }
  if (!all)
    throw failure{
        "Timeout", static_cast<std::uint32_t>(errc::timeout),
        "no feedback for every message within " + std::to_string(a.common.timeout_seconds) + " s",
        exit_unavailable};
}

void add_c2d_commands(CLI::App& app, int& code) {
  auto* c2d = app.add_subcommand("c2d", "cloud-to-device messages (az iot device c2d-message)");
  c2d->require_subcommand(1);
  auto a = std::make_shared<c2d_args>();

  auto* snd = c2d->add_subcommand("send", "send a message to a device (AMQP, as a back end)");
  add_common(snd, a->common);
  snd->add_option("--device-id,-d", a->id, "device id")->required();
  snd->add_option("--data,--da", a->data, "message body");
  snd->add_option("--props,-p", a->props, "application properties: \"a=1;b=2\"");
  snd->add_option("--ack", a->ack, "feedback to ask for")
      ->check(CLI::IsMember({"none", "positive", "negative", "full"}));
  snd->add_option("--message-id,--mid", a->message_id, "message id (default: a new GUID)");
  snd->add_option("--correlation-id,--cid", a->correlation_id, "correlation id");
  snd->add_option("--expiry,--expiry-time-utc,--exp", a->expiry_ms,
                  "absolute expiry, milliseconds since the epoch");
  snd->add_option("--content-type,--ct", a->content_type, "content type");
  snd->add_option("--content-encoding,--ce", a->content_encoding, "content encoding");
  snd->add_option("--repeat,-r", a->repeat, "send this many messages")
      ->check(CLI::Range(1u, 1000000u));
  snd->add_flag("--wait-on-feedback,--wait,-w", a->wait_on_feedback,
                "wait (--timeout) for the feedback on every message sent");
  snd->callback([a, &code] { run(a->common, code, [&] { send(*a); }); });

  a = std::make_shared<c2d_args>();  // each command its own options
  auto* rcv = c2d->add_subcommand("receive", "receive a message as the device (HTTPS or AMQP)");
  add_common(rcv, a->common);
  rcv->add_option("--device-id,-d", a->id, "device id (needed with a service connection string)");
  rcv->add_option("--lock-timeout,--lt", a->lock_timeout, "seconds to lock the message (HTTPS)");
  rcv->add_option("--transport", a->transport, "https (default) or amqp (waits --timeout)")
      ->check(CLI::IsMember({"https", "amqp"}));
  auto* complete = rcv->add_flag("--complete", a->complete, "complete it once received");
  auto* reject = rcv->add_flag("--reject", a->reject, "reject it once received");
  auto* abandon = rcv->add_flag("--abandon", a->abandon, "abandon it once received");
  complete->excludes(reject)->excludes(abandon);
  reject->excludes(abandon);
  rcv->callback([a, &code] {
    run(a->common, code, [&] {
      if (a->transport == "amqp")
        receive_amqp(*a);
      else
        receive_https(*a);
    });
  });

  for (const auto& [name, kind, help] :
       {std::tuple{"complete", settle_kind::complete, "complete a received message"},
        std::tuple{"reject", settle_kind::reject, "reject (dead-letter) a received message"},
        std::tuple{"abandon", settle_kind::abandon, "abandon a received message (redelivered)"}}) {
    a = std::make_shared<c2d_args>();
    auto* cmd = c2d->add_subcommand(name, std::string(help) + " (HTTPS, as the device)");
    add_common(cmd, a->common);
    cmd->add_option("--device-id,-d", a->id, "device id (needed with a service connection string)");
    cmd->add_option("--etag,-e", a->etag, "the lock token (etag) `c2d receive` printed")
        ->required();
    cmd->callback([a, &code, kind = kind] {
      run(a->common, code, [&] { settle_https(*a, device_login(*a), a->etag, kind); });
    });
  }

  a = std::make_shared<c2d_args>();  // each command its own options
  auto* purge = c2d->add_subcommand("purge", "drop every message queued for a device (HTTPS)");
  add_common(purge, a->common);
  purge->add_option("--device-id,-d", a->id, "device id")->required();
  purge->callback([a, &code] {
    run(a->common, code, [&] {
      const auto cs = service_login(a->common);
      auto r = call(https_of(a->common, cs),
                    {"DELETE", with_api(device_path(a->id) + "/commands"), {}, {}},
                    token_for(cs, hub_resource(cs)), {200});
      const json j = parse_json(r.body);
      if (a->common.table())
        std::cout << "purged " << str(j, "totalMessagesPurged") << " message(s) of "
                  << str(j, "deviceId") << '\n'
                  << std::flush;
      else
        print_json(j);
    });
  });
}

// --- feedback watch --------------------------------------------------------------------------

struct feedback_args {
  common_options common;
  std::vector<std::string> wait_on;
  std::string device_id;
};

void add_feedback_commands(CLI::App& app, int& code) {
  auto* fb = app.add_subcommand("feedback", "delivery feedback (az iot hub monitor-feedback)");
  fb->require_subcommand(1);
  auto a = std::make_shared<feedback_args>();
  auto* watch = fb->add_subcommand(
      "watch", "print each feedback record as it arrives (AMQP); completes each batch");
  add_common(watch, a->common, false);
  auto* timeout = watch->add_option("--timeout,-t", a->common.timeout_seconds,
                                    "stop after this many seconds (default: Ctrl-C)");
  timeout->check(CLI::PositiveNumber);
  watch->add_option("--wait-on-msg,-w", a->wait_on,
                    "stop once feedback for these message ids arrived");
  watch->add_option("--device-id,-d", a->device_id,
                    "print only this device's records (every batch is still completed)");
  watch->callback([a, &code, timeout] {
    run(a->common, code, [&] {
      const auto cs = service_login(a->common);
      const bool bounded = timeout->count() > 0;
      stop_on_signal stop;  // before the connection (its I/O thread inherits the mask)
      amqp::service_connection svc(amqp_of(a->common, cs));
      if (auto o = svc.open(); !o)
        throw from_error(o.error());
      std::optional<time_point> deadline;
      if (bounded)
        deadline = system_clock{}.now() + a->common.timeout();
      bool first = true;
      const auto on_record = [&](const feedback_record& r) {
        if (!a->device_id.empty() && r.device_id != a->device_id)
          return;
        if (!a->common.table()) {
          print_json(feedback_json(r));
          return;
        }
        // Streamed: fixed columns (a GUID is 36 characters).
        const auto line = [](const std::vector<std::string>& row) {
          std::cout << row[0] << std::string(row[0].size() < 38 ? 38 - row[0].size() : 1, ' ')
                    << row[1] << std::string(row[1].size() < 20 ? 20 - row[1].size() : 1, ' ')
                    << row[2] << std::string(row[2].size() < 16 ? 16 - row[2].size() : 1, ' ')
                    << row[3] << '\n';
        };
        if (first)
          line(feedback_head);
        first = false;
        line(feedback_row(r));
        std::cout << std::flush;
      };
      const std::set<std::string> wanted(a->wait_on.begin(), a->wait_on.end());
      const bool all = watch_feedback(svc, wanted, deadline, stop, on_record);
      if (!a->wait_on.empty() && !all && !stop.stopped())
        throw failure{"Timeout", static_cast<std::uint32_t>(errc::timeout),
                      "no feedback for every --wait-on-msg id within the time-out",
                      exit_unavailable};
    });
  });
}

// --- policy … (shared access policies: devicebound's admin routes, HTTPS) -----------------

const std::vector<std::string> policy_head{"KEY NAME", "RIGHTS"};

std::vector<std::string> policy_row(const json& p) {
  return {str(p, "keyName"), str(p, "rights")};
}

void print_policy(const common_options& o, const json& p) {
  if (o.table())
    print_table(policy_head, {policy_row(p)});
  else
    print_json(p);
}

std::string policy_path(std::string_view name) {
  return "/devicebound/policies/" + auth::url_encode(name);
}

struct policy_args {
  common_options common;
  std::string name;
  std::vector<std::string> permissions;
  std::string primary_key, secondary_key, renew = "primary";
};

void add_policy_commands(CLI::App& app, int& code) {
  auto* policy = app.add_subcommand(
      "policy", "shared access policies (az iot hub policy); needs a policy with all four rights");
  policy->require_subcommand(1);
  auto a = std::make_shared<policy_args>();

  auto* list = policy->add_subcommand("list", "the hub's policies, with their keys");
  add_common(list, a->common);
  list->callback([a, &code] {
    run(a->common, code, [&] {
      const auto cs = service_login(a->common);
      auto r = call(https_of(a->common, cs), {"GET", with_api("/devicebound/policies"), {}, {}},
                    token_for(cs, hub_resource(cs)), {200});
      const json all = parse_json(r.body);
      const auto value = all.is_object() ? all.find("value") : all.end();
      if (value == all.end() || !value->is_array())
        throw failure{"Malformed", static_cast<std::uint32_t>(errc::malformed),
                      "the hub's policy list has no 'value' array", exit_failure};
      if (a->common.table()) {
        std::vector<std::vector<std::string>> rows;
        for (const auto& p : *value)
          rows.push_back(policy_row(p));
        print_table(policy_head, rows);
      } else {
        print_json(*value);
      }
    });
  });

  a = std::make_shared<policy_args>();  // each command its own options
  auto* show = policy->add_subcommand("show", "one policy, with its keys");
  add_common(show, a->common);
  show->add_option("--name,-n", a->name, "policy name")->required();
  show->callback([a, &code] {
    run(a->common, code, [&] {
      const auto cs = service_login(a->common);
      auto r = call(https_of(a->common, cs), {"GET", with_api(policy_path(a->name)), {}, {}},
                    token_for(cs, hub_resource(cs)), {200});
      print_policy(a->common, parse_json(r.body));
    });
  });

  a = std::make_shared<policy_args>();  // each command its own options
  auto* create = policy->add_subcommand("create",
                                        "a new policy (keys generated unless given); 409 if it "
                                        "exists");
  add_common(create, a->common);
  create->add_option("--name,-n", a->name, "policy name")->required();
  create
      ->add_option("--permissions", a->permissions,
                   "RegistryRead RegistryWrite ServiceConnect DeviceConnect (space or comma "
                   "separated)")
      ->required()
      ->expected(1, -1);
  create->add_option("--primary-key,--pk", a->primary_key, "base64 primary key");
  create->add_option("--secondary-key,--sk", a->secondary_key, "base64 secondary key");
  create->callback([a, &code] {
    run(a->common, code, [&] {
      const auto cs = service_login(a->common);
      // "A B", "A,B", "A, B" and separate arguments all name the same rights
      std::string rights;
      for (const auto& p : a->permissions) {
        for (char ch : p) {
          if (ch == ' ' || ch == ',') {
            if (!rights.empty() && rights.back() != ',')
              rights += ',';
          } else {
            rights += ch;
          }
        }
        if (!rights.empty() && rights.back() != ',')
          rights += ',';
      }
      while (!rights.empty() && rights.back() == ',')
        rights.pop_back();
      if (rights.empty())
        throw usage(
            "--permissions: name at least one of RegistryRead, RegistryWrite, "
            "ServiceConnect, DeviceConnect");
      if (auto parsed = auth::parse_access_rights(rights); !parsed)
        throw usage("--permissions: " + parsed.error().message);
      json body;
      body["keyName"] = a->name;
      body["rights"] = rights;
      if (!a->primary_key.empty())
        body["primaryKey"] = a->primary_key;
      if (!a->secondary_key.empty())
        body["secondaryKey"] = a->secondary_key;
      http_request req{
          "PUT",
          with_api(policy_path(a->name)),
          {{"Content-Type", "application/json; charset=utf-8"}, {"If-None-Match", "*"}},
          body.dump()};
      auto r = call(https_of(a->common, cs), req, token_for(cs, hub_resource(cs)), {200, 201});
      print_policy(a->common, parse_json(r.body));
    });
  });

  a = std::make_shared<policy_args>();  // each command its own options
  auto* renew = policy->add_subcommand(
      "renew-key",
      "regenerate a key, or swap the two; tokens signed with the old key stop working");
  add_common(renew, a->common);
  renew->add_option("--name,-n", a->name, "policy name")->required();
  renew->add_option("--renew-key,--rk", a->renew, "which key")
      ->required()
      ->check(CLI::IsMember({"primary", "secondary", "swap"}));
  renew->callback([a, &code] {
    run(a->common, code, [&] {
      const auto cs = service_login(a->common);
      json body;
      body["renewKey"] = a->renew;
      http_request req{"POST",
                       with_api(policy_path(a->name) + "/renew-key"),
                       {{"Content-Type", "application/json; charset=utf-8"}},
                       body.dump()};
      auto r = call(https_of(a->common, cs), req, token_for(cs, hub_resource(cs)), {200});
      print_policy(a->common, parse_json(r.body));
    });
  });

  a = std::make_shared<policy_args>();  // each command its own options
  auto* del = policy->add_subcommand("delete", "remove a policy; its tokens stop working");
  add_common(del, a->common);
  del->add_option("--name,-n", a->name, "policy name")->required();
  del->callback([a, &code] {
    run(a->common, code, [&] {
      const auto cs = service_login(a->common);
      (void)call(https_of(a->common, cs), {"DELETE", with_api(policy_path(a->name)), {}, {}},
                 token_for(cs, hub_resource(cs)), {200, 204});
    });
  });
}

}  // namespace

void add_client_commands(CLI::App& app, int& code) {
  add_device_commands(app, code);
  add_policy_commands(app, code);
  add_c2d_commands(app, code);
  add_feedback_commands(app, code);
}

}  // namespace devicebound::cli
#endif  // DEVICEBOUND_WITH_CLIENT_COMMANDS
