// The `devicebound` CLI's client commands (docs/cli.md) against a real
// devicebound-hub: mosquitto and the daemon on free 127.0.0.1 ports, AMQP and
// HTTPS over TLS with a CA made at test time, keys from an auth file. Every
// subcommand: a success case and its documented error, with its exit code.
#include <gtest/gtest.h>

#include "support/required.hpp"

#if defined(DEVICEBOUND_CLI_EXECUTABLE) && defined(DEVICEBOUND_TEST_CERTS_SCRIPT)

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "support/mosquitto.hpp"

namespace {

namespace support = devicebound::test_support;
using json = nlohmann::json;
using namespace std::chrono_literals;

constexpr const char* device_key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
constexpr const char* owner_key = "b3duZXIta2V5LWZvci10aGUtY2xpLXRlc3RzISEhISE=";
constexpr const char* service_key = "c2VydmljZS1rZXktZm9yLXRoZS1jbGktdGVzdHMhISE=";
constexpr const char* wrong_key = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXkhISE=";

struct run_result {
  int code = -1;
  std::string out;
  std::string err;
};

/// A running `devicebound` child with its stdout and stderr on pipes.
class cli_process {
 public:
  cli_process(const std::vector<std::string>& args, const std::vector<std::string>& env_extra) {
    int out[2], err[2];
    if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0)
      throw std::runtime_error("pipe failed");
    std::vector<std::string> argv_s{DEVICEBOUND_CLI_EXECUTABLE};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<std::string> env_s;
    for (char** e = environ; *e; ++e)
      if (!std::string_view(*e).starts_with("DEVICEBOUND_") &&
          !std::string_view(*e).starts_with("SSL_CERT_FILE="))
        env_s.emplace_back(*e);
    env_s.insert(env_s.end(), env_extra.begin(), env_extra.end());
    std::vector<char*> argv, envp;
    for (auto& a : argv_s)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    for (auto& e : env_s)
      envp.push_back(e.data());
    envp.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ < 0)
      throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      ::dup2(out[1], STDOUT_FILENO);
      ::dup2(err[1], STDERR_FILENO);
      ::execve(argv[0], argv.data(), envp.data());
      ::_exit(127);
    }
    ::close(out[1]);
    ::close(err[1]);
    out_ = out[0];
    err_ = err[0];
  }
  cli_process(const cli_process&) = delete;
  cli_process& operator=(const cli_process&) = delete;
  ~cli_process() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (out_ >= 0)
      ::close(out_);
    if (err_ >= 0)
      ::close(err_);
  }

  /// Reads both pipes to their end and reaps the child, at most `timeout`.
  run_result wait(std::chrono::milliseconds timeout = 30s) {
    run_result r;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    char buf[4096];
    while (out_ >= 0 || err_ >= 0) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left <= 0ms) {
        ::kill(pid_, SIGKILL);
        r.err += "\n[test: killed after the time-out]";
        break;
      }
      pollfd p[2] = {{out_, POLLIN, 0}, {err_, POLLIN, 0}};
      if (::poll(p, 2, static_cast<int>(left.count())) <= 0)
        continue;
      for (int i = 0; i < 2; ++i) {
        int& fd = i == 0 ? out_ : err_;
        if (fd < 0 || !(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
          continue;
        const ssize_t n = ::read(fd, buf, sizeof buf);
        if (n <= 0) {
          ::close(fd);
          fd = -1;
        } else {
          (i == 0 ? r.out : r.err).append(buf, static_cast<std::size_t>(n));
        }
      }
    }
    int st = 0;
    ::waitpid(pid_, &st, 0);
    reaped_ = true;
    r.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return r;
  }

 private:
  pid_t pid_ = -1;
  int out_ = -1, err_ = -1;
  bool reaped_ = false;
};

