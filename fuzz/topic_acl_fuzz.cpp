// Fuzzes the mosquitto plugin's topic ACL (broker/plugin/topic_acl.hpp,
// docs/stock-devices.md "Access control"). The input is up to three lines:
// the client id, the MQTT username, the topic or subscription filter (a
// missing line gets a default; bytes after a NUL are dropped, as mosquitto
// hands the plugin C strings). Every input is checked for each of the 16 sets
// of rights (RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect) and
// as a device and as a back end. Besides memory safety it checks:
//   - filter_matches agrees with a level-by-level reference matcher;
//   - `allowed` (read and write) agrees with a reference of the rule written
//     independently over the topic's levels (`reference_allowed`);
//   - a device never has a right a back end with every right lacks, and more
//     rights never take a topic away from a back end;
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

/// The rights of one set, by IoT Hub's bits: 1 RegistryRead, 2 (with 1)
/// RegistryWrite, 4 ServiceConnect, 8 DeviceConnect.
struct rights_bits {
  unsigned bits = 0;
  bool registry_write() const { return (bits & 3u) == 3u; }
  bool service() const { return (bits & 4u) != 0; }
  bool device() const { return (bits & 8u) != 0; }
};

/// docs/stock-devices.md "Access control", level by level: `level(i)` is the
/// i-th level or nothing. A device reads its own devices/{id}/..., its own
/// devicebound/device/{id}/... and devicebound/status/...; it writes its own
/// devices/{id}/... except under messages/devicebound, and its own requests
/// devicebound/hub/device/{id}/.... A back end: devices/{id}/... read with
/// DeviceConnect; devices/{any}/messages/devicebound[/...] written with
/// ServiceConnect, other devices/{id}/... with DeviceConnect; its own pushes
/// devicebound/{party}/{id}/... read with the party's right (device:
/// DeviceConnect, service: ServiceConnect, admin: RegistryWrite); requests
/// devicebound/hub/{party}/{id}/... written in its own name with the party's
/// right (any other party: no right), read (anyone's) with ServiceConnect, as
/// devicebound/broker/...; devicebound/status/... and the pushes written with
/// ServiceConnect; devicebound/broker/... never written; anything else read
/// and written by every back end.
bool reference_allowed(bool write, std::string_view topic, const std::string& id, bool device,
                       rights_bits r) {
  const auto levels = split_levels(topic);
  const auto level = [&](std::size_t i) -> const std::string* {
    return i < levels.size() ? &levels[i] : nullptr;
  };
  const auto is = [&](std::size_t i, std::string_view v) {
    return level(i) != nullptr && *level(i) == v;
  };
  const bool own_device_topic = is(0, "devices") && is(1, id);
  if (is(0, "devices")) {
    const bool devicebound = is(2, "messages") && is(3, "devicebound");
    if (device)
      return own_device_topic && (!write || !devicebound);
    if (write && devicebound)
      return r.service();
    return own_device_topic && r.device();
  }
  if (!is(0, "devicebound") || level(1) == nullptr)
    return !device;
  const std::string& second = *level(1);
  const auto party_right = [&](const std::string* party) {
    if (party == nullptr)
      return true;
    if (*party == "device")
      return r.device();
    if (*party == "service")
      return r.service();
    if (*party == "admin")
      return r.registry_write();
    return true;
  };
  if (second == "broker")
    return !write && !device && r.service();
  if (second == "status")
    return write ? !device && r.service() : true;
  if (second == "device" || second == "service" || second == "admin") {
    if (write)
      return !device && r.service();
    if (!is(2, id))
      return false;
    return device ? second == "device" : party_right(&second);
  }
  if (second == "hub") {
    if (!write)
      return !device && r.service();
    if (!is(3, id))
      return false;
    return device ? is(2, "device") : party_right(level(2));
  }
  return !device;
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

  using acl::access;
  using acl::access_rights;
  constexpr access_rights all = access_rights::all;
  for (std::string_view t : {std::string_view(topic), stripped}) {
    const acl::place pl = acl::classify(t, id);
    for (unsigned bits = 0; bits < 16; ++bits) {
      const auto rights = static_cast<access_rights>(bits);
      for (bool as_device : {false, true}) {
        if (pl.area == acl::area::broker && acl::may_write(pl, as_device, rights))
          fail();
        // The decision against the rule written independently. `t` as it is:
        // a read strips "$share/{group}/" itself, a write never does.
        for (bool write : {false, true}) {
          const bool got =
              acl::allowed(write ? access::write : access::read, t, id, as_device, rights);
          const std::string_view as_asked = write ? t : acl::strip_share(t);
          if (got != reference_allowed(write, as_asked, id, as_device, rights_bits{bits}))
            fail();
        }
      }
      // More rights never take a topic away from a back end.
      if (acl::may_read(pl, false, rights) && !acl::may_read(pl, false, all))
        fail();
      if (acl::may_write(pl, false, rights) && !acl::may_write(pl, false, all))
        fail();
      // A device never has a right a back end with every right lacks.
      if (acl::may_read(pl, true, rights) && !acl::may_read(pl, false, all))
        fail();
      if (acl::may_write(pl, true, rights) && !acl::may_write(pl, false, all))
        fail();
    }
    if (!valid_id)
      continue;
    const auto device_rights = access_rights::device_connect;
    if (acl::may_read(pl, true, device_rights) && !device_may_read_by_rule(t, id))
      fail();
    if (acl::may_write(pl, true, device_rights) && !device_may_write_by_rule(t, id))
      fail();
    // A filter a device may subscribe to only matches what it may read.
    if (acl::may_read(pl, true, device_rights)) {
      for (const std::string fill : {"x", "other", "messages"}) {
        const std::string instance = instance_of(t, fill);
        if (!acl::may_read(acl::classify(instance, id), true, device_rights))
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
