// The permission matrix (issue 14, docs/security.md "The permission matrix").
//
// One mosquitto with the devicebound plugin and one devicebound-hub with its
// AMQP and HTTPS doors over TLS, on free 127.0.0.1 ports, shared by the whole
// binary. For every front door, every operation that exists on it and every
// credential (IoT Hub's default policies, a device's own key, another device's
// key, the `device` policy scoped to one device), the test really does the
// operation and compares the answer with ONE table of expectations, written to
// mirror docs/security.md ("What each front door enforces"):
//   - allowed: the operation succeeds and has its effect (a message queued,
//     received and completed, purged, a device changed or deleted...);
//   - refused: the documented refusal (HTTPS 401 IotHubUnauthorizedAccess with
//     IoT Hub's error body; AMQP CBS put-token 401 or the link detached with
//     amqp:unauthorized-access; MQTT CONNACK 4/5 or SUBACK 0x80) and no state
//     changed.
// Each cell acts on its own throwaway device, so cells do not interfere. At the
// end it prints the grid (door x operation x credential: allow/refuse, ok or
// MISMATCH) and fails on any mismatch, except the cells of `known_findings`
// (bugs reported with the test; DEVICEBOUND_MATRIX_STRICT=1 fails on them too).
// No sleeps: every wait is bounded and waits on an event (a reply, a close, a
// round trip); a missing reply is waited for 3 s at most.
#include <gtest/gtest.h>

#if defined(DEVICEBOUND_PERMISSION_MATRIX)

#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <devicebound/auth/signature.hpp>
#include <devicebound/clock.hpp>
#include <devicebound/transport/mqtt.hpp>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <proton/message.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "support/amqp_client.hpp"
#include "support/mosquitto.hpp"
#include "support/raw_socket.hpp"
#include "support/required.hpp"

