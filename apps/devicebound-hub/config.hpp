// devicebound-hub's configuration: the TOML file, then the command-line flags
// over it (docs/mqtt-quickstart.md lists both).
#pragma once

#include <cstdint>
#include <devicebound/hub_config.hpp>
#include <devicebound/store/sqlite.hpp>
#include <devicebound/transport/mqtt.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "mqtt_door.hpp"
#include "throttle.hpp"

namespace devicebound::hubd {

/// Exit codes (docs/mqtt-quickstart.md, "Exit codes").
enum exit_code : int {
  exit_ok = 0,            ///< stopped on SIGINT / SIGTERM
  exit_broker = 1,        ///< gave up on the broker (refused credentials, ...)
  exit_config = 2,        ///< bad command line or configuration
  exit_store_open = 3,    ///< the store cannot be used: newer schema, not devicebound's,
                          ///< damaged, in use by another hub, unreadable
  exit_store_failed = 4,  ///< a commit to the store failed while running: restart the daemon
};

struct store_config {
  bool in_memory = false;  ///< no store: the queues live (and die) with the process
  std::string path;        ///< empty: `default_store_path`
  /// `normal`: SQLite fsyncs at checkpoints and the daemon every 100 ms (a power
  /// cut may lose the last ~100 ms); `full`: every commit is fsynced before its
  /// acknowledgement. A crash of the daemon loses nothing acknowledged in both.
  sqlite_sync sync = sqlite_sync::normal;
};

/// The AMQP front door (docs/amqp-door.md). No `listen`: no AMQP door.
struct amqp_listen_config {
  std::vector<std::string> listen;  ///< `--amqp-listen HOST:PORT` (repeatable)
  /// The hub's own TLS server certificate and key (PEM). Not `--tls-cert/--tls-key`:
  /// those are the daemon's MQTT *client* certificate for the broker.
  std::string tls_server_cert;
  std::string tls_server_key;
  std::string tls_server_key_password;
  bool insecure = false;                      ///< plain AMQP on a non-loopback address
  std::string iothub_hostname = "localhost";  ///< the host SAS tokens name in `sr`
  std::string auth_file;                      ///< empty: test mode (tokens not verified)
};

/// The HTTPS front door (docs/https.md). No `listen`: no HTTPS door. TLS uses the
/// AMQP listener's `--tls-server-cert`/`--tls-server-key`; SAS tokens name
/// `--iothub-hostname`.
struct https_listen_config {
  std::vector<std::string>
      listen;             ///< `--https-listen HOST:PORT` (repeatable; IoT Hub's port is 443)
  bool insecure = false;  ///< `--https-insecure`: plain HTTP, loopback addresses only
  /// `--https-request-timeout SECONDS`: deadline to read a request (header and body).
  std::uint32_t request_timeout_seconds = 30;
};

/// Limits against abuse (docs/security.md, "Limits"): flags `--amqp-max-*`,
/// `--https-max-*`, `--https-idle-timeout`, `--throttle*`, or TOML `[limits]`.
/// Hitting one costs the offending connection or request only.
struct limits_config {
  std::uint32_t amqp_max_connections = 1000;      ///< open AMQP connections (1..100000)
  std::uint32_t amqp_max_sessions = 16;           ///< sessions per AMQP connection (1..65536)
  std::uint32_t amqp_max_links = 64;              ///< links per AMQP connection (1..65536)
  std::uint32_t amqp_max_frame_size = 65536;      ///< bytes, advertised in open (512..16 MiB)
  std::uint64_t amqp_max_message_size = 262144;   ///< bytes of one transfer (1 KiB..64 MiB)
  std::uint32_t amqp_open_timeout_seconds = 30;   ///< connect to AMQP open (1..3600)
  std::uint32_t https_max_connections = 1000;     ///< open HTTPS connections (1..100000)
  std::uint32_t https_max_header_bytes = 16384;   ///< request line + headers (1 KiB..1 MiB)
  std::uint64_t https_max_body_bytes = 262144;    ///< request body (1 KiB..64 MiB)
  std::uint32_t https_idle_timeout_seconds = 60;  ///< idle keep-alive connection (1..3600)
  throttle_config throttle;                       ///< `--throttle`, `--throttle-units`

