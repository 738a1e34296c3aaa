// A program `devicebound up` runs (mosquitto, devicebound-hub): started with
// its output on a pipe, tracked by PID, stopped by PID. Its output goes to a
// log file in the state directory, and line by line to a callback (which
// decides what the terminal sees and notices readiness).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace devicebound::cli {

/// What the children's reader threads and the signal thread wake the main
/// thread through.
struct wakeup {
  std::mutex m;
  std::condition_variable cv;
  bool interrupted = false;  ///< SIGINT or SIGTERM arrived
  int signal = 0;
};

class child_process {
 public:
  using line_handler = std::function<void(std::string_view line)>;

  child_process(std::string name, wakeup& w) : name_(std::move(name)), wake_(w) {}
  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;
  ~child_process();

  /// Starts `argv` (argv[0] a path) in its own process group, killed with
  /// SIGTERM if this process dies. Empty string, or why it could not start.
  std::string start(const std::vector<std::string>& argv, const std::string& log_path,
                    line_handler on_line);

  /// Waits (under `wake_.m`, held by `lock`) until `ready(output)` holds, the
  /// child's output ends (it exited), an interruption, or `deadline`.
  enum class outcome { ready, exited, interrupted, timed_out };
  outcome wait_until(std::unique_lock<std::mutex>& lock,
                     std::chrono::steady_clock::time_point deadline,
                     const std::function<bool(const std::string& output)>& ready);

  /// SIGTERM, then SIGKILL after `grace`; reaps it. Returns its exit status text.
  std::string stop(std::chrono::milliseconds grace);

  /// True once its output ended (it exited or closed it). Under `wake_.m`.
  bool ended() const { return eof_; }
  /// Reaps an ended child: "exit code N" / "signal N".
  std::string reap();
  /// Everything it printed so far (the last 256 KiB). Under `wake_.m`.
  const std::string& output() const { return output_; }
  pid_t pid() const { return pid_; }
  const std::string& name() const { return name_; }

 private:
  void pump(int fd, std::FILE* log, line_handler on_line);

  std::string name_;
  wakeup& wake_;
  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
  bool eof_ = false;
  std::string output_;
  std::thread reader_;
};

}  // namespace devicebound::cli