namespace {

using namespace std::chrono_literals;
namespace support = devicebound::test_support;
namespace auth = devicebound::auth;
namespace ac = devicebound::test_support::amqp_client;
using json = nlohmann::json;
using ms = std::chrono::milliseconds;

// --- the credentials (columns) -----------------------------------------------------------

constexpr const char* hub_host = "localhost";
const std::string owner_key = "bWF0cml4LW93bmVyLWtleS1mb3ItdGhlLWdyaWQhISE=";
const std::string service_key = "bWF0cml4LXNlcnZpY2Uta2V5LWZvci10aGUtZ3JpZCE=";
const std::string devpolicy_key = "bWF0cml4LWRldmljZS1wb2xpY3kta2V5LWZvci1ncmk=";
const std::string regread_key = "bWF0cml4LXJlZ2lzdHJ5UmVhZC1rZXktZm9yLWdyaWQ=";
const std::string regrw_key = "bWF0cml4LXJlZ2lzdHJ5UmVhZFdyaXRlLWtleS1ncmQ=";
/// Every throwaway device's key, and the other device's (a different one).
const std::string device_key = "bWF0cml4LXRocm93YXdheS1kZXZpY2Uta2V5LWdyaWQ=";
const std::string other_key = "bWF0cml4LW90aGVyLWRldmljZS1rZXktZm9yLWdyaWQ=";

std::string token(const std::string& resource, const std::string& key_b64,
                  std::optional<std::string> skn = std::nullopt) {
  auto key = auth::shared_access_key::from_base64(key_b64).value();
  const auto se = auth::sas_expiry(devicebound::system_clock{}.now(), 3600s);
  return to_string(auth::generate_sas_token(resource, key, se, std::move(skn)));
}
std::string owner_token() {
  return token(hub_host, owner_key, "iothubowner");
}

enum class cred {
  owner,
  service,
  device,
  registry_read,
  registry_read_write,
  own_key,
  other_key,
  scoped_self,
  scoped_other
};
constexpr std::array<cred, 9> all_creds = {cred::owner,
                                           cred::service,
                                           cred::device,
                                           cred::registry_read,
                                           cred::registry_read_write,
                                           cred::own_key,
                                           cred::other_key,
                                           cred::scoped_self,
                                           cred::scoped_other};
/// Column headers of the printed grid (docs/security.md spells them out).
const char* column(cred c) {
  switch (c) {
    case cred::owner:
      return "iothubowner";
    case cred::service:
      return "service";
    case cred::device:
      return "device";
    case cred::registry_read:
      return "regRead";
    case cred::registry_read_write:
      return "regReadWrite";
    case cred::own_key:
      return "own key";
    case cred::other_key:
      return "other's key";
    case cred::scoped_self:
      return "device@self";
    case cred::scoped_other:
      return "device@other";
  }
  return "?";
}

/// The token of credential `c` for a cell that acts on device `target`: a
/// policy's token scoped to the hub; the target's own key; the key of the
/// device `other` (acting on the target); the `device` policy scoped to the
/// target, or to `other` (acting on the target).
std::string token_for(cred c, const std::string& target) {
  const std::string host = hub_host;
  switch (c) {
    case cred::owner:
      return owner_token();
    case cred::service:
      return token(host, service_key, "service");
    case cred::device:
      return token(host, devpolicy_key, "device");
    case cred::registry_read:
      return token(host, regread_key, "registryRead");
    case cred::registry_read_write:
      return token(host, regrw_key, "registryReadWrite");
    case cred::own_key:
      return token(host + "/devices/" + target, device_key);
    case cred::other_key:
      return token(host + "/devices/other", other_key);
    case cred::scoped_self:
      return token(host + "/devices/" + target, devpolicy_key, "device");
    case cred::scoped_other:
      return token(host + "/devices/other", devpolicy_key, "device");
  }
  return {};
}

// --- the expected grid: ONE table, mirroring docs/security.md ------------------------------

enum class door { amqp, https, mqtt };
const char* name(door d) {
  return d == door::amqp ? "AMQP" : d == door::https ? "HTTPS" : "MQTT";
}

enum class op {
  amqp_send,
  amqp_feedback,
  amqp_device_receive,
  https_feedback,
  https_purge,
  https_registry_read,
  https_registry_write,
  https_registry_delete,
  https_device_receive,
  https_policy_read,
  https_policy_write,
  mqtt_backend_connect,
  mqtt_send,
  mqtt_purge,
  mqtt_register,
  mqtt_remove,
  mqtt_device_receive,
  mqtt_backend_device_receive,
  mqtt_extended_device,
};

struct expected_row {
  op what;
  door where;
  const char* label;   ///< the operation, as printed
  const char* key;     ///< short, for the throwaway devices' ids
  const char* allows;  ///< per column of `all_creds`: Y allowed, - refused
};

// docs/security.md, "What each front door enforces": send C2D, feedback and purge
// need ServiceConnect on the hub; registry read RegistryRead, registry write
// RegistryWrite (registryReadWrite; iothubowner has all rights); device receive
// and settle DeviceConnect for that device (the `device` policy on the hub or
// scoped to that device, or the device's own key); policy admin all four rights;
// an MQTT back end a policy token for the hub with ServiceConnect or DeviceConnect.
//
//                                                                  owner svc dev rR rRW own oth d@s
//                                                                  d@o
const std::vector<expected_row> expected = {
    {op::amqp_send, door::amqp, "send C2D (/messages/devicebound)", "as", "Y Y - - - - - - -"},
    {op::amqp_feedback, door::amqp, "feedback (/messages/serviceBound/feedback)", "af",
     "Y Y - - - - - - -"},
    {op::amqp_device_receive, door::amqp, "device receive+complete (/devices/{id}/...)", "ar",
     "Y - Y - - Y - Y -"},
    {op::https_feedback, door::https, "feedback (GET /messages/serviceBound/feedback)", "hf",
     "Y Y - - - - - - -"},
    {op::https_purge, door::https, "purge (DELETE /devices/{id}/commands)", "hp",
     "Y Y - - - - - - -"},
    {op::https_registry_read, door::https, "registry read (GET /devices/{id})", "hg",
     "Y - - Y Y - - - -"},
    {op::https_registry_write, door::https, "registry write (PUT /devices/{id})", "hw",
     "Y - - - Y - - - -"},
    {op::https_registry_delete, door::https, "registry delete (DELETE /devices/{id})", "hd",
     "Y - - - Y - - - -"},
    {op::https_device_receive, door::https, "device receive+complete (GET+DELETE ...deviceBound)",
     "hr", "Y - Y - - Y - Y -"},
    {op::https_policy_read, door::https, "policy admin read (GET /devicebound/policies)", "ha",
     "Y - - - - - - - -"},
    {op::https_policy_write, door::https, "policy admin write (PUT /devicebound/policies/{n})",
     "hb", "Y - - - - - - - -"},
    // MQTT: a back end must CONNECT with a hub-wide token of a policy with
    // ServiceConnect or DeviceConnect; what it then does over the extension
    // topics (docs/protocol.md) needs the operation's right as on the other doors,
    // so registryReadWrite (refused at CONNECT) can do nothing over MQTT.
    {op::mqtt_backend_connect, door::mqtt, "CONNECT as a back end", "mb", "Y Y Y - - - - - -"},
    {op::mqtt_send, door::mqtt, "send C2D (devicebound/hub/service/.../send)", "ms",
     "Y Y - - - - - - -"},
    {op::mqtt_purge, door::mqtt, "purge (devicebound/hub/service/.../purge)", "mp",
     "Y Y - - - - - - -"},
    {op::mqtt_register, door::mqtt, "registry write (devicebound/hub/admin/.../add)", "ma",
     "Y - - - - - - - -"},
    {op::mqtt_remove, door::mqtt, "registry delete (devicebound/hub/admin/.../remove)", "mx",
     "Y - - - - - - - -"},
    {op::mqtt_device_receive, door::mqtt, "device CONNECT+SUBSCRIBE devices/{id}/messages/...",
     "mr", "Y - Y - - Y - Y -"},
    {op::mqtt_backend_device_receive, door::mqtt,
     "the same, client id {id}, policies as a back end", "mc", "Y - Y - - Y - Y -"},
    {op::mqtt_extended_device, door::mqtt, "extended device attach+complete (hub/device/{id})",
     "me", "Y - Y - - Y - Y -"},
};

/// Cells where the hub does not do what docs/security.md says: findings
/// reported with this test, each a bug to fix (not a documentation error). The
/// grid prints them as MISMATCH; they fail the test under
/// DEVICEBOUND_MATRIX_STRICT=1, and a listed cell that starts to match fails it
/// always (take it off the list).
struct known_finding {
  op what;
  cred who;
  const char* why;
};
// Empty: findings 1-3 of docs/security.md (the MQTT door's back ends got every
// party's topics whatever their rights) are fixed in the broker plugin's topic
// ACL (broker/plugin/topic_acl.hpp, `allowed`).
const std::vector<known_finding> known_findings = {};
const known_finding* finding_of(op o, cred c) {
  for (const auto& f : known_findings)
    if (f.what == o && f.who == c)
      return &f;
  return nullptr;
}
bool strict() {
  const char* s = std::getenv("DEVICEBOUND_MATRIX_STRICT");
  return s && *s && std::string(s) != "0";
}

bool expected_allow(const expected_row& r, std::size_t col) {
  std::istringstream in(r.allows);
  std::string v;
  for (std::size_t i = 0; i <= col; ++i)
    in >> v;
  return v == "Y";
}

/// The throwaway device a cell acts on.
std::string cell_device(const expected_row& r, std::size_t col) {
  return std::string("x-") + r.key + "-" + std::to_string(col);
}

// --- HTTP over a raw TLS socket -----------------------------------------------------------

struct http_reply {
  int status = 0;  ///< 0: the connection closed without an answer
  std::string errcode;
  std::string etag;
  std::string body;
  bool keep_alive = true;
};

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

http_reply read_http(support::raw_socket& s, ms timeout = 10s) {
  std::string buf;
  http_reply r;
  if (!s.read_until(
          buf, [](const std::string& b) { return b.find("\r\n\r\n") != std::string::npos; },
          timeout))
    return r;
  const std::size_t end = buf.find("\r\n\r\n");
  std::istringstream lines(buf.substr(0, end));
  std::string line;
  std::getline(lines, line);
  if (line.size() < 12 || !line.starts_with("HTTP/1.1 "))
    return r;
  r.status = std::atoi(line.c_str() + 9);
  std::size_t length = 0;
  while (std::getline(lines, line)) {
    if (!line.empty() && line.back() == '\r')
      line.pop_back();
    const std::size_t colon = line.find(':');
    if (colon == std::string::npos)
      continue;
    const std::string field = lower(line.substr(0, colon));
    std::string value = line.substr(colon + 1);
    value.erase(0, value.find_first_not_of(' '));
    if (field == "content-length")
      length = static_cast<std::size_t>(std::stoul(value));
    else if (field == "iothub-errorcode")
      r.errcode = value;
    else if (field == "etag")
      r.etag = value;
    else if (field == "connection" && lower(value) == "close")
      r.keep_alive = false;
  }
  const std::size_t body_at = end + 4;
  (void)s.read_until(
      buf, [&](const std::string& b) { return b.size() >= body_at + length; }, timeout);
  r.body = buf.substr(body_at, length);
  return r;
}

std::string http_request(const std::string& method, const std::string& path,
                         const std::string& authorization, const std::string& body = {},
                         const std::string& extra_headers = {}) {
  const std::string target =
      path + (path.find('?') == std::string::npos ? "?" : "&") + "api-version=2021-04-12";
  std::string r = method + " " + target + " HTTP/1.1\r\nHost: localhost\r\n";
  if (!authorization.empty())
    r += "Authorization: " + authorization + "\r\n";
  r += extra_headers;
  if (!body.empty() || method == "PUT" || method == "POST")
    r +=
        "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  return r + "\r\n" + body;
}

/// One keep-alive HTTPS connection that reconnects when the door closed it.
class https_conn {
 public:
  https_conn(std::uint16_t port, const support::tls_client_context& tls) : port_(port), tls_(tls) {}
  http_reply exchange(const std::string& raw) {
    for (int attempt = 0; attempt < 2; ++attempt) {
      if (!s_ || !s_->ok() || s_->peer_closed())
        s_ = std::make_unique<support::raw_socket>(port_, &tls_);
      if (!s_->send(raw)) {
        s_.reset();
        continue;
      }
      auto r = read_http(*s_);
      if (r.status == 0 && attempt == 0 && s_->peer_closed()) {
        s_.reset();
        continue;
      }
      if (!r.keep_alive || r.status == 0)
        s_.reset();
      return r;
    }
    return {};
  }
  http_reply call(const std::string& method, const std::string& path, const std::string& auth,
                  const std::string& body = {}, const std::string& extra = {}) {
    return exchange(http_request(method, path, auth, body, extra));
  }