class cli : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!support::mosquitto_broker::available())
      DEVICEBOUND_MISSING_PART("mosquitto not found at " << support::default_mosquitto);
    if (!support::hub_daemon::available())
      DEVICEBOUND_MISSING_PART("devicebound-hub not found at " << support::default_hub);
    const std::string certs = std::string("bash '") + DEVICEBOUND_TEST_CERTS_SCRIPT + "' '" +
                              dir_.path() + "' >/dev/null 2>&1";
    ASSERT_EQ(std::system(certs.c_str()), 0);
    {
      std::ofstream f(dir_.file("auth.txt"));
      f << "dev1 " << device_key << "\n"
        << "dev2 " << device_key << "\n"
        << "policy iothubowner " << owner_key << "\n"
        << "policy service " << service_key << "\n";
    }
    broker_ = std::make_unique<support::mosquitto_broker>();
    amqp_port_ = support::free_port();
    https_port_ = support::free_port();
    support::hub_daemon::options o;
    o.broker_port = broker_->port();
    o.args = {"--feedback-batch-interval",
              "0s",
              "--hub-name",
              "clihub",
              "--amqp-listen",
              "127.0.0.1:" + std::to_string(amqp_port_),
              "--https-listen",
              "127.0.0.1:" + std::to_string(https_port_),
              "--tls-server-cert",
              dir_.file("server.crt"),
              "--tls-server-key",
              dir_.file("server.key"),
              "--auth-file",
              dir_.file("auth.txt"),
              "--iothub-hostname",
              "localhost"};
    hub_ = std::make_unique<support::hub_daemon>(o);
  }

  void TearDown() override {
    if (HasFailure() && hub_)
      std::cerr << "--- devicebound-hub log ---\n" << hub_->log();
  }

  std::string host() const { return "localhost:" + std::to_string(amqp_port_); }
  std::string owner() const {
    return "HostName=" + host() + ";SharedAccessKeyName=iothubowner;SharedAccessKey=" + owner_key;
  }
  std::string service() const {
    return "HostName=" + host() + ";SharedAccessKeyName=service;SharedAccessKey=" + service_key;
  }
  std::string device(const std::string& id, const std::string& key = device_key) const {
    return "HostName=" + host() + ";DeviceId=" + id + ";SharedAccessKey=" + key;
  }

  /// The environment a user would set: the CA and the ports.
  std::vector<std::string> env() const {
    return {"SSL_CERT_FILE=" + dir_.file("ca.crt"),
            "DEVICEBOUND_HTTPS_PORT=" + std::to_string(https_port_)};
  }

  run_result run(std::vector<std::string> args, const std::string& login,
                 std::chrono::milliseconds timeout = 30s) {
    auto e = env();
    if (!login.empty())
      e.push_back("DEVICEBOUND_CONNECTION_STRING=" + login);
    cli_process p(args, e);
    return p.wait(timeout);
  }

  static json one_json(const run_result& r) {
    auto j = json::parse(r.out, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << "stdout: " << r.out << "\nstderr: " << r.err;
    return j;
  }
  /// The error a failing command printed (`--output json`: `{"error":{…}}` on stderr).
  static json error_of(const run_result& r) {
    auto j = json::parse(r.err, nullptr, false);
    EXPECT_TRUE(j.is_object() && j.contains("error")) << "stderr: " << r.err;
    return j.is_object() && j.contains("error") ? j["error"] : json::object();
  }

  support::temp_dir dir_{"devicebound-cli-"};
  std::unique_ptr<support::mosquitto_broker> broker_;
  std::unique_ptr<support::hub_daemon> hub_;
  std::uint16_t amqp_port_ = 0, https_port_ = 0;
};

#define EXPECT_EXIT_CODE(r, n) \
  EXPECT_EQ((r).code, (n)) << "stdout: " << (r).out << "\nstderr: " << (r).err

// --- device … -------------------------------------------------------------------------

