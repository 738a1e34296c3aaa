// A main() for libFuzzer targets that replays saved inputs instead of fuzzing,
// so every fuzz target builds with any compiler and CI re-runs the committed
// corpus (fmt does the same). Usage:
//
//   <stem>_replay [file-or-directory]...
//
// Directories are walked recursively, files are replayed in sorted order, each
// from its own exactly-sized buffer so sanitizers catch reads past the end.
// With no inputs at all, the empty input is replayed once.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

namespace fs = std::filesystem;

bool collect(const fs::path& path, std::vector<fs::path>& inputs) {
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (ec || !fs::exists(status)) {
    std::fprintf(stderr, "replay: no such file or directory: %s\n", path.string().c_str());
    return false;
  }
  if (fs::is_directory(status)) {
    std::vector<fs::path> found;
    for (const auto& entry : fs::recursive_directory_iterator(path, ec)) {
      if (entry.is_regular_file()) {
        found.push_back(entry.path());
      }
    }
    if (ec) {
      std::fprintf(stderr, "replay: cannot read %s: %s\n", path.string().c_str(),
                   ec.message().c_str());
      return false;
    }
    std::sort(found.begin(), found.end());
    inputs.insert(inputs.end(), found.begin(), found.end());
    return true;
  }
  inputs.push_back(path);
  return true;
}

bool replay(const fs::path& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    std::fprintf(stderr, "replay: cannot open %s\n", path.string().c_str());
    return false;
  }
  const std::vector<char> bytes{std::istreambuf_iterator<char>(file),
                                std::istreambuf_iterator<char>()};
  const auto size = bytes.size();
  const std::unique_ptr<std::uint8_t[]> data(new std::uint8_t[size]);
  std::copy(bytes.begin(), bytes.end(), data.get());
  // Name the input before running it, so a crash report says which one.
  std::printf("replay: %s (%zu bytes)\n", path.string().c_str(), size);
  std::fflush(stdout);
  LLVMFuzzerTestOneInput(data.get(), size);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<fs::path> inputs;
  bool ok = true;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::printf("usage: %s [file-or-directory]...\n", argv[0]);
      return 0;
    }
    if (arg.starts_with("-")) {
      std::fprintf(stderr, "replay: ignoring libFuzzer-style flag %s\n", argv[i]);
      continue;
    }
    ok = collect(argv[i], inputs) && ok;
  }
  if (!ok) {
    return 2;
  }

  if (inputs.empty()) {
    const std::unique_ptr<std::uint8_t[]> empty(new std::uint8_t[0]);
    LLVMFuzzerTestOneInput(empty.get(), 0);
    std::printf("replayed 0 inputs (ran the empty input once)\n");
    return 0;
  }
  std::size_t replayed = 0;
  for (const auto& input : inputs) {
    if (!replay(input)) {
      return 2;
    }
    ++replayed;
  }
  std::printf("replayed %zu inputs\n", replayed);
  return 0;
}
