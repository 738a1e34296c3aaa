// RabbitMQ's HTTP auth backend answered by the hub (apps/devicebound-hub/rabbit_auth.hpp):
// every endpoint, and the allow/deny matrix of users, queues and topics. The
// requests are shaped as RabbitMQ 3.10's rabbitmq_auth_backend_http sends them for
// an MQTT connection (captured on this machine, see docs/scale-out.md).
#include <gtest/gtest.h>

#include <chrono>
#include <devicebound/auth/signature.hpp>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "rabbit_auth.hpp"
#include "rabbit_config.hpp"

namespace {

using namespace devicebound;
namespace rabbit = devicebound::hubd::rabbit;

constexpr std::string_view host = "myhub.azure-devices.net";

time_point at(std::int64_t seconds) {
  return time_point(std::chrono::duration_cast<duration>(std::chrono::seconds(seconds)));
}
const time_point now = at(1'700'000'000);

auth::shared_access_key key_of(char fill) {
  return auth::shared_access_key::from_bytes(std::string(32, fill));
}

std::string form_of(const std::vector<std::pair<std::string, std::string>>& fields) {
  std::string out;
  for (const auto& [k, v] : fields) {
    if (!out.empty())
      out += '&';
    out += codec::percent_encode(k);
    out += '=';
    out += codec::percent_encode(v);
  }
  return out;
}

std::string device_username(std::string_view id, std::string_view h = host) {
  return std::string(h) + "/" + std::string(id) + "/?api-version=2021-04-12&DeviceClientType=x";
}

struct rabbit_auth : ::testing::Test {
  std::vector<auth::shared_access_policy> policies{
      {"service", key_of('s'), key_of('t'), auth::access_rights::service_connect},
      {"registryRead", key_of('r'), key_of('q'), auth::access_rights::registry_read},
      {"device", key_of('d'), key_of('e'), auth::access_rights::device_connect},
  };
  std::map<std::string, auth::device_credentials, std::less<>> devices{
      {"dev1", {key_of('1'), key_of('2'), true}},
      {"dev2", {key_of('3'), key_of('4'), true}},
      {"off", {key_of('5'), key_of('6'), false}},
      {"a.b", {key_of('7'), key_of('8'), true}},
  };
  rabbit::auth_settings settings{std::string(host), "/", "amq.topic"};

  rabbit::identities ids() const {
    return {policies, [this](std::string_view id) -> std::optional<auth::device_credentials> {
              auto it = devices.find(id);
              if (it == devices.end())
                return std::nullopt;
              return it->second;
            }};
  }
  std::string device_token(std::string_view id, char key = 0, std::int64_t ttl = 3600) const {
    const auto& c = devices.at(std::string(id));
    return auth::to_string(auth::generate_sas_token(
        std::string(host) + "/devices/" + std::string(id), key ? key_of(key) : c.primary_key,
        auth::sas_expiry(now, std::chrono::seconds(ttl))));
  }
  std::string policy_token(std::string_view policy, std::string_view resource = host) const {
    const auto& p = *auth::find_policy(policies, policy);
    return auth::to_string(auth::generate_sas_token(resource, p.primary_key,
                                                    auth::sas_expiry(now, std::chrono::hours(1)),
                                                    std::string(policy)));
  }
  rabbit::decision user(const std::string& username, const std::string& password,
                        const std::string& client_id) const {
    return rabbit::decide(rabbit::endpoint::user,
                          form_of({{"username", username},
                                   {"password", password},
                                   {"vhost", "/"},
                                   {"client_id", client_id}}),
                          settings, ids(), now);
  }
  rabbit::decision vhost(const std::string& username, const std::string& vh,
                         const std::string& client_id) const {
    return rabbit::decide(rabbit::endpoint::vhost,
                          form_of({{"username", username},
                                   {"vhost", vh},
                                   {"ip", "127.0.0.1"},
                                   {"tags", ""},
                                   {"client_id", client_id}}),
                          settings, ids(), now);
  }
  rabbit::decision resource(const std::string& username, const std::string& kind,
                            const std::string& name, const std::string& permission,
                            const std::string& client_id) const {
    return rabbit::decide(rabbit::endpoint::resource,
                          form_of({{"username", username},
                                   {"vhost", "/"},
                                   {"resource", kind},
                                   {"name", name},
                                   {"permission", permission},
                                   {"tags", ""},
                                   {"client_id", client_id}}),
                          settings, ids(), now);
  }
  rabbit::decision topic(const std::string& username, const std::string& permission,
                         const std::string& routing_key, const std::string& client_id,
                         const std::string& exchange = "amq.topic") const {
    return rabbit::decide(rabbit::endpoint::topic,
                          form_of({{"username", username},
                                   {"vhost", "/"},
                                   {"resource", "topic"},
                                   {"name", exchange},
                                   {"permission", permission},
                                   {"tags", ""},
                                   {"routing_key", routing_key},
                                   {"variable_map.client_id", client_id},
                                   {"variable_map.username", username},
                                   {"variable_map.vhost", "/"}}),
                          settings, ids(), now);
  }
};

// --- the form and the paths -----------------------------------------------------------------

TEST(rabbit_form, decodes_plus_as_space_and_percent_escapes) {
  auto f = rabbit::parse_form("username=a%2Fb%3F&password=SharedAccessSignature+sr%3Dx&empty=");
  ASSERT_TRUE(f) << f.error().message;
  ASSERT_EQ(f->size(), 3u);
  EXPECT_EQ(*rabbit::field(*f, "username"), "a/b?");
  EXPECT_EQ(*rabbit::field(*f, "password"), "SharedAccessSignature sr=x");
  EXPECT_EQ(*rabbit::field(*f, "empty"), "");
  EXPECT_EQ(rabbit::field(*f, "vhost"), nullptr);
}

TEST(rabbit_form, refuses_bad_escapes_missing_equals_and_repeated_names) {
  EXPECT_FALSE(rabbit::parse_form("a=%zz"));
  EXPECT_FALSE(rabbit::parse_form("a"));
  EXPECT_FALSE(rabbit::parse_form("=x"));
  EXPECT_FALSE(rabbit::parse_form("a=1&a=2"));
  EXPECT_FALSE(rabbit::parse_form("a=%FF"));                            // not UTF-8
  EXPECT_FALSE(rabbit::parse_form("username=x%00myhub%2Fdev1%2F%3F"));  // a NUL byte
}

TEST(rabbit_form, endpoints_have_their_paths) {
  for (auto e : {rabbit::endpoint::user, rabbit::endpoint::vhost, rabbit::endpoint::resource,
                 rabbit::endpoint::topic})
    EXPECT_EQ(rabbit::endpoint_of(rabbit::path_of(e)), e);
  EXPECT_EQ(rabbit::endpoint_of("/auth/users"), std::nullopt);
  EXPECT_EQ(rabbit::endpoint_of("/"), std::nullopt);
}

TEST(rabbit_form, routing_keys_map_back_to_mqtt_topics) {
  EXPECT_EQ(rabbit::mqtt_topic_of("devices.dev1.messages.devicebound.#"),
            "devices/dev1/messages/devicebound/#");
  EXPECT_EQ(rabbit::mqtt_topic_of("devices.*.messages.events"), "devices/+/messages/events");
  // Only a whole word '*' is a wildcard; inside a word it is a literal character.
  EXPECT_EQ(rabbit::mqtt_topic_of("devices.a*b.x"), "devices/a*b/x");
  EXPECT_EQ(rabbit::mqtt_topic_of(""), "");
  EXPECT_EQ(rabbit::mqtt_topic_of("a..b"), "a//b");
}

TEST(rabbit_form, ids_rabbitmq_cannot_carry_are_refused) {
  EXPECT_EQ(rabbit::rabbit_id_problem("dev1"), std::nullopt);
  EXPECT_EQ(rabbit::rabbit_id_problem("a*b"), std::nullopt);
  ASSERT_TRUE(rabbit::rabbit_id_problem("a.b"));
  EXPECT_NE(rabbit::rabbit_id_problem("a.b")->find("'.'"), std::string::npos);
  EXPECT_TRUE(rabbit::rabbit_id_problem("*"));
  EXPECT_TRUE(rabbit::rabbit_id_problem(""));
  EXPECT_TRUE(rabbit::rabbit_id_problem("a/b"));
}

TEST_F(rabbit_auth, a_bad_form_is_denied_on_every_endpoint) {
  for (auto e : {rabbit::endpoint::user, rabbit::endpoint::vhost, rabbit::endpoint::resource,
                 rabbit::endpoint::topic}) {
    const auto d = rabbit::decide(e, "username=%zz", settings, ids(), now);
    EXPECT_FALSE(d.allow);
    EXPECT_EQ(d.body(), "deny");
  }
}

// --- user ------------------------------------------------------------------------------------

TEST_F(rabbit_auth, user_accepts_a_device_with_its_own_token) {
  const auto d = user(device_username("dev1"), device_token("dev1"), "dev1");
  EXPECT_TRUE(d.allow) << d.reason;
  EXPECT_EQ(d.body(), "allow");
  // the secondary key too
  EXPECT_TRUE(user(device_username("dev1"), device_token("dev1", '2'), "dev1").allow);
}

TEST_F(rabbit_auth, user_accepts_a_device_policy_token_for_a_registered_device) {
  EXPECT_TRUE(user(device_username("dev1"), policy_token("device"), "dev1").allow);
  EXPECT_TRUE(user(device_username("dev1"),
                   policy_token("device", std::string(host) + "/devices/dev1"), "dev1")
                  .allow);
  // ... but not for an unregistered or disabled one, nor scoped to another device
  EXPECT_FALSE(user(device_username("ghost"), policy_token("device"), "ghost").allow);
  EXPECT_FALSE(user(device_username("off"), policy_token("device"), "off").allow);
  EXPECT_FALSE(user(device_username("dev1"),
                    policy_token("device", std::string(host) + "/devices/dev2"), "dev1")
                   .allow);
}

TEST_F(rabbit_auth, user_denies_wrong_tokens_for_devices) {
  const auto u = device_username("dev1");
  EXPECT_FALSE(user(u, device_token("dev1", 'x'), "dev1").allow);       // wrong key
  EXPECT_FALSE(user(u, device_token("dev2"), "dev1").allow);            // another device's token
  EXPECT_FALSE(user(u, device_token("dev1", 0, -3600), "dev1").allow);  // expired past the skew
  EXPECT_FALSE(user(u, key_of('1').to_base64(), "dev1").allow);         // the raw key
  EXPECT_NE(user(u, key_of('1').to_base64(), "dev1").reason.find("NotASasToken"),
            std::string::npos);
  EXPECT_FALSE(user(u, "", "dev1").allow);
  EXPECT_FALSE(user(u, "SharedAccessSignature sr=x", "dev1").allow);             // malformed
  EXPECT_FALSE(user(device_username("off"), device_token("off"), "off").allow);  // disabled
  // a policy without DeviceConnect acting for a device
  EXPECT_FALSE(user(u, policy_token("service"), "dev1").allow);
}

TEST_F(rabbit_auth, user_denies_a_token_whose_sr_names_another_hub) {
  const auto& c = devices.at("dev1");
  const auto other = auth::to_string(
      auth::generate_sas_token("otherhub.azure-devices.net/devices/dev1", c.primary_key,
                               auth::sas_expiry(now, std::chrono::hours(1))));
  const auto d = user(device_username("dev1"), other, "dev1");
  EXPECT_FALSE(d.allow);
  EXPECT_NE(d.reason.find("WrongHost"), std::string::npos) << d.reason;
  // and a username naming another hub
  EXPECT_FALSE(
      user(device_username("dev1", "otherhub.azure-devices.net"), device_token("dev1"), "dev1")
          .allow);
}

TEST_F(rabbit_auth, user_denies_a_device_acting_for_another_client_id) {
  const auto d = user(device_username("dev1"), device_token("dev1"), "dev2");
  EXPECT_FALSE(d.allow);
  EXPECT_FALSE(user(device_username("dev1"), device_token("dev1"), "").allow);
}

TEST_F(rabbit_auth, user_refuses_device_ids_with_a_dot) {
  const auto d = user(device_username("a.b"), device_token("a.b"), "a.b");
  EXPECT_FALSE(d.allow);
  EXPECT_NE(d.reason.find("'.'"), std::string::npos) << d.reason;
}

TEST_F(rabbit_auth, user_accepts_back_ends_with_service_connect_only) {
  EXPECT_TRUE(user("service", policy_token("service"), "devicebound-hub").allow);
  // the username is not trusted: the token's skn decides
  EXPECT_TRUE(user("anything", policy_token("service"), "backend-2").allow);
  EXPECT_FALSE(user("registryRead", policy_token("registryRead"), "b").allow);
  EXPECT_FALSE(user("device", policy_token("device"), "b").allow);
  // scoped below the hub: out of scope for a back end
  EXPECT_FALSE(
      user("service", policy_token("service", std::string(host) + "/devices/dev1"), "b").allow);
  // a device's token on a back-end connection
  EXPECT_FALSE(user("dev1", device_token("dev1"), "dev1").allow);
  // the raw policy key
  EXPECT_FALSE(user("service", key_of('s').to_base64(), "b").allow);
  // a back end's client id must be one RabbitMQ can carry
  EXPECT_FALSE(user("service", policy_token("service"), "hub.1").allow);
}

// --- vhost -------------------------------------------------------------------------------------

TEST_F(rabbit_auth, vhost_allows_only_the_configured_one) {
  EXPECT_TRUE(vhost(device_username("dev1"), "/", "dev1").allow);
  EXPECT_TRUE(vhost("service", "/", "devicebound-hub").allow);
  EXPECT_FALSE(vhost(device_username("dev1"), "other", "dev1").allow);
  EXPECT_FALSE(vhost(device_username("dev1"), "/", "dev2").allow);  // inconsistent identity
  EXPECT_FALSE(vhost(device_username("a.b"), "/", "a.b").allow);
}

// --- resource ------------------------------------------------------------------------------

TEST_F(rabbit_auth, resource_allows_own_session_queues_and_the_exchange) {
  const auto u = device_username("dev1");
  for (const char* perm : {"configure", "read", "write"}) {
    EXPECT_TRUE(resource(u, "queue", "mqtt-subscription-dev1qos1", perm, "dev1").allow) << perm;
    EXPECT_TRUE(resource(u, "queue", "mqtt-subscription-dev1qos0", perm, "dev1").allow) << perm;
    EXPECT_FALSE(resource(u, "queue", "mqtt-subscription-dev2qos1", perm, "dev1").allow) << perm;
    EXPECT_FALSE(resource(u, "queue", "mqtt-subscription-dev1qos2", perm, "dev1").allow) << perm;
    EXPECT_FALSE(resource(u, "queue", "some-queue", perm, "dev1").allow) << perm;
  }
  EXPECT_TRUE(resource(u, "exchange", "amq.topic", "read", "dev1").allow);
  EXPECT_TRUE(resource(u, "exchange", "amq.topic", "write", "dev1").allow);
  EXPECT_FALSE(resource(u, "exchange", "amq.topic", "configure", "dev1").allow);
  EXPECT_FALSE(resource(u, "exchange", "amq.direct", "write", "dev1").allow);
  EXPECT_FALSE(resource(u, "topic", "amq.topic", "write", "dev1").allow);
  EXPECT_FALSE(resource(u, "queue", "mqtt-subscription-dev1qos1", "delete", "dev1").allow);
  // back ends: their own session queues only
  EXPECT_TRUE(resource("service", "queue", "mqtt-subscription-hubqos1", "read", "hub").allow);
  EXPECT_FALSE(resource("service", "queue", "mqtt-subscription-dev1qos1", "read", "hub").allow);
  EXPECT_FALSE(resource("service", "queue", "mqtt-subscription-hubqos1", "read", "").allow);
}

// --- topic ---------------------------------------------------------------------------------

TEST_F(rabbit_auth, topic_matrix_for_a_device) {
  const auto u = device_username("dev1");
  struct row {
    const char* permission;
    const char* routing_key;
    bool allowed;
  };
  const row rows[] = {
      // its own C2D subscription, and nobody else's
      {"read", "devices.dev1.messages.devicebound.#", true},
      {"read", "devices.dev2.messages.devicebound.#", false},
      {"read", "devices.*.messages.devicebound.#", false},
      {"read", "devices.#", false},
      {"read", "#", false},
      // the hub's retained status is readable; its requests and events are not
      {"read", "devicebound.status.hub", true},
      {"read", "devicebound.broker.connected.dev2", false},
      {"read", "devicebound.hub.device.dev1.x", false},
      // pushes: its own device pushes only
      {"read", "devicebound.device.dev1.x", true},
      {"read", "devicebound.service.dev1.x", false},
      {"read", "devicebound.device.dev2.x", false},
      // telemetry: its own, never into a devicebound topic
      {"write", "devices.dev1.messages.events.a%3D1", true},
      {"write", "devices.dev2.messages.events", false},
      {"write", "devices.dev1.messages.devicebound.x", false},
      {"write", "devices.dev1.messages.devicebound", false},
      // requests: its own, as a device
      {"write", "devicebound.hub.device.dev1.complete", true},
      {"write", "devicebound.hub.device.dev2.complete", false},
      {"write", "devicebound.hub.service.dev1.send", false},
      {"write", "devicebound.status.hub", false},
      {"write", "other.topic", false},
      {"configure", "devices.dev1.messages.events", false},
  };
  for (const auto& r : rows)
    EXPECT_EQ(topic(u, r.permission, r.routing_key, "dev1").allow, r.allowed)
        << r.permission << " " << r.routing_key;
}

TEST_F(rabbit_auth, topic_matrix_for_a_back_end) {
  struct row {
    const char* permission;
    const char* routing_key;
    bool allowed;
  };
  const row rows[] = {
      // sends C2D to any device, with a bag whose dots are %2E
      {"write", "devices.dev1.messages.devicebound.%24%2Emid%3D1", true},
      {"write", "devices.dev2.messages.devicebound.x", true},
      // never reads a device's C2D
      {"read", "devices.dev1.messages.devicebound.#", false},
      // the plugin's events: readable, never written
      {"read", "devicebound.broker.#", true},
      {"write", "devicebound.broker.connected.dev1", false},
      // requests only in its own name; pushes only its own
      {"read", "devicebound.hub.#", true},
      {"write", "devicebound.hub.service.hub.send", true},
      {"write", "devicebound.hub.service.other.send", false},
      {"read", "devicebound.service.hub.#", true},
      {"read", "devicebound.service.other.#", false},
      {"write", "devicebound.service.other.reply", true},
      {"write", "devicebound.status.hub", true},
      // ServiceConnect is all a back end is known to hold (no token here):
      // no admin requests, nothing as a device (docs/security.md, findings 2-3)
      {"write", "devicebound.hub.admin.hub.add.dev9", false},
      {"read", "devicebound.admin.hub.#", false},
      {"write", "devicebound.hub.device.hub.attach", false},
      {"read", "devicebound.device.hub.#", false},
  };
  for (const auto& r : rows)
    EXPECT_EQ(topic("service", r.permission, r.routing_key, "hub").allow, r.allowed)
        << r.permission << " " << r.routing_key;
}

TEST_F(rabbit_auth, topic_denies_other_exchanges_vhosts_and_inconsistent_identities) {
  const auto u = device_username("dev1");
  EXPECT_FALSE(topic(u, "read", "devices.dev1.messages.devicebound.#", "dev1", "amq.fanout").allow);
  EXPECT_FALSE(topic(u, "read", "devices.dev1.messages.devicebound.#", "dev2").allow);
  EXPECT_FALSE(topic(u, "read", "devices.dev1.messages.devicebound.#", "").allow);
  EXPECT_FALSE(rabbit::decide(rabbit::endpoint::topic,
                              form_of({{"username", u},
                                       {"vhost", "other"},
                                       {"name", "amq.topic"},
                                       {"permission", "read"},
                                       {"routing_key", "devices.dev1.messages.devicebound.#"},
                                       {"variable_map.client_id", "dev1"}}),
                              settings, ids(), now)
                   .allow);
  // no routing key
  EXPECT_FALSE(rabbit::decide(rabbit::endpoint::topic,
                              form_of({{"username", u},
                                       {"vhost", "/"},
                                       {"name", "amq.topic"},
                                       {"permission", "read"},
                                       {"variable_map.client_id", "dev1"}}),
                              settings, ids(), now)
                   .allow);
}

TEST_F(rabbit_auth, a_dotted_topic_level_is_checked_as_rabbitmq_routes_it) {
  // dev1 publishing "devices/dev1.messages/devicebound/x" reaches RabbitMQ as
  // devices.dev1.messages.devicebound.x: a device-bound topic, so refused.
  EXPECT_FALSE(
      topic(device_username("dev1"), "write", "devices.dev1.messages.devicebound.x", "dev1").allow);
}

// --- the node's configuration (rabbit_config.hpp) --------------------------------------------

TEST(rabbit_config, names_the_four_paths_and_the_mqtt_listener) {
  rabbit::node_config c;
  c.auth_base_url = "http://127.0.0.1:8088/";
  c.mqtt_listen = "127.0.0.1:1883";
  const auto conf = rabbit::rabbitmq_conf(c);
  ASSERT_TRUE(conf) << conf.error().message;
  for (const char* line :
       {"auth_backends.1 = http\n", "auth_http.http_method = post\n",
        "auth_http.user_path = http://127.0.0.1:8088/auth/user\n",
        "auth_http.vhost_path = http://127.0.0.1:8088/auth/vhost\n",
        "auth_http.resource_path = http://127.0.0.1:8088/auth/resource\n",
        "auth_http.topic_path = http://127.0.0.1:8088/auth/topic\n",
        "mqtt.listeners.tcp.1 = 127.0.0.1:1883\n", "mqtt.allow_anonymous = false\n",
        "mqtt.durable_queue_type = quorum\n", "listeners.tcp = none\n"})
    EXPECT_NE(conf->find(line), std::string::npos) << line << "\n" << *conf;
  EXPECT_EQ(conf->find("ssl"), std::string::npos);
  EXPECT_NE(rabbit::advanced_config().find("ignore_colons_in_username, true"), std::string::npos);
  EXPECT_NE(rabbit::enabled_plugins().find("rabbitmq_auth_backend_http"), std::string::npos);
}

TEST(rabbit_config, internal_backend_first_and_tls) {
  rabbit::node_config c;
  c.auth_base_url = "http://127.0.0.1:8088";
  c.internal_backend_first = true;
  c.tls_listen = "0.0.0.0:8883";
  c.tls_cert_file = "/etc/x/cert.pem";
  c.tls_key_file = "/etc/x/key.pem";
  const auto conf = rabbit::rabbitmq_conf(c);
  ASSERT_TRUE(conf) << conf.error().message;
  EXPECT_NE(conf->find("auth_backends.1 = internal\nauth_backends.2 = http\n"), std::string::npos);
  EXPECT_NE(conf->find("mqtt.listeners.ssl.1 = 0.0.0.0:8883\n"), std::string::npos);
  EXPECT_NE(conf->find("ssl_options.certfile = /etc/x/cert.pem\n"), std::string::npos);
}

TEST(rabbit_config, refuses_values_that_do_not_fit_a_line) {
  rabbit::node_config c;
  c.auth_base_url = "http://127.0.0.1:8088\nauth_backends.1 = internal";
  EXPECT_FALSE(rabbit::rabbitmq_conf(c));
  c.auth_base_url = "ftp://x";
  EXPECT_FALSE(rabbit::rabbitmq_conf(c));
  c.auth_base_url = "";
  EXPECT_FALSE(rabbit::rabbitmq_conf(c));
  c.auth_base_url = "http://127.0.0.1:1";
  c.mqtt_listen = "127.0.0.1:1883 # x";
  EXPECT_FALSE(rabbit::rabbitmq_conf(c));
  c.mqtt_listen = "127.0.0.1:1883";
  c.tls_listen = "0.0.0.0:8883";  // without its certificate and key
  EXPECT_FALSE(rabbit::rabbitmq_conf(c));
}

}  // namespace