TEST_F(cli, device_create_and_already_exists) {
  auto r = run({"device", "create", "-d", "dev3"}, owner());
  EXPECT_EXIT_CODE(r, 0);
  const json d = one_json(r);
  EXPECT_EQ(d["deviceId"], "dev3");
  EXPECT_EQ(d["status"], "enabled");
  EXPECT_FALSE(d["authentication"]["symmetricKey"]["primaryKey"].get<std::string>().empty());

  r = run({"device", "create", "-d", "dev3"}, owner());
  EXPECT_EXIT_CODE(r, 1);
  EXPECT_EQ(error_of(r)["code"], "DeviceAlreadyExists");
  EXPECT_EQ(error_of(r)["errorCode"], 409001);
}

TEST_F(cli, device_show_and_unknown_device) {
  auto r = run({"device", "show", "-d", "dev1"}, owner());
  EXPECT_EXIT_CODE(r, 0);
  EXPECT_EQ(one_json(r)["authentication"]["symmetricKey"]["primaryKey"], device_key);

  r = run({"device", "show", "-d", "nobody"}, owner());
  EXPECT_EXIT_CODE(r, 4);
  EXPECT_EQ(error_of(r)["code"], "DeviceNotFound");
  EXPECT_EQ(error_of(r)["errorCode"], 404001);
}

