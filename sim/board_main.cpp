// The simulated board: a Verilator model of the SoC behind a TCP socket.
//
// Why this exists: the host tools talk to the board through the byte protocol
// of docs/PROTOCOL.md. Driving the gateware from Python (cocotb) costs tens of
// microseconds per clock; a whole network run is millions of cycles. Here the
// Verilated model is clocked by a plain C++ loop and its link byte streams are
// connected straight to a socket on 127.0.0.1, so the same host code that
// drives a real board (host.protocol.Link over host.transport.SocketTransport)
// drives the simulation at millions of cycles per second. There is no UART
// model: a byte can move each way on every clock.
//
// The model is any Amaranth wiring.Component with
//     rx:   In(stream.Signature(8))    bytes from the host
//     tx:   Out(stream.Signature(8))   bytes to the host
//     busy: Out(1)                     the device has work in hand
// plus clk/rst of the sync domain, Verilated with --prefix Vboard (sim/board.py
// builds it). Other inputs stay 0.
//
// Main loop: clock the model in batches of up to 1024 cycles; each cycle the
// rx stream is valid while received bytes are pending (one is popped on
// valid & ready) and tx is always ready (bytes are collected and sent after
// the batch; tx.ready drops only if 64 KiB wait because the host does not
// read). Between batches the socket is serviced without blocking; a batch
// also ends early when the rx buffer runs dry, so the rest of a frame is
// fetched at once. When nothing is pending - no received bytes, nothing to
// send, no rx/tx traffic for a while and busy low - the loop stops clocking
// and blocks in poll() until the host sends something (so an idle board costs
// no CPU; cycles are counted only while clocking). While busy is high the
// model is clocked flat out even without traffic, so gateware timers (the link
// engine's inter-byte timeout, a computation) advance.
//
// One client at a time; after it disconnects the next one is accepted and the
// device state persists (pending bytes of the old connection are dropped).
//
// Usage:
//     board [--port N] [--idle-exit SECONDS] [--max-cycles N]
//           [--parent-pid PID] [--exit-on-stdin-eof] [--bench N]
// prints exactly one line "LISTENING <port>" on stdout, then only stderr:
// connection events and, on exit, one line
//     board: exit (<reason>): <cycles> cycles, <s> s clocking, <rate> cycles/s, <n> connections
// Exit status 0 after SIGTERM/SIGINT, --idle-exit, --max-cycles, stdin EOF or a
// dead parent; 1 on a setup error (bad arguments, cannot listen); 2 usage.

#include "Vboard.h"
#include "verilated.h"

#include <arpa/inet.h>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <memory>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <vector>

// Amaranth names interface ports <member>__<field> (rx__valid); Verilator
// encodes "__" inside C++ identifiers as "___05F".
#define RX_VALID rx___05Fvalid
#define RX_READY rx___05Fready
#define RX_PAYLOAD rx___05Fpayload
#define TX_VALID tx___05Fvalid
#define TX_READY tx___05Fready
#define TX_PAYLOAD tx___05Fpayload