 private:
  std::uint16_t port_;
  const support::tls_client_context& tls_;
  std::unique_ptr<support::raw_socket> s_;
};

/// IoT Hub's refusal: 401, `iothub-errorcode: IotHubUnauthorizedAccess` and the
/// error body `{"Message":"ErrorCode:IotHubUnauthorizedAccess;...",...}`.
bool iothub_unauthorized(const http_reply& r) {
  if (r.status != 401 || r.errcode != "IotHubUnauthorizedAccess")
    return false;
  const auto j = json::parse(r.body, nullptr, false);
  return j.is_object() && j.contains("Message") && j["Message"].is_string() &&
         j["Message"].get<std::string>().starts_with("ErrorCode:IotHubUnauthorizedAccess;") &&
         j.contains("ExceptionMessage");
}
std::string show(const http_reply& r) {
  return r.status == 0 ? std::string("closed without an answer")
                       : std::to_string(r.status) + (r.errcode.empty() ? "" : " " + r.errcode);
}

// --- MQTT 3.1.1 on a raw socket (to see CONNACK and SUBACK codes exactly) -------------------

std::string mqtt_str(std::string_view s) {
  std::string o;
  o += static_cast<char>((s.size() >> 8) & 0xff);
  o += static_cast<char>(s.size() & 0xff);
  o += s;
  return o;
}
std::string mqtt_packet(std::uint8_t first, const std::string& body) {
  std::string o(1, static_cast<char>(first));
  std::size_t n = body.size();
  do {
    std::uint8_t b = n % 128;
    n /= 128;
    if (n > 0)
      b |= 0x80;
    o += static_cast<char>(b);
  } while (n > 0);
  return o + body;
}
std::string two_bytes(std::uint16_t v) {
  return {static_cast<char>(v >> 8), static_cast<char>(v & 0xff)};
}

struct mqtt_in {
  std::uint8_t type = 0;
  std::uint8_t flags = 0;
  std::string body;
};

class mqtt_raw {
 public:
  mqtt_raw(std::uint16_t port, const support::tls_client_context* tls = nullptr) : s_(port, tls) {}
  bool send(const std::string& bytes) { return s_.send(bytes); }

  std::optional<mqtt_in> next(ms timeout = 5s) {
    std::optional<mqtt_in> out;
    (void)s_.read_until(
        buf_, [&](const std::string& b) { return (out = parse(b)).has_value(); }, timeout);
    if (out)
      buf_.erase(0, consumed_);
    return out;
  }
  /// CONNECT (clean session, keep-alive 60 s): the CONNACK code, -1 if closed instead.
  int connect(const std::string& id, const std::string& user, const std::string& pass) {
    const std::string body = mqtt_str("MQTT") + std::string(1, 4) + std::string(1, '\xc2') +
                             two_bytes(60) + mqtt_str(id) + mqtt_str(user) + mqtt_str(pass);
    if (!send(mqtt_packet(0x10, body)))
      return -1;
    auto p = next();
    if (!p || p->type != 2 || p->body.size() < 2)
      return -1;
    return static_cast<unsigned char>(p->body[1]);
  }
  /// SUBSCRIBE one filter at QoS 1: the SUBACK code, -1 if closed.
  int subscribe(const std::string& filter, std::uint16_t pid = 1) {
    if (!send(mqtt_packet(0x82, two_bytes(pid) + mqtt_str(filter) + std::string(1, 1))))
      return -1;
    for (;;) {
      auto p = next();
      if (!p)
        return -1;
      if (p->type == 9 && p->body.size() >= 3)
        return static_cast<unsigned char>(p->body[2]);
      ack(*p);
    }
  }
  bool publish(const std::string& topic, const std::string& payload, std::uint16_t pid) {
    return send(mqtt_packet(0x32, mqtt_str(topic) + two_bytes(pid) + payload));
  }
  /// The topic of the next PUBLISH whose topic starts with `prefix` (PUBACKed), or
  /// nullopt after `timeout` or a close.
  std::optional<std::string> wait_publish(const std::string& prefix, ms timeout = 5s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      const auto left = std::chrono::duration_cast<ms>(deadline - std::chrono::steady_clock::now());
      if (left <= 0ms)
        return std::nullopt;
      auto p = next(left);
      if (!p)
        return std::nullopt;
      ack(*p);
      if (p->type == 3 && p->body.size() >= 2) {
        const std::size_t n =
            (static_cast<unsigned char>(p->body[0]) << 8) | static_cast<unsigned char>(p->body[1]);
        const std::string topic = p->body.substr(2, n);
        if (topic.starts_with(prefix))
          return topic;
      }
    }
  }

 private:
  void ack(const mqtt_in& p) {
    if (p.type != 3 || ((p.flags >> 1) & 3) == 0 || p.body.size() < 2)
      return;
    const std::size_t n =
        (static_cast<unsigned char>(p.body[0]) << 8) | static_cast<unsigned char>(p.body[1]);
    if (p.body.size() >= 4 + n)
      (void)send(mqtt_packet(0x40, p.body.substr(2 + n, 2)));
  }
  std::optional<mqtt_in> parse(const std::string& b) {
    if (b.size() < 2)
      return std::nullopt;
    std::size_t len = 0, mult = 1, i = 1;
    for (;; ++i) {
      if (i >= b.size() || i > 4)
        return std::nullopt;
      const auto c = static_cast<unsigned char>(b[i]);
      len += (c & 0x7f) * mult;
      mult *= 128;
      if (!(c & 0x80))
        break;
    }
    if (b.size() < i + 1 + len)
      return std::nullopt;
    consumed_ = i + 1 + len;
    const auto first = static_cast<unsigned char>(b[0]);
    return mqtt_in{static_cast<std::uint8_t>(first >> 4), static_cast<std::uint8_t>(first & 0xf),
                   b.substr(i + 1, len)};
  }