TEST_F(cli, device_list_table_and_wrong_key) {
  auto r = run({"device", "list", "--output", "table"}, owner());
  EXPECT_EXIT_CODE(r, 0);
  EXPECT_NE(r.out.find("DEVICE ID"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("dev1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("dev2"), std::string::npos) << r.out;

  r = run({"device", "list"}, owner());
  EXPECT_EXIT_CODE(r, 0);
  EXPECT_EQ(one_json(r).size(), 2u);

  const std::string bad =
      "HostName=" + host() + ";SharedAccessKeyName=iothubowner;SharedAccessKey=" + wrong_key;
  r = run({"device", "list", "-o", "table"}, bad);
  EXPECT_EXIT_CODE(r, 3);
  EXPECT_NE(r.err.find("error: IotHubUnauthorizedAccess (401002)"), std::string::npos) << r.err;

  // A policy without RegistryRead (service: ServiceConnect only) is refused the same way.
  r = run({"device", "list"}, service());
  EXPECT_EXIT_CODE(r, 3);
}

TEST_F(cli, device_delete_stale_etag_and_unknown) {
  auto r = run({"device", "show", "-d", "dev2"}, owner());
  ASSERT_EQ(r.code, 0);
  const std::string etag = one_json(r)["etag"];
  r = run({"device", "delete", "-d", "dev2", "--etag", etag + "9"}, owner());
  EXPECT_EXIT_CODE(r, 1);
  EXPECT_EQ(error_of(r)["code"], "PreconditionFailed");

  r = run({"device", "delete", "-d", "dev2", "--etag", etag}, owner());
  EXPECT_EXIT_CODE(r, 0);
  EXPECT_EQ(r.out, "");
  r = run({"device", "delete", "-d", "dev2"}, owner());
  EXPECT_EXIT_CODE(r, 4);
  EXPECT_EQ(error_of(r)["code"], "DeviceNotFound");
}

TEST_F(cli, device_connection_string_works_for_the_device) {
  auto r = run({"device", "connection-string", "-d", "dev1"}, owner());
  EXPECT_EXIT_CODE(r, 0);
  const std::string cs = one_json(r)["connectionString"];
  EXPECT_EQ(cs, device("dev1"));
  // ... and the device can use it (no message yet: exit 4); --login wins over the environment.
  r = run({"c2d", "receive", "--login", cs}, owner());
  EXPECT_EXIT_CODE(r, 4);
  EXPECT_EQ(error_of(r)["code"], "NoMessage");

  r = run({"device", "connection-string", "-d", "nobody", "-o", "table"}, owner());
  EXPECT_EXIT_CODE(r, 4);
  EXPECT_NE(r.err.find("error: DeviceNotFound (404001)"), std::string::npos) << r.err;
}

// --- policy … -------------------------------------------------------------------------

TEST_F(cli, policy_create_list_renew_key_delete_round_trip) {
  auto r =
      run({"policy", "create", "-n", "backend", "--permissions", "RegistryRead", "ServiceConnect"},
          owner());
  EXPECT_EXIT_CODE(r, 0);
  json p = one_json(r);
  EXPECT_EQ(p["keyName"], "backend");
  EXPECT_EQ(p["rights"], "RegistryRead, ServiceConnect");
  const std::string first = p["primaryKey"];
  const std::string second = p["secondaryKey"];
  EXPECT_FALSE(first.empty());
  EXPECT_NE(first, second);
  const auto as_backend = [&](const std::string& key) {
    return "HostName=" + host() + ";SharedAccessKeyName=backend;SharedAccessKey=" + key;
  };
  // the new policy works at once (RegistryRead)
  EXPECT_EXIT_CODE(run({"device", "list"}, as_backend(first)), 0);

  r = run({"policy", "create", "-n", "backend", "--permissions", "ServiceConnect"}, owner());
  EXPECT_EXIT_CODE(r, 1);
  EXPECT_EQ(error_of(r)["code"], "InvalidOperation");

  r = run({"policy", "list", "-o", "table"}, owner());
  EXPECT_EXIT_CODE(r, 0);
  EXPECT_NE(r.out.find("KEY NAME"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("backend"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("iothubowner"), std::string::npos) << r.out;
  r = run({"policy", "list"}, owner());
  EXPECT_EXIT_CODE(r, 0);
  EXPECT_EQ(one_json(r).size(), 3u);  // iothubowner, service, backend

  r = run({"policy", "renew-key", "-n", "backend", "--renew-key", "primary"}, owner());
  EXPECT_EXIT_CODE(r, 0);
  p = one_json(r);
  const std::string renewed = p["primaryKey"];
  EXPECT_NE(renewed, first);
  EXPECT_EQ(p["secondaryKey"], second);
  EXPECT_EXIT_CODE(run({"device", "list"}, as_backend(first)), 3);  // the old key: refused
  EXPECT_EXIT_CODE(run({"device", "list"}, as_backend(renewed)), 0);
  EXPECT_EXIT_CODE(run({"device", "list"}, as_backend(second)), 0);

  r = run({"policy", "show", "-n", "backend"}, owner());
  EXPECT_EXIT_CODE(r, 0);
  EXPECT_EQ(one_json(r)["primaryKey"], renewed);

  r = run({"policy", "delete", "-n", "backend"}, owner());
  EXPECT_EXIT_CODE(r, 0);
  EXPECT_EQ(r.out, "");
  EXPECT_EXIT_CODE(run({"device", "list"}, as_backend(second)), 3);
  r = run({"policy", "show", "-n", "backend"}, owner());
  EXPECT_EXIT_CODE(r, 4);
  EXPECT_EQ(error_of(r)["code"], "PolicyNotFound");
}

TEST_F(cli, policy_commands_need_every_right_and_keep_an_administrator) {
  auto r = run({"policy", "list"}, service());
  EXPECT_EXIT_CODE(r, 3);
  EXPECT_EQ(error_of(r)["code"], "IotHubUnauthorizedAccess");
  r = run({"policy", "delete", "-n", "iothubowner"}, owner());
  EXPECT_EXIT_CODE(r, 1);
  EXPECT_EQ(error_of(r)["code"], "InvalidOperation");
  EXPECT_NE(error_of(r)["message"].get<std::string>().find("last policy"), std::string::npos);
  // bad flags: exit 2, nothing sent
  EXPECT_EXIT_CODE(run({"policy", "create", "-n", "x", "--permissions", "Root"}, owner()), 2);
  EXPECT_EXIT_CODE(run({"policy", "renew-key", "-n", "service", "--renew-key", "third"}, owner()),
                   2);
  EXPECT_EXIT_CODE(run({"policy", "create", "-n", "x", "--permissions", ", "}, owner()), 2);
  // one quoted argument, spaces and commas mixed
  r = run({"policy", "create", "-n", "mixed", "--permissions", "DeviceConnect, RegistryWrite"},
          owner());
  EXPECT_EXIT_CODE(r, 0);
  EXPECT_EQ(one_json(r)["rights"], "RegistryWrite, DeviceConnect");
  EXPECT_EXIT_CODE(run({"policy", "delete", "-n", "mixed"}, owner()), 0);
  r = run({"policy", "renew-key", "-n", "nobody", "--renew-key", "swap"}, owner());
  EXPECT_EXIT_CODE(r, 4);
  r = run({"policy", "list"}, owner());
  EXPECT_EQ(one_json(r).size(), 2u);
}

// --- c2d … ----------------------------------------------------------------------------

TEST_F(cli, send_receive_complete_and_feedback_round) {
  auto r = run({"c2d", "send", "-d", "dev1", "--data", "hello", "--props", "a=1;b=two", "--ack",
                "full", "--message-id", "m-1", "--correlation-id", "c-1", "--content-type",
                "text/plain", "--content-encoding", "utf-8"},
               service());
  EXPECT_EXIT_CODE(r, 0);
  EXPECT_EQ(one_json(r)["messageIds"], json::array({"m-1"}));

  r = run({"c2d", "receive"}, device("dev1"));
  EXPECT_EXIT_CODE(r, 0);
  const json m = one_json(r);
  EXPECT_EQ(m["data"], "hello");
  EXPECT_EQ(m["properties"]["app"]["a"], "1");
  EXPECT_EQ(m["properties"]["app"]["b"], "two");
  EXPECT_EQ(m["properties"]["system"]["messageId"], "m-1");
  EXPECT_EQ(m["properties"]["system"]["correlationId"], "c-1");
  EXPECT_EQ(m["properties"]["system"]["ack"], "full");
  EXPECT_EQ(m["properties"]["system"]["contentType"], "text/plain");
  const std::string etag = m["etag"];
  ASSERT_EQ(etag.size(), 36u);

  r = run({"c2d", "complete", "--etag", etag}, device("dev1"));
  EXPECT_EXIT_CODE(r, 0);
  // The lock is gone now: the documented stale-etag error.
  r = run({"c2d", "complete", "--etag", etag}, device("dev1"));
  EXPECT_EXIT_CODE(r, 4);
  EXPECT_EQ(error_of(r)["code"], "DeviceMessageLockLost");
  EXPECT_EQ(error_of(r)["errorCode"], 412002);

  r = run({"feedback", "watch", "--wait-on-msg", "m-1", "--timeout", "20"}, service());
  EXPECT_EXIT_CODE(r, 0);
  const json f = one_json(r);
  EXPECT_EQ(f["originalMessageId"], "m-1");
  EXPECT_EQ(f["deviceId"], "dev1");
  EXPECT_EQ(f["statusCode"], "Success");
}

TEST_F(cli, send_errors_unknown_device_wrong_key_bad_props_no_login) {
  auto r = run({"c2d", "send", "-d", "nobody", "--data", "x"}, service());
  EXPECT_EXIT_CODE(r, 4);
  EXPECT_EQ(error_of(r)["code"], "DeviceNotFound");

  const std::string bad =
      "HostName=" + host() + ";SharedAccessKeyName=service;SharedAccessKey=" + wrong_key;
  r = run({"c2d", "send", "-d", "dev1", "--data", "x"}, bad);
  EXPECT_EXIT_CODE(r, 3);

  r = run({"c2d", "send", "-d", "dev1", "--props", "novalue"}, service());
  EXPECT_EXIT_CODE(r, 2);
  r = run({"c2d", "send", "-d", "dev1", "--ack", "sometimes"}, service());
  EXPECT_EXIT_CODE(r, 2);
  r = run({"c2d", "send", "-d", "dev1"}, "");
  EXPECT_EXIT_CODE(r, 2);
  EXPECT_NE(r.err.find("DEVICEBOUND_CONNECTION_STRING"), std::string::npos) << r.err;
}

TEST_F(cli, unreachable_hub_is_unavailable) {
  const auto port = support::free_port();
  auto r =
      run({"c2d", "purge", "-d", "dev1", "--https-port", std::to_string(port), "--timeout", "5"},
          owner());
  EXPECT_EXIT_CODE(r, 5);
  r = run({"c2d", "send", "-d", "dev1", "--amqp-port", std::to_string(port), "--timeout", "5"},
          service());
  EXPECT_EXIT_CODE(r, 5);
}

TEST_F(cli, untrusted_certificate_is_unavailable_and_says_why) {
  // Another CA than the one that signed the hub's certificate.
  const std::string other = std::string("bash '") + DEVICEBOUND_TEST_CERTS_SCRIPT + "' '" +
                            dir_.file("other") + "' >/dev/null 2>&1";
  ASSERT_EQ(std::system(other.c_str()), 0);
  auto e = env();
  e[0] = "SSL_CERT_FILE=" + dir_.file("other/ca.crt");
  e.push_back("DEVICEBOUND_CONNECTION_STRING=" + owner());
  cli_process p({"device", "list", "-o", "table"}, e);
  const auto r = p.wait();
  EXPECT_EXIT_CODE(r, 5);
  EXPECT_NE(r.err.find("--ca-file"), std::string::npos) << r.err;
}

TEST_F(cli, receive_no_message_and_wrong_device_key) {
  auto r = run({"c2d", "receive", "-o", "table"}, device("dev1"));
  EXPECT_EXIT_CODE(r, 4);
  EXPECT_NE(r.err.find("error: NoMessage"), std::string::npos) << r.err;
  r = run({"c2d", "receive"}, device("dev1", wrong_key));
  EXPECT_EXIT_CODE(r, 3);
  // On behalf of an unknown device: the hub refuses the device-scoped token (401).
  r = run({"c2d", "receive", "-d", "nobody"}, owner());
  EXPECT_EXIT_CODE(r, 3);
  EXPECT_EQ(error_of(r)["code"], "IotHubUnauthorizedAccess");
}

TEST_F(cli, reject_and_abandon_with_stale_etags) {
  ASSERT_EQ(run({"c2d", "send", "-d", "dev1", "--data", "one", "--ack", "negative", "--message-id",
                 "r-1"},
                service())
                .code,
            0);
  // As the device, through a service connection string on its behalf (-d).
  auto r = run({"c2d", "receive", "-d", "dev1"}, owner());
  ASSERT_EQ(r.code, 0) << r.err;
  std::string etag = one_json(r)["etag"];
  const std::string first_count = one_json(r)["properties"]["system"]["deliveryCount"];
  r = run({"c2d", "abandon", "-d", "dev1", "--etag", etag}, owner());
  EXPECT_EXIT_CODE(r, 0);
  r = run({"c2d", "abandon", "-d", "dev1", "--etag", etag}, owner());
  EXPECT_EXIT_CODE(r, 4);
  EXPECT_EQ(error_of(r)["code"], "DeviceMessageLockLost");

  r = run({"c2d", "receive"}, device("dev1"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(std::stoi(one_json(r)["properties"]["system"]["deliveryCount"].get<std::string>()),
            std::stoi(first_count) + 1);
  etag = one_json(r)["etag"];
  r = run({"c2d", "reject", "--etag", etag}, device("dev1"));
  EXPECT_EXIT_CODE(r, 0);
  r = run({"c2d", "reject", "--etag", etag}, device("dev1"));
  EXPECT_EXIT_CODE(r, 4);

  r = run({"feedback", "watch", "-w", "r-1", "-t", "20", "-o", "table"}, service());
  EXPECT_EXIT_CODE(r, 0);
  EXPECT_NE(r.out.find("Rejected"), std::string::npos) << r.out;
}

TEST_F(cli, purge_and_unknown_device) {
  for (int i = 0; i < 2; ++i)
    ASSERT_EQ(run({"c2d", "send", "-d", "dev1", "--data", "x"}, service()).code, 0);
  auto r = run({"c2d", "purge", "-d", "dev1"}, owner());
  EXPECT_EXIT_CODE(r, 0);
  EXPECT_EQ(one_json(r)["totalMessagesPurged"], 2);
  r = run({"c2d", "receive"}, device("dev1"));
  EXPECT_EXIT_CODE(r, 4);
  r = run({"c2d", "purge", "-d", "nobody"}, owner());
  EXPECT_EXIT_CODE(r, 4);
  EXPECT_EQ(error_of(r)["code"], "DeviceNotFound");
}

TEST_F(cli, send_repeat_wait_on_feedback_expired) {
  // Nobody receives: the messages expire and the hub sends Expired feedback for each.
  const auto expiry = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch() + 2s)
                          .count();
  const auto r = run(
      {"c2d", "send", "-d", "dev1", "--data", "n", "--repeat", "3", "--message-id", "rep", "--ack",
       "negative", "--expiry", std::to_string(expiry), "--wait-on-feedback", "--timeout", "30"},
      service(), 40s);
  EXPECT_EXIT_CODE(r, 0);
  const json j = one_json(r);
  EXPECT_EQ(j["sent"], 3);
  EXPECT_EQ(j["messageIds"], json::array({"rep-1", "rep-2", "rep-3"}));
  ASSERT_EQ(j["feedback"].size(), 3u);
  for (const auto& f : j["feedback"])
    EXPECT_EQ(f["statusCode"], "Expired");
}

TEST_F(cli, receive_over_amqp_and_complete) {
  ASSERT_EQ(run({"c2d", "send", "-d", "dev1", "--data", "over amqp", "--ack", "positive",
                 "--message-id", "a-1", "-p", "k=v"},
                service())
                .code,
            0);
  auto r = run({"c2d", "receive", "--transport", "amqp", "--complete", "--timeout", "20"},
               device("dev1"));
  EXPECT_EXIT_CODE(r, 0);
  const json m = one_json(r);
  EXPECT_EQ(m["data"], "over amqp");
  EXPECT_EQ(m["properties"]["app"]["k"], "v");
  EXPECT_EQ(m["properties"]["system"]["messageId"], "a-1");
  r = run({"feedback", "watch", "-w", "a-1", "-t", "20"}, service());
  EXPECT_EXIT_CODE(r, 0);
  EXPECT_EQ(one_json(r)["statusCode"], "Success");
  // Nothing left: the AMQP receive times out with the documented error.
  r = run({"c2d", "receive", "--transport", "amqp", "--timeout", "1"}, device("dev1"));
  EXPECT_EXIT_CODE(r, 4);
  EXPECT_EQ(error_of(r)["code"], "NoMessage");
}

TEST_F(cli, feedback_watch_timeout_and_wrong_key) {
  auto r = run({"feedback", "watch", "--wait-on-msg", "never", "--timeout", "1"}, service());
  EXPECT_EXIT_CODE(r, 5);
  EXPECT_EQ(error_of(r)["code"], "Timeout");
  // Without --wait-on-msg a time-out is the normal end.
  r = run({"feedback", "watch", "--timeout", "1"}, service());
  EXPECT_EXIT_CODE(r, 0);
  const std::string bad =
      "HostName=" + host() + ";SharedAccessKeyName=service;SharedAccessKey=" + wrong_key;
  r = run({"feedback", "watch", "--timeout", "5"}, bad);
  EXPECT_EXIT_CODE(r, 3);
}

TEST_F(cli, usage_errors_exit_2) {
  auto r = run({"c2d", "complete"}, device("dev1"));  // --etag missing
  EXPECT_EXIT_CODE(r, 2);
  r = run({"device", "show", "-d", "dev1"}, device("dev1"));  // a device string
  EXPECT_EXIT_CODE(r, 2);
  r = run({"c2d", "receive"}, owner());  // a service string without -d
  EXPECT_EXIT_CODE(r, 2);
  r = run({"device", "list"}, "HostName=x;Nonsense=1");
  EXPECT_EXIT_CODE(r, 2);
}

}  // namespace

#else
TEST(cli, skipped) {
  DEVICEBOUND_MISSING_PART("built without the CLI's client commands (Qpid Proton, libcrypto)");
}
#endif