namespace {

constexpr int kBatchCycles = 1024;       // cycles between socket checks while clocking
// No rx/tx traffic for this many cycles (and busy low) before the loop blocks: a
// safety margin for work that follows a byte by a few hundred cycles (a 256-word
// WRITE's bus phase is ~800) in a top whose busy misses it. Costs ~0.5 ms of CPU
// after each exchange. busy must still cover everything longer (timeouts, runs).
constexpr uint64_t kQuietCycles = 4096;
constexpr int kIdlePollMs = 20;          // blocking poll() timeout when idle (events wake it at once)
constexpr size_t kRxCapacity = 1 << 16;  // received bytes not yet fed to the model
constexpr size_t kTxLimit = 1 << 16;     // bytes waiting to be sent before tx.ready goes low
constexpr int kResetCycles = 8;

volatile sig_atomic_t g_signal = 0;

void on_signal(int sig) { g_signal = sig; }

double now_s() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

[[noreturn]] void usage(const char* argv0, int status) {
    std::fprintf(status ? stderr : stdout,
                 "usage: %s [--port N] [--idle-exit SECONDS] [--max-cycles N] [--parent-pid PID]\n"
                 "          [--exit-on-stdin-eof] [--bench N]\n"
                 "  --port N             TCP port on 127.0.0.1 (0: any free port; default 0)\n"
                 "  --idle-exit S        exit after S seconds without a client (default 600; 0: never)\n"
                 "  --max-cycles N       exit after N clock cycles (default 0: no limit)\n"
                 "  --parent-pid PID     exit when process PID is no longer the parent\n"
                 "  --exit-on-stdin-eof  exit when stdin reaches end of file (the parent went away)\n"
                 "  --bench N            no socket: clock N cycles with idle inputs, print the rate, exit\n",
                 argv0);
    std::exit(status);
}

struct Options {
    int port = 0;
    double idle_exit = 600.0;
    uint64_t max_cycles = 0;
    long parent_pid = 0;
    bool stdin_eof = false;
    uint64_t bench = 0;
};

Options parse_args(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto value = [&]() -> const char* {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "board: %s needs a value\n", a.c_str());
                usage(argv[0], 2);
            }
            return argv[++i];
        };
        auto number = [&](const char* text, bool real) -> double {
            char* end = nullptr;
            errno = 0;
            double v = real ? std::strtod(text, &end) : static_cast<double>(std::strtoull(text, &end, 10));
            if (errno || end == text || *end || v < 0) {
                std::fprintf(stderr, "board: bad value for %s: %s\n", a.c_str(), text);
                usage(argv[0], 2);
            }
            return v;
        };
        if (a == "--port") {
            double v = number(value(), false);
            if (v > 65535) {
                std::fprintf(stderr, "board: --port must be 0..65535\n");
                usage(argv[0], 2);
            }
            o.port = static_cast<int>(v);
        } else if (a == "--idle-exit") {
            o.idle_exit = number(value(), true);
        } else if (a == "--max-cycles") {
            o.max_cycles = static_cast<uint64_t>(number(value(), false));
        } else if (a == "--parent-pid") {
            o.parent_pid = static_cast<long>(number(value(), false));
        } else if (a == "--exit-on-stdin-eof") {
            o.stdin_eof = true;
        } else if (a == "--bench") {
            o.bench = static_cast<uint64_t>(number(value(), false));
        } else if (a == "-h" || a == "--help") {
            usage(argv[0], 0);
        } else if (a.rfind("+verilator+", 0) == 0) {
            // Verilator runtime options, passed to the context below.
        } else {
            std::fprintf(stderr, "board: unknown argument %s\n", a.c_str());
            usage(argv[0], 2);
        }
    }
    return o;
}

// The Verilated model with its clock. One call of cycle() is one rising edge.
struct Model {
    std::unique_ptr<VerilatedContext> ctx;
    std::unique_ptr<Vboard> top;
    uint64_t cycles = 0;

    Model(int argc, char** argv) : ctx(new VerilatedContext) {
        ctx->commandArgs(argc, argv);
        top.reset(new Vboard{ctx.get()});
        top->clk = 0;
        top->rst = 1;
        top->RX_VALID = 0;
        top->RX_PAYLOAD = 0;
        top->TX_READY = 1;
        top->eval();
        for (int i = 0; i < kResetCycles; ++i) {
            top->clk = 1;
            top->eval();
            top->clk = 0;
            top->eval();
        }
        top->rst = 0;
        top->eval();
    }

    ~Model() { top->final(); }
};

class Board {
  public:
    Board(Model& m, const Options& o) : m_(m), o_(o), rx_(kRxCapacity) { tx_.reserve(kTxLimit); }