  support::raw_socket s_;
  std::string buf_;
  std::size_t consumed_ = 0;
};

std::string device_username(const std::string& id) {
  return std::string(hub_host) + "/" + id + "/?api-version=2021-04-12";
}
bool refused_connack(int rc) {
  return rc == 4 || rc == 5;
}
std::optional<long> bag_value(const std::string& topic, const std::string& key) {
  const std::string k = "%24." + key + "=";
  const std::size_t at = topic.find(k);
  if (at == std::string::npos)
    return std::nullopt;
  return std::atol(topic.c_str() + at + k.size());
}

// --- the back end that sets the cells up (Paho, iothubowner) --------------------------------

class control {
 public:
  control(std::uint16_t port, const std::string& id) : id_(id) {
    devicebound::mqtt::connection_options o;
    o.port = port;
    o.username = "iothubowner";
    o.password = owner_token();
    session_ = std::make_unique<devicebound::mqtt::session>(
        o, id,
        [this](std::string_view topic, std::string_view) {
          std::lock_guard g(m_);
          replies_.emplace_back(topic);
          cv_.notify_all();
        },
        nullptr);
    auto r = session_->connect(true, {"devicebound/service/" + id + "/#"}, std::nullopt);
    if (!r)
      throw std::runtime_error("control connection refused: " + r.error().message);
  }
  /// A request on devicebound/hub/service/{id}/{op}/{device}/{bag}; its reply topic or "".
  std::string request(const std::string& op, const std::string& device, const std::string& bag = {},
                      const std::string& payload = {}) {
    const std::string rid = "r" + std::to_string(++rid_);
    const std::string topic = "devicebound/hub/service/" + id_ + "/" + op + "/" + device + "/" +
                              (bag.empty() ? "" : bag + "&") + "%24.rid=" + rid;
    if (!session_->publish(topic, payload))
      return "";
    const std::string key = "%24.rid=" + rid;
    std::unique_lock g(m_);
    std::string found;
    (void)cv_.wait_for(g, 10s, [&] {
      for (const auto& t : replies_)
        if (t.find(key + "&") != std::string::npos || t.ends_with(key)) {
          found = t;
          return true;
        }
      return false;
    });
    return found;
  }
  bool send(const std::string& device, const std::string& body) {
    const auto r = request("send", device, "iothub-ack=none", body);
    return bag_value(r, "code") == 0;
  }
  long depth(const std::string& device) {
    const auto r = request("depth", device);
    if (bag_value(r, "code") != 0)
      return -1;
    return bag_value(r, "depth").value_or(-1);
  }

 private:
  std::string id_;
  std::mutex m_;
  std::condition_variable cv_;
  std::vector<std::string> replies_;
  std::atomic<int> rid_{0};
  // Last, so destroyed first: its callback (on Paho's thread) writes the members
  // above until the session is gone.
  std::unique_ptr<devicebound::mqtt::session> session_;
};

// --- the shared world ------------------------------------------------------------------------

struct world {
  support::temp_dir dir{"devicebound-matrix-"};
  std::unique_ptr<support::mosquitto_broker> broker;
  std::unique_ptr<support::hub_daemon> hub;
  std::unique_ptr<support::tls_client_context> tls;
  std::unique_ptr<control> ctl;
  std::unique_ptr<https_conn> http;
  std::uint16_t mqtt_tls_port = 0, amqp_port = 0, https_port = 0;

  world() {
    const std::string certs = std::string("bash '") + DEVICEBOUND_TEST_CERTS_SCRIPT + "' '" +
                              dir.path() + "' >/dev/null 2>&1";
    if (std::system(certs.c_str()) != 0)
      throw std::runtime_error("make_test_certs.sh failed");
    {
      // Every cell's throwaway device, registered from the start (the store is
      // seeded from this file; the plugin reads the store).
      std::ofstream f(dir.file("auth.txt"));
      f << "other " << other_key << "\n";
      for (const auto& r : expected)
        for (std::size_t c = 0; c < all_creds.size(); ++c)
          f << cell_device(r, c) << " " << device_key << "\n";
      f << "policy iothubowner " << owner_key << "\n"
        << "policy service " << service_key << "\n"
        << "policy device " << devpolicy_key << "\n"
        << "policy registryRead " << regread_key << "\n"
        << "policy registryReadWrite " << regrw_key << "\n";
    }
    const std::string store = dir.file("hub.db");
    mqtt_tls_port = support::free_port();
    support::mosquitto_broker::options bo;
    bo.extra_config = {std::string("plugin ") + DEVICEBOUND_BROKER_PLUGIN,
                       "plugin_opt_auth_file " + dir.file("auth.txt"),
                       "plugin_opt_registry_db " + store,
                       std::string("plugin_opt_iothub_hostname ") + hub_host,
                       "listener " + std::to_string(mqtt_tls_port) + " 127.0.0.1",
                       "cafile " + dir.file("ca.crt"), "certfile " + dir.file("server.crt"),
                       "keyfile " + dir.file("server.key"), "tls_version tlsv1.2",
                       // As root mosquitto would switch to "mosquitto", who cannot
                       // read the auth file or the hub's store here.
                       "user " + std::string(::getpwuid(::geteuid())->pw_name)};
    broker = std::make_unique<support::mosquitto_broker>(bo);
    amqp_port = support::free_port();
    https_port = support::free_port();
    support::hub_daemon::options o;
    o.broker_port = broker->port();
    o.log_level = "info";
    o.ping_username = "iothubowner";
    o.ping_password = owner_token();
    o.args = {"--store",           store,
              "--username",        "iothubowner",
              "--broker-sas-key",  owner_key,
              "--hub-name",        "matrixhub",
              "--amqp-listen",     "127.0.0.1:" + std::to_string(amqp_port),
              "--https-listen",    "127.0.0.1:" + std::to_string(https_port),
              "--tls-server-cert", dir.file("server.crt"),
              "--tls-server-key",  dir.file("server.key"),
              "--auth-file",       dir.file("auth.txt"),
              "--iothub-hostname", hub_host};
    if (const char* other = std::getenv("DEVICEBOUND_MATRIX_HUB"); other && *other)
      o.executable = other;
    hub = std::make_unique<support::hub_daemon>(o);
    tls = std::make_unique<support::tls_client_context>(dir.file("ca.crt"));
    http = std::make_unique<https_conn>(https_port, *tls);
    ctl = std::make_unique<control>(broker->port(), "matrix-ctl");
  }

