#include "auth_file.hpp"

#include <devicebound/auth/rights.hpp>
#include <fstream>
#include <sstream>

namespace devicebound::hubd {

auth::device_key_lookup auth_registry::device_lookup() const {
  return [this](std::string_view id) -> std::optional<auth::device_credentials> {
    auto it = devices.find(id);
    if (it == devices.end())
      return std::nullopt;
    return it->second;
  };
}

namespace {

auth::access_rights default_rights(std::string_view policy) {
  for (const auto& p : auth::default_policies)
    if (p.name == policy)
      return p.rights;
  return auth::access_rights::service_connect;
}

}  // namespace

result<auth_registry> parse_auth_file(std::string_view text, std::string_view name) {
  auth_registry out;
  std::size_t line_no = 0;
  while (!text.empty()) {
    const std::size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    ++line_no;
    const auto fail = [&](std::string what) {
      return make_error(errc::argument_invalid,
                        std::string(name) + ":" + std::to_string(line_no) + ": " + what);
    };
    if (!line.empty() && line.back() == '\r')
      line.remove_suffix(1);
    if (line.starts_with('#'))
      continue;
    // Fields separated by blanks; for a policy, everything after the key is its rights.
    std::vector<std::string_view> fields;
    std::string_view rest = line;
    const auto blank = [](char c) {
      return c == ' ' || c == '\t';
    };
    while (!rest.empty() && fields.size() < 3) {
      while (!rest.empty() && blank(rest.front()))
        rest.remove_prefix(1);
      if (rest.empty())
        break;
      std::size_t end = 0;
      while (end < rest.size() && !blank(rest[end]))
        ++end;
      fields.push_back(rest.substr(0, end));
      rest.remove_prefix(end);
    }
    while (!rest.empty() && blank(rest.front()))
      rest.remove_prefix(1);
    if (fields.empty())
      continue;
    if (fields[0] == "policy") {
      if (fields.size() < 3)
        return fail("expected 'policy {name} {base64 key} [rights]'");
      auto key = auth::shared_access_key::from_base64(fields[2]);
      if (!key)
        return fail("policy " + std::string(fields[1]) + ": " + key.error().message);
      auth::shared_access_policy p;
      p.name = std::string(fields[1]);
      p.primary_key = std::move(*key);
      if (rest.empty()) {
        p.rights = default_rights(p.name);
      } else {
        auto r = auth::parse_access_rights(rest);
        if (!r)
          return fail("policy " + p.name + ": " + r.error().message);
        p.rights = *r;
      }
      if (auth::find_policy(out.policies, p.name))
        return fail("policy " + p.name + " is listed twice");
      out.policies.push_back(std::move(p));
      continue;
    }
    if (fields.size() != 2 || !rest.empty())
      return fail("expected '{deviceId} {base64 key}' or 'policy {name} {base64 key} [rights]'");
    auto key = auth::shared_access_key::from_base64(fields[1]);
    if (!key)
      return fail("device " + std::string(fields[0]) + ": " + key.error().message);
    auth::device_credentials c;
    c.primary_key = std::move(*key);
    if (!out.devices.emplace(std::string(fields[0]), std::move(c)).second)
      return fail("device " + std::string(fields[0]) + " is listed twice");
  }
  return out;
}

result<auth_registry> load_auth_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return make_error(errc::argument_invalid, "cannot read the auth file " + path);
  std::ostringstream s;
  s << in.rdbuf();
  return parse_auth_file(s.str(), path);
}

}  // namespace devicebound::hubd