  /// The first value out of its range, as "--flag: must be ..."; or nothing.
  std::optional<std::string> problem() const;
};

/// `--cluster` (docs/scale-out.md, "The hub in a cluster"): this process is one
/// instance of a partitioned hub whose state is in PostgreSQL (`--store` is then
/// a libpq connection string or `postgresql://` URI).
struct cluster_config {
  bool enabled = false;
  std::uint32_t partitions = 0;  ///< `--partitions K` (1..1024), the same on every instance
  std::string instance;          ///< `--instance NAME`; the lease owner adds PID and start time
  duration lease_ttl = std::chrono::seconds(5);       ///< `--lease-ttl`
  duration lease_renew = std::chrono::seconds(1);     ///< `--lease-renew`
  std::optional<std::uint32_t> expected_instances;    ///< `--expected-instances N`
  duration overflow_after = std::chrono::seconds(5);  ///< `--overflow-after`
  std::optional<duration> startup_grace;              ///< `--startup-grace` (unset: overflow_after)
  std::string schema = "devicebound";                 ///< `--cluster-schema`
  /// `--forward-amqp-url amqp://USER:PASSWORD@HOST:PORT/` (default `--rabbit-amqp-url`):
  /// forward requests for partitions served elsewhere through this RabbitMQ
  /// (docs/scale-out.md, "Forwarding requests"). Empty: answer them 503001.
  std::string forward_amqp_url;
  duration forward_timeout = std::chrono::seconds(10);  ///< `--forward-timeout` (100ms..10min)
};

struct daemon_config {
  mqtt::connection_options broker = [] {
    mqtt::connection_options o;
    o.client_id = "devicebound-hub";
    return o;
  }();
  /// `--broker-sas-key KEY` (TOML `broker.sas_key`): the hub signs a SAS token with
  /// this policy key (base64; `username` names the policy, `sr` is
  /// `--iothub-hostname`) and sends it as its broker password, fresh at each connect.
  /// The broker plugin refuses raw keys as passwords.
  std::optional<std::string> broker_sas_key;
  hub_config hub;
  std::vector<std::string> devices;  ///< registered at start
  bool auto_register = false;        ///< register unknown devices on send / presence
  std::uint32_t max_in_flight = 4;   ///< locked, unsettled pushes per device or back end
  reconnect_config reconnect;
  store_config store;
  amqp_listen_config amqp;
  https_listen_config https;
  limits_config limits;
  /// `--rabbit-auth-listen HOST:PORT`: answer RabbitMQ's HTTP auth backend there
  /// (plain HTTP, loopback only; docs/scale-out.md). Empty: not served.
  std::string rabbit_auth_listen;
  /// `--broker mosquitto|rabbitmq` (broker_seam.hpp): the broker the MQTT door
  /// is behind. rabbitmq: escaped bags, ids with '.' refused, events from
  /// `rabbit_amqp_url` (`--rabbit-amqp-url amqp://USER:PASSWORD@HOST:PORT/`).
  std::string broker_kind = "mosquitto";
  std::string rabbit_amqp_url;
  cluster_config cluster;
  std::string log_level = "info";
};

class config_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// `250ms`, `2s`, `5min`, `1h`, `2d` (a whole number and a unit).
std::optional<duration> parse_duration(std::string_view s);

/// Reads the TOML file into `c` (only the keys present). Throws `config_error`.
void load_toml(const std::string& path, daemon_config& c);

/// The configuration from the command line (and the file it names), or the
/// exit code when the process should stop now (help, version, bad flags: the
/// message is already printed).
std::variant<daemon_config, int> load_config(int argc, char** argv);

/// Where the store lives unless configured: `$STATE_DIRECTORY` (systemd's
/// StateDirectory=), else `$XDG_STATE_HOME/devicebound`, else
/// `~/.local/state/devicebound`, else the working directory; the file is named
/// after the MQTT client id, so hubs with different client ids (partitions)
/// never share a file.
std::string default_store_path(const std::string& client_id);

/// How the configuration spells the enums of `hub_config` and the store
/// (`abandon_only`, `clamp`, `negative_acks`, `full`, ...). The one place the
/// daemon reads or writes these names.
template <class E>
std::optional<E> parse_setting(std::string_view s);
std::string_view setting_name(sqlite_sync s);

}  // namespace devicebound::hubd