  /// The device as the registry shows it to iothubowner: its status, or
  /// "absent" (404), or what went wrong.
  std::string device_status(const std::string& id) {
    auto r = http->call("GET", "/devices/" + id, owner_token());
    if (r.status == 404)
      return "absent";
    const auto j = json::parse(r.body, nullptr, false);
    if (r.status != 200 || !j.is_object())
      return "GET /devices/" + id + ": " + show(r);
    return j.value("status", "?");
  }
  /// The message queued for `id` is still there and unlocked: the device itself
  /// (its own key, HTTPS) receives it, with delivery count 0 (the cell's device
  /// is thrown away afterwards).
  std::string message_untouched(const std::string& id, const std::string& body) {
    auto r = http->call("GET", "/devices/" + id + "/messages/deviceBound",
                        token(std::string(hub_host) + "/devices/" + id, device_key));
    if (r.status != 200)
      return "the queued message is gone or locked (receive: " + show(r) + ")";
    if (r.body != body)
      return "received '" + r.body + "', expected '" + body + "'";
    return {};
  }
  /// `id`'s queue depth, polled until it is `expected` or 10 s (a settlement over
  /// AMQP reaches the engine with no reply to wait for).
  long wait_depth(const std::string& id, long expected) {
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    long d = ctl->depth(id);
    while (d != expected && std::chrono::steady_clock::now() < deadline)
      d = ctl->depth(id);
    return d;
  }
};

world* g_world = nullptr;
std::string g_world_error;

// --- one cell ----------------------------------------------------------------------------------

/// What a cell did: the operation succeeded (`allowed`) or was refused; a
/// refusal is `documented` when it is the answer docs/security.md names;
/// `state` is empty when the state is what the answer implies (the effect when
/// allowed, nothing changed when refused), else what is wrong.
struct observed {
  bool allowed = false;
  bool documented = true;
  std::string answer;  ///< what the door said
  std::string state;
};
observed allowed(std::string answer, std::string state = {}) {
  return {true, true, std::move(answer), std::move(state)};
}
observed refused(bool documented, std::string answer, std::string state = {}) {
  return {false, documented, std::move(answer), std::move(state)};
}

struct cell_result {
  bool expect = false;
  observed got;
  bool ok() const {
    return got.allowed == expect && got.state.empty() && (got.allowed || got.documented);
  }
};
std::map<op, std::array<std::optional<cell_result>, all_creds.size()>> g_grid;

// --- AMQP cells ---

struct amqp_conn {
  std::unique_ptr<ac::client> c;
  std::unique_ptr<ac::cbs> k;
  std::string put_status;  ///< "200" when the token was taken
};
amqp_conn amqp_open(world& w, const std::string& tok) {
  amqp_conn a;
  a.c = std::make_unique<ac::client>(w.amqp_port, ac::sasl_mode::none, std::string{}, std::string{},
                                     hub_host, w.dir.file("ca.crt"));
  if (!a.c->opened()) {
    a.put_status = "connection not opened: " + a.c->close_condition();
    return a;
  }
  a.k = std::make_unique<ac::cbs>(*a.c, hub_host);
  const auto r = a.k->put(tok);
  if (!r)
    a.put_status = "no put-token reply";
  else if (r->status.type() == proton::INT)
    a.put_status = std::to_string(proton::get<std::int32_t>(r->status));
  else
    a.put_status = "status of another type";
  return a;
}
/// After an attach: a CBS round trip, so that a refusal the hub sent for the
/// attach has arrived (the hub answers a connection's frames in order).
bool still_attached(amqp_conn& a, pn_link_t* l, const std::string& tok) {
  (void)a.k->put(tok, std::string("rt"));
  return a.c->attached(l);
}
observed amqp_refusal(amqp_conn& a, pn_link_t* l, std::string state) {
  const std::string e = a.c->link_error(l);
  return refused(e == "amqp:unauthorized-access", "detach " + (e.empty() ? "(none)" : e),
                 std::move(state));
}

observed amqp_send(world& w, const std::string& x, const std::string& tok) {
  auto a = amqp_open(w, tok);
  if (a.put_status != "200")
    return refused(a.put_status == "401", "put-token " + a.put_status,
                   w.ctl->depth(x) == 0 ? "" : "a message was queued");
  pn_link_t* l = a.c->attach(true, "/messages/devicebound");
  if (!still_attached(a, l, tok))
    return amqp_refusal(a, l, w.ctl->depth(x) == 0 ? "" : "a message was queued");
  proton::message m;
  m.to("/devices/" + x + "/messages/devicebound");
  m.body(proton::binary(std::string("matrix")));
  const auto [state, cond] = a.c->outcome(a.c->send(l, m));
  if (state != PN_ACCEPTED) {
    const std::string e = a.c->link_error(l);
    return refused(e == "amqp:unauthorized-access",
                   "send outcome " + std::to_string(state) + " " + cond + " detach " + e,
                   w.ctl->depth(x) == 0 ? "" : "a message was queued");
  }
  return allowed("accepted", w.ctl->depth(x) == 1 ? "" : "accepted but not queued");
}

observed amqp_feedback(world& w, const std::string& tok) {
  auto a = amqp_open(w, tok);
  if (a.put_status != "200")
    return refused(a.put_status == "401", "put-token " + a.put_status);
  pn_link_t* l = a.c->attach(false, "/messages/serviceBound/feedback", 1);
  if (!still_attached(a, l, tok))
    return amqp_refusal(a, l, {});
  return allowed("attached");
}

observed amqp_device_receive(world& w, const std::string& x, const std::string& tok) {
  const std::string body = "to-" + x;
  if (!w.ctl->send(x, body))
    return refused(false, "setup: the message to " + x + " was not accepted");
  auto a = amqp_open(w, tok);
  if (a.put_status != "200")
    return refused(a.put_status == "401", "put-token " + a.put_status,
                   w.message_untouched(x, body));
  pn_link_t* l = a.c->attach(false, "/devices/" + x + "/messages/devicebound", 1);
  if (!still_attached(a, l, tok))
    return amqp_refusal(a, l, w.message_untouched(x, body));
  auto m = a.c->next(l, 5s);
  if (!m) {
    const std::string e = a.c->link_error(l);
    return refused(e == "amqp:unauthorized-access", "no message; detach " + e,
                   w.message_untouched(x, body));
  }
  const proton::value& b = m->msg.body();
  const std::string got = b.type() == proton::BINARY ? std::string(proton::get<proton::binary>(b))
                                                     : std::string("(not binary)");
  pn_delivery_update(m->delivery, PN_ACCEPTED);
  pn_delivery_settle(m->delivery);
  a.c->flush();
  if (got != body)
    return allowed("received '" + got + "'", "expected '" + body + "'");
  return allowed("received, completed",
                 w.wait_depth(x, 0) == 0 ? "" : "completed but still queued");
}

