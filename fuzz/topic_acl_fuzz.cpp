// Fuzzes the mosquitto plugin's topic ACL (broker/plugin/topic_acl.hpp,
// docs/stock-devices.md "Access control"). The input is up to three lines:
// the client id, the MQTT username, the topic or subscription filter (a
// missing line gets a default; bytes after a NUL are dropped, as mosquitto
// hands the plugin C strings). Besides memory safety it checks:
//   - filter_matches agrees with a level-by-level reference matcher;
//   - a device never has a right a back end lacks;
//   - what a device may read or write is confined to its own topics
//     (devices/{id}, devicebound/device/{id}, devicebound/hub/device/{id},
//     devicebound/status), never its own device-bound area for writing, and a
//     wildcard filter it may subscribe to matches only topics it may read;
//   - nobody writes the plugin's events (devicebound/broker/...);
//   - strip_share and parse_device_username return pieces of their input.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "../broker/plugin/topic_acl.hpp"

namespace {

namespace acl = devicebound::broker;

std::vector<std::string> split_levels(std::string_view s) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (;;) {
    const std::size_t slash = s.find('/', start);
    if (slash == std::string_view::npos) {
      out.emplace_back(s.substr(start));
      return out;
    }
    out.emplace_back(s.substr(start, slash - start));
    start = slash + 1;
  }
}

/// MQTT filter matching by levels: "+" is one level, "#" as the last level is
/// any number of levels (zero included); anything else compares literally.
bool reference_matches(std::string_view filter, std::string_view topic) {
  const auto f = split_levels(filter);
  const auto t = split_levels(topic);
  for (std::size_t i = 0; i < f.size(); ++i) {
    if (f[i] == "#" && i + 1 == f.size())
      return true;
    if (i >= t.size())
      return false;
    if (f[i] == "+")
      continue;
    if (f[i] != t[i])
      return false;
  }
  return f.size() == t.size();
}

/// `topic` is `prefix` or below it.
bool at_or_below(std::string_view topic, const std::string& prefix) {
  return topic == prefix || topic.starts_with(prefix + "/");
}

bool device_may_read_by_rule(std::string_view topic, const std::string& id) {
  return at_or_below(topic, "devices/" + id) || at_or_below(topic, "devicebound/device/" + id) ||
         at_or_below(topic, "devicebound/status");
}

bool device_may_write_by_rule(std::string_view topic, const std::string& id) {
  if (at_or_below(topic, "devicebound/hub/device/" + id))
    return true;
  return at_or_below(topic, "devices/" + id) &&
         !at_or_below(topic, "devices/" + id + "/messages/devicebound");
}

/// A topic the filter matches, with its wildcards filled in by `fill`.
std::string instance_of(std::string_view filter, const std::string& fill) {
  std::string out;
  const auto levels = split_levels(filter);
  for (std::size_t i = 0; i < levels.size(); ++i) {
    if (i > 0)
      out += '/';
    if (levels[i] == "+")
      out += fill;
    else if (levels[i] == "#" && i + 1 == levels.size())
      out += fill + "/" + fill;
    else
      out += levels[i];
  }
  return out;
}

[[noreturn]] void fail() {
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  if (const auto nul = input.find('\0'); nul != std::string_view::npos)
    input = input.substr(0, nul);
  std::vector<std::string> lines;
  for (std::size_t start = 0; lines.size() < 2;) {
    const std::size_t nl = input.find('\n', start);
    if (nl == std::string_view::npos)
      break;
    lines.emplace_back(input.substr(start, nl - start));
    input.remove_prefix(nl + 1);
  }
  const std::string id = lines.size() > 0 ? lines[0] : "dev1";
  const std::string username = lines.size() > 1 ? lines[1] : "hub.example/dev1/?api-version=1";
  const std::string topic(input);

  // Memory safety on everything, with C strings as mosquitto passes them.
  const bool device = acl::is_device_client(username.c_str(), id);
  const auto parsed = acl::parse_device_username(username.c_str());
  if (parsed) {
    if (parsed->device.empty())
      fail();
    const std::string prefix = std::string(parsed->host) + "/" + std::string(parsed->device) + "/?";
    if (!username.starts_with(prefix))
      fail();
  }
  if (device != (parsed && parsed->device == id))
    fail();

  const std::string_view stripped = acl::strip_share(topic);
  if (stripped != topic) {
    if (!topic.starts_with("$share/") || !topic.ends_with(stripped))
      fail();
  }

  // The plugin refuses client ids that are empty or hold + # / at CONNECT;
  // the rules below hold for the ids it lets in.
  const bool valid_id = !id.empty() && !acl::has_wildcard_or_slash(id);

  for (std::string_view t : {std::string_view(topic), stripped}) {
    const acl::place pl = acl::classify(t, id);
    for (bool as_device : {false, true})
      if (pl.area == acl::area::broker && acl::may_write(pl, as_device))
        fail();
    // A device never has a right a back end lacks.
    if (acl::may_read(pl, true) && !acl::may_read(pl, false))
      fail();
    if (acl::may_write(pl, true) && !acl::may_write(pl, false))
      fail();
    if (!valid_id)
      continue;
    if (acl::may_read(pl, true) && !device_may_read_by_rule(t, id))
      fail();
    if (acl::may_write(pl, true) && !device_may_write_by_rule(t, id))
      fail();
    // A filter a device may subscribe to only matches what it may read.
    if (acl::may_read(pl, true)) {
      for (const std::string fill : {"x", "other", "messages"}) {
        const std::string instance = instance_of(t, fill);
        if (!acl::may_read(acl::classify(instance, id), true))
          fail();
      }
    }
  }

  // Filter matching against the reference, both ways round.
  const std::string other = id + "/" + username;
  if (acl::filter_matches(topic.c_str(), other.c_str()) != reference_matches(topic, other))
    fail();
  if (acl::filter_matches(topic.c_str(), id.c_str()) != reference_matches(topic, id))
    fail();
  if (acl::filter_matches(id.c_str(), topic.c_str()) != reference_matches(id, topic))
    fail();
  if (topic.find_first_of("+#") == std::string::npos) {
    // A filter without wildcards matches exactly itself.
    if (!acl::filter_matches(topic.c_str(), topic.c_str()))
      fail();
  }
  return 0;
}
