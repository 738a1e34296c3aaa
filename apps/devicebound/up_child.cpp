#include "up_child.hpp"

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>

extern char** environ;

namespace devicebound::cli {

namespace {
constexpr std::size_t output_kept = 256 * 1024;
}

child_process::~child_process() {
  if (pid_ > 0 && !reaped_)
    (void)stop(std::chrono::milliseconds(5000));
  if (reader_.joinable())
    reader_.join();
}

std::string child_process::start(const std::vector<std::string>& argv, const std::string& log_path,
                                 line_handler on_line) {
  std::FILE* log = std::fopen(log_path.c_str(), "we");
  if (!log)
    return "cannot write " + log_path + ": " + std::strerror(errno);
  int out[2], status[2];
  if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(status, O_CLOEXEC) != 0) {
    std::fclose(log);
    return std::string("pipe: ") + std::strerror(errno);
  }
  // Everything the child needs is made before fork: after it, only
  // async-signal-safe calls (the parent has threads).
  std::vector<char*> args;
  for (const auto& a : argv)
    args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t parent = ::getpid();
  const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);

  const pid_t pid = ::fork();
  if (pid < 0) {
    std::fclose(log);
    return std::string("fork: ") + std::strerror(errno);
  }
  if (pid == 0) {
    // Its own process group: a Ctrl-C on the terminal reaches `devicebound up`
    // only, which then stops the hub before the broker.
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent)
      ::_exit(127);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::signal(SIGPIPE, SIG_DFL);
    if (null_fd >= 0)
      ::dup2(null_fd, 0);
    ::dup2(out[1], 1);
    ::dup2(out[1], 2);
    ::execve(args[0], args.data(), environ);
    const int e = errno;
    (void)!::write(status[1], &e, sizeof e);
    ::_exit(127);
  }
  if (null_fd >= 0)
    ::close(null_fd);
  ::close(out[1]);
  ::close(status[1]);
  int exec_errno = 0;
  ssize_t n;
  do
    n = ::read(status[0], &exec_errno, sizeof exec_errno);
  while (n < 0 && errno == EINTR);
  ::close(status[0]);
  if (n == static_cast<ssize_t>(sizeof exec_errno)) {
    ::waitpid(pid, nullptr, 0);
    ::close(out[0]);
    std::fclose(log);
    return "cannot run " + argv[0] + ": " + std::strerror(exec_errno);
  }
  pid_ = pid;
  reader_ = std::thread([this, fd = out[0], log, h = std::move(on_line)] { pump(fd, log, h); });
  return {};
}

void child_process::pump(int fd, std::FILE* log, line_handler on_line) {
  std::string partial;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    std::fwrite(buf, 1, static_cast<std::size_t>(n), log);
    std::fflush(log);
    partial.append(buf, static_cast<std::size_t>(n));
    std::size_t start = 0, nl;
    std::vector<std::string> lines;
    while ((nl = partial.find('\n', start)) != std::string::npos) {
      lines.emplace_back(partial, start, nl - start);
      start = nl + 1;
    }
    partial.erase(0, start);
    {
      std::lock_guard g(wake_.m);
      for (const auto& l : lines) {
        output_ += l;
        output_ += '\n';
      }
      if (output_.size() > output_kept)
        output_.erase(0, output_.size() - output_kept);
    }
    for (const auto& l : lines)
      on_line(l);
    wake_.cv.notify_all();
  }
  ::close(fd);
  std::fclose(log);
  {
    std::lock_guard g(wake_.m);
    if (!partial.empty())
      output_ += partial;
    eof_ = true;
  }
  if (!partial.empty())
    on_line(partial);
  wake_.cv.notify_all();
}

child_process::outcome child_process::wait_until(
    std::unique_lock<std::mutex>& lock, std::chrono::steady_clock::time_point deadline,
    const std::function<bool(const std::string&)>& ready) {
  for (;;) {
    if (ready(output_))
      return outcome::ready;
    if (eof_)
      return outcome::exited;
    if (wake_.interrupted)
      return outcome::interrupted;
    if (wake_.cv.wait_until(lock, deadline) == std::cv_status::timeout) {
      if (ready(output_))
        return outcome::ready;
      return eof_ ? outcome::exited : outcome::timed_out;
    }
  }
}

std::string child_process::reap() {
  if (pid_ <= 0)
    return "not started";
  if (!reaped_) {
    while (::waitpid(pid_, &status_, 0) < 0 && errno == EINTR) {
    }
    reaped_ = true;
  }
  if (WIFEXITED(status_))
    return "exit code " + std::to_string(WEXITSTATUS(status_));
  if (WIFSIGNALED(status_))
    return std::string("signal ") + std::to_string(WTERMSIG(status_));
  return "status " + std::to_string(status_);
}

std::string child_process::stop(std::chrono::milliseconds grace) {
  if (pid_ <= 0)
    return "not started";
  if (!reaped_) {
    ::kill(pid_, SIGTERM);
    std::unique_lock lock(wake_.m);
    // Its output ends when it exits (neither child hands its pipe to another process).
    if (!wake_.cv.wait_for(lock, grace, [this] { return eof_; })) {
      lock.unlock();
      ::kill(pid_, SIGKILL);
    }
  }
  std::string how = reap();
  if (reader_.joinable())
    reader_.join();
  return how;
}

}  // namespace devicebound::cli