// --- HTTPS cells ---

observed https_refusal(const http_reply& r, std::string state) {
  return refused(iothub_unauthorized(r), show(r), std::move(state));
}

observed https_cell(world& w, op o, const std::string& x, const std::string& tok) {
  https_conn& h = *w.http;
  switch (o) {
    case op::https_feedback: {
      auto r = h.call("GET", "/messages/serviceBound/feedback", tok);
      if (r.status == 204 || r.status == 200)
        return allowed(show(r));
      return https_refusal(r, {});
    }
    case op::https_purge: {
      const std::string body = "to-" + x;
      if (!w.ctl->send(x, body))
        return refused(false, "setup: the message to " + x + " was not accepted");
      auto r = h.call("DELETE", "/devices/" + x + "/commands", tok);
      if (r.status == 200) {
        const auto j = json::parse(r.body, nullptr, false);
        const bool one = j.is_object() && j.value("totalMessagesPurged", -1) == 1;
        return allowed(show(r), one && w.ctl->depth(x) == 0 ? "" : "purge answered " + r.body);
      }
      return https_refusal(r, w.message_untouched(x, body));
    }
    case op::https_registry_read: {
      auto r = h.call("GET", "/devices/" + x, tok);
      if (r.status == 200) {
        const auto j = json::parse(r.body, nullptr, false);
        return allowed(show(r), j.is_object() && j.value("deviceId", "") == x ? "" : r.body);
      }
      return https_refusal(r, {});
    }
    case op::https_registry_write: {
      const json body = {{"deviceId", x}, {"status", "disabled"}};
      auto r = h.call("PUT", "/devices/" + x, tok, body.dump(), "If-Match: *\r\n");
      const std::string now = w.device_status(x);
      if (r.status == 200)
        return allowed(show(r), now == "disabled" ? "" : "answered 200, status " + now);
      return https_refusal(r, now == "enabled" ? "" : "status changed to " + now);
    }
    case op::https_registry_delete: {
      auto r = h.call("DELETE", "/devices/" + x, tok, {}, "If-Match: *\r\n");
      const std::string now = w.device_status(x);
      if (r.status == 204)
        return allowed(show(r), now == "absent" ? "" : "answered 204, still " + now);
      return https_refusal(r, now == "enabled" ? "" : "device now " + now);
    }
    case op::https_device_receive: {
      const std::string body = "to-" + x;
      if (!w.ctl->send(x, body))
        return refused(false, "setup: the message to " + x + " was not accepted");
      auto r = h.call("GET", "/devices/" + x + "/messages/deviceBound", tok);
      if (r.status != 200)
        return https_refusal(r, w.message_untouched(x, body));
      if (r.body != body)
        return allowed(show(r), "received '" + r.body + "'");
      std::string lock = r.etag;
      lock.erase(std::remove(lock.begin(), lock.end(), '"'), lock.end());
      auto c = h.call("DELETE", "/devices/" + x + "/messages/deviceBound/" + lock, tok);
      if (c.status != 204)
        return allowed("received, complete: " + show(c), "not completed");
      return allowed("received, completed", w.ctl->depth(x) == 0 ? "" : "completed, still queued");
    }
    case op::https_policy_read: {
      auto r = h.call("GET", "/devicebound/policies", tok);
      if (r.status == 200) {
        const auto j = json::parse(r.body, nullptr, false);
        const bool listed =
            j.is_object() && j.contains("value") && j["value"].is_array() && j["value"].size() >= 5;
        return allowed(show(r), listed ? "" : "policies: " + r.body);
      }
      return https_refusal(r, {});
    }
    case op::https_policy_write: {
      const std::string policy = "p-" + x;
      auto r = h.call("PUT", "/devicebound/policies/" + policy, tok,
                      R"({"rights":"ServiceConnect"})", "If-None-Match: *\r\n");
      const int now = h.call("GET", "/devicebound/policies/" + policy, owner_token()).status;
      if (r.status == 201)
        return allowed(show(r), now == 200 ? "" : "created, then GET " + std::to_string(now));
      return https_refusal(r,
                           now == 404 ? "" : "policy " + policy + ": GET " + std::to_string(now));
    }
    default:
      return refused(false, "not an HTTPS operation");
  }
}

// --- MQTT cells ---

/// A back end's request over the extension protocol (docs/protocol.md) on a
/// raw connection: the reply topic, or why there is none.
struct mqtt_request_result {
  int connack = -1;
  int suback = -1;
  std::optional<std::string> reply;
};
mqtt_request_result mqtt_request(world& w, const std::string& id, const std::string& tok,
                                 const std::string& party, const std::string& operation,
                                 const std::string& target, const std::string& bag,
                                 const std::string& payload) {
  mqtt_request_result out;
  mqtt_raw m(w.broker->port());
  out.connack = m.connect(id, "matrix-backend", tok);
  if (out.connack != 0)
    return out;
  out.suback = m.subscribe("devicebound/" + party + "/" + id + "/#");
  if (out.suback != 1 && out.suback != 0)
    return out;
  const std::string rid = "%24.rid=m1";
  const std::string topic = "devicebound/hub/" + party + "/" + id + "/" + operation + "/" + target +
                            "/" + (bag.empty() ? "" : bag + "&") + rid;
  if (!m.publish(topic, payload, 7))
    return out;
  // No reply within 3 s: the broker dropped the publish (its ACL) or the hub did.
  out.reply = m.wait_publish("devicebound/" + party + "/" + id + "/reply/", 3s);
  return out;
}

/// The value of `key` (`$.`-prefixed, percent-encoded) in a topic's bag, as text.
std::string bag_text(const std::string& topic, const std::string& key) {
  const std::string k = "%24." + key + "=";
  const std::size_t at = topic.find(k);
  if (at == std::string::npos)
    return {};
  const std::size_t from = at + k.size();
  return topic.substr(from, topic.find('&', from) - from);
}