    bool listen_on(int port) {
        lfd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (lfd_ < 0) return fail("socket");
        int one = 1;
        setsockopt(lfd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sockaddr_in sa{};
        sa.sin_family = AF_INET;
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sa.sin_port = htons(static_cast<uint16_t>(port));
        if (bind(lfd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0) return fail("cannot listen on 127.0.0.1 (bind)");
        if (listen(lfd_, 4) < 0) return fail("listen");
        socklen_t len = sizeof sa;
        if (getsockname(lfd_, reinterpret_cast<sockaddr*>(&sa), &len) < 0) return fail("getsockname");
        port_ = ntohs(sa.sin_port);
        return true;
    }

    int port() const { return port_; }

    // Runs until a stop condition; returns the reason.
    std::string run() {
        double t0 = now_s();
        no_client_since_ = t0;
        next_parent_check_ = t0;
        while (true) {
            if (g_signal) return std::string("signal ") + std::to_string(static_cast<int>(g_signal));
            if (!stop_.empty()) return stop_;
            if (o_.max_cycles && m_.cycles >= o_.max_cycles) return "max cycles";
            bool quiet = m_.cycles - last_traffic_ >= kQuietCycles;
            bool idle = rx_head_ == rx_tail_ && tx_.size() == tx_sent_ && quiet && !m_.top->busy;
            bool stalled = tx_.size() - tx_sent_ >= kTxLimit;  // wait for the host to read
            if (idle || stalled) {
                double t = now_s();
                service(kIdlePollMs);
                idle_s_ += now_s() - t;
            } else {
                clock_batch();
                service(0);
            }
        }
    }

    double idle_s() const { return idle_s_; }
    int connections() const { return connections_; }

  private:
    bool fail(const char* what) {
        std::fprintf(stderr, "board: %s: %s\n", what, std::strerror(errno));
        return false;
    }

    void clock_batch() {
        Vboard* top = m_.top.get();
        uint64_t limit = kBatchCycles;
        if (o_.max_cycles) limit = std::min<uint64_t>(limit, o_.max_cycles - m_.cycles);
        for (uint64_t i = 0; i < limit; ++i) {
            bool have = rx_head_ < rx_tail_;
            top->RX_VALID = have;
            top->RX_PAYLOAD = have ? rx_[rx_head_] : 0;
            bool room = tx_.size() - tx_sent_ < kTxLimit;  // else back-pressure: the host is not reading
            top->TX_READY = room;
            top->clk = 0;
            top->eval();  // combinational outputs for this cycle's state and inputs
            bool traffic = false;
            if (have && top->RX_READY) {
                ++rx_head_;
                traffic = true;
            }
            if (room && top->TX_VALID) {
                tx_.push_back(top->TX_PAYLOAD);
                traffic = true;
            }
            top->clk = 1;
            top->eval();  // the rising edge: both handshakes complete here
            ++m_.cycles;
            if (traffic) last_traffic_ = m_.cycles;
            if (have && rx_head_ == rx_tail_) break;  // ran dry: fetch the rest of the frame now
            if (!room) break;
        }
    }

    // Send what the model produced, fetch what the host sent, accept a client,
    // watch the parent; waits up to timeout_ms for an event (0: just look).
    void service(int timeout_ms) {
        if (client_ < 0) {
            tx_.clear();  // nobody to send to
            tx_sent_ = 0;
        } else {
            flush_tx();
        }
        pollfd fds[2];
        int n = 0, ci = -1, si = -1;
        if (client_ >= 0) {
            ci = n;
            short ev = 0;
            if (rx_tail_ < rx_.size() || rx_head_ > 0) ev |= POLLIN;
            if (tx_sent_ < tx_.size()) ev |= POLLOUT;
            fds[n++] = {client_, ev, 0};
        } else {
            ci = n;
            fds[n++] = {lfd_, POLLIN, 0};
        }
        if (o_.stdin_eof) {
            si = n;
            fds[n++] = {0, POLLIN, 0};
        }
        int r = poll(fds, n, timeout_ms);
        if (r < 0 && errno != EINTR) {
            stop_ = std::string("poll failed: ") + std::strerror(errno);
            return;
        }
        if (r > 0 && si >= 0 && fds[si].revents) {
            char buf[256];
            ssize_t k = read(0, buf, sizeof buf);
            if (k == 0 || (k < 0 && errno != EINTR && errno != EAGAIN)) stop_ = "stdin closed";
        }
        if (r > 0 && fds[ci].revents) {
            if (client_ < 0) {
                accept_client();
            } else {
                if (fds[ci].revents & (POLLIN | POLLHUP | POLLERR)) receive();
                if (client_ >= 0 && (fds[ci].revents & POLLOUT)) flush_tx();
            }
        }
        double t = now_s();
        if (client_ < 0 && o_.idle_exit > 0 && t - no_client_since_ >= o_.idle_exit) {
            stop_ = "no client for " + std::to_string(static_cast<long>(o_.idle_exit)) + " s";
        }
        if (o_.parent_pid && t >= next_parent_check_) {
            next_parent_check_ = t + 0.1;
            if (static_cast<long>(getppid()) != o_.parent_pid) stop_ = "parent exited";
        }
    }

    void accept_client() {
        int fd = accept4(lfd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) return;  // EAGAIN, ECONNABORTED: try again later
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        client_ = fd;
        ++connections_;
        std::fprintf(stderr, "board: client %d connected at cycle %llu\n", connections_,
                     static_cast<unsigned long long>(m_.cycles));
    }

    void drop_client(const char* why) {
        std::fprintf(stderr, "board: client %d %s at cycle %llu\n", connections_, why,
                     static_cast<unsigned long long>(m_.cycles));
        close(client_);
        client_ = -1;
        rx_head_ = rx_tail_ = 0;  // bytes of the old session must not reach the next one
        tx_.clear();
        tx_sent_ = 0;
        no_client_since_ = now_s();
    }

    void receive() {
        while (client_ >= 0) {
            if (rx_head_ == rx_tail_) {
                rx_head_ = rx_tail_ = 0;
            } else if (rx_tail_ == rx_.size() && rx_head_ > 0) {
                std::memmove(rx_.data(), rx_.data() + rx_head_, rx_tail_ - rx_head_);
                rx_tail_ -= rx_head_;
                rx_head_ = 0;
            }
            if (rx_tail_ == rx_.size()) return;  // full: TCP flow control holds the host back
            ssize_t k = recv(client_, rx_.data() + rx_tail_, rx_.size() - rx_tail_, MSG_DONTWAIT);
            if (k > 0) {
                rx_tail_ += static_cast<size_t>(k);
                continue;
            }
            if (k == 0) {
                drop_client("disconnected");
            } else if (errno == EINTR) {
                continue;
            } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
                drop_client("failed (receive error)");
            }
            return;
        }
    }

    void flush_tx() {
        while (client_ >= 0 && tx_sent_ < tx_.size()) {
            ssize_t k = send(client_, tx_.data() + tx_sent_, tx_.size() - tx_sent_, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (k > 0) {
                tx_sent_ += static_cast<size_t>(k);
            } else if (k < 0 && errno == EINTR) {
                continue;
            } else if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                return;  // the host is not reading; poll() for POLLOUT
            } else {
                drop_client("failed (send error)");
                return;
            }
        }
        if (tx_sent_ == tx_.size()) {
            tx_.clear();
            tx_sent_ = 0;
        }
    }

    Model& m_;
    const Options& o_;
    int lfd_ = -1;
    int client_ = -1;
    int port_ = 0;
    int connections_ = 0;
    std::vector<uint8_t> rx_;
    size_t rx_head_ = 0, rx_tail_ = 0;
    std::vector<uint8_t> tx_;
    size_t tx_sent_ = 0;
    uint64_t last_traffic_ = 0;
    double no_client_since_ = 0, next_parent_check_ = 0, idle_s_ = 0;
    std::string stop_;
};

void report(const char* reason, uint64_t cycles, double clock_s, int connections) {
    double rate = clock_s > 0 ? cycles / clock_s : 0.0;
    std::fprintf(stderr, "board: exit (%s): %llu cycles, %.3f s clocking, %.0f cycles/s, %d connections\n", reason,
                 static_cast<unsigned long long>(cycles), clock_s, rate, connections);
    std::fflush(stderr);
}

}  // namespace

