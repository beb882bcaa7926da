package main

// systemd's two protocols, with the standard library only: the sockets a
// .socket unit passes (sd_listen_fds(3): LISTEN_PID, LISTEN_FDS sockets
// from fd 3, LISTEN_FDNAMES), so a restart never closes the listening
// socket; and state reports to the service manager (sd_notify(3):
// datagrams to NOTIFY_SOCKET: READY=1, STOPPING=1, WATCHDOG=1). main.go
// calls them; nothing else knows systemd.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	// listenFDsStart is the first passed descriptor (SD_LISTEN_FDS_START).
	listenFDsStart = 3
	// maxInheritedSockets is what s3-helper can use: proxy and admin.
	maxInheritedSockets = 2
	// maxSocketNameBytes bounds a socket name quoted in an error.
	maxSocketNameBytes = 64
)

// The roles of inherited sockets.
const (
	roleProxy = "proxy"
	roleAdmin = "admin"
)

// inheritedSocket is one descriptor systemd passed, with its role.
type inheritedSocket struct {
	fd         int
	name, role string
}

// errSocketActivation wraps every problem with the passed sockets.
var errSocketActivation = errors.New("socket activation")

// listenEnv reads the sd_listen_fds variables: none when they are absent
// or name another process (LISTEN_PID is systemd's way of saying whom they
// are for). Each socket's role comes from its name: "admin" is the admin
// listener; "proxy", or no name of ours (systemd's "unknown", or the
// unit's name when FileDescriptorName= is not set), is the proxy listener.
func listenEnv(getenv func(string) string, pid int) ([]inheritedSocket, error) {
	pidText := getenv("LISTEN_PID")
	if pidText == "" {
		return nil, nil
	}
	if p, err := strconv.Atoi(pidText); err != nil || p != pid {
		return nil, nil
	}
	countText := getenv("LISTEN_FDS")
	n, err := strconv.Atoi(countText)
	switch {
	case err != nil || n < 0:
		return nil, fmt.Errorf("%w: LISTEN_FDS %q is not a number of sockets", errSocketActivation, clip(countText, maxSocketNameBytes))
	case n > maxInheritedSockets:
		return nil, fmt.Errorf("%w: LISTEN_FDS=%d, but s3-helper uses at most %d sockets (FileDescriptorName=proxy and admin)", errSocketActivation, n, maxInheritedSockets)
	}
	var names []string
	if v := getenv("LISTEN_FDNAMES"); v != "" {
		names = strings.Split(v, ":")
		if len(names) != n {
			return nil, fmt.Errorf("%w: LISTEN_FDNAMES names %d sockets, LISTEN_FDS=%d", errSocketActivation, len(names), n)
		}
	}
	sockets := make([]inheritedSocket, n)
	seen := map[string]int{}
	for i := range sockets {
		s := inheritedSocket{fd: listenFDsStart + i}
		if names != nil {
			s.name = names[i]
		}
		if s.role, err = roleOf(s.name); err != nil {
			return nil, fmt.Errorf("%w: fd %d: %w", errSocketActivation, s.fd, err)
		}
		if other, dup := seen[s.role]; dup {
			return nil, fmt.Errorf("%w: fds %d and %d are both the %s socket (give each FileDescriptorName=proxy or admin)", errSocketActivation, other, s.fd, s.role)
		}
		seen[s.role] = s.fd
		sockets[i] = s
	}
	return sockets, nil
}

// checkDistinctSockets refuses one socket passed as both the proxy and the
// admin socket: one open socket under two descriptors (the same unit's
// socket listed twice), or two sockets bound to one address (two units
// with ReusePort=, between which the kernel spreads connections). Either
// way /metrics and /healthz would answer on nginx's port, and objects on
// the admin port. Descriptors that are not sockets are left to
// listenerFor, which names what they are.
func checkDistinctSockets(sockets []inheritedSocket) error {
	for i, a := range sockets {
		for _, b := range sockets[i+1:] {
			var sa, sb syscall.Stat_t
			if syscall.Fstat(a.fd, &sa) != nil || syscall.Fstat(b.fd, &sb) != nil ||
				sa.Mode&syscall.S_IFMT != syscall.S_IFSOCK || sb.Mode&syscall.S_IFMT != syscall.S_IFSOCK {
				continue
			}
			addr := boundAddress(a.fd)
			switch {
			case sa.Dev == sb.Dev && sa.Ino == sb.Ino:
				return fmt.Errorf("%w: fds %d (%s) and %d (%s) are one socket (%s): give s3-helper-admin.socket a ListenStream= of its own",
					errSocketActivation, a.fd, a.role, b.fd, b.role, addr)
			case addr != "" && addr == boundAddress(b.fd):
				return fmt.Errorf("%w: fds %d (%s) and %d (%s) both listen on %s (ReusePort=): give s3-helper-admin.socket a ListenStream= of its own",
					errSocketActivation, a.fd, a.role, b.fd, b.role, addr)
			}
		}
	}
	return nil
}

