#include "blocking_io.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

namespace rnode {

int OpenRetrying(const char* path, int flags, mode_t mode) {
  int fd;
  do fd = open(path, flags, mode); while (fd < 0 && errno == EINTR);
  return fd;
}

ssize_t ReadUpTo(int fd, uint8_t* data, size_t length, uint64_t position, size_t alignment) {
  size_t done = 0;
  while (done < length) {
    const ssize_t n = pread(fd, data + done, length - done, static_cast<off_t>(position + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (n == 0) break;  // EOF
    done += static_cast<size_t>(n);
    if (alignment > 1 && done % alignment != 0) break;
  }
  return static_cast<ssize_t>(done);
}

bool WriteAll(int fd, const uint8_t* data, size_t length, uint64_t position) {
  size_t done = 0;
  while (done < length) {
    const ssize_t n = pwrite(fd, data + done, length - done, static_cast<off_t>(position + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0) errno = EIO;
      return false;
    }
    done += static_cast<size_t>(n);
  }
  return true;
}

}  // namespace rnode