int main(int argc, char** argv) {
    Options opt = parse_args(argc, argv);

    struct sigaction sa{};
    sa.sa_handler = on_signal;  // no SA_RESTART: a blocking poll() returns EINTR
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGHUP, &sa, nullptr);
    std::signal(SIGPIPE, SIG_IGN);

    if (opt.parent_pid && static_cast<long>(getppid()) != opt.parent_pid) {
        std::fprintf(stderr, "board: parent %ld already gone\n", opt.parent_pid);
        return 0;
    }

    Model model(argc, argv);

    if (opt.bench) {
        // Clock flat out with idle inputs: the raw speed of the model.
        Vboard* top = model.top.get();
        double t0 = now_s();
        for (uint64_t i = 0; i < opt.bench && !g_signal; ++i) {
            top->clk = 0;
            top->eval();
            top->clk = 1;
            top->eval();
            ++model.cycles;
        }
        report("bench", model.cycles, now_s() - t0, 0);
        return 0;
    }

    Board board(model, opt);
    if (!board.listen_on(opt.port)) return 1;
    std::printf("LISTENING %d\n", board.port());
    std::fflush(stdout);

    double t0 = now_s();
    std::string reason = board.run();
    double wall = now_s() - t0;
    report(reason.c_str(), model.cycles, wall - board.idle_s(), board.connections());
    return 0;
}