// boundAddress is the address a socket is bound to (getsockname), or ""
// when it has none that names it.
func boundAddress(fd int) string {
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		return ""
	}
	switch sa := sa.(type) {
	case *syscall.SockaddrInet4:
		return net.JoinHostPort(net.IP(sa.Addr[:]).String(), strconv.Itoa(sa.Port))
	case *syscall.SockaddrInet6:
		return net.JoinHostPort(net.IP(sa.Addr[:]).String(), strconv.Itoa(sa.Port))
	case *syscall.SockaddrUnix:
		return sa.Name
	}
	return ""
}

// passesAdminSocket reports whether systemd passes this process an admin
// socket. Broken LISTEN_* variables answer false here; passedListeners
// reports them.
func passesAdminSocket(getenv func(string) string, pid int) bool {
	sockets, err := listenEnv(getenv, pid)
	if err != nil {
		return false
	}
	for _, s := range sockets {
		if s.role == roleAdmin {
			return true
		}
	}
	return false
}

// roleOf maps a socket's name to its role.
func roleOf(name string) (string, error) {
	switch {
	case name == roleAdmin:
		return roleAdmin, nil
	case name == roleProxy, name == "", name == "unknown", strings.HasSuffix(name, ".socket"):
		return roleProxy, nil
	}
	return "", fmt.Errorf("socket name %q is neither proxy nor admin", printable(clip(name, maxSocketNameBytes)))
}

// clearListenEnv removes the variables, so no child takes the sockets for
// its own.
func clearListenEnv() {
	for _, v := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		os.Unsetenv(v)
	}
}

// listenerFor turns a passed descriptor into a listener, once it proved to
// be a listening stream socket (TCP or Unix).
func listenerFor(s inheritedSocket) (net.Listener, error) {
	kind, err := syscall.GetsockoptInt(s.fd, syscall.SOL_SOCKET, syscall.SO_TYPE)
	if err != nil {
		return nil, fmt.Errorf("%w: fd %d (%s) is not a socket: %w", errSocketActivation, s.fd, s.role, err)
	}
	listening, err := syscall.GetsockoptInt(s.fd, syscall.SOL_SOCKET, syscall.SO_ACCEPTCONN)
	if err != nil || kind != syscall.SOCK_STREAM || listening != 1 {
		return nil, fmt.Errorf("%w: fd %d (%s) is not a listening stream socket (ListenStream= in the .socket unit)", errSocketActivation, s.fd, s.role)
	}
	syscall.CloseOnExec(s.fd)
	f := os.NewFile(uintptr(s.fd), "systemd-"+s.role)
	defer f.Close() // the listener holds its own descriptor
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("%w: fd %d (%s): %w", errSocketActivation, s.fd, s.role, err)
	}
	return ln, nil
}

// notifier sends state reports to the service manager. A nil *notifier
// sends nothing: without NOTIFY_SOCKET, nothing changes.
type notifier struct {
	conn *net.UnixConn
}

// newNotifier connects to NOTIFY_SOCKET: a path, or an abstract socket
// written with a leading '@'.
func newNotifier(getenv func(string) string) (*notifier, error) {
	addr := getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil, nil
	}
	if !strings.HasPrefix(addr, "/") && !strings.HasPrefix(addr, "@") {
		return nil, fmt.Errorf("NOTIFY_SOCKET %q: neither a path nor an abstract socket name", clip(addr, maxSocketNameBytes))
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("NOTIFY_SOCKET: %w", err)
	}
	return &notifier{conn: conn}, nil
}

// notifyTimeout bounds one report: a datagram to a service manager that
// stopped reading would otherwise block, and STOPPING=1 is sent on the
// shutdown path.
const notifyTimeout = time.Second

// send reports one state, such as "READY=1", within notifyTimeout.
func (n *notifier) send(state string) error {
	if n == nil {
		return nil
	}
	n.conn.SetWriteDeadline(time.Now().Add(notifyTimeout))
	_, err := n.conn.Write([]byte(state))
	return err
}

// close ends the reports.
func (n *notifier) close() {
	if n != nil {
		n.conn.Close()
	}
}

// watchdogInterval is half of WATCHDOG_USEC, as sd_watchdog_enabled(3)
// advises; zero when the watchdog is off or meant for another process.
func watchdogInterval(getenv func(string) string, pid int) time.Duration {
	usec, err := strconv.ParseInt(getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return 0
	}
	if p := getenv("WATCHDOG_PID"); p != "" && p != strconv.Itoa(pid) {
		return 0
	}
	return time.Duration(usec) * time.Microsecond / 2
}

// keepWatchdog sends WATCHDOG=1 every interval until ctx ends.
func (n *notifier) keepWatchdog(ctx context.Context, interval time.Duration) {
	if n == nil || interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			n.send("WATCHDOG=1")
		}
	}
}
