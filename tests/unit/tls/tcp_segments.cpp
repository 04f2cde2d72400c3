// The kernel's count of data segments a socket has sent, apart from the test that uses it: the
// count is in linux/tcp.h's struct tcp_info, which cannot be included alongside glibc's
// netinet/tcp.h (which Asio includes).
#include <linux/tcp.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstddef>
#include <cstdint>

namespace portcullis::tls::testing {

// -1 when the kernel does not say.
std::int64_t data_segments_out(int fd) {
  tcp_info info{};
  socklen_t size = sizeof(info);
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &size) != 0 ||
      size < offsetof(tcp_info, tcpi_data_segs_out) + sizeof(info.tcpi_data_segs_out)) {
    return -1;
  }
  return info.tcpi_data_segs_out;
}

}  // namespace portcullis::tls::testing