/// devicebound's extended device over MQTT (docs/protocol.md, "Device
/// operations"): client id {id}; with a device token (its own key, or a policy
/// scoped to a device) the device username, with a hub-wide policy token a back
/// end's (as `mqtt::extended_device_connection` does with the `device` policy,
/// docs/auth.md). It attaches, takes the message queued for it and completes it.
observed mqtt_extended_device(world& w, std::size_t col, const std::string& x,
                              const std::string& tok) {
  const cred c = all_creds[col];
  const bool device_form = c == cred::own_key || c == cred::other_key || c == cred::scoped_self ||
                           c == cred::scoped_other;
  const std::string body = "to-" + x;
  if (!w.ctl->send(x, body))
    return refused(false, "setup: the message to " + x + " was not accepted");
  std::string answer;
  {
    mqtt_raw m(w.mqtt_tls_port, w.tls.get());
    const int rc = m.connect(x, device_form ? device_username(x) : "matrix-backend", tok);
    if (rc != 0)
      return refused(refused_connack(rc), "CONNACK " + std::to_string(rc),
                     w.message_untouched(x, body));
    const int sub = m.subscribe("devicebound/device/" + x + "/#");
    if (sub != 0 && sub != 1)
      return refused(sub == 0x80, "SUBACK " + std::to_string(sub), w.message_untouched(x, body));
    const std::string hub = "devicebound/hub/device/" + x + "/";
    if (!m.publish(hub + "attach/%24.conn=c1&%24.max=1&%24.rid=m1", {}, 3))
      return refused(false, "the connection closed");
    const auto msg = m.wait_publish("devicebound/device/" + x + "/message/", 3s);
    if (!msg)
      answer = "no message";
    else if (!m.publish(hub + "complete/%24.lock=" + bag_text(*msg, "lock") + "&%24.rid=m2", {}, 4))
      answer = "received; the connection closed";
    else
      for (;;) {
        const auto reply = m.wait_publish("devicebound/device/" + x + "/reply/", 3s);
        if (!reply) {
          answer = "received; no reply to complete";
          break;
        }
        if (bag_text(*reply, "rid") == "m2") {
          if (bag_value(*reply, "code") == 0)
            return allowed("received, completed",
                           w.wait_depth(x, 0) == 0 ? "" : "completed, still queued");
          answer = "received; complete answered " + *reply;
          break;
        }
      }
  }
  return refused(false, answer, {});
}

observed mqtt_cell(world& w, op o, std::size_t col, const std::string& x, const std::string& tok) {
  const std::string id = "be-" + x;
  switch (o) {
    case op::mqtt_backend_connect: {
      mqtt_raw m(w.broker->port());
      const int rc = m.connect(id, "matrix-backend", tok);
      if (rc == 0)
        return allowed("CONNACK 0");
      return refused(refused_connack(rc), "CONNACK " + std::to_string(rc));
    }
    case op::mqtt_send: {
      auto r = mqtt_request(w, id, tok, "service", "send", x, "iothub-ack=none", "matrix");
      const long depth = w.ctl->depth(x);
      if (r.connack != 0)
        return refused(refused_connack(r.connack), "CONNACK " + std::to_string(r.connack),
                       depth == 0 ? "" : "a message was queued");
      if (r.suback != 0 && r.suback != 1)
        return refused(r.suback == 0x80, "SUBACK " + std::to_string(r.suback),
                       depth == 0 ? "" : "a message was queued");
      if (r.reply && bag_value(*r.reply, "code") == 0)
        return allowed("reply code 0",
                       depth == 1 ? "" : "answered 0, depth " + std::to_string(depth));
      return refused(false, r.reply ? "reply " + *r.reply : "no reply",
                     depth == 0 ? "" : "a message was queued");
    }
    case op::mqtt_register: {
      const std::string fresh = x + "-new";
      auto r = mqtt_request(w, id, tok, "admin", "add", fresh, {}, {});
      const std::string now = w.device_status(fresh);
      if (r.connack != 0)
        return refused(refused_connack(r.connack), "CONNACK " + std::to_string(r.connack),
                       now == "absent" ? "" : "device " + fresh + " " + now);
      if (r.suback != 0 && r.suback != 1)
        return refused(r.suback == 0x80, "SUBACK " + std::to_string(r.suback),
                       now == "absent" ? "" : "device " + fresh + " " + now);
      if (r.reply && bag_value(*r.reply, "code") == 0)
        return allowed("reply code 0", now == "enabled" ? "" : "answered 0, device " + now);
      return refused(false, r.reply ? "reply " + *r.reply : "no reply",
                     now == "absent" ? "" : "device " + fresh + " " + now);
    }
    case op::mqtt_purge: {
      const std::string body = "to-" + x;
      if (!w.ctl->send(x, body))
        return refused(false, "setup: the message to " + x + " was not accepted");
      auto r = mqtt_request(w, id, tok, "service", "purge", x, {}, {});
      if (r.connack != 0)
        return refused(refused_connack(r.connack), "CONNACK " + std::to_string(r.connack),
                       w.message_untouched(x, body));
      if (r.suback != 0 && r.suback != 1)
        return refused(r.suback == 0x80, "SUBACK " + std::to_string(r.suback),
                       w.message_untouched(x, body));
      if (r.reply && bag_value(*r.reply, "code") == 0) {
        const long depth = w.ctl->depth(x);
        return allowed("reply code 0", bag_value(*r.reply, "count") == 1 && depth == 0
                                           ? ""
                                           : "purge answered " + *r.reply);
      }
      return refused(false, r.reply ? "reply " + *r.reply : "no reply",
                     w.message_untouched(x, body));
    }
    case op::mqtt_remove: {
      auto r = mqtt_request(w, id, tok, "admin", "remove", x, {}, {});
      const std::string now = w.device_status(x);
      if (r.connack != 0)
        return refused(refused_connack(r.connack), "CONNACK " + std::to_string(r.connack),
                       now == "enabled" ? "" : "device now " + now);
      if (r.suback != 0 && r.suback != 1)
        return refused(r.suback == 0x80, "SUBACK " + std::to_string(r.suback),
                       now == "enabled" ? "" : "device now " + now);
      if (r.reply && bag_value(*r.reply, "code") == 0)
        return allowed("reply code 0", now == "absent" ? "" : "answered 0, device " + now);
      return refused(false, r.reply ? "reply " + *r.reply : "no reply",
                     now == "enabled" ? "" : "device now " + now);
    }
    case op::mqtt_extended_device:
      return mqtt_extended_device(w, col, x, tok);
    case op::mqtt_device_receive:
    case op::mqtt_backend_device_receive: {
      const bool device_form = o == op::mqtt_device_receive || all_creds[col] == cred::own_key ||
                               all_creds[col] == cred::other_key ||
                               all_creds[col] == cred::scoped_self ||
                               all_creds[col] == cred::scoped_other;
      const std::string body = "to-" + x;
      if (!w.ctl->send(x, body))
        return refused(false, "setup: the message to " + x + " was not accepted");
      std::string answer;
      {
        mqtt_raw m(w.mqtt_tls_port, w.tls.get());
        const int rc = m.connect(x, device_form ? device_username(x) : "matrix-backend", tok);
        if (rc != 0) {
          answer = "CONNACK " + std::to_string(rc);
          if (!refused_connack(rc))
            return refused(false, answer, w.message_untouched(x, body));
        } else {
          const std::string topic = "devices/" + x + "/messages/devicebound/";
          const int sub = m.subscribe(topic + "#");
          if (sub != 0 && sub != 1) {
            answer = "SUBACK " + std::to_string(sub);
            if (sub != 0x80)
              return refused(false, answer, w.message_untouched(x, body));
          } else {
            if (m.wait_publish(topic))
              return allowed("CONNACK 0, SUBACK " + std::to_string(sub) + ", message received");
            return refused(false, "SUBACK " + std::to_string(sub) + " but no message", {});
          }
        }
      }
      return refused(true, answer, w.message_untouched(x, body));
    }
    default:
      return refused(false, "not an MQTT operation");
  }
}

