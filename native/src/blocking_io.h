// The blocking file I/O the pool workers share (raw reads, store reads and puts, restore writes): open and the
// positioned reads and writes, retried on EINTR and carried to the end of their range.
#pragma once
#include <sys/types.h>

#include <cstddef>
#include <cstdint>

namespace rnode {

// open(2) retried on EINTR: the fd, or -1 with errno set.
int OpenRetrying(const char* path, int flags, mode_t mode = 0);

// Reads [position, position+length) into data until the range is full or EOF: the bytes read, or -1 with errno
// set. alignment > 1 marks a direct fd: a direct read is short only at EOF, and going on from an unaligned point
// would EINVAL, so it stops there.
ssize_t ReadUpTo(int fd, uint8_t* data, size_t length, uint64_t position, size_t alignment = 1);

// Writes all of data at position: false with errno set on failure (EIO if the kernel took nothing and said no
// error, which would otherwise loop forever).
bool WriteAll(int fd, const uint8_t* data, size_t length, uint64_t position);

}  // namespace rnode