observed run_cell(world& w, const expected_row& r, std::size_t col) {
  const std::string x = cell_device(r, col);
  const std::string tok = token_for(all_creds[col], x);
  switch (r.what) {
    case op::amqp_send:
      return amqp_send(w, x, tok);
    case op::amqp_feedback:
      return amqp_feedback(w, tok);
    case op::amqp_device_receive:
      return amqp_device_receive(w, x, tok);
    default:
      break;
  }
  if (r.where == door::https)
    return https_cell(w, r.what, x, tok);
  return mqtt_cell(w, r.what, col, x, tok);
}

// --- the fixture ----------------------------------------------------------------------------

class permission_matrix : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!support::mosquitto_broker::available() || !support::hub_daemon::available())
      return;
    try {
      g_world = new world;
    } catch (const std::exception& e) {
      g_world_error = e.what();
    }
  }
  static void TearDownTestSuite() {
    print_grid();
    delete g_world;
    g_world = nullptr;
  }
  void SetUp() override {
    if (!support::mosquitto_broker::available())
      DEVICEBOUND_MISSING_PART("mosquitto not found at " << support::default_mosquitto);
    if (!support::hub_daemon::available())
      DEVICEBOUND_MISSING_PART("devicebound-hub not found at " << support::default_hub);
    ASSERT_NE(g_world, nullptr) << "the fixture did not start: " << g_world_error;
  }
  void TearDown() override {
    if (HasFailure() && g_world) {
      const std::string log = g_world->hub->log();
      std::cerr << "--- devicebound-hub log (last 4000 bytes) ---\n"
                << log.substr(log.size() > 4000 ? log.size() - 4000 : 0);
    }
  }

  void run_door(door d) {
    for (const auto& r : expected) {
      if (r.where != d)
        continue;
      for (std::size_t c = 0; c < all_creds.size(); ++c) {
        cell_result cell{expected_allow(r, c), run_cell(*g_world, r, c)};
        const known_finding* f = finding_of(r.what, all_creds[c]);
        if (f && cell.ok())
          ADD_FAILURE() << name(d) << " / " << r.label << " / " << column(all_creds[c])
                        << " matches the documentation now: take it off known_findings (" << f->why
                        << ")";
        if (f && !cell.ok() && !strict()) {
          g_grid[r.what][c] = std::move(cell);
          continue;
        }
        EXPECT_TRUE(cell.ok()) << name(d) << " / " << r.label << " / " << column(all_creds[c])
                               << ": expected " << (cell.expect ? "allow" : "refuse") << ", got "
                               << (cell.got.allowed ? "allow" : "refuse") << " (" << cell.got.answer
                               << ")"
                               << (cell.got.allowed || cell.got.documented
                                       ? ""
                                       : " - not the documented refusal")
                               << (cell.got.state.empty() ? "" : "; state: " + cell.got.state);
        g_grid[r.what][c] = std::move(cell);
      }
    }
  }

  static void print_grid() {
    if (g_grid.empty())
      return;
    constexpr int label_width = 54;
    constexpr int cell_width = 16;
    std::ostringstream o;
    o << "\npermission matrix (expected from docs/security.md; allow/refuse as observed)\n";
    std::size_t cells = 0, mismatches = 0;
    for (door d : {door::amqp, door::https, door::mqtt}) {
      o << std::left << std::setw(label_width) << name(d);
      for (cred c : all_creds)
        o << std::setw(cell_width) << column(c);
      o << "\n";
      for (const auto& r : expected) {
        if (r.where != d || !g_grid.count(r.what))
          continue;
        o << std::setw(label_width) << r.label;
        for (std::size_t c = 0; c < all_creds.size(); ++c) {
          const auto& cell = g_grid[r.what][c];
          if (!cell) {
            o << std::setw(cell_width) << "-";
            continue;
          }
          ++cells;
          if (!cell->ok())
            ++mismatches;
          const known_finding* f = finding_of(r.what, all_creds[c]);
          o << std::setw(cell_width)
            << (std::string(cell->got.allowed ? "allow " : "refuse ") + (cell->ok() ? "ok"
                                                                         : f        ? "MISMATCH*"
                                                                                    : "MISMATCH"));
        }
        o << "\n";
      }
    }
    o << cells << " cells, " << mismatches << " mismatches";
    std::size_t known = 0;
    for (const auto& f : known_findings)
      if (auto it = g_grid.find(f.what); it != g_grid.end()) {
        const auto& cell = it->second[static_cast<std::size_t>(
            std::find(all_creds.begin(), all_creds.end(), f.who) - all_creds.begin())];
        if (cell && !cell->ok()) {
          if (known++ == 0)
            o << "; * known findings (docs/security.md \"The permission matrix\"), "
              << (strict() ? "failing (DEVICEBOUND_MATRIX_STRICT)" : "not failing the test") << ":";
          o << "\n  " << column(f.who) << " / " << cell->got.answer << ": " << f.why;
        }
      }
    o << "\n";
    if (std::getenv("DEVICEBOUND_MATRIX_VERBOSE"))
      for (const auto& r : expected)
        if (auto it = g_grid.find(r.what); it != g_grid.end())
          for (std::size_t c = 0; c < all_creds.size(); ++c)
            if (const auto& cell = it->second[c])
              o << name(r.where) << " | " << r.label << " | " << column(all_creds[c]) << " | "
                << cell->got.answer << (cell->got.state.empty() ? "" : " | " + cell->got.state)
                << "\n";
    std::cout << o.str() << std::flush;
  }
};

TEST_F(permission_matrix, Amqp) {
  run_door(door::amqp);
}
TEST_F(permission_matrix, Https) {
  run_door(door::https);
}
TEST_F(permission_matrix, Mqtt) {
  run_door(door::mqtt);
}

}  // namespace

#else

#include "support/required.hpp"

TEST(permission_matrix, Skipped) {
  DEVICEBOUND_MISSING_PART(
      "the permission matrix needs devicebound-hub with AMQP, the auth library and the broker "
      "plugin");
}

#endif
